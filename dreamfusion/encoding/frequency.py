"""NeRF's frequency (positional) encoding: x, sin(2^k x), cos(2^k x) for k < multires."""

from __future__ import annotations

import torch
from torch import nn


class FrequencyEncoding(nn.Module):
    def __init__(self, input_dims: int = 3, multires: int = 6):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(multires, dtype=torch.float32), persistent=False)
        self.output_dims = input_dims * (1 + 2 * multires)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D * (1 + 2 * multires))."""
        xf = x[..., None, :] * self.freqs[:, None]  # (N, K, D)
        return torch.cat([x, xf.sin().flatten(-2), xf.cos().flatten(-2)], -1)
