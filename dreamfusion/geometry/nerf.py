"""The NeRF field of the ``nerf`` group: hash grid -> sigma MLP (density) and feature MLP (albedo).

Options: ``torchngp`` (hash grid in PyTorch, runs anywhere) and ``tcnn`` (tiny-cuda-nn's hash
grid, where it imports on a CUDA device). Both share this config and the MLPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dreamfusion.config import checks
from dreamfusion.config.node import Node
from dreamfusion.encoding.hashgrid import HashGrid, HashGridConfig, level_resolutions
from dreamfusion.geometry.mlp import MLPConfig, mlp
from dreamfusion.registry import register


@dataclass
class NerfConfig(Node):
    num_input_dims: int = 3
    bound: float = 1.0
    density_activation: str = "exp"
    blob_radius: float = 0.2
    blob_density: float = 5.0
    density_bias: float = 0.0
    """(added) A constant added to the density before its activation, everywhere (threestudio's
    float ``density_bias``). With ``exp`` and an MLP that starts near 0, the whole box starts at
    density about 1 (an optical depth of 2 across it): a fog that the opacity penalty clears for a
    coloured object, but that costs nothing under the ``contrast`` penalty when its albedo matches
    the background. -3 starts empty space at e^-3 (0.05)."""
    normal_type: str = "central_finite_difference"
    encoder_cfg: HashGridConfig = field(default_factory=HashGridConfig)
    sigma_net_num_output_dims: int = 1
    sigma_net_cfg: MLPConfig = field(default_factory=MLPConfig)
    features_net_num_output_dims: int = 3
    features_net_cfg: MLPConfig = field(default_factory=MLPConfig)
    normal_epsilon: float = 1e-2
    """(added) Step of the finite-difference normals, in world units."""

    def check(self) -> None:
        checks.one_of(self, "num_input_dims", [3])
        checks.positive(self, "bound", "blob_radius", "normal_epsilon")
        checks.within(self, "density_bias", -20.0, 20.0)
        checks.one_of(self, "density_activation", ["exp", "softplus"])
        checks.one_of(self, "normal_type", ["central_finite_difference", "forward_finite_difference"])
        checks.one_of(self, "sigma_net_num_output_dims", [1])
        checks.one_of(self, "features_net_num_output_dims", [3])


@register("nerf", "torchngp")
class NeRF(nn.Module):
    """Density and albedo at points. All tensors float32 on the module's device."""

    Config = NerfConfig

    def __init__(self, cfg: NerfConfig, compile: bool = False, kernels: bool = False):
        """``compile``: torch.compile the hash grid; ``kernels``: its Triton kernel on a CUDA device."""
        super().__init__()
        self.cfg = cfg
        self.bound = cfg.bound
        self.encoder = self._make_encoder(cfg, compile, kernels)
        self.sigma_net = mlp(self.encoder.output_dims, cfg.sigma_net_num_output_dims, cfg.sigma_net_cfg)
        self.features_net = mlp(self.encoder.output_dims, cfg.features_net_num_output_dims, cfg.features_net_cfg)
        self.density_activation = cfg.density_activation
        self.blob_radius, self.blob_density, self.density_bias = cfg.blob_radius, cfg.blob_density, cfg.density_bias
        self.normal_type, self.normal_epsilon = cfg.normal_type, cfg.normal_epsilon

    def _make_encoder(self, cfg: NerfConfig, compile: bool, kernels: bool) -> nn.Module:
        if cfg.num_input_dims != 3 or cfg.encoder_cfg.encoder_type != "hashgrid":
            raise ValueError("the NeRF encodes 3-D points with a hash grid")
        return HashGrid(cfg.encoder_cfg, bound=cfg.bound, compile=compile, kernels=kernels)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The hash tables (trained with a 10x learning rate)."""
        return list(self.encoder.parameters())

    def _blob(self, x: torch.Tensor) -> torch.Tensor:
        """What is added to the MLP's density output before the activation: the blob and the bias."""
        d2 = (x * x).sum(-1)
        if self.density_activation == "exp":
            return self.blob_density * torch.exp(-d2 / (2 * self.blob_radius**2)) + self.density_bias
        return self.blob_density * (1 - d2.sqrt() / self.blob_radius) + self.density_bias

    def _activate(self, h: torch.Tensor) -> torch.Tensor:
        return torch.exp(h) if self.density_activation == "exp" else F.softplus(h)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (N,) sigma >= 0."""
        h = self.sigma_net(self.encoder(x))[:, 0]
        return self._activate(h + self._blob(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3) -> sigma (N,), albedo (N, 3) in [0, 1]."""
        enc = self.encoder(x)
        return self.sigma_from(x, enc), self.albedo_from(enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (N, E) hash-grid features, shared by density and albedo."""
        return self.encoder(x)

    def sigma_from(self, x: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        return self._activate(self.sigma_net(enc)[:, 0] + self._blob(x))

    def albedo_from(self, enc: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.features_net(enc))

    def normal(self, x: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3) -> (N, 3) unit normals, -grad(sigma) by finite differences (one batched query)."""
        e = self.normal_epsilon
        eye = torch.eye(3, device=x.device, dtype=x.dtype) * e
        if self.normal_type == "central_finite_difference":
            pts = torch.cat([x[:, None] + eye, x[:, None] - eye], 1).reshape(-1, 3)  # (N*6, 3)
            d = self.density(pts).reshape(-1, 2, 3)
            grad = (d[:, 0] - d[:, 1]) / (2 * e)
        else:
            base = self.density(x) if sigma is None else sigma
            grad = (self.density((x[:, None] + eye).reshape(-1, 3)).reshape(-1, 3) - base[:, None]) / e
        return F.normalize(-grad, dim=-1, eps=1e-12)


@register("nerf", "tcnn")
class TcnnNeRF(NeRF):
    """The same field with tiny-cuda-nn's fused hash grid (CUDA only; same tables, faster)."""

    def _make_encoder(self, cfg: NerfConfig, compile: bool, kernels: bool) -> nn.Module:
        if cfg.num_input_dims != 3 or cfg.encoder_cfg.encoder_type != "hashgrid":
            raise ValueError("the NeRF encodes 3-D points with a hash grid")
        return TcnnHashGrid(cfg.encoder_cfg, bound=cfg.bound)  # tiny-cuda-nn's own kernel either way


class TcnnHashGrid(nn.Module):
    path = "tcnn"

    def __init__(self, cfg: HashGridConfig, bound: float):
        super().__init__()
        from dreamfusion import gpu

        tcnn = gpu.require("tinycudann")
        res = level_resolutions(cfg)
        scale = (res[-1] / res[0]) ** (1 / max(cfg.num_levels - 1, 1))
        self.bound = bound
        self.output_dims = cfg.num_levels * cfg.level_dim
        self.enc = tcnn.Encoding(
            3,
            {
                "otype": "HashGrid",
                "n_levels": cfg.num_levels if cfg.encoder_max_level is None else cfg.encoder_max_level,
                "n_features_per_level": cfg.level_dim,
                "log2_hashmap_size": cfg.log2_hashmap_size,
                "base_resolution": cfg.base_resolution,
                "per_level_scale": scale,
                "interpolation": "Smoothstep" if cfg.interpolation == "smoothstep" else "Linear",
            },
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = ((x + self.bound) / (2 * self.bound)).clamp(0.0, 1.0)
        out = self.enc(u).float()
        if out.shape[1] < self.output_dims:
            out = torch.cat([out, out.new_zeros(out.shape[0], self.output_dims - out.shape[1])], -1)
        return out
