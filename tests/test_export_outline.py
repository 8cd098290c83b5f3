"""mesh-export's outline check: the ray march over the field's support against a march over the
whole box, and the outline IoU against the analytic ratio of two discs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dreamfusion.export import extract


def march_whole_box(grid: np.ndarray, spacing: float, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ray of every view, every sample from one end of the box to the other (the reference)."""
    g = torch.as_tensor(grid)[None, None]
    n = grid.shape[0]
    across = torch.linspace(-extract.RAY_REACH, extract.RAY_REACH, side)
    along = torch.linspace(-extract.RAY_REACH, extract.RAY_REACH, int(math.ceil(2 * extract.RAY_REACH * (n - 1))))
    step = float(along[1] - along[0]) * 0.5 * (n - 1) * spacing
    peaks, depths = [], []
    for az, el in extract.SILHOUETTE_VIEWS:
        d, u, v = extract._view_axes(az, el)
        o = (across[:, None, None] * u + across[None, :, None] * v).reshape(-1, 3)
        pts = o[:, None, :] + along[None, :, None] * d
        sigma = F.grid_sample(g, pts.flip(-1)[None, None], align_corners=True)[0, 0, 0]
        peaks.append(sigma.max(1).values.double())
        depths.append(sigma.sum(1, dtype=torch.float64) * step)
    shape = (len(extract.SILHOUETTE_VIEWS), side, side)
    return torch.stack(peaks).reshape(shape), torch.stack(depths).reshape(shape)


@pytest.mark.parametrize("where", ["inside", "touching the box"])
def test_march_over_the_support_is_the_march_over_the_whole_box(where):
    rng = np.random.default_rng(3)
    grid = np.zeros((33, 33, 33), np.float32)
    if where == "inside":
        grid[8:20, 11:25, 14:22] = rng.random((12, 14, 8)) * 30
    else:
        grid[0:6, 20:33, 3:9] = rng.random((6, 13, 6)) * 30
    grid[grid < 10] = 0
    peaks, depths = extract.march_views(grid, 2 / 32, 48)
    want_peaks, want_depths = march_whole_box(grid, 2 / 32, 48)
    assert torch.equal(peaks, want_peaks)
    assert torch.allclose(depths, want_depths, rtol=1e-12, atol=0)
    assert int((depths > 0).sum()) > 500  # the field is seen


def test_march_over_an_empty_grid_sees_nothing():
    peaks, depths = extract.march_views(np.zeros((17, 17, 17), np.float32), 2 / 16, 20)
    assert peaks.shape == depths.shape == (len(extract.SILHOUETTE_VIEWS), 20, 20)
    assert not peaks.any() and not depths.any()


def test_outline_iou_is_the_ratio_of_the_two_discs():
    """A ball of density 100 (radius 0.30) in a shell of density 30 (out to 0.33): the surface at
    level 50 is the ball, seen as a disc of radius 0.30 from every view; renders turn opaque
    wherever a ray's chord through the shell reaches ln 2 / 30, out to sqrt(0.33^2 - (ln 2 / 60)^2)
    = 0.3298. So IoU (0.30 / 0.3298)^2 = 0.827 from every view."""
    cells = 128
    x = np.linspace(-1.0, 1.0, cells + 1, dtype=np.float32)
    r = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2)
    grid = np.where(r <= 0.30, 100.0, np.where(r <= 0.33, 30.0, 0.0)).astype(np.float32)
    outer = math.sqrt(0.33**2 - (extract.LN2 / 60) ** 2)
    want = (0.30 / outer) ** 2
    got = extract.outline_iou(grid, 2 / cells, 50.0)
    assert abs(got - want) < 0.003, (got, want)  # 0.8277 against 0.8275
