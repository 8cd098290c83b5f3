"""What an export reads: fields and meshes, independent of the model that made them.

* ``ColorField``: ``albedo(points (N, 3)) -> (N, 3)`` in [0, 1]; anything that can colour a
  surface point (a NeRF's colour branch, DMTet's texture network, an analytic function).
* ``DensityField``: ``density(points (N, 3)) -> (N,)`` sigma >= 0, inside ``[-bound, bound]^3``.
* ``VolumeSource``: a density field with a colour field, plus what its renderer knows about
  empty space (the occupancy grid); extracted with marching cubes.
* ``MeshSource``: triangles with a colour field (what the DMTet stage produces); exported as is.

Points and colours are float32 torch tensors on the field's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class ColorField(Protocol):
    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) world points -> (N, 3) albedo in [0, 1]."""
        ...


@runtime_checkable
class DensityField(Protocol):
    bound: float

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 3) world points in [-bound, bound]^3 -> (N,) density >= 0."""
        ...


@dataclass
class VolumeSource:
    """A density field and a colour field (often one object, e.g. ``NerfFields``)."""

    density: DensityField
    color: ColorField
    bound: float
    occupancy: torch.Tensor | None = None
    """(R, R, R) bool: cells the renderer treats as possibly non-empty (None: all)."""
    density_grid: torch.Tensor | None = None
    """(R, R, R) the renderer's running density estimate per cell (None: unknown)."""
    mean_density: float | None = None
    kind: str = "volume"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class MeshSource:
    """A triangle mesh (world units, +Y up) with a colour field for its texture."""

    vertices: np.ndarray  # (V, 3) float
    faces: np.ndarray  # (F, 3) int
    color: ColorField
    kind: str = "mesh"
    meta: dict[str, Any] = field(default_factory=dict)


class NerfFields:
    """A NeRF (``dreamfusion.geometry.nerf``) as density and colour fields: inference, in chunks."""

    def __init__(self, nerf: torch.nn.Module, chunk: int = 1 << 16):
        self.nerf, self.chunk = nerf, chunk
        self.bound = float(nerf.bound)

    @property
    def device(self) -> torch.device:
        return next(self.nerf.parameters()).device

    @torch.no_grad()
    def density(self, points: torch.Tensor) -> torch.Tensor:
        pts = points.to(self.device, torch.float32)
        return (
            torch.cat([self.nerf.density(pts[i : i + self.chunk]) for i in range(0, len(pts), self.chunk)])
            if len(pts)
            else pts.new_zeros(0)
        )

    @torch.no_grad()
    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        pts = points.to(self.device, torch.float32)
        if not len(pts):
            return pts.new_zeros(0, 3)
        return torch.cat([self.nerf(pts[i : i + self.chunk])[1] for i in range(0, len(pts), self.chunk)])


class ConstantColor:
    """One albedo everywhere (meshes without a colour field)."""

    def __init__(self, rgb=(0.7, 0.7, 0.7)):
        self.rgb = torch.tensor(rgb, dtype=torch.float32)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return self.rgb.to(points.device).expand(points.shape[0], 3).clone()
