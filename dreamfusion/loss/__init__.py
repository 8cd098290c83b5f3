"""Losses (``loss`` group): SDS plus the DreamFusion regularisers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dreamfusion.config import checks
from dreamfusion.config.node import Node
from dreamfusion.registry import register


@dataclass
class DreamFusionLossConfig(Node):
    lambda_sds: float = 1.0
    lambda_opacity: float = 0.0
    lambda_entropy: float = 1e-3
    lambda_orientation: float = 1e-2

    def check(self) -> None:
        checks.non_negative(self, "lambda_sds", "lambda_opacity", "lambda_entropy", "lambda_orientation")


@register("loss", "dreamfusion")
class DreamFusionLoss:
    """Weighted sum of SDS, opacity (mean opacity^2), entropy of opacity (weight ramped by
    ``min(1, 2 step / iters)``) and orientation (``sum_i w_i max(n_i . d, 0)^2`` per ray, averaged)."""

    Config = DreamFusionLossConfig

    def __init__(self, cfg: DreamFusionLossConfig):
        self.cfg = cfg
        self.needs_normals = cfg.lambda_orientation > 0

    def __call__(
        self, sds: torch.Tensor, render: dict[str, torch.Tensor], step: int, iters: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        opacity = render["opacity"]
        parts = {"sds": sds}
        if c.lambda_opacity > 0:
            parts["opacity"] = (opacity**2).mean()
        if c.lambda_entropy > 0:
            a = opacity.clamp(1e-5, 1 - 1e-5)
            parts["entropy"] = (-(a * torch.log2(a) + (1 - a) * torch.log2(1 - a))).mean()
        if c.lambda_orientation > 0 and "orientation" in render:
            parts["orientation"] = render["orientation"].mean()
        weights = {
            "sds": c.lambda_sds,
            "opacity": c.lambda_opacity,
            "entropy": c.lambda_entropy * min(1.0, 2.0 * step / iters),
            "orientation": c.lambda_orientation,
        }
        total = sum(weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}
