"""Mesh rasterizers (``renderer`` group): ``torch_raster`` (pure PyTorch, any device) and
``nvdiffrast`` (CUDA). Choosing either makes a run a DMTet run: the surface is a mesh extracted
from a tetrahedral grid by marching tetrahedra (``dreamfusion.geometry.dmtet``), rasterized.

Both return the same ``Raster`` for a batch of cameras: the face each pixel sees (-1 for the
background), its perspective-correct barycentrics (differentiable with respect to the vertex
positions) and its depth along the view axis; attributes are interpolated by one shared
function. Both antialias silhouettes, which is what gives silhouette edges gradients (nvdiffrast
with ``dr.antialias``; the torch rasterizer with ``antialias_silhouettes``, the same analytic
blend): without it an object's outline could not move under SDS, only its shading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dreamfusion.config import checks
from dreamfusion.config.node import Node
from dreamfusion.data.cameras import Cameras
from dreamfusion.geometry.tets import RESOLUTIONS
from dreamfusion.registry import register
from dreamfusion.renderer.raster import project, rasterize

CLIP_NEAR, CLIP_FAR = 0.01, 100.0


@dataclass
class RasterizerConfig(Node):
    grid_resolution: int = 128
    """Tetrahedral grid cells per axis (32, 64 or 128) over the object's extent."""
    iso_resolution: int = 256
    """(added) Marching-cubes cells of the NeRF density grid on which the initial surface's
    iso-level is chosen: mesh-export's default, so DMTet starts from the surface mesh-export finds."""
    grid_margin: float = 0.05
    """(added) The tet grid spans the NeRF's occupied extent grown by this fraction on each side."""
    antialias: bool = True
    """(added) Antialias silhouettes, which gives the outline gradients (both rasterizers)."""

    def check(self) -> None:
        checks.one_of(self, "grid_resolution", list(RESOLUTIONS))
        if not 8 <= self.iso_resolution <= 1024:
            checks.fail(self, "iso_resolution", "must be 8 to 1024 cells per axis")
        checks.within(self, "grid_margin", 0.0, 1.0)


@dataclass
class Raster:
    """B views: face (B, H, W) long (-1: background), bary (B, H, W, 3), depth (B, H, W) (inf: background)."""

    face: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    native: Any = None
    """The rasterizer's own output where a later step (nvdiffrast's antialias) needs it."""

    @property
    def mask(self) -> torch.Tensor:
        return self.face >= 0


def interpolate(attr: torch.Tensor, faces: torch.Tensor, raster: Raster) -> torch.Tensor:
    """(V, C) vertex attribute -> (B, H, W, C) at each pixel's surface point (0 on the background)."""
    m = raster.mask
    f = raster.face.clamp(min=0)
    out = (attr[faces[f]] * raster.bary[..., None]).sum(-2)
    return torch.where(m[..., None], out, torch.zeros_like(out))


@register("renderer", "torch_raster")
class TorchRasterizer(nn.Module):
    """Z-buffer rasterization in PyTorch (``dreamfusion.renderer.raster``), one view at a time."""

    Config = RasterizerConfig
    mesh = True  # a renderer of meshes: the scene is a DMTet scene

    def __init__(self, cfg: RasterizerConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, verts: torch.Tensor, faces: torch.Tensor, cams: Cameras) -> Raster:
        views = [
            rasterize(verts, faces, cams.c2w[i], float(cams.fovy[i]), cams.width, cams.height, cull_back=True)
            for i in range(len(cams))
        ]
        return Raster(*(torch.stack([getattr(v, k) for v in views]) for k in ("face", "bary", "depth")))

    def antialias(self, image: torch.Tensor, raster: Raster, verts, faces, cams: Cameras) -> torch.Tensor:
        if not self.cfg.antialias:
            return image
        out = []
        for i in range(len(cams)):
            xy, _ = project(verts, cams.c2w[i].to(verts), float(cams.fovy[i]), cams.width, cams.height)
            out.append(antialias_silhouettes(image[i], raster.face[i], xy, faces))
        return torch.stack(out)


def antialias_silhouettes(
    image: torch.Tensor, face: torch.Tensor, xy: torch.Tensor, faces: torch.Tensor
) -> torch.Tensor:
    """Blend across silhouette edges, as nvdiffrast's antialias does, differentiably in the vertices.

    image (H, W, C); face (H, W) the face each pixel sees (-1: background); xy (V, 2) the
    vertices in pixel coordinates. For each pair of neighbouring pixels of which one is covered
    (p) and one is not (q), the covered face's edge crosses the segment between their centres at
    a fraction ``t`` of the way from p. A crossing past the middle moves ``t - 1/2`` of p's colour
    into q; one before the middle moves ``1/2 - t`` of q's colour into p. So the image sum of a
    coverage channel follows the exact area of the outline, and its derivative with respect to an
    edge's position is the edge's length. Each edge is handled by the pairs across it in the
    direction closer to its normal (horizontal pairs for steep edges, vertical pairs for flat
    ones), so no length counts twice.
    """
    delta = torch.zeros_like(image)
    h, w = face.shape
    for dy, dx in ((0, 1), (1, 0)):
        a, b = face[: h - dy, : w - dx], face[dy:, dx:]
        ys, xs = ((a >= 0) != (b >= 0)).nonzero(as_tuple=True)
        if ys.numel() == 0:
            continue
        first = a[ys, xs] >= 0  # the first pixel of the pair is the covered one
        py, px = torch.where(first, ys, ys + dy), torch.where(first, xs, xs + dx)
        qy, qx = torch.where(first, ys + dy, ys), torch.where(first, xs + dx, xs)
        tri = xy[faces[face[py, px]]]  # (K, 3, 2)
        cp = torch.stack([px, py], -1).to(xy) + 0.5
        cq = torch.stack([qx, qy], -1).to(xy) + 0.5
        v0, v1 = tri, tri.roll(-1, 1)  # the edges v0 -> v1
        d = v1 - v0
        area = d[:, 0, 0] * (tri[:, 2, 1] - tri[:, 0, 1]) - d[:, 0, 1] * (tri[:, 2, 0] - tri[:, 0, 0])
        sign = torch.sign(area)[:, None]

        ep, eq = (_edge_values(sign, d, v0, c) for c in (cp, cq))  # (K, 3): > 0 inside
        t = torch.where(eq < 0, ep / (ep - eq).clamp(min=1e-12), torch.full_like(ep, float("inf")))
        t, which = t.min(1)
        steep = d[torch.arange(len(which)), which].abs()
        keep = torch.isfinite(t) & ((steep[:, 1] >= steep[:, 0]) if dx else (steep[:, 0] > steep[:, 1]))
        t = t.clamp(0.0, 1.0)[:, None]
        colp, colq = image[py, px], image[qy, qx]
        into_q = (t - 0.5).clamp(min=0) * (colp - colq) * keep[:, None]
        into_p = (0.5 - t).clamp(min=0) * (colq - colp) * keep[:, None]
        delta = delta.index_put((qy, qx), into_q, accumulate=True).index_put(
            (py, px), into_p, accumulate=True
        )
    return image + delta


def _edge_values(sign: torch.Tensor, d: torch.Tensor, v0: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(K, 3) edge functions of K triangles (edges v0 -> v0 + d) at K points c, positive inside."""
    return sign * (d[..., 0] * (c[:, None, 1] - v0[..., 1]) - d[..., 1] * (c[:, None, 0] - v0[..., 0]))


def clip_space(verts: torch.Tensor, cams: Cameras) -> torch.Tensor:
    """(V, 3) world points -> (B, V, 4) OpenGL clip coordinates of each camera (the pinhole model
    of ``dreamfusion.data.cameras.rays``; NDC y up, so image row 0 is NDC y = +1)."""
    c2w = cams.c2w.to(verts)
    cam = (
        torch.einsum("vk,bkj->bvj", verts, c2w[:, :3, :3])
        - torch.einsum("bk,bkj->bj", c2w[:, :3, 3], c2w[:, :3, :3])[:, None]
    )
    w = -cam[..., 2]
    f = 1.0 / torch.tan(0.5 * cams.fovy.to(verts))[:, None]  # focal / (H / 2)
    n, far = CLIP_NEAR, CLIP_FAR
    x = f * cam[..., 0] * (cams.height / cams.width)
    y = f * cam[..., 1]
    z = (far + n) / (far - n) * w - 2 * far * n / (far - n)
    return torch.stack([x, y, z, w], -1)


@register("renderer", "nvdiffrast")
class NvdiffrastRasterizer(TorchRasterizer):
    """nvdiffrast's CUDA rasterizer (rasterize, antialias); import guarded in ``dreamfusion.gpu``."""

    def __init__(self, cfg: RasterizerConfig):
        super().__init__(cfg)
        self._ctx = None

    def _dr(self):
        from dreamfusion import gpu

        dr = gpu.require("nvdiffrast.torch")
        if self._ctx is None:
            self._ctx = dr.RasterizeCudaContext()
        return dr

    def forward(self, verts: torch.Tensor, faces: torch.Tensor, cams: Cameras) -> Raster:
        dr = self._dr()
        clip = clip_space(verts, cams)
        tri = faces.int()
        rast, _ = dr.rasterize(self._ctx, clip, tri, (cams.height, cams.width))
        face = rast[..., 3].long().flip(1) - 1  # nvdiffrast's row 0 is the bottom of the image
        u, v = rast[..., 0].flip(1), rast[..., 1].flip(1)
        raster = Raster(face, torch.stack([u, v, 1 - u - v], -1), u)
        depth = torch.stack(
            [interpolate(clip[b, :, 3:], faces, _view(raster, b))[0, ..., 0] for b in range(len(cams))]
        )
        raster.depth = torch.where(face >= 0, depth, torch.full_like(depth, float("inf")))
        raster.native = (rast, clip, tri)
        return raster

    def antialias(self, image: torch.Tensor, raster: Raster, verts, faces, cams: Cameras) -> torch.Tensor:
        if not self.cfg.antialias or raster.native is None:
            return image
        rast, clip, tri = raster.native
        return self._dr().antialias(image.flip(1).contiguous(), rast, clip, tri).flip(1)


def _view(raster: Raster, b: int) -> Raster:
    s = slice(b, b + 1)
    return Raster(raster.face[s], raster.bary[s], raster.depth[s])
