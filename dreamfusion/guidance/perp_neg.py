"""Perp-Neg (Armandpour et al., 2023, "Re-imagine the Negative Prompt Algorithm"): view-dependent
negative prompts whose guidance enters only through its component perpendicular to the positive
prompt's, so that pushing away from "front view" on a side view does not also push away from the
object itself (the Janus problem's remedy without losing the subject).

For one sample with unconditional noise estimate ``e_u``, positive ``e_p`` and negatives ``e_k``:

    d_p = e_p - e_u,  d_k = e_k - e_u,  perp(x, y) = x - (<x, y> / |y|^2) y
    e = e_u + s (d_p + sum_k w_k perp(d_k, d_p))

with weights ``w_k <= 0`` (a negative prompt). The positive text and the negatives follow the
camera's azimuth as the paper's 3D recipe does: between front (0 deg) and side (90 deg), the
positive embedding is ``r front + (1 - r) side`` with ``r = 1 - |azimuth| / 90`` and the negatives
are front (weight ``w exp(-r a_front)``, 0 when ``r > 0.8``) and side (``w exp(-(1 - r) a_side)``,
0 when ``r < 0.2``); between side and back, ``r = 1 - (|azimuth| - 90) / 90`` interpolates side to
back, and the negatives are side (``w exp(-r a_side) / 2``, 0 when ``r > 0.8``) and front (``w``).
``w`` is ``model.perp_neg_weight`` (-2), ``a_front`` and ``a_side`` the decay factors (2 and 10).
"""

from __future__ import annotations

import math

import torch


def perpendicular(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per sample (first dimension): the part of ``x`` perpendicular to ``y``."""
    xf, yf = x.flatten(1), y.flatten(1)
    coef = (xf * yf).sum(1) / (yf * yf).sum(1).clamp_min(eps)
    return x - coef.view(-1, *([1] * (x.dim() - 1))) * y


def combine(
    eps_u: torch.Tensor, eps_p: torch.Tensor, eps_neg: torch.Tensor, weights: torch.Tensor, scale: float
) -> torch.Tensor:
    """Guided noise estimate. ``eps_u``, ``eps_p``: (B, C, h, w); ``eps_neg``: (K, B, C, h, w);
    ``weights``: (B, K)."""
    d_p = eps_p - eps_u
    out = d_p.clone()
    for k in range(eps_neg.shape[0]):
        w = weights[:, k].to(d_p).view(-1, *([1] * (d_p.dim() - 1)))
        out = out + w * perpendicular(eps_neg[k] - eps_u, d_p)
    return eps_u + scale * out


def view_embeddings(
    azimuth_deg: float, emb: dict[str, torch.Tensor], weight: float, front_decay: float, side_decay: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a camera at ``azimuth_deg`` (0: front): the positive embedding (1, L, D), the two
    negative embeddings (2, L, D) and their weights (2,), from ``emb['front' | 'side' | 'back']``."""
    a = abs((azimuth_deg + 180.0) % 360.0 - 180.0)  # 0..180, symmetric left and right
    if a < 90.0:
        r = 1.0 - a / 90.0
        pos = r * emb["front"] + (1 - r) * emb["side"]
        negs = torch.cat([emb["front"], emb["side"]])
        w_front = 0.0 if r > 0.8 else weight * math.exp(-r * front_decay)
        w_side = 0.0 if r < 0.2 else weight * math.exp(-(1 - r) * side_decay)
        weights = [w_front, w_side]
    else:
        r = 1.0 - (a - 90.0) / 90.0
        pos = r * emb["side"] + (1 - r) * emb["back"]
        negs = torch.cat([emb["side"], emb["front"]])
        w_side = 0.0 if r > 0.8 else weight * math.exp(-r * side_decay) / 2
        weights = [w_side, weight]
    return pos, negs, torch.tensor(weights, dtype=torch.float32)
