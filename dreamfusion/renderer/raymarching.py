"""Volume rendering by ray marching through an occupancy grid (the seed's ``torchngp_raymarching``).

Every ray is cut into segments of length ``dt`` between its entry and exit of the box
[-bound, bound]^3; samples whose grid cell is occupied are evaluated (packed), then composited
front to back with ``w_i = T_i (1 - exp(-sigma_i dt_i))``, ``T_i = exp(-sum_{j<i} sigma_j dt_j)``.
Segments tile the ray exactly (the last one is cut at the exit), so a constant medium gives the
closed-form ``1 - exp(-sigma L)``. Contributions after the transmittance drops below ``T_STOP``
are dropped, as in Instant-NGP, and colour and normals are evaluated only for samples of weight
above ``W_MIN``. Sampling and compositing are ``dreamfusion.kernels``' (its PyTorch references,
or with ``kernels=True`` on a CUDA device its Triton kernels).

The occupancy grid holds an EMA of density, ``max(0.95 old, new)``, and a cell counts as
occupied when its density exceeds ``min(mean density, density_thresh)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import II
from torch import nn

from dreamfusion.config import checks
from dreamfusion.config.node import Node
from dreamfusion.kernels import compositing, sampling
from dreamfusion.kernels.compositing import T_STOP
from dreamfusion.kernels.sampling import aabb_intersect
from dreamfusion.registry import register

__all__ = ["VolumeRenderer", "RaymarchingConfig", "aabb_intersect", "T_STOP", "W_MIN"]

W_MIN = 1e-4
GRID_DECAY = 0.95


@dataclass
class RaymarchingConfig(Node):
    bound: float = II("model.nerf.bound")
    update_interval: int = 16
    """Steps between occupancy-grid updates."""
    grid_resolution: int = 128
    density_thresh: float = 10.0
    max_steps: int = 1024
    """Samples per ray across the whole box (sets the step ``dt = 2 sqrt(3) bound / max_steps``)."""
    dt_gamma: float = 0.0
    """Step grows with distance, ``dt = clamp(t * dt_gamma, dt_min, dt_max)``; 0 keeps it fixed."""

    def check(self) -> None:
        checks.positive(self, "bound", "update_interval", "grid_resolution", "max_steps")
        checks.at_most(self, ["grid_resolution"], 512, "an occupancy grid of 512^3 floats is 512 MiB")
        checks.at_most(self, ["max_steps"], 8192, "samples a ray")
        checks.non_negative(self, "density_thresh", "dt_gamma")


@register("renderer", "torchngp_raymarching")
class VolumeRenderer(nn.Module):
    """Renders a field (``density(x)``, ``forward(x) -> (sigma, albedo)``, ``normal(x)``) along rays."""

    Config = RaymarchingConfig

    def __init__(self, cfg: RaymarchingConfig, kernels: bool = False):
        """``kernels``: sample and composite with the Triton kernels when the rays are on a CUDA
        device (the caller checked ``dreamfusion.kernels.unavailable``), else with PyTorch."""
        super().__init__()
        self.kernels = kernels
        self.bound, self.res = cfg.bound, cfg.grid_resolution
        self.update_interval = cfg.update_interval
        self.density_thresh = cfg.density_thresh
        self.dt_min = 2 * math.sqrt(3) * cfg.bound / cfg.max_steps
        self.dt_max = 2 * math.sqrt(3) * cfg.bound / cfg.grid_resolution
        self.max_steps, self.dt_gamma = cfg.max_steps, cfg.dt_gamma
        r = cfg.grid_resolution
        self.register_buffer("density_grid", torch.zeros(r, r, r))
        self.register_buffer("mean_density", torch.zeros(()))
        self.register_buffer("grid_updates", torch.zeros((), dtype=torch.long))

    # -- occupancy grid -------------------------------------------------------------------
    def occupancy(self) -> torch.Tensor:
        """(R, R, R) bool. Before the first update every cell counts as occupied."""
        if int(self.grid_updates) == 0:
            return torch.ones_like(self.density_grid, dtype=torch.bool)
        return self.density_grid > torch.clamp(self.mean_density, max=self.density_thresh)

    @torch.no_grad()
    def update_grid(self, density_fn, chunk: int = 1 << 18) -> None:
        """Re-estimate every cell's density at a random point inside it; EMA with decay 0.95."""
        r, dev = self.res, self.density_grid.device
        cells = torch.stack(torch.meshgrid(*[torch.arange(r, device=dev)] * 3, indexing="ij"), -1).reshape(-1, 3)
        new = torch.empty(cells.shape[0], device=dev)
        for i in range(0, cells.shape[0], chunk):
            c = cells[i : i + chunk]
            x = (c + torch.rand(c.shape, device=dev)) / r * (2 * self.bound) - self.bound
            new[i : i + chunk] = density_fn(x)
        new = new.reshape(r, r, r)
        grid = torch.maximum(self.density_grid * GRID_DECAY, new) if int(self.grid_updates) > 0 else new
        self.density_grid.copy_(grid)
        self.mean_density.copy_(grid.clamp(min=0).mean())
        self.grid_updates += 1

    # -- rendering ---------------------------------------------------------------------------
    def forward(
        self,
        field,
        shade,
        rays_o: torch.Tensor,
        rays_d: torch.Tensor,
        background: torch.Tensor,
        perturb: bool = False,
        need_normals: bool = True,
        smooth_normals: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Render N rays.

        field: the NeRF; shade(albedo, normal, ray_index) -> (M, 3) colour of each sample, or
        None for no colour at all (no albedo, no image: the latent warm-up needs only normals and
        opacity); rays_o, rays_d, background: (N, 3). Returns image (N, 3), opacity (N,), depth (N,),
        normal_image (N, 3) = sum w (n + 1)/2 without background, orientation (N,) =
        sum w.detach() max(n.d, 0)^2, contrast (N,) = sum w |albedo - background| (the channels'
        mean; with colour only), and the packed samples: weights (M,), ray_index (M,). With
        ``smooth_normals``, normal_smoothness (N,) = sum w.detach() |n(x) - n(x + e)|^2 / 4, ``e``
        a random offset of the field's finite-difference step in each axis (0: neighbouring points
        agree; 1: they are at right angles).
        """
        n = rays_o.shape[0]
        if self.kernels and rays_o.is_cuda:
            from dreamfusion.kernels import compositing_triton as composite
            from dreamfusion.kernels import sampling_triton as march
        else:
            march, composite = sampling, compositing
        u = torch.rand(n, 1, device=rays_o.device) if perturb else 0.5
        s = march.march_rays(rays_o, rays_d, self.occupancy(), u, self.bound, self.dt_min, self.dt_max,
                             self.dt_gamma, self.max_steps)
        x = s.x  # (M, 3)

        enc = field.encode(x)
        sigma = field.sigma_from(x, enc)
        w_all, opacity, depth = composite.composite(sigma, s)  # (M,), (N,), (N,)

        # Colour and normals only where a sample is visible (weight above W_MIN): the rest would
        # add less than W_MIN each, and finite-difference normals cost six density queries.
        keep = (w_all > W_MIN).nonzero(as_tuple=True)[0]
        ray_idx, x, w = s.ray_index[keep], x[keep], w_all[keep]
        normals = field.normal(x, sigma[keep]) if need_normals else None
        out = {"opacity": opacity, "depth": depth, "weights": w, "ray_index": ray_idx}
        if shade is not None:
            albedo = field.albedo_from(enc[keep])
            color = shade(albedo, normals, ray_idx)
            image = torch.zeros(n, 3, device=x.device).index_add(0, ray_idx, w[:, None] * color)
            out["image"] = image + (1 - opacity)[:, None] * background
            # What the albedo adds to the picture over the background: sum w |albedo - bg| (mean of
            # the channels). The opacity penalty's ``contrast`` form acts on this, not on opacity.
            stand_out = (albedo - background.detach()[ray_idx]).abs().mean(-1)
            out["contrast"] = torch.zeros(n, device=x.device).index_add(0, ray_idx, w * stand_out)
        if normals is not None:
            out["normal_image"] = torch.zeros(n, 3, device=x.device).index_add(
                0, ray_idx, w[:, None] * (normals + 1) / 2
            )
            facing = (normals * rays_d[ray_idx]).sum(-1).clamp(min=0) ** 2
            out["orientation"] = torch.zeros(n, device=x.device).index_add(0, ray_idx, w.detach() * facing)
            if smooth_normals:
                near = field.normal(x + torch.randn_like(x) * field.normal_epsilon)
                apart = (normals - near).pow(2).sum(-1) / 4
                out["normal_smoothness"] = torch.zeros(n, device=x.device).index_add(0, ray_idx, w.detach() * apart)
        return out
