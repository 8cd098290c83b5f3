"""A renderable DMTet scene: tet-grid surface + the NeRF's colour field + background + material +
rasterizer. The counterpart of ``Scene`` (the NeRF's) for a ``renderer`` that draws meshes.

Each training step extracts the surface once (``prepare``: marching tetrahedra), rasterizes it
for every view, looks up the albedo of the NeRF's colour branch at each visible surface point,
and shades it with interpolated vertex normals. It starts from a nerf-sds checkpoint
(``init_from_nerf``): the NeRF's weights (colour) and background are taken over, the tet grid is
fitted to the density's occupied extent, and the SDF is set from the density minus the
iso-level that mesh-export chooses for it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dreamfusion import registry
from dreamfusion.config.schema import RootConfig
from dreamfusion.data.cameras import Cameras, rays
from dreamfusion.errors import UserError
from dreamfusion.geometry.dmtet import DMTet, solid_body
from dreamfusion.renderer.rasterizer import interpolate
from dreamfusion.renderer.scene import _index
from dreamfusion.train.checkpoint import DMTET_FORMAT

log = logging.getLogger(__name__)


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(V, 3) unit normals: the area-weighted mean of the adjacent faces' normals."""
    fn = torch.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]], dim=-1)
    vn = torch.zeros_like(verts).index_add(0, faces.reshape(-1), fn.repeat_interleave(3, 0))
    return F.normalize(vn, dim=-1, eps=1e-12)


def solid_field(volume, body: np.ndarray):
    """``volume`` with the solid ``body`` (a boolean lattice over it, cavities filled) alone above
    its iso-level: the cavities' points put above the level and the floaters' below it (the outer
    surface's own crossings are exact)."""
    iso = np.float32(volume.iso.value)
    field = volume.grid.copy()
    field[body & (field < iso)] = 2 * iso  # the filled cavities: inside
    field[~body & (field >= iso)] = 0.5 * iso  # the floaters: outside (not 26-adjacent to the body)
    return dataclasses.replace(volume, grid=field)


def solid_surface(solid) -> tuple[torch.Tensor, torch.Tensor]:
    """The outer surface of a :func:`solid_field`: mesh-export's marching cubes on it."""
    from dreamfusion.export.extract import marching_cubes

    verts, faces = marching_cubes(solid)
    return torch.from_numpy(verts).float(), torch.from_numpy(faces).long()


def inside_solid(solid, points: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether ``points`` (N, 3) lie inside a :func:`solid_field`, by trilinear
    interpolation of its lattice (the side of its marching-cubes surface, but within a sliver of a
    lattice cell of it)."""
    from scipy.ndimage import map_coordinates

    idx = (points.detach().cpu().double().numpy() + solid.bound) / solid.spacing
    values = map_coordinates(solid.grid, idx.T, order=1, mode="nearest")
    return torch.from_numpy(values >= np.float32(solid.iso.value)).to(points.device)


def needs_solid(loss) -> bool:
    """Whether a ``loss`` config holds the NeRF's solid (its silhouette or surface-distance term)."""
    return getattr(loss, "lambda_silhouette", 0) > 0 or getattr(loss, "lambda_surface_distance", 0) > 0


def check_solid(state: dict, path: str | Path, loss) -> None:
    """A DMTet checkpoint continued under ``loss`` must hold the NeRF's solid when the loss uses it."""
    if needs_solid(loss) and state.get("silhouette_target") is None:
        raise UserError(
            f"checkpoint {path} holds no NeRF solid (its run had loss.lambda_silhouette and "
            "loss.lambda_surface_distance at 0): set both to 0 to continue it, or start from the NeRF"
        )


class MeshScene(nn.Module):
    FORMAT = DMTET_FORMAT
    TIMINGS = {"grid": "marching_tets", "render": "rasterize"}
    """How the trainer's step phases are named for this scene (metrics, benchmarks)."""

    def __init__(self, cfg: RootConfig, device: torch.device | str = "cpu"):
        super().__init__()
        m = cfg.model
        self.nerf = registry.find("nerf", m.defaults["nerf"])(m.nerf, compile=cfg.trainer.compile)
        self.background = registry.find("background", m.defaults["background"])(m.background)
        self.material = registry.find("material", m.defaults["material"])(m.material)
        self.renderer = registry.find("renderer", m.defaults["renderer"])(m.renderer)
        self.dmtet = DMTet(m.renderer.grid_resolution)
        self.cfg = cfg
        self._mesh: tuple[torch.Tensor, torch.Tensor] | None = None
        self.target: tuple[torch.Tensor, torch.Tensor] | None = None
        """The NeRF's solid as (vertices, faces): whose coverage ``loss.lambda_silhouette`` holds and
        whose distance ``loss.lambda_surface_distance`` penalises."""
        self._target_index = None  # (KD-tree of the target's vertices, their normals), built on first use
        self.to(device)

    @property
    def holds_outline(self) -> bool:
        """Whether the loss holds the NeRF's outline or surface (``loss.lambda_silhouette``,
        ``loss.lambda_surface_distance``): then the scene keeps the NeRF's solid (``target``)."""
        return needs_solid(self.cfg.model.loss)

    def surface_offset(self, points: torch.Tensor) -> torch.Tensor:
        """(M,) each point's signed distance, in tet cells, to the NeRF's solid (``target``) along
        the normal of the solid's nearest vertex (point to plane: free to slide along the surface)."""
        if self._target_index is None:
            from scipy.spatial import cKDTree

            tv, tf = self.target
            self._target_index = (cKDTree(tv.cpu().numpy()), vertex_normals(tv, tf))
        tree, normals = self._target_index
        _, nearest = tree.query(points.detach().cpu().numpy())
        nearest = torch.from_numpy(nearest).to(points.device)
        return ((points - self.target[0][nearest]) * normals[nearest]).sum(-1) / self.dmtet.cell

    def surface_samples(self, verts: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The surface's offset from the NeRF's solid sampled by area: (F,) each face's centroid's
        ``surface_offset`` and (F,) the face's area (no gradient). Not at the vertices: a surface
        whose vertices lie on a convex solid cuts inside it along every face (the chords), so a
        vertex-only hold lets the surface shrink by the faces' sagitta."""
        tri = verts[faces]
        area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1) / 2
        return self.surface_offset(tri.mean(1)), area.detach()

    @property
    def device(self) -> torch.device:
        return self.dmtet.sdf.device

    # -- what the trainer calls --------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, for the optimizer's learning rates."""
        enc = self.nerf.encoder_parameters()
        ids = set(map(id, enc)) | {id(self.dmtet.sdf), id(self.dmtet.deform)}
        return {
            "encoder": enc,
            "sdf": [self.dmtet.sdf],
            "deform": [self.dmtet.deform],
            "other": [p for p in self.parameters() if id(p) not in ids],
        }

    def prepare(self, step: int) -> None:
        """Extract this step's surface (the DMTet counterpart of the occupancy-grid update)."""
        self._mesh = self.dmtet.mesh()
        if self._mesh[1].shape[0] == 0:
            raise UserError(f"the DMTet surface vanished at step {step} (every SDF value is negative)")

    def mesh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: this step's surface. Otherwise the surface the stage outputs: that of the
        largest body with its closed cavities filled (``DMTet.mesh(solid=True)``)."""
        if self.training:
            return self._mesh if self._mesh is not None else self.dmtet.mesh()
        return self.dmtet.mesh(solid=True)

    def render(
        self,
        cams: Cameras,
        shading: str | None,
        ambient: torch.Tensor | None = None,
        light: torch.Tensor | None = None,
        perturb: bool = False,
        need_normals: bool = True,
        chunk: int | None = None,
        surface: tuple[torch.Tensor, torch.Tensor] | None = None,
        jitter: bool = False,
    ) -> dict[str, torch.Tensor]:
        """B views: image (B, H, W, 3) and contrast (B, H, W) (not with ``shading`` None: the mean
        over channels of what the albedo adds over the background, times coverage), opacity and
        depth (B, H, W), normal_image (B, H, W, 3); and the surface, vertices (M, 3) and faces
        (F, 3), for the mesh losses. ``surface``: (vertices, faces) to draw instead of ``mesh()``.
        ``jitter`` (the training dataset's) changes nothing here: the rasterizer's outlines are
        anti-aliased already (its ``antialias``), what jittered rays give a volume render."""
        b, h, w = len(cams), cams.height, cams.width
        cams = cams.to(self.device)
        verts, faces = self.mesh() if surface is None else surface
        ambient = torch.full((b,), 0.1, device=self.device) if ambient is None else ambient.to(self.device)
        light = F.normalize(cams.position, dim=-1) if light is None else light.to(self.device)
        raster = self.renderer(verts, faces, cams)
        mask = raster.mask
        normals = F.normalize(interpolate(vertex_normals(verts, faces), faces, raster), dim=-1, eps=1e-12)
        layers = mask.to(verts.dtype)[..., None]  # (B, H, W, 1) coverage; the image goes before it
        if shading is not None:
            _, d = rays(cams)
            bg = self.background(d.reshape(b, h * w, 3)).reshape(b, h, w, 3)
            pos = interpolate(verts, faces, raster)
            view, _, _ = mask.nonzero(as_tuple=True)
            x = pos[mask]
            albedo = self.nerf.albedo_from(self.nerf.encode(x)) if x.shape[0] else x.new_zeros(0, 3)
            n = normals[mask]
            color = self.material(
                shading, albedo, n, light[view], ambient[view, None], F.normalize(x - cams.position[view], dim=-1)
            )
            at = mask.nonzero(as_tuple=True)
            # what the albedo adds over the background, the volume renderer's ``contrast``
            contrast = torch.zeros_like(layers).index_put(at, (albedo - bg[at]).abs().mean(-1, keepdim=True))
            layers = torch.cat([bg.index_put(at, color), contrast, layers], -1)  # (B, H, W, 5)
        layers = self.renderer.antialias(layers, raster, verts, faces, cams)
        out = {
            "opacity": layers[..., -1],
            "depth": torch.where(mask, raster.depth, torch.zeros_like(raster.depth)),
            "normal_image": (normals + 1) / 2 * mask[..., None],
            "vertices": verts,
            "faces": faces,
        }
        if shading is not None:
            out["image"] = layers[..., :3]
            out["contrast"] = layers[..., 3]
            out["background_image"] = bg.detach()
        loss = self.cfg.model.loss
        if self.training and self.target is not None and getattr(loss, "lambda_surface_distance", 0) > 0:
            out["surface_offset"], out["surface_area"] = self.surface_samples(verts, faces)
        if self.training and self.target is not None and getattr(loss, "lambda_silhouette", 0) > 0:
            with torch.no_grad():  # antialiased as the surface's own coverage is, so thin tips count alike
                tv, tf = self.target
                traster = self.renderer(tv, tf, cams)
                cover = traster.mask.to(verts.dtype)[..., None]
                out["silhouette_target"] = self.renderer.antialias(cover, traster, tv, tf, cams)[..., 0]
        return out

    @torch.no_grad()
    def render_views(
        self, cams: Cameras, shading: str = "lambertian", chunk: int = 0
    ) -> dict[str, torch.Tensor]:
        was = self.training
        self.eval()
        try:
            surface = self.mesh()  # once: the solid rule labels the whole tet grid
            outs = [self.render(_index(cams, i), shading, surface=surface) for i in range(len(cams))]
        finally:
            self.train(was)
        keys = ("image", "opacity", "depth", "normal_image")
        return {k: torch.cat([o[k] for o in outs]) for k in keys}

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """Facts of the surface the checkpoint holds, as exported (after the last optimizer step)."""
        verts, faces = self.dmtet.mesh(solid=True)
        return {
            "surface_vertices": int(verts.shape[0]),
            "surface_faces": int(faces.shape[0]),
            "iso": float(self.dmtet.iso),
        }

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> dict:
        out = {
            "nerf": self.nerf.state_dict(),
            "background": self.background.state_dict(),
            "dmtet": self.dmtet.state_dict(),
        }
        if self.target is not None:
            out["silhouette_target"] = {"vertices": self.target[0].cpu(), "faces": self.target[1].cpu()}
        return out

    def load_state(self, state: dict, path: str | Path) -> None:
        check_solid(state, path, self.cfg.model.loss)
        try:
            self.nerf.load_state_dict(state["nerf"])
            self.background.load_state_dict(state["background"])
            self.dmtet.load_state_dict(state["dmtet"])
            target = state.get("silhouette_target")
            self.target = None if target is None else (target["vertices"].to(self.device),
                                                       target["faces"].to(self.device))
            self._target_index = None
        except (RuntimeError, KeyError) as e:
            raise UserError(
                f"checkpoint {path} does not match the config: {str(e).splitlines()[0]}"
            ) from None
        self._mesh = None

    @torch.no_grad()
    def init_from_nerf(self, path: str | Path) -> dict:
        """Start from a nerf-sds checkpoint: its colour field and background, the tet grid over
        its occupied extent, the SDF from mesh-export's surface of it (its density at mesh-export's
        iso-level on mesh-export's lattice): inside or outside that solid, and near the surface each
        vertex's distance to it. The surface
        starts as the outside of the NeRF's largest body: its closed interior cavities (invisible
        in every render, so SDS cannot remove them) are filled and its floaters dropped."""
        from dreamfusion.export.extract import sample_density
        from dreamfusion.export.sources import load_source

        source = load_source(path, self.device)
        if source.kind != "nerf":
            raise UserError(f"{path} is not a nerf-sds checkpoint: DMTet starts from a NeRF")
        nerf_scene = source.meta["scene"]
        try:
            self.nerf.load_state_dict(nerf_scene.nerf.state_dict())
            self.background.load_state_dict(nerf_scene.background.state_dict())
        except RuntimeError as e:
            raise UserError(
                f"checkpoint {path} does not match the config: {str(e).splitlines()[0]}"
            ) from None
        res = self.cfg.model.renderer.iso_resolution
        volume = sample_density(source, res, None, progress=False)
        iso = volume.iso.value
        body = solid_body(volume.grid > iso)
        if not body.any():
            raise UserError(f"the NeRF in {path} has no density above its iso-level {iso:.4g}: nothing to refine")
        spacing = volume.spacing
        occupied = np.argwhere(body)  # floaters that mesh-export drops must not stretch the tet grid
        lo = torch.from_numpy(occupied.min(0) * spacing - source.bound - spacing).float()
        hi = torch.from_numpy(occupied.max(0) * spacing - source.bound + spacing).float()
        self.dmtet.fit_box(lo.to(self.device), hi.to(self.device), self.cfg.model.renderer.grid_margin, source.bound)
        before = self.dmtet.init_sdf(source.density.density, iso, solid=True)
        solid = solid_field(volume, body)
        surface = tuple(t.to(self.device) for t in solid_surface(solid))
        inside = inside_solid(solid, self.dmtet.vertices().detach())
        if not inside.any():
            raise UserError(
                f"the NeRF in {path} is thinner than a cell of the {self.dmtet.resolution}^3 tet grid: nothing to "
                "refine (raise model.renderer.grid_resolution)"
            )
        before["distance_fitted_vertices"] = self.dmtet.fit_surface(*surface, inside)
        self._mesh = None
        if self.holds_outline:
            self.target, self._target_index = surface, None
        facts = {
            "iso": iso,
            "iso_method": volume.iso.method,
            "grid_center": self.dmtet.center.tolist(),
            "grid_half_extent": self.dmtet.half_extent.tolist(),
            **before,
        }
        log.info(
            "DMTet initialised from %s: iso %.4g (%s), grid %s +- %s",
            path,
            iso,
            volume.iso.method,
            [round(c, 3) for c in facts["grid_center"]],
            [round(c, 3) for c in facts["grid_half_extent"]],
        )
        return facts
