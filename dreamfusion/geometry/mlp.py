"""Plain ReLU MLPs, configured as the seed's ``*_net_cfg`` blocks."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from dreamfusion.config import checks
from dreamfusion.config.node import Node


@dataclass
class MLPConfig(Node):
    num_hidden_dims: int = 64
    num_layers: int = 3
    bias: bool = True

    def check(self) -> None:
        checks.positive(self, "num_hidden_dims", "num_layers")


def mlp(in_dims: int, out_dims: int, cfg: MLPConfig) -> nn.Sequential:
    """``num_layers`` linear layers (ReLU between them, none after the last)."""
    dims = [in_dims] + [cfg.num_hidden_dims] * (cfg.num_layers - 1) + [out_dims]
    layers: list[nn.Module] = []
    for i in range(cfg.num_layers):
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=cfg.bias))
        if i < cfg.num_layers - 1:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)
