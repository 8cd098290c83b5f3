"""Turntable frames: volume rendering of a NeRF scene, or rasterization of a textured mesh.

Both go round the object at a fixed elevation, starting at the front (azimuth 0, camera on
+Z), with the pinhole cameras of ``dreamfusion.data.cameras``. Passes are drawn side by side
in each frame: ``rgb`` (albedo lit by a light at the camera, ambient 0.1, as the nerf-sds
renders), ``normal`` (world normals as ``(n + 1) / 2``), ``depth`` (near is bright, on black).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dreamfusion.config.schema import EvalDatasetConfig
from dreamfusion.data.cameras import Cameras, circle, rays
from dreamfusion.errors import UserError
from dreamfusion.export import mesh_ops
from dreamfusion.export._deps import require
from dreamfusion.export._progress import bar as progress_bar
from dreamfusion.export.extract import signed_volume
from dreamfusion.renderer.raster import rasterize, sample_texture

PASSES = ("rgb", "normal", "depth")
AMBIENT = 0.1


@dataclass
class TurntableOptions:
    frames: int = 120
    size: int = 512
    elevation: float = 10.0
    """Degrees above the horizon."""
    radius: float = 3.2
    fovy: float = 20.0
    passes: tuple[str, ...] = ("rgb",)
    background: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    """None keeps a NeRF scene's own background."""
    supersample: int = 2
    """Mesh renders: pixels per output pixel along each axis (antialiasing)."""
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        if not 1 <= self.frames <= 10_000:
            raise UserError(f"frame count {self.frames} is impossible: use 1 to 10000")
        if not 16 <= self.size <= 4096 or self.size % 2:
            raise UserError(f"frame size {self.size} is impossible: use an even number from 16 to 4096")
        if not -90 < self.elevation < 90:
            raise UserError(f"elevation {self.elevation} is impossible: use degrees inside (-90, 90)")
        if not self.radius > 0 or not 0 < self.fovy < 180:
            raise UserError(f"camera radius {self.radius} / fovy {self.fovy} impossible")
        bad = [p for p in self.passes if p not in PASSES]
        if bad or not self.passes:
            raise UserError(f"passes {','.join(self.passes)!r}: choose among {','.join(PASSES)}")
        if not 1 <= self.supersample <= 4:
            raise UserError(f"supersample {self.supersample} is impossible: use 1 to 4")


def cameras(opts: TurntableOptions) -> Cameras:
    cfg = EvalDatasetConfig(
        width=opts.size,
        height=opts.size,
        n_views=opts.frames,
        radius=opts.radius,
        theta=90.0 - opts.elevation,
        fovy=opts.fovy,
    )
    return circle(cfg)


def _index(cams: Cameras, i: int) -> Cameras:
    s = slice(i, i + 1)
    return Cameras(
        cams.c2w[s], cams.fovy[s], cams.theta[s], cams.phi[s], cams.radius[s], cams.width, cams.height
    )


def _depth_vis(depth: torch.Tensor, alpha: torch.Tensor, radius: float, extent: float) -> torch.Tensor:
    near, far = radius - extent, radius + extent
    v = (1.0 - (depth - near) / (far - near)).clamp(0, 1) * 0.85 + 0.15
    return (v * alpha)[..., None].expand(*v.shape, 3)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.clamp(0, 1) * 255).round().byte().cpu().numpy()


# -- NeRF ------------------------------------------------------------------------------------
@torch.no_grad()
def nerf_frames(scene, opts: TurntableOptions, sink=None) -> np.ndarray | None:
    """Volume-rendered frames (N, H, W * passes, 3) uint8; with ``sink`` each frame goes there instead."""
    opts.check()
    cams = cameras(opts)
    bound = float(scene.nerf.bound)
    frames = []
    bar = progress_bar(len(cams), f"render {opts.size}x{opts.size} (volume)", opts.progress, unit="frame")
    for i in range(len(cams)):
        cam = _index(cams, i)
        out = scene.render_views(cam, "lambertian")
        alpha = out["opacity"][0].clamp(0, 1).cpu()
        if opts.background is None:
            bg_new = None
        else:
            _, d = rays(cam.to(scene.device))
            bg_old = scene.background(d.reshape(1, -1, 3)).reshape(cam.height, cam.width, 3).cpu()
            bg_new = torch.tensor(opts.background).expand_as(bg_old)
        parts = []
        for p in opts.passes:
            if p == "rgb":
                img = out["image"][0].cpu()
                if bg_new is not None:
                    img = img + (1 - alpha)[..., None] * (bg_new - bg_old)
            elif p == "normal":
                bg = bg_new if bg_new is not None else torch.ones(cam.height, cam.width, 3)
                img = out["normal_image"][0].cpu() + (1 - alpha)[..., None] * bg
            else:
                depth = out["depth"][0].cpu() / alpha.clamp(min=1e-6)
                img = _depth_vis(depth, alpha, opts.radius, bound * math.sqrt(3))
            parts.append(img)
        frame = _to_uint8(torch.cat(parts, 1))
        if sink is None:
            frames.append(frame)
        else:
            sink(frame)
        bar.update(1)
    bar.close()
    return np.stack(frames) if sink is None else None


# -- meshes ----------------------------------------------------------------------------------
@dataclass
class RenderMesh:
    positions: torch.Tensor  # (V, 3)
    faces: torch.Tensor  # (F, 3) long
    normals: torch.Tensor  # (V, 3) unit
    uv: torch.Tensor | None = None  # (V, 2) glTF convention
    texture: torch.Tensor | None = None  # (T, T, 3) float in [0, 1]
    colors: torch.Tensor | None = None  # (V, 3) float in [0, 1] when there is no texture
    base_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    closed: bool = False
    """Watertight with consistent winding: back faces can be culled."""

    @property
    def extent(self) -> float:
        return float(self.positions.norm(dim=1).max())

    @classmethod
    def from_arrays(cls, positions, faces, uv=None, texture=None, colors=None, base_color=(1.0, 1.0, 1.0)):
        pos = np.asarray(positions, dtype=np.float32)
        f = np.asarray(faces, dtype=np.int64)
        nrm = mesh_ops.vertex_normals(pos, f)
        t = lambda a: None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        tex = (
            None
            if texture is None
            else torch.as_tensor(np.asarray(texture)[..., :3].astype(np.float32) / 255.0)
        )
        return cls(
            torch.as_tensor(pos),
            torch.as_tensor(f),
            torch.as_tensor(nrm),
            t(uv),
            tex,
            t(colors),
            tuple(float(c) for c in base_color[:3]),
            closed=mesh_ops.is_watertight(pos, f) and signed_volume(pos, f) > 0,
        )


def load_mesh(path: str | Path) -> RenderMesh:
    """A mesh file (GLB, glTF, OBJ, PLY, ...) through trimesh: geometry, UVs, base-colour texture."""
    trimesh = require("trimesh")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mesh {path} does not exist")
    if path.suffix.lower() in (".pt", ".ckpt", ".pth"):
        raise UserError(f"{path} is a checkpoint, not a mesh; pass it with --checkpoint")
    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as e:
        raise UserError(
            f"{path} is not a mesh file that can be read ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise UserError(f"{path} holds no triangles")
    uv = texture = colors = None
    base = (0.8, 0.8, 0.8)
    vis = mesh.visual
    if getattr(vis, "kind", None) == "texture" and vis.uv is not None:
        mat = vis.material
        img = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        factor = getattr(mat, "baseColorFactor", None)
        if factor is not None:
            base = tuple(
                np.asarray(factor, dtype=np.float32)[:3] / (255.0 if np.asarray(factor).max() > 1 else 1.0)
            )
        else:
            base = (1.0, 1.0, 1.0)
        if img is not None:
            uv = np.asarray(vis.uv, dtype=np.float32).copy()
            uv[:, 1] = 1.0 - uv[:, 1]  # trimesh keeps OBJ's bottom-left origin
            texture = np.asarray(img.convert("RGB"))
    elif getattr(vis, "kind", None) == "vertex":
        colors = np.asarray(vis.vertex_colors, dtype=np.float32)[:, :3] / 255.0
    elif getattr(vis, "kind", None) == "face":
        raise UserError(f"{path}: per-face colours are not supported; use a texture or vertex colours")
    return RenderMesh.from_arrays(mesh.vertices, mesh.faces, uv, texture, colors, base)


@torch.no_grad()
def shade_mesh(
    mesh: RenderMesh,
    c2w: torch.Tensor,
    fovy: float,
    size: int,
    passes: tuple[str, ...],
    background: tuple[float, float, float],
    radius: float,
    supersample: int = 2,
) -> torch.Tensor:
    """One frame (size, size * passes, 3) float of a mesh."""
    s = size * supersample
    frags = rasterize(mesh.positions, mesh.faces, c2w, fovy, s, s, cull_back=mesh.closed)
    pix = frags.face.reshape(-1).ge(0).nonzero().squeeze(1)  # covered pixels, packed
    vid = mesh.faces[frags.face.reshape(-1)[pix]]  # (M, 3) their triangle's vertices
    bary = frags.bary.reshape(-1, 3)[pix]

    def lerp(attr: torch.Tensor) -> torch.Tensor:
        return torch.einsum("mkc,mk->mc", attr[vid], bary)

    eye = c2w[:3, 3]
    n = F.normalize(lerp(mesh.normals), dim=-1)
    n = torch.where(((n * (lerp(mesh.positions) - eye)).sum(-1, keepdim=True) > 0), -n, n)  # double-sided
    bg = torch.tensor(background, dtype=torch.float32)
    parts = []
    for p in passes:
        if p == "rgb":
            if mesh.texture is not None and mesh.uv is not None:
                albedo = sample_texture(mesh.texture, lerp(mesh.uv))
            elif mesh.colors is not None:
                albedo = lerp(mesh.colors)
            else:
                albedo = torch.ones(pix.shape[0], 3)
            albedo = albedo * torch.tensor(mesh.base_color)
            diffuse = (n * F.normalize(eye, dim=0)).sum(-1, keepdim=True).clamp(min=0)
            color = albedo * (AMBIENT + (1 - AMBIENT) * diffuse)
            img = bg.repeat(s * s, 1)
        elif p == "normal":
            color = (n + 1) / 2
            img = bg.repeat(s * s, 1)
        else:
            alpha = torch.ones(pix.shape[0])
            color = _depth_vis(frags.depth.reshape(-1)[pix], alpha, radius, mesh.extent)
            img = torch.zeros(s * s, 3)
        img[pix] = color
        parts.append(img.reshape(s, s, 3))
    frame = torch.cat(parts, 1)
    if supersample > 1:
        frame = F.avg_pool2d(frame.permute(2, 0, 1)[None], supersample)[0].permute(1, 2, 0)
    return frame


def mesh_frames(mesh: RenderMesh, opts: TurntableOptions, sink=None) -> np.ndarray | None:
    """Rasterized frames (N, H, W * passes, 3) uint8; with ``sink`` each frame goes there instead."""
    opts.check()
    cams = cameras(opts)
    bg = opts.background if opts.background is not None else (1.0, 1.0, 1.0)
    frames = []
    bar = progress_bar(len(cams), f"render {opts.size}x{opts.size} (raster)", opts.progress, unit="frame")
    for i in range(len(cams)):
        frame = _to_uint8(
            shade_mesh(
                mesh,
                cams.c2w[i],
                float(cams.fovy[i]),
                opts.size,
                opts.passes,
                bg,
                opts.radius,
                opts.supersample,
            )
        )
        if sink is None:
            frames.append(frame)
        else:
            sink(frame)
        bar.update(1)
    bar.close()
    return np.stack(frames) if sink is None else None
