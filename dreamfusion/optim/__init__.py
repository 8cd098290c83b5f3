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
    sdf_lr_multiplier: float = 1.0
    """(added) Learning-rate factor of DMTet's per-vertex signed distances (which move the surface
    across grid cells)."""
    deform_lr_multiplier: float = 1.0
    """(added) Learning-rate factor of DMTet's per-vertex offsets (which move it within half a cell)."""

    def check(self) -> None:
        checks.positive(self, "lr", "eps", "encoder_lr_multiplier", "sdf_lr_multiplier", "deform_lr_multiplier")
        checks.non_negative(self, "weight_decay", "max_grad_norm")
        if len(self.betas) != 3 or not all(0 <= b < 1 for b in self.betas):
            checks.fail(self, "betas", "must be three values in [0, 1)")


@register("optim", "adan")
class AdanFactory:
    Config = AdanConfig

    def __init__(self, cfg: AdanConfig):
        self.cfg = cfg

    def __call__(self, groups: dict[str, list[torch.nn.Parameter]]) -> Adan:
        """``groups``: parameters by role: ``encoder`` (hash tables), ``sdf`` and ``deform`` (DMTet),
        ``other`` (MLPs, background), each at the base rate times its multiplier."""
        c = self.cfg
        rate = {"encoder": c.encoder_lr_multiplier, "sdf": c.sdf_lr_multiplier, "deform": c.deform_lr_multiplier}
        unknown = set(groups) - set(rate) - {"other"}
        if unknown:
            raise ValueError(f"unknown parameter groups {sorted(unknown)}")
        groups = [{"params": list(p), "lr": c.lr * rate.get(role, 1.0)} for role, p in groups.items()]
        return Adan(
            [g for g in groups if g["params"]],
            lr=c.lr,
            betas=tuple(c.betas),
            eps=c.eps,
            weight_decay=c.weight_decay,
            max_grad_norm=c.max_grad_norm,
            foreach=False,
        )
