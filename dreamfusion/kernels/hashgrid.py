"""Multi-resolution hash encoding (Instant-NGP), one table per level. The PyTorch reference.

Level l has resolution ``N_l`` and a table (T_l, F). Grid vertex ``c`` of a dense level (its grid
fits its table) is stored at ``c.x + c.y (N_l+1) + c.z (N_l+1)^2``; of a hashed level at
Instant-NGP's spatial hash ``(c.x * 1 xor c.y * 2654435761 xor c.z * 805459861) mod T_l``. The
features of the 8 corners of a point's cell are blended trilinearly, the fractional part
optionally passed through smoothstep ``f^2 (3 - 2 f)``.
"""

from __future__ import annotations

import torch

PRIMES = (1, 2654435761, 805459861)


def corner_offsets(device: torch.device) -> torch.Tensor:
    """(8, 3) int64: corner i of a cell is ``(i >> 2 & 1, i >> 1 & 1, i & 1)``."""
    return torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], device=device)


def encode_level(u: torch.Tensor, table: torch.Tensor, res: int, hashed: bool, smoothstep: bool) -> torch.Tensor:
    """One level. u: (N, 3) in [0, 1]; table: (T, F) -> (N, F)."""
    pos = u * res
    p0 = pos.floor().clamp(0, res - 1)
    f = pos - p0  # (N, 3) in [0, 1]
    if smoothstep:
        f = f * f * (3.0 - 2.0 * f)
    corners = p0.long()[:, None, :] + corner_offsets(u.device)  # (N, 8, 3)
    if hashed:
        idx = (corners[..., 0] * PRIMES[0]) ^ (corners[..., 1] * PRIMES[1]) ^ (corners[..., 2] * PRIMES[2])
        idx = idx % table.shape[0]
    else:
        stride = res + 1
        idx = corners[..., 0] + corners[..., 1] * stride + corners[..., 2] * stride * stride
    offs = corner_offsets(u.device).to(u.dtype)  # (8, 3)
    w = (offs * f[:, None, :] + (1 - offs) * (1 - f[:, None, :])).prod(-1)  # (N, 8)
    return (w[..., None] * table[idx]).sum(1)  # (N, F)


def encode(
    u: torch.Tensor, tables: list[torch.Tensor], resolutions: list[int], hashed: list[bool], smoothstep: bool
) -> torch.Tensor:
    """u (N, 3) float32 in [0, 1]; one (T_l, F) float32 table per level -> (N, L * F), level-major."""
    return torch.cat([encode_level(u, t, resolutions[i], hashed[i], smoothstep) for i, t in enumerate(tables)], -1)
