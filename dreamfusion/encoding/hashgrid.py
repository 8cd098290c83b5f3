"""Multi-resolution hash encoding (Instant-NGP, Mueller et al. 2022) in plain PyTorch.

Level l has resolution ``N_l = ceil(base_resolution * s**l)`` with
``s = exp2(log2(desired_resolution / base_resolution) / (num_levels - 1))`` and a table of
``T_l = min(2**log2_hashmap_size, (N_l + 1)**3)`` entries (rounded up to a multiple of 8).
Grid vertex ``c`` of a level whose grid fits its table is stored densely at
``c.x + c.y (N_l+1) + c.z (N_l+1)^2``; otherwise at Instant-NGP's spatial hash
``(c.x * 1 xor c.y * 2654435761 xor c.z * 805459861) mod T_l``. Features of the 8 corners
are blended trilinearly, with the fractional part optionally passed through smoothstep
``f^2 (3 - 2 f)``. Each level keeps a table of its own (one shared table makes every
level's backward allocate a gradient of the whole table).

The per-level arithmetic is ``dreamfusion.kernels.hashgrid`` (the reference that the ``tcnn``
backend and the Triton kernel are tested against); with ``kernels=True`` on a CUDA device the
encoding runs as the Triton kernel ``dreamfusion.kernels.hashgrid_triton`` instead.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from dreamfusion.config import checks
from dreamfusion.config.node import Node
from dreamfusion.gpu import compile_unavailable
from dreamfusion.kernels.hashgrid import PRIMES, encode_level

__all__ = ["HashGrid", "HashGridConfig", "level_resolutions", "level_table_sizes", "encode_level", "PRIMES"]

log = logging.getLogger(__name__)


@dataclass
class HashGridConfig(Node):
    encoder_type: str = "hashgrid"
    encoder_max_level: int | None = None
    """Levels in use (None: all); finer levels output zeros. Progressive training raises it."""
    log2_hashmap_size: int = 19
    desired_resolution: int = 2048
    interpolation: str = "smoothstep"
    num_levels: int = 16
    """(added, Instant-NGP's L) Number of levels."""
    level_dim: int = 2
    """(added, Instant-NGP's F) Features per level."""
    base_resolution: int = 16
    """(added, Instant-NGP's N_min) Resolution of the coarsest level."""

    def check(self) -> None:
        checks.one_of(self, "encoder_type", ["hashgrid"])
        checks.one_of(self, "interpolation", ["linear", "smoothstep"])
        checks.within(self, "log2_hashmap_size", 4, 26)
        checks.positive(self, "num_levels", "level_dim", "base_resolution")
        if self.desired_resolution < self.base_resolution:
            checks.fail(self, "desired_resolution", "must be >= base_resolution")
        if self.encoder_max_level is not None:
            checks.within(self, "encoder_max_level", 1, self.num_levels)


def level_resolutions(cfg: HashGridConfig) -> list[int]:
    if cfg.num_levels == 1:
        return [cfg.base_resolution]
    scale = 2.0 ** (math.log2(cfg.desired_resolution / cfg.base_resolution) / (cfg.num_levels - 1))
    return [int(math.ceil(cfg.base_resolution * scale**level)) for level in range(cfg.num_levels)]


def level_table_sizes(cfg: HashGridConfig) -> list[int]:
    sizes = []
    for res in level_resolutions(cfg):
        n = min(2**cfg.log2_hashmap_size, (res + 1) ** 3)
        sizes.append(int(math.ceil(n / 8) * 8))
    return sizes


class HashGrid(nn.Module):
    """(N, 3) points in [-bound, bound]^3 -> (N, num_levels * level_dim) features, float32."""

    def __init__(self, cfg: HashGridConfig, bound: float = 1.0, compile: bool = False, kernels: bool = False):
        """``compile``: torch.compile the encoding; ``kernels``: the Triton kernel for points on a
        CUDA device (the caller checked ``dreamfusion.kernels.unavailable``), compiled or not."""
        super().__init__()
        self.kernels = kernels
        self.cfg, self.bound = cfg, bound
        self.resolutions = level_resolutions(cfg)
        sizes = level_table_sizes(cfg)
        self.hashed = [2**cfg.log2_hashmap_size < (r + 1) ** 3 for r in self.resolutions]
        self.tables = nn.ParameterList(
            [nn.Parameter(torch.empty(n, cfg.level_dim).uniform_(-1e-4, 1e-4)) for n in sizes]
        )
        self.max_level = cfg.num_levels if cfg.encoder_max_level is None else cfg.encoder_max_level
        self.smoothstep = cfg.interpolation == "smoothstep"
        self.output_dims = cfg.num_levels * cfg.level_dim
        if compile and (why := compile_unavailable()):
            log.warning("trainer.compile=true, but %s: the hash grid runs eagerly (slower)", why)
            compile = False
        self.compiled = compile
        self._encode = torch.compile(self._encode_levels, dynamic=True) if compile else self._encode_levels

    @property
    def path(self) -> str:
        """How it runs on a CUDA device: ``triton``, ``compiled`` or ``eager`` (on a CPU never ``triton``)."""
        return "triton" if self.kernels else "compiled" if self.compiled else "eager"

    def _encode_levels(self, u: torch.Tensor, tables: list[torch.Tensor]) -> torch.Tensor:
        feats = []
        for level, table in enumerate(tables):
            feats.append(encode_level(u, table, self.resolutions[level], self.hashed[level], self.smoothstep))
        return torch.cat(feats, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Row-major points: the compiled kernel indexes a strided (N, 3) input, such as the
        # column-major result of ``nonzero()``, about 1000x slower.
        u = ((x.contiguous() + self.bound) / (2 * self.bound)).clamp(0.0, 1.0)
        used = list(self.tables)[: self.max_level]
        if self.kernels and u.is_cuda and not u.requires_grad:  # the kernel gives no gradient to points
            from dreamfusion.kernels import hashgrid_triton

            out = hashgrid_triton.encode(u, used, self.resolutions, self.hashed, self.smoothstep)
        elif self.compiled and not torch.is_grad_enabled():
            # The compiled graph is built for training; under no_grad it would be recompiled into a
            # much slower one, so inference runs it with autograd on and drops the graph.
            with torch.enable_grad():
                out = self._encode(u, used).detach()
        else:
            out = self._encode(u, used)
        if self.max_level < self.cfg.num_levels:
            out = torch.cat([out, out.new_zeros(out.shape[0], self.output_dims - out.shape[1])], -1)
        return out
