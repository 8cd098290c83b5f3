"""UV atlas (xatlas), albedo baking from a colour field, and seam dilation.

UVs use glTF's convention: (0, 0) is the top-left corner of the image, v grows downwards;
texel (row i, column j) has its centre at ``((j + 0.5) / T, (i + 0.5) / T)``. The OBJ writer
flips v for its bottom-left convention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from dreamfusion.export._deps import require
from dreamfusion.export._progress import bar as progress_bar
from dreamfusion.export.fields import ColorField
from dreamfusion.renderer.raster import coverage

log = logging.getLogger(__name__)


@dataclass
class UVMesh:
    """A mesh split along its UV seams: per-vertex positions and UVs share one index buffer."""

    positions: np.ndarray  # (V', 3) float32
    faces: np.ndarray  # (F, 3) int64
    uv: np.ndarray  # (V', 2) float32, glTF convention
    source_vertex: np.ndarray  # (V',) index of each vertex in the unsplit mesh


def unwrap(verts: np.ndarray, faces: np.ndarray, texture_size: int, padding: int | None = None) -> UVMesh:
    """xatlas charts packed into one ``texture_size`` atlas (bilinear-safe padding between charts)."""
    xatlas = require("xatlas")
    atlas = xatlas.Atlas()
    atlas.add_mesh(
        np.ascontiguousarray(verts, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32)
    )
    chart = xatlas.ChartOptions()
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding if padding is not None else max(2, texture_size // 512))
    pack.bilinear = True
    pack.rotate_charts = True
    atlas.generate(chart, pack)
    vmapping, indices, uvs = atlas[0]
    if atlas.atlas_count > 1:
        log.warning("xatlas made %d atlases; only the first is used", atlas.atlas_count)
    return UVMesh(
        np.asarray(verts, dtype=np.float32)[vmapping],
        indices.astype(np.int64),
        uvs.astype(np.float32),
        vmapping.astype(np.int64),
    )


@dataclass
class BakedTexture:
    image: np.ndarray  # (T, T, 3) uint8, row 0 at the top
    used: np.ndarray  # (T, T) bool: texels whose centre lies on a triangle
    linear: np.ndarray  # (T, T, 3) float32 colours before quantisation (NaN where unused)


@torch.no_grad()
def bake(
    mesh: UVMesh,
    color: ColorField,
    size: int,
    device: torch.device | str = "cpu",
    chunk: int = 1 << 16,
    progress: bool = True,
) -> BakedTexture:
    """Albedo texture: the colour field at each used texel's surface point, then seams dilated."""
    pos = torch.as_tensor(mesh.positions, dtype=torch.float32)
    faces = torch.as_tensor(mesh.faces, dtype=torch.long)
    tri = torch.as_tensor(mesh.uv, dtype=torch.float32)[faces] * size  # (F, 3, 2) texel coordinates
    texel = torch.full((size * size,), -1, dtype=torch.long)
    points = torch.zeros(size * size, 3)
    for f, y, x, b in coverage(tri, size, size):
        pix = y * size + x
        texel[pix] = f
        points[pix] = (pos[faces[f]] * b[..., None]).sum(1)
    used = texel >= 0
    idx = used.nonzero().squeeze(1)
    rgb = torch.zeros(idx.numel(), 3)
    with progress_bar(idx.numel(), f"bake {size}x{size}", progress, unit="texel", unit_scale=True) as bar:
        for i in range(0, idx.numel(), chunk):
            sl = slice(i, i + chunk)
            rgb[sl] = color.albedo(points[idx[sl]].to(device)).float().cpu()
            bar.update(min(chunk, idx.numel() - i))
    rgb = torch.nan_to_num(rgb, nan=0.5).clamp(0, 1)
    linear = torch.full((size * size, 3), float("nan"))
    linear[idx] = rgb
    linear = linear.reshape(size, size, 3).numpy()
    used_np = used.reshape(size, size).numpy()
    if not used_np.any():
        return BakedTexture(np.full((size, size, 3), 128, np.uint8), used_np, linear)
    filled = dilate(np.nan_to_num(linear, nan=0.0), used_np)
    image = np.clip(np.round(filled * 255.0), 0, 255).astype(np.uint8)
    return BakedTexture(image, used_np, linear)


def dilate(image: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Every unused texel takes the colour of the nearest used one, so that bilinear filtering
    and mipmaps at chart borders never mix in a background colour."""
    ndimage = require("scipy.ndimage")
    if used.all():
        return image
    _, (iy, ix) = ndimage.distance_transform_edt(~used, return_indices=True)
    return image[iy, ix]
