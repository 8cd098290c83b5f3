"""Volume compositing in Triton, forward and backward: the same results and gradients as
``compositing.composite``.

Each program composites ``BLOCK`` rays side by side, sample by sample along them (a ray's
samples are contiguous: ``offsets``). The forward keeps each sample's transmittance ``T_i`` for
the backward, which walks every ray back to front with the running sum
``s_k = sum_{i > k} g_i w_i`` of the later samples' contributions:
``dL/dtau_k = g_k T_k exp(-tau_k) - s_k`` with ``g_i = dL/dw_i + dL/dopacity + t_i dL/ddepth``,
and ``dL/dsigma_k = dt_k dL/dtau_k``; a terminated sample (``T <= T_STOP``) takes and passes none.
Imports triton: use where ``dreamfusion.kernels.unavailable(device)`` is None.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dreamfusion.kernels.compositing import T_STOP
from dreamfusion.kernels.sampling import Samples

BLOCK = 64


@triton.jit
def _forward_kernel(sigma_ptr, dt_ptr, t_ptr, offsets_ptr, w_ptr, trans_ptr, opacity_ptr, depth_ptr, n, t_stop,
                    BLOCK: tl.constexpr):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = r < n
    start = tl.load(offsets_ptr + r, mask=live, other=0)
    count = tl.load(offsets_ptr + r + 1, mask=live, other=0) - start
    acc = tl.zeros([BLOCK], tl.float32)  # sum of tau before the sample
    opacity = tl.zeros([BLOCK], tl.float32)
    depth = tl.zeros([BLOCK], tl.float32)
    for k in range(0, tl.max(count, 0)):
        on = live & (k < count)
        i = start + k
        tau = tl.load(sigma_ptr + i, mask=on, other=0.0) * tl.load(dt_ptr + i, mask=on, other=0.0)
        trans = tl.exp(-acc)
        w = tl.where(trans > t_stop, trans * (1.0 - tl.exp(-tau)), 0.0)
        tl.store(w_ptr + i, w, mask=on)
        tl.store(trans_ptr + i, trans, mask=on)
        opacity += w
        depth += w * tl.load(t_ptr + i, mask=on, other=0.0)
        acc += tau
    tl.store(opacity_ptr + r, opacity, mask=live)
    tl.store(depth_ptr + r, depth, mask=live)


@triton.jit
def _backward_kernel(sigma_ptr, dt_ptr, t_ptr, offsets_ptr, w_ptr, trans_ptr, gw_ptr, gop_ptr, gdepth_ptr,
                     gsigma_ptr, n, t_stop, BLOCK: tl.constexpr):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = r < n
    start = tl.load(offsets_ptr + r, mask=live, other=0)
    count = tl.load(offsets_ptr + r + 1, mask=live, other=0) - start
    g_opacity = tl.load(gop_ptr + r, mask=live, other=0.0)
    g_depth = tl.load(gdepth_ptr + r, mask=live, other=0.0)
    later = tl.zeros([BLOCK], tl.float32)  # sum over the later samples of g_i w_i
    for j in range(0, tl.max(count, 0)):
        k = count - 1 - j  # back to front
        on = live & (k >= 0)
        i = start + k
        dt = tl.load(dt_ptr + i, mask=on, other=0.0)
        tau = tl.load(sigma_ptr + i, mask=on, other=0.0) * dt
        trans = tl.load(trans_ptr + i, mask=on, other=0.0)
        w = tl.load(w_ptr + i, mask=on, other=0.0)
        g = tl.load(gw_ptr + i, mask=on, other=0.0) + g_opacity + g_depth * tl.load(t_ptr + i, mask=on, other=0.0)
        alive = trans > t_stop
        g_tau = tl.where(alive, g * trans * tl.exp(-tau) - later, 0.0)
        tl.store(gsigma_ptr + i, g_tau * dt, mask=on)
        later += tl.where(alive, g * w, 0.0)


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigma, dt, t, offsets):
        n, m = offsets.shape[0] - 1, sigma.shape[0]
        w, trans = torch.empty(m, device=sigma.device), torch.empty(m, device=sigma.device)
        opacity, depth = torch.empty(n, device=sigma.device), torch.empty(n, device=sigma.device)
        if n:
            grid = (triton.cdiv(n, BLOCK),)
            _forward_kernel[grid](sigma, dt, t, offsets, w, trans, opacity, depth, n, T_STOP, BLOCK=BLOCK)
        ctx.save_for_backward(sigma, dt, t, offsets, w, trans)
        return w, opacity, depth

    @staticmethod
    def backward(ctx, g_w, g_opacity, g_depth):
        sigma, dt, t, offsets, w, trans = ctx.saved_tensors
        n = offsets.shape[0] - 1
        g_w = torch.zeros_like(w) if g_w is None else g_w.float().contiguous()
        g_opacity = sigma.new_zeros(n) if g_opacity is None else g_opacity.float().contiguous()
        g_depth = sigma.new_zeros(n) if g_depth is None else g_depth.float().contiguous()
        g_sigma = torch.zeros_like(sigma)
        if n:
            grid = (triton.cdiv(n, BLOCK),)
            _backward_kernel[grid](sigma, dt, t, offsets, w, trans, g_w, g_opacity, g_depth, g_sigma, n, T_STOP,
                                   BLOCK=BLOCK)
        return g_sigma, None, None, None


def composite(sigma: torch.Tensor, samples: Samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As ``compositing.composite``: sigma (M,) float32 -> weights (M,), opacity (N,), depth (N,),
    differentiable in sigma."""
    s = samples
    return _Composite.apply(sigma.float().contiguous(), s.dt.contiguous(), s.t.contiguous(), s.offsets.contiguous())
