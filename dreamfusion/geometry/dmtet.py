"""DMTet geometry: a deformable tetrahedral grid holding a signed distance per vertex.

The grid (``dreamfusion.geometry.tets``) spans a box ``center +- half`` fitted to the object.
Each vertex has a learned SDF value (positive inside) and a learned offset bounded as in
DMTet / Magic3D: ``tanh(deform) / n`` in grid units, at most half a cell. ``mesh()`` extracts
the surface with differentiable marching tetrahedra. Vertices on the grid's outer faces are held
outside (negative SDF), so the surface is always closed.

``init_sdf`` sets the SDF from a density field: ``(sigma - iso) / iso``, clamped to [-1, 1]:
the density minus the iso-level, in units of the iso-level, so the initial surface is the
iso-surface at ``iso`` whatever the field's scale.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dreamfusion.geometry.tets import boundary_mask, marching_tets, tet_grid


class DMTet(nn.Module):
    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = resolution
        verts, tets = tet_grid(resolution)
        self.register_buffer("grid", verts, persistent=False)
        self.register_buffer("tets", tets, persistent=False)
        self.register_buffer("boundary", boundary_mask(resolution), persistent=False)
        self.register_buffer("center", torch.zeros(3))
        self.register_buffer("half_extent", torch.ones(3))
        self.register_buffer("iso", torch.ones(()))
        """The density iso-level the SDF was initialised from (kept for the record)."""
        self.sdf = nn.Parameter(torch.zeros(verts.shape[0]))
        self.deform = nn.Parameter(torch.zeros(verts.shape[0], 3))

    def vertices(self) -> torch.Tensor:
        """(V, 3) world positions of the deformed grid."""
        return (self.grid + torch.tanh(self.deform) / self.resolution) * self.half_extent + self.center

    def signed_distance(self) -> torch.Tensor:
        """(V,) the SDF with the grid's outer vertices held outside."""
        return torch.where(self.boundary, -self.sdf.abs().clamp(min=1e-3), self.sdf)

    def mesh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, 3) vertices, (F, 3) long faces of the surface (differentiable in sdf and deform)."""
        return marching_tets(self.vertices(), self.signed_distance(), self.tets)

    @torch.no_grad()
    def fit_box(self, lo: torch.Tensor, hi: torch.Tensor, margin: float, bound: float) -> None:
        """Span the grid over [lo, hi] grown by ``margin`` of its size on each side (inside the
        [-bound, bound]^3 box of the field)."""
        size = (hi - lo).clamp(min=2 * bound / self.resolution)
        lo, hi = (lo - margin * size).clamp(min=-bound), (hi + margin * size).clamp(max=bound)
        self.center.copy_((lo + hi) / 2)
        self.half_extent.copy_((hi - lo) / 2)
        self.deform.zero_()

    @torch.no_grad()
    def init_sdf(
        self, density: Callable[[torch.Tensor], torch.Tensor], iso: float, chunk: int = 1 << 16
    ) -> None:
        if not (iso > 0 and torch.isfinite(torch.tensor(iso))):
            raise ValueError(f"the iso-level must be a positive density, not {iso}")
        pts = self.vertices()
        sigma = torch.cat([density(pts[i : i + chunk]) for i in range(0, len(pts), chunk)])
        sigma = torch.nan_to_num(sigma, nan=0.0, posinf=1e6)
        self.sdf.copy_(((sigma - iso) / iso).clamp(-1.0, 1.0))
        self.iso.fill_(iso)
