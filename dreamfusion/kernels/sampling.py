"""Occupancy-grid ray sampling: rays -> packed samples. The PyTorch reference.

Every ray is cut into segments between its entry into and exit from the box [-bound, bound]^3:

- ``dt_gamma == 0``: segment k starts at ``near + k dt_min`` and is ``dt_min`` long, for
  ``k < S = clamp(ceil(max span / dt_min), 1, max_steps)`` (the longest ray's span sets S);
- ``dt_gamma > 0``: ``t_0 = near``, ``t_{k+1} = t_k + clamp(t_k dt_gamma, dt_min, dt_max)``, for
  ``k < S``, S the first k at which every ray has ``t_k >= far`` (at most ``max_steps``); segment
  k ends at ``t_{k+1}``, the last one (k = S - 1) at ``t_k + dt_min``.

Both ends are cut at ``far``; a segment of zero length is no sample. Each segment's sample sits
at ``t = t0 + u (t1 - t0)`` (``u`` one number a ray, 0.5 without jitter); it is kept when its
occupancy-grid cell ``floor((x + bound) / (2 bound) R)`` (clamped to the grid) is occupied.

Samples are packed ray by ray, in order along each ray (the order of ``nonzero`` over the dense
(N, S) layout), so that a ray's samples are contiguous: ``offsets[r]:offsets[r + 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Samples:
    """The packed samples of ``n_rays`` rays (M samples), on the rays' device."""

    x: torch.Tensor
    """(M, 3) float32 positions."""
    t: torch.Tensor
    """(M,) float32 distance of each sample along its ray."""
    dt: torch.Tensor
    """(M,) float32 length of each sample's segment."""
    ray_index: torch.Tensor
    """(M,) int64 the ray of each sample, non-decreasing."""
    step_index: torch.Tensor
    """(M,) int64 the segment of each sample along its ray, in [0, steps)."""
    offsets: torch.Tensor
    """(n_rays + 1,) int64: ray r's samples are ``offsets[r]:offsets[r + 1]``."""
    steps: int
    """S, segments a ray (the dense layout's width)."""
    n_rays: int


def aabb_intersect(o: torch.Tensor, d: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3) rays -> near, far (N,) distances to the box [-bound, bound]^3 (near >= 0; far <= near: miss)."""
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0, t1 = (-bound - o) * inv, (bound - o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def fixed_step_count(near: torch.Tensor, far: torch.Tensor, dt_min: float, max_steps: int) -> int:
    """S for ``dt_gamma == 0``: the longest ray's span in steps of ``dt_min``, in [1, max_steps]."""
    span = float((far - near).clamp(min=0).max()) if near.numel() else 0.0
    return max(1, min(max_steps, math.ceil(span / dt_min)))


def segments(
    near: torch.Tensor, far: torch.Tensor, dt_min: float, dt_max: float, dt_gamma: float, max_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment starts and ends (N, S); segments past ``far`` have zero length."""
    if dt_gamma == 0:
        s = fixed_step_count(near, far, dt_min, max_steps)
        t0 = near[:, None] + torch.arange(s, device=near.device, dtype=near.dtype) * dt_min
    else:
        ts, t = [], near.clone()
        for _ in range(max_steps):
            ts.append(t)
            t = t + (t * dt_gamma).clamp(dt_min, dt_max)
            if bool((t >= far).all()):
                break
        t0 = torch.stack(ts, 1)
    t1 = torch.cat([t0[:, 1:], t0[:, -1:] + dt_min], 1) if dt_gamma else t0 + dt_min
    t0 = torch.minimum(t0, far[:, None])
    t1 = torch.minimum(t1, far[:, None])
    return t0, t1


def grid_cells(x: torch.Tensor, bound: float, resolution: int) -> torch.Tensor:
    """(..., 3) positions -> (..., 3) int64 occupancy-grid cells, clamped to the grid."""
    return ((x + bound) / (2 * bound) * resolution).long().clamp(0, resolution - 1)


def march_rays(
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    occupancy: torch.Tensor,
    u: torch.Tensor | float,
    bound: float,
    dt_min: float,
    dt_max: float,
    dt_gamma: float,
    max_steps: int,
) -> Samples:
    """rays_o, rays_d (N, 3) float32; occupancy (R, R, R) bool; u (N, 1) or a number in [0, 1]:
    where in its segment each sample sits. Returns the packed samples of the occupied segments."""
    n = rays_o.shape[0]
    near, far = aabb_intersect(rays_o, rays_d, bound)
    t0, t1 = segments(near, far, dt_min, dt_max, dt_gamma, max_steps)  # (N, S)
    t_mid = t0 + u * (t1 - t0)
    pos = rays_o[:, None, :] + rays_d[:, None, :] * t_mid[..., None]  # (N, S, 3)
    c = grid_cells(pos, bound, occupancy.shape[0])
    occ = occupancy[c[..., 0], c[..., 1], c[..., 2]] & (t1 > t0)
    ray_idx, step_idx = occ.nonzero(as_tuple=True)
    counts = torch.bincount(ray_idx, minlength=n)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return Samples(
        x=pos[ray_idx, step_idx],
        t=t_mid[ray_idx, step_idx],
        dt=(t1 - t0)[ray_idx, step_idx],
        ray_index=ray_idx,
        step_index=step_idx,
        offsets=offsets,
        steps=t0.shape[1],
        n_rays=n,
    )
