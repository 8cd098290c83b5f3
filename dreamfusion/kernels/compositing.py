"""Volume compositing of packed samples, front to back. The PyTorch reference.

With ``tau_i = sigma_i dt_i`` along a ray: transmittance ``T_i = exp(-sum_{j<i} tau_j)``, weight
``w_i = T_i (1 - exp(-tau_i))``, opacity ``sum_i w_i`` and depth ``sum_i w_i t_i``. A sample whose
transmittance has dropped to ``T_STOP`` or below contributes nothing (early termination, as in
Instant-NGP); its weight is 0 and no gradient flows through it. Gradients flow to ``sigma`` only.
"""

from __future__ import annotations

import torch

from dreamfusion.kernels.sampling import Samples

T_STOP = 1e-4


def composite(sigma: torch.Tensor, samples: Samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sigma (M,) float32, the density of each sample -> weights (M,), opacity (N,), depth (N,)."""
    idx = (samples.ray_index, samples.step_index)
    tau = sigma.new_zeros(samples.n_rays, samples.steps).index_put(idx, sigma * samples.dt)  # (N, S)
    t = sigma.new_zeros(samples.n_rays, samples.steps).index_put(idx, samples.t)
    trans = torch.exp(-(torch.cumsum(tau, 1) - tau))  # transmittance before each sample
    w = trans * (1 - torch.exp(-tau))
    w = torch.where(trans > T_STOP, w, torch.zeros_like(w))
    return w[idx], w.sum(1), (w * t).sum(1)
