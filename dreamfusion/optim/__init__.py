"""Optimizers (``optim`` group): Adan from pytorch-optimizer, hash tables at a higher learning rate."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pytorch_optimizer import Adan

from dreamfusion.config import checks
from dreamfusion.config.node import Node
from dreamfusion.registry import register


@dataclass
class AdanConfig(Node):
    lr: float = 5e-3
    eps: float = 1e-8
    weight_decay: float = 2e-5
    betas: list[float] = field(default_factory=lambda: [0.98, 0.92, 0.99])
    max_grad_norm: float = 5.0
    encoder_lr_multiplier: float = 10.0
    """(added) Learning-rate factor of the hash tables (stable-dreamfusion and NeMo use 10)."""
    geometry_lr_multiplier: float = 10.0
    """(added) Learning-rate factor of DMTet's per-vertex SDF values and offsets: at the base rate a
    surface moves about a quarter of a grid cell in 100 steps, too slowly for a fine-tune of a few
    hundred steps to smooth a NeRF's lumps."""

    def check(self) -> None:
        checks.positive(self, "lr", "eps", "encoder_lr_multiplier", "geometry_lr_multiplier")
        checks.non_negative(self, "weight_decay", "max_grad_norm")
        if len(self.betas) != 3 or not all(0 <= b < 1 for b in self.betas):
            checks.fail(self, "betas", "must be three values in [0, 1)")


@register("optim", "adan")
class AdanFactory:
    Config = AdanConfig

    def __init__(self, cfg: AdanConfig):
        self.cfg = cfg

    def __call__(
        self,
        encoder_params: list[torch.nn.Parameter],
        other_params: list[torch.nn.Parameter],
        geometry_params: list[torch.nn.Parameter] = (),
    ) -> Adan:
        c = self.cfg
        groups = [
            {"params": encoder_params, "lr": c.lr * c.encoder_lr_multiplier},
            {"params": other_params, "lr": c.lr},
            {"params": list(geometry_params), "lr": c.lr * c.geometry_lr_multiplier},
        ]
        return Adan(
            [g for g in groups if g["params"]],
            lr=c.lr,
            betas=tuple(c.betas),
            eps=c.eps,
            weight_decay=c.weight_decay,
            max_grad_norm=c.max_grad_norm,
            foreach=False,
        )
