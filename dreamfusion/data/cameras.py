"""Cameras: random training poses, circles for validation/test, and the rays through their pixels.

Conventions (used everywhere: renderer, prior data, export, video):
* world +Y is up; the object sits at the origin inside [-bound, bound]^3;
* a camera at polar angle ``theta`` (from +Y) and azimuth ``phi`` sits at
  ``radius * (sin(theta) sin(phi), cos(theta), sin(theta) cos(phi))``; azimuth 0 is the
  front (camera on +Z), 90 the object's right side, +-180 the back;
* camera-to-world matrices are OpenGL style: the camera looks down its -Z axis, +Y up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dreamfusion.config.schema import EvalDatasetConfig, TrainDatasetConfig

VIEWS = ("front", "side", "back", "overhead")
CAMERA_HARMONICS = 4
CAMERA_FEATURES = 3 + 2 * CAMERA_HARMONICS
"""Length of :func:`camera_embedding`'s rows: what a camera-conditioned prior's UNet takes as ``class_labels``."""


@dataclass
class Cameras:
    """A batch of B pinhole cameras, all of one image size."""

    c2w: torch.Tensor  # (B, 4, 4) float32 camera-to-world
    fovy: torch.Tensor  # (B,) vertical field of view, radians
    theta: torch.Tensor  # (B,) polar angle, degrees
    phi: torch.Tensor  # (B,) azimuth, degrees in [-180, 180)
    radius: torch.Tensor  # (B,)
    width: int
    height: int

    @property
    def position(self) -> torch.Tensor:  # (B, 3)
        return self.c2w[:, :3, 3]

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(
            self.c2w.to(device),
            self.fovy.to(device),
            self.theta.to(device),
            self.phi.to(device),
            self.radius.to(device),
            self.width,
            self.height,
        )


def spherical_to_position(radius: torch.Tensor, theta_deg: torch.Tensor, phi_deg: torch.Tensor) -> torch.Tensor:
    """(B,) each -> (B, 3) camera centres."""
    t, p = torch.deg2rad(theta_deg), torch.deg2rad(phi_deg)
    return torch.stack([radius * t.sin() * p.sin(), radius * t.cos(), radius * t.sin() * p.cos()], -1)


def look_at(eye: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 3) eyes looking at ``target`` (default origin) -> (B, 4, 4) OpenGL camera-to-world."""
    target = torch.zeros_like(eye) if target is None else target
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(eye)
    right = torch.cross(forward, up, dim=-1)
    # Straight above or below: any right vector will do.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    right = torch.where(degenerate, torch.tensor([1.0, 0.0, 0.0], dtype=eye.dtype, device=eye.device), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    true_up = torch.cross(right, forward, dim=-1)
    c2w = torch.eye(4, dtype=eye.dtype, device=eye.device).repeat(eye.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, true_up, -forward, eye
    return c2w


def _uniform(n: int, lo_hi, generator: torch.Generator | None) -> torch.Tensor:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def sample_train(cfg: TrainDatasetConfig, n: int | None = None, generator: torch.Generator | None = None) -> Cameras:
    """``n`` (default ``batch_size``) random training cameras looking at the origin."""
    n = cfg.batch_size if n is None else n
    radius = _uniform(n, cfg.radius_range, generator)
    theta = _uniform(n, cfg.theta_range, generator)
    phi = _uniform(n, cfg.phi_range, generator)
    phi = torch.remainder(phi + 180.0, 360.0) - 180.0
    fovy = torch.deg2rad(_uniform(n, cfg.fovy_range, generator))
    c2w = look_at(spherical_to_position(radius, theta, phi))
    return Cameras(c2w, fovy, theta, phi, radius, cfg.width, cfg.height)


def circle(cfg: EvalDatasetConfig, n: int | None = None, theta: float | None = None) -> Cameras:
    """``n`` (default ``n_views``) cameras evenly spaced in azimuth, starting at the front."""
    n = cfg.n_views if n is None else n
    phi = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    phi = torch.remainder(phi + 180.0, 360.0) - 180.0
    theta_t = torch.full((n,), float(cfg.theta if theta is None else theta))
    radius = torch.full((n,), float(cfg.radius))
    fovy = torch.full((n,), math.radians(cfg.fovy))
    c2w = look_at(spherical_to_position(radius, theta_t, phi))
    return Cameras(c2w, fovy, theta_t, phi, radius, cfg.width, cfg.height)


def rays(cams: Cameras, within: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixel centres: origins and unit directions, each (B, H, W, 3).

    ``within`` (B, H, W, 2) in [0, 1): each ray's point in its pixel instead (x, y from the pixel's
    top-left corner; 0.5 is the centre).
    """
    device = cams.c2w.device
    h, w = cams.height, cams.width
    j, i = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    if within is None:
        i, j = i[None] + 0.5, j[None] + 0.5  # (1, H, W)
    else:
        within = within.to(device)
        i, j = i + within[..., 0], j + within[..., 1]  # (B, H, W)
    focal = 0.5 * h / torch.tan(0.5 * cams.fovy)  # (B,) in pixels
    x = (i - 0.5 * w) / focal[:, None, None]
    y = -(j - 0.5 * h) / focal[:, None, None]
    d_cam = torch.stack([x, y, -torch.ones_like(x)], -1)  # (B, H, W, 3)
    d = torch.einsum("bhwc,brc->bhwr", d_cam, cams.c2w[:, :3, :3])
    d = torch.nn.functional.normalize(d, dim=-1)
    o = cams.c2w[:, None, None, :3, 3].expand_as(d)
    return o, d


def view_labels(
    theta_deg: torch.Tensor, phi_deg: torch.Tensor, angle_front: float = 45.0, angle_overhead: float = 30.0
) -> list[str]:
    """Discrete view of each camera: overhead above the cone, else front / side / back by azimuth."""
    out = []
    for t, p in zip(theta_deg.tolist(), phi_deg.tolist()):
        a = abs((p + 180.0) % 360.0 - 180.0)
        if t < angle_overhead:
            out.append("overhead")
        elif a < angle_front:
            out.append("front")
        elif a > 180.0 - angle_front:
            out.append("back")
        else:
            out.append("side")
    return out


def camera_embedding(theta_deg: torch.Tensor, phi_deg: torch.Tensor) -> torch.Tensor:
    """(B,) polar angles and azimuths in degrees -> (B, :data:`CAMERA_FEATURES`) camera features for a
    camera-conditioned prior: ``[1, cos theta, sin theta, sin k phi, cos k phi for k = 1..4]``.

    The leading 1 marks a known camera; an all-zero row is "camera unknown" (:func:`unknown_camera`).
    Harmonics up to 4 resolve the azimuth within a quarter turn, a cube's period, which the view
    words (front / side / back, 90 degrees each) cannot."""
    t = torch.deg2rad(theta_deg.float())
    p = torch.deg2rad(phi_deg.float())
    k = torch.arange(1, CAMERA_HARMONICS + 1, dtype=torch.float32, device=p.device)
    kp = p[:, None] * k
    return torch.cat(
        [torch.ones_like(t)[:, None], t.cos()[:, None], t.sin()[:, None], kp.sin(), kp.cos()], dim=-1
    )


def unknown_camera(n: int) -> torch.Tensor:
    """(n, :data:`CAMERA_FEATURES`) zeros: the "camera unknown" rows a camera-conditioned prior also learns."""
    return torch.zeros(n, CAMERA_FEATURES)
