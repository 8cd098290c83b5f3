"""Volume rendering by ray marching through an occupancy grid (the seed's ``torchngp_raymarching``).

The PyTorch reference: every ray is cut into segments of length ``dt`` between its entry and
exit of the box [-bound, bound]^3; samples whose grid cell is occupied are evaluated (packed),
then composited front to back with ``w_i = T_i (1 - exp(-sigma_i dt_i))``,
``T_i = exp(-sum_{j<i} sigma_j dt_j)``. Segments tile the ray exactly (the last one is cut at
the exit), so a constant medium gives the closed-form ``1 - exp(-sigma L)``. Contributions
after the transmittance drops below ``T_STOP`` are dropped, as in Instant-NGP, and colour and
normals are evaluated only for samples of weight above ``W_MIN``.

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
from dreamfusion.registry import register

T_STOP = 1e-4
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


def aabb_intersect(o: torch.Tensor, d: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3) rays -> near, far (N,) distances to the box [-bound, bound]^3 (near >= 0; far <= near: miss)."""
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0, t1 = (-bound - o) * inv, (bound - o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


@register("renderer", "torchngp_raymarching")
class VolumeRenderer(nn.Module):
    """Renders a field (``density(x)``, ``forward(x) -> (sigma, albedo)``, ``normal(x)``) along rays."""

    Config = RaymarchingConfig

    def __init__(self, cfg: RaymarchingConfig):
        super().__init__()
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

    def _cells(self, x: torch.Tensor) -> torch.Tensor:
        idx = ((x + self.bound) / (2 * self.bound) * self.res).long().clamp(0, self.res - 1)
        return idx

    # -- sampling ----------------------------------------------------------------------------
    def _segments(self, near: torch.Tensor, far: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment starts and ends (N, S); segments past ``far`` have zero length."""
        if self.dt_gamma == 0:
            span = float((far - near).clamp(min=0).max()) if near.numel() else 0.0
            s = max(1, min(self.max_steps, math.ceil(span / self.dt_min)))
            t0 = near[:, None] + torch.arange(s, device=near.device, dtype=near.dtype) * self.dt_min
        else:
            ts, t = [], near.clone()
            for _ in range(self.max_steps):
                ts.append(t)
                t = t + (t * self.dt_gamma).clamp(self.dt_min, self.dt_max)
                if bool((t >= far).all()):
                    break
            t0 = torch.stack(ts, 1)
        t1 = torch.cat([t0[:, 1:], t0[:, -1:] + self.dt_min], 1) if self.dt_gamma else t0 + self.dt_min
        t0 = torch.minimum(t0, far[:, None])
        t1 = torch.minimum(t1, far[:, None])
        return t0, t1

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
    ) -> dict[str, torch.Tensor]:
        """Render N rays.

        field: the NeRF; shade(albedo, normal, ray_index) -> (M, 3) colour of each sample, or
        None for no colour at all (no albedo, no image: the latent warm-up needs only normals and
        opacity); rays_o, rays_d, background: (N, 3). Returns image (N, 3), opacity (N,), depth (N,),
        normal_image (N, 3) = sum w (n + 1)/2 without background, orientation (N,) =
        sum w.detach() max(n.d, 0)^2, contrast (N,) = sum w |albedo - background| (the channels'
        mean; with colour only), and the packed samples: weights (M,), ray_index (M,).
        """
        n = rays_o.shape[0]
        near, far = aabb_intersect(rays_o, rays_d, self.bound)
        t0, t1 = self._segments(near, far)  # (N, S)
        u = torch.rand(n, 1, device=rays_o.device) if perturb else 0.5
        t_mid = t0 + u * (t1 - t0)
        pos = rays_o[:, None, :] + rays_d[:, None, :] * t_mid[..., None]  # (N, S, 3)
        valid = t1 > t0
        c = self._cells(pos)
        occ = self.occupancy()[c[..., 0], c[..., 1], c[..., 2]] & valid
        ray_idx, step_idx = occ.nonzero(as_tuple=True)
        x = pos[ray_idx, step_idx]  # (M, 3)

        enc = field.encode(x)
        sigma = field.sigma_from(x, enc)
        tau = torch.zeros_like(t0).index_put((ray_idx, step_idx), sigma * (t1 - t0)[ray_idx, step_idx])
        trans = torch.exp(-(torch.cumsum(tau, 1) - tau))  # (N, S) transmittance before each sample
        w_dense = trans * (1 - torch.exp(-tau))
        w_dense = torch.where(trans > T_STOP, w_dense, torch.zeros_like(w_dense))
        opacity = w_dense.sum(1)

        # Colour and normals only where a sample is visible (weight above W_MIN): the rest would
        # add less than W_MIN each, and finite-difference normals cost six density queries.
        w_all = w_dense[ray_idx, step_idx]  # (M,)
        keep = (w_all > W_MIN).nonzero(as_tuple=True)[0]
        ray_idx, step_idx, x, w = ray_idx[keep], step_idx[keep], x[keep], w_all[keep]
        normals = field.normal(x, sigma[keep]) if need_normals else None
        out = {"opacity": opacity, "depth": (w_dense * t_mid).sum(1), "weights": w, "ray_index": ray_idx}
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
        return out
