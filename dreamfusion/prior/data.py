"""The "shapes world": an analytic ray-caster of coloured primitives, the offline prior's training data.

Every primitive is centred at the origin, fits inside [-h, h]^3 with h = :data:`HALF` = 0.3 world units
(the NeRF's scene is [-1, 1]^3) and has a fixed canonical pose, so the same name means the same 3D object
at any camera:

* ``cube``: axis-aligned, half-size h;
* ``sphere``: radius h;
* ``cylinder``: axis +Y, radius 0.7h, height 2h (narrower than the cube, so that its side view is not
  the cube's front view);
* ``cone``: axis +Y, base radius h at y = -h, apex at y = +h;
* ``torus``: lying flat (axis +Y), major radius 0.65h, tube radius 0.35h (outer radius h).

Why h = 0.3: the NeRF stage's training cameras under the ``shapes`` preset (radius 3.25, fovy 25
degrees) see a half-height of 0.72 world units at the origin; at h = 0.3 the object is whole in
every view (the cube's corners reach sqrt(3) h = 0.52) and spans 42% of the half-image.

Cameras come from :mod:`dreamfusion.data.cameras` (the NeRF stage's own camera code) with the ``shapes``
preset's ranges (:func:`world_cameras`), so the prior is trained on exactly the views, and view suffixes,
that the NeRF stage renders with it. Shading is the NeRF stage's lambertian model:
``albedo * (a + (1 - a) * max(n.l, 0))`` with ``l = normalize(camera + N(0, I))``.

Everything is vectorised torch on the CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dreamfusion.config.schema import TrainDatasetConfig
from dreamfusion.data.cameras import Cameras, camera_embedding, rays, sample_train, view_labels

SHAPES = ("cube", "sphere", "cylinder", "cone", "torus")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.08),
    "green": (0.12, 0.70, 0.15),
    "blue": (0.10, 0.22, 0.90),
    "yellow": (0.92, 0.85, 0.10),
    "white": (0.80, 0.80, 0.80),
    "purple": (0.55, 0.15, 0.75),
}
VIEW_SUFFIX = {
    "front": ", front view",
    "side": ", side view",
    "back": ", back view",
    "overhead": ", overhead view",
}
# The background the prior is trained on; the NeRF stage must render this one (static white).
BACKGROUND = (1.0, 1.0, 1.0)

HALF = 0.3  # half-size of every primitive, world units
TORUS_MAJOR, TORUS_MINOR = 0.65 * HALF, 0.35 * HALF
CYLINDER_RADIUS = 0.7 * HALF
_INF = float("inf")


def caption(colour: str, shape: str, view: str | None = None) -> str:
    """``"a red cube"`` or ``"a red cube, front view"``."""
    return f"a {colour} {shape}" + (VIEW_SUFFIX[view] if view else "")


# ----------------------------------------------------------------------------------------------------
# Ray / primitive intersections: (N, 3) origins and unit directions -> (N,) hit distance (inf on a
# miss) and (N, 3) unit outward normals at the hit.


def _smallest_valid(ts: list[torch.Tensor], oks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.stack([torch.where(ok & (ti > 1e-6), ti, torch.full_like(ti, _INF)) for ti, ok in zip(ts, oks)])
    return t.min(0)


def _quadratic(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor):
    """Real roots of a t^2 + b t + c (both nan where none); a may be ~0 (then the linear root twice)."""
    disc = b * b - 4 * a * c
    sq = disc.clamp_min(0).sqrt()
    small = a.abs() < 1e-9
    a_safe = torch.where(small, torch.ones_like(a), a)
    t0 = (-b - sq) / (2 * a_safe)
    t1 = (-b + sq) / (2 * a_safe)
    lin = -c / torch.where(b.abs() < 1e-12, torch.full_like(b, 1e-12), b)
    t0 = torch.where(small, lin, t0)
    t1 = torch.where(small, lin, t1)
    bad = (disc < 0) & ~small
    nan = torch.full_like(t0, float("nan"))
    return torch.where(bad, nan, t0), torch.where(bad, nan, t1)


def intersect_sphere(o, d, r: float = HALF):
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - r * r
    t0, t1 = _quadratic(torch.ones_like(b), 2 * b, c)
    t, _ = _smallest_valid([t0, t1], [~t0.isnan(), ~t1.isnan()])
    n = F.normalize(o + t.nan_to_num(0, 0, 0)[:, None] * d, dim=-1)
    return t, n


def intersect_cube(o, d, h: float = HALF):
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t1, t2 = (-h - o) * inv, (h - o) * inv
    tnear = torch.minimum(t1, t2).max(-1).values
    tfar = torch.maximum(t1, t2).min(-1).values
    hit = (tfar >= tnear) & (tfar > 0)
    t = torch.where(hit, torch.where(tnear > 0, tnear, tfar), torch.full_like(tnear, _INF))
    p = o + t.nan_to_num(0, 0, 0)[:, None] * d
    axis = p.abs().argmax(-1)
    n = F.one_hot(axis, 3).to(p.dtype) * torch.sign(p.gather(-1, axis[:, None]))
    return t, n


def intersect_cylinder(o, d, r: float = CYLINDER_RADIUS, h: float = HALF):
    a = d[:, 0] ** 2 + d[:, 2] ** 2
    b = 2 * (o[:, 0] * d[:, 0] + o[:, 2] * d[:, 2])
    c = o[:, 0] ** 2 + o[:, 2] ** 2 - r * r
    s0, s1 = _quadratic(a, b, c)
    side_ok = [(~s.isnan()) & ((o[:, 1] + s * d[:, 1]).abs() <= h) & (a > 1e-12) for s in (s0, s1)]
    dy = torch.where(d[:, 1].abs() < 1e-12, torch.full_like(d[:, 1], 1e-12), d[:, 1])
    caps = [(y - o[:, 1]) / dy for y in (h, -h)]
    cap_ok = [((o[:, [0, 2]] + tc[:, None] * d[:, [0, 2]]) ** 2).sum(-1) <= r * r for tc in caps]
    t, which = _smallest_valid([s0, s1, *caps], side_ok + cap_ok)
    p = o + t.nan_to_num(0, 0, 0)[:, None] * d
    n_side = F.normalize(p * torch.tensor([1.0, 0.0, 1.0]), dim=-1)
    n_cap = torch.zeros_like(p)
    n_cap[:, 1] = torch.where(which == 2, 1.0, -1.0)
    n = torch.where((which < 2)[:, None], n_side, n_cap)
    return t, n


def intersect_cone(o, d, r: float = HALF, h: float = HALF):
    k2 = (r / (2 * h)) ** 2
    hy = h - o[:, 1]
    a = d[:, 0] ** 2 + d[:, 2] ** 2 - k2 * d[:, 1] ** 2
    b = 2 * (o[:, 0] * d[:, 0] + o[:, 2] * d[:, 2] + k2 * hy * d[:, 1])
    c = o[:, 0] ** 2 + o[:, 2] ** 2 - k2 * hy * hy
    s0, s1 = _quadratic(a, b, c)
    side_ok = [(~s.isnan()) & ((o[:, 1] + s * d[:, 1]) <= h) & ((o[:, 1] + s * d[:, 1]) >= -h) for s in (s0, s1)]
    dy = torch.where(d[:, 1].abs() < 1e-12, torch.full_like(d[:, 1], 1e-12), d[:, 1])
    tc = (-h - o[:, 1]) / dy
    cap_ok = ((o[:, [0, 2]] + tc[:, None] * d[:, [0, 2]]) ** 2).sum(-1) <= r * r
    t, which = _smallest_valid([s0, s1, tc], side_ok + [cap_ok])
    p = o + t.nan_to_num(0, 0, 0)[:, None] * d
    n_side = F.normalize(torch.stack([p[:, 0], k2 * (h - p[:, 1]), p[:, 2]], -1), dim=-1)
    n_cap = torch.zeros_like(p)
    n_cap[:, 1] = -1.0
    n = torch.where((which < 2)[:, None], n_side, n_cap)
    return t, n


def _torus_sdf(p: torch.Tensor) -> torch.Tensor:
    q = torch.stack([p[:, [0, 2]].norm(dim=-1) - TORUS_MAJOR, p[:, 1]], -1)
    return q.norm(dim=-1) - TORUS_MINOR


def intersect_torus(o, d, steps: int = 96, eps: float = 1e-4):
    """Sphere tracing of the (exact) torus distance function, from the bounding sphere inwards."""
    rb = TORUS_MAJOR + TORUS_MINOR + 0.01 * HALF
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - rb * rb
    disc = b * b - c
    inside_bound = disc > 0
    t = (-b - disc.clamp_min(0).sqrt()).clamp_min(0)
    t_exit = -b + disc.clamp_min(0).sqrt()
    active = inside_bound.clone()
    hit = torch.zeros_like(active)
    for _ in range(steps):
        if not active.any():
            break
        idx = active.nonzero().squeeze(1)
        p = o[idx] + t[idx, None] * d[idx]
        dist = _torus_sdf(p)
        t[idx] = t[idx] + dist
        done = dist < eps
        hit[idx[done]] = True
        gone = t[idx] > t_exit[idx]
        active[idx[done | gone]] = False
    t = torch.where(hit, t, torch.full_like(t, _INF))
    p = o + t.nan_to_num(0, 0, 0)[:, None] * d
    rho = p[:, [0, 2]].norm(dim=-1).clamp_min(1e-9)
    qx = rho - TORUS_MAJOR
    n = F.normalize(torch.stack([p[:, 0] / rho * qx, p[:, 1], p[:, 2] / rho * qx], -1), dim=-1)
    return t, n


INTERSECT = {
    "cube": intersect_cube,
    "sphere": intersect_sphere,
    "cylinder": intersect_cylinder,
    "cone": intersect_cone,
    "torus": intersect_torus,
}


# ----------------------------------------------------------------------------------------------------
# Rendering


def _as_list(x, n: int) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x] * n


def render(
    cams: Cameras,
    shape: str | list[str],
    colour=None,
    *,
    light_dir: torch.Tensor | None = None,
    ambient: torch.Tensor | float = 1.0,
    background=BACKGROUND,
    supersample: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render primitives at the given cameras.

    ``shape``: one name for all cameras or one per camera; ``colour``: a name from :data:`COLOURS`, an
    RGB triple, a (B, 3) tensor, or None for white-grey. ``light_dir``: (B, 3) unit vectors towards the
    light (default: from the camera). ``ambient``: scalar or (B,). ``supersample``: render
    ``supersample^2`` rays per pixel and average (anti-aliasing).

    Returns ``rgb`` (B, H, W, 3) in [0, 1], background blended in, and ``mask`` (B, H, W) coverage in
    [0, 1] (binary without supersampling).
    """
    b = len(cams)
    shapes = _as_list(shape, b)
    if len(shapes) != b:
        raise ValueError(f"{len(shapes)} shapes for {b} cameras")
    for s in shapes:
        if s not in INTERSECT:
            raise ValueError(f"unknown shape {s!r}; expected one of {SHAPES}")
    if colour is None:
        colour = "white"
    if isinstance(colour, torch.Tensor) and colour.ndim == 2:
        albedo = colour.float()
    else:
        cols = (
            _as_list(colour, b)
            if not (isinstance(colour, tuple) and len(colour) == 3 and not isinstance(colour[0], str))
            else [colour] * b
        )
        albedo = torch.tensor([COLOURS[c] if isinstance(c, str) else tuple(c) for c in cols], dtype=torch.float32)
    ss = int(supersample)
    hi = Cameras(cams.c2w, cams.fovy, cams.theta, cams.phi, cams.radius, cams.width * ss, cams.height * ss)
    o, d = rays(hi)
    h, w = hi.height, hi.width
    o, d = o.reshape(b, -1, 3), d.reshape(b, -1, 3)
    t = torch.full((b, h * w), _INF)
    n = torch.zeros(b, h * w, 3)
    for s in set(shapes):
        sel = torch.tensor([i for i, si in enumerate(shapes) if si == s])
        ts, ns = INTERSECT[s](o[sel].reshape(-1, 3), d[sel].reshape(-1, 3))
        t[sel] = ts.reshape(len(sel), -1)
        n[sel] = ns.reshape(len(sel), -1, 3)
    mask = torch.isfinite(t)
    if light_dir is None:
        light_dir = F.normalize(cams.position, dim=-1)
    amb = torch.as_tensor(ambient, dtype=torch.float32).expand(b)
    ndl = (n * light_dir[:, None, :]).sum(-1).clamp_min(0)
    shade = amb[:, None] + (1 - amb[:, None]) * ndl
    fg = albedo[:, None, :] * shade[..., None]
    bg = torch.as_tensor(background, dtype=torch.float32).reshape(-1, 3).expand(b, 3)
    rgb = torch.where(mask[..., None], fg, bg[:, None, :]).reshape(b, h, w, 3)
    m = mask.float().reshape(b, h, w)
    if ss > 1:
        rgb = F.avg_pool2d(rgb.permute(0, 3, 1, 2), ss).permute(0, 2, 3, 1)
        m = F.avg_pool2d(m[:, None], ss)[:, 0]
    return rgb.clamp(0, 1), m


def silhouette(cams: Cameras, shape: str, supersample: int = 1) -> torch.Tensor:
    """Coverage mask (B, H, W) in [0, 1] of the true primitive at these cameras (for evaluation)."""
    return render(cams, shape, supersample=supersample)[1]


# ----------------------------------------------------------------------------------------------------
# Training batches


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S) in [-1, 1]
    captions: list[str]
    shapes: list[str]
    colours: list[str]
    views: list[str]
    cameras: torch.Tensor  # (B, CAMERA_FEATURES) camera_embedding rows; zero rows: camera unknown


def random_batch(
    n: int,
    generator: torch.Generator,
    size: int = 32,
    render_size: int = 64,
    cam_cfg: TrainDatasetConfig | None = None,
    min_ambient: float = 0.1,
    p_view_suffix: float = 0.5,
    p_empty: float = 0.1,
    colour_jitter: float = 0.04,
    p_no_camera: float = 0.0,
) -> Batch:
    """``n`` random shaded primitives at the NeRF stage's training cameras, with their captions.

    Rendered at ``render_size`` (the NeRF stage's 64x64) and area-averaged to ``size``. A caption gets its
    view suffix with probability ``p_view_suffix`` and is dropped to "" with probability ``p_empty``; a
    camera's features (:func:`~dreamfusion.data.cameras.camera_embedding`) are zeroed ("unknown") with
    probability ``p_no_camera`` (0: no draw, so batches are those of a run without cameras).
    """
    cfg = cam_cfg or world_cameras(render_size)
    cams = sample_train(cfg, n, generator)
    shape_idx = torch.randint(len(SHAPES), (n,), generator=generator)
    colour_names = list(COLOURS)
    colour_idx = torch.randint(len(colour_names), (n,), generator=generator)
    shapes = [SHAPES[i] for i in shape_idx.tolist()]
    colours = [colour_names[i] for i in colour_idx.tolist()]
    albedo = torch.tensor([COLOURS[c] for c in colours])
    albedo = (albedo + colour_jitter * (2 * torch.rand(n, 3, generator=generator) - 1)).clamp(0, 1)
    # Light as the NeRF stage's lambertian shading: from the camera, perturbed by N(0, I).
    light = F.normalize(cams.position + torch.randn(n, 3, generator=generator), dim=-1)
    ambient = min_ambient + (1 - min_ambient) * torch.rand(n, generator=generator)
    rgb, _ = render(cams, shapes, albedo, light_dir=light, ambient=ambient)
    img = rgb.permute(0, 3, 1, 2)
    if size != render_size:
        img = F.interpolate(img, size=(size, size), mode="area")
    views = view_labels(cams.theta, cams.phi, cfg.angle_front, cfg.angle_overhead)
    u = torch.rand(n, generator=generator)
    v = torch.rand(n, generator=generator)
    captions = [
        "" if ui < p_empty else caption(c, s, vw if vi < p_view_suffix else None)
        for ui, vi, c, s, vw in zip(u.tolist(), v.tolist(), colours, shapes, views)
    ]
    cam_features = camera_embedding(cams.theta, cams.phi)
    if p_no_camera > 0:
        cam_features[torch.rand(n, generator=generator) < p_no_camera] = 0.0
    return Batch(img * 2 - 1, captions, shapes, colours, views, cam_features)


@functools.cache
def world_cameras(size: int) -> TrainDatasetConfig:
    """The NeRF stage's training cameras under the ``shapes`` preset (ranges and view-label angles),
    at ``size`` x ``size``: the prior sees exactly the views, and view suffixes, that SDS will show it."""
    from dreamfusion.config import compose
    from dreamfusion.config.presets import expand

    cfg = compose(expand(["shapes"])).model.data.train_dataset
    return dataclasses.replace(cfg, width=size, height=size)


def camera_bank(n: int = 256, size: int = 32, seed: int = 1234) -> Cameras:
    """A fixed set of cameras spanning the NeRF stage's training distribution (for shape matching)."""
    g = torch.Generator().manual_seed(seed)
    return sample_train(world_cameras(size), n, g)


def projected_sphere_area(radius: float, distance: float, fovy_rad: float, height: int) -> float:
    """Pixel area of a sphere's silhouette seen from ``distance`` (centred, exact ellipse area)."""
    # The silhouette of a sphere centred on the optical axis is a circle of angular radius asin(r/D).
    f = 0.5 * height / math.tan(0.5 * fovy_rad)
    rho = f * math.tan(math.asin(radius / distance))
    return math.pi * rho * rho
