"""Known inputs for tests, benchmarks and demos: analytic fields and small real NeRF checkpoints.

* ``SphereDensity``: a solid sphere, ``sigma = peak * sigmoid((radius - |x - center|) / softness)``;
* ``GradientColor``: a smooth colour field with every channel varying;
* ``blob_checkpoint``: a real nerf-sds checkpoint (the engine's NeRF, its occupancy grid and
  config) whose density is the NeRF's own density blob: the MLP weights are zeroed and the
  density output is a constant ``bias``, so
  ``sigma = exp(bias + blob_density * exp(-|x|^2 / (2 blob_radius^2)))`` and the iso-surface
  at ``sigma = c`` is the sphere of radius ``blob_sphere_radius(c, ...)``. ``SMALL_BLOB`` with
  ``BLOB_BIAS`` gives a solid ball (peak density e^4, about 3e-4 far away) of radius 0.36 at
  ``sigma = 1``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dreamfusion.train.checkpoint import rng_state, save_checkpoint


class SphereDensity:
    def __init__(
        self,
        radius: float = 0.5,
        peak: float = 100.0,
        softness: float = 0.004,
        bound: float = 1.0,
        center=(0.0, 0.0, 0.0),
    ):
        self.radius, self.peak, self.softness, self.bound = radius, peak, softness, bound
        self.center = torch.tensor(center, dtype=torch.float32)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        r = (points - self.center.to(points.device)).norm(dim=-1)
        return self.peak * torch.sigmoid((self.radius - r) / self.softness)


class GradientColor:
    """rgb = 0.5 + 0.4 * (sin(2x + 1), cos(3y), sin(2.5z - 0.5))."""

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        x, y, z = points.unbind(-1)
        return 0.5 + 0.4 * torch.stack([torch.sin(2 * x + 1), torch.cos(3 * y), torch.sin(2.5 * z - 0.5)], -1)


SMALL_NERF = [
    "model.nerf.encoder_cfg.num_levels=4",
    "model.nerf.encoder_cfg.log2_hashmap_size=12",
    "model.nerf.encoder_cfg.desired_resolution=64",
    "model.nerf.sigma_net_cfg.num_hidden_dims=16",
    "model.nerf.features_net_cfg.num_hidden_dims=16",
    "model.renderer.grid_resolution=32",
    "model.renderer.max_steps=96",
]
"""Overrides that make a NeRF small and quick to render (tests)."""

SMALL_BLOB = SMALL_NERF + ["model.nerf.blob_density=12", "model.nerf.blob_radius=0.4"]
BLOB_BIAS = -8.0


def scene_state(scene, cfg, step: int = 0) -> dict:
    """The checkpoint dict of ``Trainer.state()`` for a scene that was not trained (no optimizer state)."""
    from dreamfusion.config import to_dict

    return {
        "step": step,
        "config": to_dict(cfg),
        "nerf": scene.nerf.state_dict(),
        "background": scene.background.state_dict(),
        "renderer": scene.renderer.state_dict(),
        "optimizer": {},
        "rng": rng_state(),
    }


def blob_scene(overrides: list[str] | tuple[str, ...] = (), albedo=(0.8, 0.35, 0.2), bias: float = 0.0):
    """A scene whose density is exactly the NeRF's blob (plus ``bias`` before the exponential)
    and whose albedo is constant."""
    from dreamfusion.config import compose
    from dreamfusion.renderer.scene import Scene

    cfg = compose(list(overrides))
    scene = Scene(cfg)
    with torch.no_grad():
        for net, out in (
            (scene.nerf.sigma_net, torch.tensor([float(bias)])),
            (scene.nerf.features_net, torch.logit(torch.tensor(albedo, dtype=torch.float32))),
        ):
            last = net[-1]
            last.weight.zero_()
            if last.bias is not None:
                last.bias.copy_(out)
    scene.update_grid()
    scene.eval()
    return scene, cfg


def blob_checkpoint(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), albedo=(0.8, 0.35, 0.2), bias: float = 0.0
) -> Path:
    scene, cfg = blob_scene(overrides, albedo, bias)
    return save_checkpoint(path, scene_state(scene, cfg))


def blob_sphere_radius(
    iso: float, blob_density: float = 5.0, blob_radius: float = 0.2, bias: float = 0.0
) -> float:
    """Radius of the iso-surface ``sigma = iso`` of a blob-only NeRF
    (``e^bias < iso < e^(bias + blob_density)``)."""
    return blob_radius * math.sqrt(2 * math.log(blob_density / (math.log(iso) - bias)))
