"""Multi-resolution hash encoding in Triton, forward and backward: the same features and table
gradients as ``hashgrid.encode``.

The per-level tables are read as one (sum T_l, F) table (concatenated for the call; the
concatenation's backward hands each level its slice of the gradient). A program encodes
``BLOCK`` points at one level: the 8 corners' rows, blended with the same trilinear (or
smoothstep) weights; the backward scatters ``weight * dL/dfeature`` into the table's gradient
with atomic adds. Positions get no gradient: the encoding refuses ``u`` that requires one.
Imports triton: use where ``dreamfusion.kernels.unavailable(device)`` is None.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dreamfusion.kernels.hashgrid import PRIMES

BLOCK = 128


@triton.jit
def _corner(u_ptr, rows, live, res, level_start, size, hashed, c: tl.constexpr, SMOOTH: tl.constexpr):
    """The table row (int64, level start included) and weight of corner ``c`` of each point's cell."""
    resf = res.to(tl.float32)
    px = tl.load(u_ptr + rows * 3, mask=live, other=0.0) * resf
    py = tl.load(u_ptr + rows * 3 + 1, mask=live, other=0.0) * resf
    pz = tl.load(u_ptr + rows * 3 + 2, mask=live, other=0.0) * resf
    x0 = tl.minimum(tl.maximum(tl.floor(px), 0.0), resf - 1.0)
    y0 = tl.minimum(tl.maximum(tl.floor(py), 0.0), resf - 1.0)
    z0 = tl.minimum(tl.maximum(tl.floor(pz), 0.0), resf - 1.0)
    fx, fy, fz = px - x0, py - y0, pz - z0
    if SMOOTH:
        fx = fx * fx * (3.0 - 2.0 * fx)
        fy = fy * fy * (3.0 - 2.0 * fy)
        fz = fz * fz * (3.0 - 2.0 * fz)
    if (c >> 2) & 1:
        wx = fx
    else:
        wx = 1.0 - fx
    if (c >> 1) & 1:
        wy = fy
    else:
        wy = 1.0 - fy
    if c & 1:
        wz = fz
    else:
        wz = 1.0 - fz
    cx = x0.to(tl.int64) + ((c >> 2) & 1)
    cy = y0.to(tl.int64) + ((c >> 1) & 1)
    cz = z0.to(tl.int64) + (c & 1)
    stride = res.to(tl.int64) + 1
    dense = cx + cy * stride + cz * stride * stride
    spread = (cx * PRIME_X) ^ (cy * PRIME_Y) ^ (cz * PRIME_Z)
    index = tl.where(hashed != 0, spread % size, dense)
    return level_start + index, wx * wy * wz


PRIME_X: tl.constexpr = tl.constexpr(PRIMES[0])
PRIME_Y: tl.constexpr = tl.constexpr(PRIMES[1])
PRIME_Z: tl.constexpr = tl.constexpr(PRIMES[2])


@triton.jit
def _block(res_ptr, start_ptr, size_ptr, hashed_ptr, n, F: tl.constexpr, FP: tl.constexpr, BLOCK: tl.constexpr):
    """This program's rows and level, and the level's resolution, table start, size and hashing."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    level = tl.program_id(1)
    live = rows < n
    f = tl.arange(0, FP)
    fmask = live[:, None] & (f[None, :] < F)
    return (rows, level, live, tl.load(res_ptr + level), tl.load(start_ptr + level), tl.load(size_ptr + level),
            tl.load(hashed_ptr + level), f, fmask)


@triton.jit
def _forward_kernel(u_ptr, table_ptr, res_ptr, start_ptr, size_ptr, hashed_ptr, out_ptr, n, levels,
                    F: tl.constexpr, FP: tl.constexpr, SMOOTH: tl.constexpr, BLOCK: tl.constexpr):
    rows, level, live, res, level_start, size, hashed, f, fmask = _block(
        res_ptr, start_ptr, size_ptr, hashed_ptr, n, F, FP, BLOCK)
    acc = tl.zeros([BLOCK, FP], tl.float32)
    for c in tl.static_range(8):
        row, w = _corner(u_ptr, rows, live, res, level_start, size, hashed, c, SMOOTH)
        acc += w[:, None] * tl.load(table_ptr + row[:, None] * F + f[None, :], mask=fmask, other=0.0)
    tl.store(out_ptr + rows[:, None] * (levels * F) + level * F + f[None, :], acc, mask=fmask)


@triton.jit
def _backward_kernel(u_ptr, grad_out_ptr, res_ptr, start_ptr, size_ptr, hashed_ptr, grad_table_ptr, n, levels,
                     F: tl.constexpr, FP: tl.constexpr, SMOOTH: tl.constexpr, BLOCK: tl.constexpr):
    rows, level, live, res, level_start, size, hashed, f, fmask = _block(
        res_ptr, start_ptr, size_ptr, hashed_ptr, n, F, FP, BLOCK)
    g = tl.load(grad_out_ptr + rows[:, None] * (levels * F) + level * F + f[None, :], mask=fmask, other=0.0)
    for c in tl.static_range(8):
        row, w = _corner(u_ptr, rows, live, res, level_start, size, hashed, c, SMOOTH)
        tl.atomic_add(grad_table_ptr + row[:, None] * F + f[None, :], w[:, None] * g, mask=fmask)


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, table, meta, smoothstep):
        res, start, size, hashed = meta
        n, levels, f = u.shape[0], res.shape[0], table.shape[1]
        out = torch.empty(n, levels * f, device=u.device)
        fp = triton.next_power_of_2(f)
        if n:
            grid = (triton.cdiv(n, BLOCK), levels)
            _forward_kernel[grid](u, table, res, start, size, hashed, out, n, levels, F=f, FP=fp, SMOOTH=smoothstep,
                                  BLOCK=BLOCK)
        ctx.save_for_backward(u, res, start, size, hashed)
        ctx.table_shape, ctx.smoothstep = table.shape, smoothstep
        return out

    @staticmethod
    def backward(ctx, grad_out):
        u, res, start, size, hashed = ctx.saved_tensors
        n, levels, f = u.shape[0], res.shape[0], ctx.table_shape[1]
        grad_table = torch.zeros(ctx.table_shape, device=u.device)
        if n:
            grid = (triton.cdiv(n, BLOCK), levels)
            _backward_kernel[grid](u, grad_out.float().contiguous(), res, start, size, hashed, grad_table, n, levels,
                                   F=f, FP=triton.next_power_of_2(f), SMOOTH=ctx.smoothstep, BLOCK=BLOCK)
        return None, grad_table, None, None


def encode(
    u: torch.Tensor, tables: list[torch.Tensor], resolutions: list[int], hashed: list[bool], smoothstep: bool
) -> torch.Tensor:
    """As ``hashgrid.encode``: u (N, 3) float32 in [0, 1] (no gradient); one (T_l, F) float32 table
    per level -> (N, L * F), level-major, differentiable in the tables."""
    if u.requires_grad:
        raise ValueError("the Triton hash-grid encoding gives no gradient with respect to positions")
    dev = u.device
    sizes = [t.shape[0] for t in tables]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    meta = (
        torch.tensor(resolutions[: len(tables)], dtype=torch.int32, device=dev),
        torch.tensor(starts, dtype=torch.int64, device=dev),
        torch.tensor(sizes, dtype=torch.int64, device=dev),
        torch.tensor([int(h) for h in hashed[: len(tables)]], dtype=torch.int32, device=dev),
    )
    table = torch.cat(list(tables)).float().contiguous()  # (sum T_l, F); its backward splits the gradient
    return _Encode.apply(u.float().contiguous(), table, meta, smoothstep)
