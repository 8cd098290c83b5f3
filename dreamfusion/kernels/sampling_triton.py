"""Occupancy-grid ray sampling in Triton: the same samples as ``sampling.march_rays``.

Three passes over the rays, each program marching ``BLOCK`` rays side by side:
1. (``dt_gamma > 0`` only) the steps each ray takes until it leaves the box, whose maximum is S
   (with ``dt_gamma == 0`` S has a closed form, computed as the reference does);
2. the occupied segments of each ray, counted; their prefix sum gives each ray's offset;
3. the same march again, writing each occupied segment's sample at its ray's offset.
Imports triton: use where ``dreamfusion.kernels.unavailable(device)`` is None.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dreamfusion.kernels.sampling import Samples, aabb_intersect, fixed_step_count

BLOCK = 128


@triton.jit
def _steps_kernel(near_ptr, far_ptr, steps_ptr, n, dt_min, dt_max, dt_gamma, max_steps, BLOCK: tl.constexpr):
    """Per ray: the first k >= 1 with t_k >= far (max_steps if none), t_{k+1} = t_k + clamp(t_k dt_gamma)."""
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = r < n
    far = tl.load(far_ptr + r, mask=live, other=0.0)
    t = tl.load(near_ptr + r, mask=live, other=0.0)
    steps = tl.full([BLOCK], 0, tl.int32)
    k = 0
    while (k < max_steps) & (tl.min(tl.where(live & (steps == 0), 0, 1)) == 0):
        t = t + tl.minimum(tl.maximum(t * dt_gamma, dt_min), dt_max)
        k += 1
        steps = tl.where((steps == 0) & (t >= far), k, steps)
    steps = tl.where(steps == 0, max_steps, steps)
    tl.store(steps_ptr + r, steps, mask=live)


@triton.jit
def _march_kernel(
    o_ptr, d_ptr, near_ptr, far_ptr, u_ptr, grid_ptr, count_ptr, offset_ptr,
    x_ptr, t_ptr, dt_ptr, ray_ptr, step_ptr,
    n, steps, bound, size, res, dt_min, dt_max, dt_gamma,
    GAMMA: tl.constexpr, WRITE: tl.constexpr, BLOCK: tl.constexpr,
):
    """Count (WRITE False) or write (WRITE True) the occupied segments of BLOCK rays."""
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = r < n
    ox = tl.load(o_ptr + r * 3, mask=live, other=0.0)
    oy = tl.load(o_ptr + r * 3 + 1, mask=live, other=0.0)
    oz = tl.load(o_ptr + r * 3 + 2, mask=live, other=0.0)
    dx = tl.load(d_ptr + r * 3, mask=live, other=0.0)
    dy = tl.load(d_ptr + r * 3 + 1, mask=live, other=0.0)
    dz = tl.load(d_ptr + r * 3 + 2, mask=live, other=0.0)
    near = tl.load(near_ptr + r, mask=live, other=0.0)
    far = tl.load(far_ptr + r, mask=live, other=0.0)
    u = tl.load(u_ptr + r, mask=live, other=0.0)
    if WRITE:
        base = tl.load(offset_ptr + r, mask=live, other=0)
    count = tl.zeros([BLOCK], tl.int64)
    t = near
    for k in range(0, steps):
        if GAMMA:
            t0 = t
            t = t + tl.minimum(tl.maximum(t * dt_gamma, dt_min), dt_max)
            t1 = tl.where(k == steps - 1, t0 + dt_min, t)
        else:
            t0 = near + k * dt_min
            t1 = t0 + dt_min
        t0 = tl.minimum(t0, far)
        t1 = tl.minimum(t1, far)
        tm = t0 + u * (t1 - t0)
        x = ox + dx * tm
        y = oy + dy * tm
        z = oz + dz * tm
        cx = tl.minimum(tl.maximum(((x + bound) / size * res).to(tl.int32), 0), res - 1)
        cy = tl.minimum(tl.maximum(((y + bound) / size * res).to(tl.int32), 0), res - 1)
        cz = tl.minimum(tl.maximum(((z + bound) / size * res).to(tl.int32), 0), res - 1)
        valid = live & (t1 > t0)
        occupied = tl.load(grid_ptr + (cx * res + cy) * res + cz, mask=valid, other=0)
        keep = valid & (occupied != 0)
        if WRITE:
            i = base + count
            tl.store(x_ptr + i * 3, x, mask=keep)
            tl.store(x_ptr + i * 3 + 1, y, mask=keep)
            tl.store(x_ptr + i * 3 + 2, z, mask=keep)
            tl.store(t_ptr + i, tm, mask=keep)
            tl.store(dt_ptr + i, t1 - t0, mask=keep)
            tl.store(ray_ptr + i, r.to(tl.int64), mask=keep)
            tl.store(step_ptr + i, tl.zeros([BLOCK], tl.int64) + k, mask=keep)
        count += keep.to(tl.int64)
    if not WRITE:
        tl.store(count_ptr + r, count, mask=live)


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
    """As ``sampling.march_rays``: rays_o, rays_d (N, 3) float32; occupancy (R, R, R) bool;
    u (N, 1) or a number -> the packed samples of the occupied segments."""
    n, dev = rays_o.shape[0], rays_o.device
    rays_o, rays_d = rays_o.float().contiguous(), rays_d.float().contiguous()
    near, far = aabb_intersect(rays_o, rays_d, bound)
    near, far = near.contiguous(), far.contiguous()
    u = torch.full((n,), float(u), device=dev) if not torch.is_tensor(u) else u.reshape(n).float().contiguous()
    grid = (triton.cdiv(max(n, 1), BLOCK),)
    if dt_gamma == 0:
        steps = fixed_step_count(near, far, dt_min, max_steps)
    elif n == 0:
        steps = 1
    else:
        per_ray = torch.empty(n, dtype=torch.int32, device=dev)
        _steps_kernel[grid](near, far, per_ray, n, dt_min, dt_max, dt_gamma, max_steps, BLOCK=BLOCK)
        steps = max(1, int(per_ray.max()))
    res = occupancy.shape[0]
    occ = occupancy.to(torch.uint8).contiguous()
    counts = torch.zeros(n, dtype=torch.int64, device=dev)
    offsets = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    scalars = (n, steps, bound, 2 * bound, res, dt_min, dt_max, dt_gamma)
    if n:
        _march_kernel[grid](rays_o, rays_d, near, far, u, occ, counts, offsets, near, near, near, counts, counts,
                            *scalars, GAMMA=dt_gamma != 0, WRITE=False, BLOCK=BLOCK)
        offsets[1:] = counts.cumsum(0)
    m = int(offsets[-1])
    x = torch.empty(m, 3, device=dev)
    t, dt = torch.empty(m, device=dev), torch.empty(m, device=dev)
    ray_index = torch.empty(m, dtype=torch.int64, device=dev)
    step_index = torch.empty(m, dtype=torch.int64, device=dev)
    if m:
        _march_kernel[grid](rays_o, rays_d, near, far, u, occ, counts, offsets, x, t, dt, ray_index, step_index,
                            *scalars, GAMMA=dt_gamma != 0, WRITE=True, BLOCK=BLOCK)
    return Samples(x=x, t=t, dt=dt, ray_index=ray_index, step_index=step_index, offsets=offsets, steps=steps,
                   n_rays=n)
