"""Backgrounds (``background`` group): static colour, random solid colour, or a small NeRF of direction."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dreamfusion.config import checks
from dreamfusion.config.node import Node
from dreamfusion.encoding.frequency import FrequencyEncoding
from dreamfusion.geometry.mlp import MLPConfig, mlp
from dreamfusion.registry import register


def _check_rgb(node: Node, key: str) -> None:
    value = getattr(node, key)
    if len(value) != 3 or not all(0.0 <= c <= 1.0 for c in value):
        checks.fail(node, key, "must be three values in [0, 1]")


@dataclass
class StaticConfig(Node):
    background: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])

    def check(self) -> None:
        _check_rgb(self, "background")


@register("background", "static")
class StaticBackground(nn.Module):
    """One colour everywhere."""

    Config = StaticConfig

    def __init__(self, cfg: StaticConfig):
        super().__init__()
        self.register_buffer("color", torch.tensor(cfg.background, dtype=torch.float32))

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        """dirs (B, N, 3) unit ray directions -> (B, N, 3) RGB."""
        return self.color.expand_as(dirs)


@dataclass
class RandomConfig(Node):
    random_ratio: float = 0.5
    """(added) Probability that a training view gets a random solid colour instead of ``background``."""
    background: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """(added) The colour otherwise, and always in validation and test renders."""

    def check(self) -> None:
        checks.within(self, "random_ratio", 0.0, 1.0)
        _check_rgb(self, "background")


@register("background", "random")
class RandomBackground(nn.Module):
    """A random solid colour per training view (stable-dreamfusion's augmentation)."""

    Config = RandomConfig

    def __init__(self, cfg: RandomConfig):
        super().__init__()
        self.random_ratio = cfg.random_ratio
        self.register_buffer("color", torch.tensor(cfg.background, dtype=torch.float32))

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        b = dirs.shape[0]
        color = self.color.expand(b, 3)
        if self.training:
            pick = torch.rand(b, 1) < self.random_ratio
            color = torch.where(pick.to(dirs.device), torch.rand(b, 3).to(dirs.device), color)
        return color[:, None, :].expand_as(dirs)


@dataclass
class NeRFBackgroundConfig(Node):
    encoder_type: str = "frequency"
    encoder_input_dims: int = 3
    encoder_multi_res: int = 6
    num_output_dims: int = 3
    net_cfg: MLPConfig = field(default_factory=lambda: MLPConfig(num_hidden_dims=32, num_layers=2))

    def check(self) -> None:
        checks.one_of(self, "encoder_type", ["frequency"])
        checks.one_of(self, "encoder_input_dims", [3])
        checks.one_of(self, "num_output_dims", [3])
        checks.non_negative(self, "encoder_multi_res")


@register("background", "torchngp")
class NeRFBackground(nn.Module):
    """Colour as a learned function of the ray direction."""

    Config = NeRFBackgroundConfig

    def __init__(self, cfg: NeRFBackgroundConfig):
        super().__init__()
        if cfg.encoder_type != "frequency":
            raise ValueError("the background NeRF uses the frequency encoding")
        self.encoder = FrequencyEncoding(cfg.encoder_input_dims, cfg.encoder_multi_res)
        self.net = mlp(self.encoder.output_dims, cfg.num_output_dims, cfg.net_cfg)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(self.encoder(dirs.reshape(-1, 3)))).reshape(dirs.shape)
