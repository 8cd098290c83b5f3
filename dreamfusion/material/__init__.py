"""Materials (``material`` group): the seed's basic shading."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dreamfusion.config.node import Node
from dreamfusion.registry import register

SHADINGS = ("albedo", "textureless", "lambertian", "phong", "normal")
PHONG_SHININESS = 32.0
PHONG_SPECULAR = 0.3


@dataclass
class BasicShadingConfig(Node):
    pass


@register("material", "basic_shading")
class BasicShading:
    """Per-sample colour from albedo, normal and one directional light.

    lambertian: ``albedo * (a + (1 - a) * max(n.l, 0))``; textureless: the same with white
    albedo (so geometry alone must explain the image); phong adds a Blinn-Phong highlight;
    normal: ``(n + 1) / 2``; albedo: the albedo itself.
    """

    Config = BasicShadingConfig

    def __init__(self, cfg: BasicShadingConfig):
        self.cfg = cfg

    def __call__(
        self,
        shading: str,
        albedo: torch.Tensor,
        normal: torch.Tensor | None,
        light_dir: torch.Tensor,
        ambient: torch.Tensor,
        view_dir: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """albedo, normal, light_dir, view_dir: (M, 3); ambient: (M, 1) -> (M, 3) RGB."""
        if shading == "albedo":
            return albedo
        if shading == "normal":
            return (normal + 1) / 2
        diffuse = (normal * light_dir).sum(-1, keepdim=True).clamp(min=0)
        lit = ambient + (1 - ambient) * diffuse
        if shading == "textureless":
            return lit.expand_as(albedo)
        color = albedo * lit
        if shading == "phong":
            half = F.normalize(light_dir - view_dir, dim=-1)
            spec = (normal * half).sum(-1, keepdim=True).clamp(min=0) ** PHONG_SHININESS
            color = color + PHONG_SPECULAR * (1 - ambient) * spec
        if shading not in SHADINGS:
            raise ValueError(f"shading must be one of {SHADINGS} but is {shading!r}")
        return color
