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
    lr_final_ratio: float = 1.0
    """(added) The learning rate at the last step, as a fraction of ``lr``: from ``lr_decay_start``
    (a fraction of the run) it falls exponentially to ``lr x lr_final_ratio``. 1: constant, the seed's."""
    lr_decay_start: float = 0.0
    """(added) The fraction of the run after which the learning rate falls (``lr_final_ratio``)."""
    average_from: float = 1.0
    """(added) The fraction of the run from which the weights are averaged, each applied step's alike
    (stochastic weight averaging); the run ends on the average. 1: off, the run ends on its last step."""

    def check(self) -> None:
        checks.positive(self, "lr", "eps", "encoder_lr_multiplier", "sdf_lr_multiplier", "deform_lr_multiplier")
        checks.non_negative(self, "weight_decay", "max_grad_norm")
        checks.within(self, "lr_final_ratio", 0.0, 1.0)
        checks.within(self, "lr_decay_start", 0.0, 1.0)
        checks.within(self, "average_from", 0.0, 1.0)
        if self.lr_final_ratio <= 0:
            checks.fail(self, "lr_final_ratio", "must be > 0 (the last step's share of the learning rate)")
        if len(self.betas) != 3 or not all(0 <= b < 1 for b in self.betas):
            checks.fail(self, "betas", "must be three values in [0, 1)")


def lr_factor(cfg: AdanConfig, step: int, iters: int) -> float:
    """The learning rate's factor at ``step`` of ``iters``: 1 until ``lr_decay_start`` x ``iters``,
    then falling exponentially to ``lr_final_ratio`` at the last step."""
    start = cfg.lr_decay_start * iters
    if cfg.lr_final_ratio == 1.0 or step <= start:
        return 1.0
    span = max(iters - 1 - start, 1.0)
    return cfg.lr_final_ratio ** min((step - start) / span, 1.0)


def averaging(cfg: AdanConfig, step: int, iters: int) -> bool:
    """Whether the weights after ``step`` (0-based) join the run's average (``average_from``)."""
    return cfg.average_from < 1.0 and step >= cfg.average_from * iters


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
