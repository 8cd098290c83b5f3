"""DMTet geometry: a deformable tetrahedral grid holding a signed distance per vertex.

The grid (``dreamfusion.geometry.tets``) spans a box ``center +- half`` fitted to the object.
Each vertex has a learned SDF value (positive inside) and a learned offset bounded as in
DMTet / Magic3D: ``tanh(deform) / n`` in grid units, at most half a cell. ``mesh()`` extracts
the surface with differentiable marching tetrahedra. Vertices on the grid's outer faces are held
outside (negative SDF), so the surface is always closed.

``init_sdf`` sets the SDF from a density field: ``log(sigma) - log(iso)``, clamped to [-1, 1]:
the density minus the iso-level on a log scale, so the initial surface is the iso-surface at
``iso`` whatever the field's scale (the density itself jumps by orders of magnitude within a
cell: a lumpy, faceted start). With ``solid`` the surface starts as the outside of the field's
largest body: the grid vertices inside form bodies connected through the grid's edges
(``tets.edge_neighbours``); those of the other bodies (floaters) are set outside and those of
closed cavities in the largest one inside, so the surface is one closed piece. No render shows a
closed cavity, so SDS could never remove it. ``mesh(solid=True)`` applies the same rule to the
trained SDF (what the stage outputs).

``fit_surface`` sets the SDF from a closed surface instead (the dmtet-finetune stage gives it
mesh-export's marching cubes of the NeRF's solid, on mesh-export's finer lattice, and which grid
vertices lie inside that solid): the signs, and near the surface each vertex's distance to it in
cells. Linear interpolation of a distance puts marching tetrahedra's crossing on a plane exactly
and on a curved surface within a small fraction of a cell; a trained NeRF's log-density, steep
inside the shell and shallow outside, misplaces it by up to a cell on this coarse grid (on a
32^3 grid a NeRF's sphere started 0.01 of silhouette IoU below its exported mesh).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from dreamfusion.geometry.tets import boundary_mask, crossed_tets, edge_neighbours, marching_tets, tet_grid

SNAP = 1e-3


class DMTet(nn.Module):
    def __init__(self, resolution: int):
        super().__init__()
        self.resolution = resolution
        verts, tets = tet_grid(resolution)
        self.register_buffer("grid", verts, persistent=False)
        self.register_buffer("tets", tets, persistent=False)
        self.register_buffer("boundary", boundary_mask(resolution), persistent=False)
        self.register_buffer("center", torch.zeros(3))
        self.register_buffer("half_extent", torch.ones(3))
        self.register_buffer("iso", torch.ones(()))
        """The density iso-level the SDF was initialised from (kept for the record)."""
        self.sdf = nn.Parameter(torch.zeros(verts.shape[0]))
        self.deform = nn.Parameter(torch.zeros(verts.shape[0], 3))

    @property
    def cell(self) -> torch.Tensor:
        """The grid's cell edge in world units (the mean over the three axes): the unit of its SDF."""
        return (2 * self.half_extent / self.resolution).mean()

    def vertices(self) -> torch.Tensor:
        """(V, 3) world positions of the deformed grid."""
        return (self.grid + torch.tanh(self.deform) / self.resolution) * self.half_extent + self.center

    def signed_distance(self) -> torch.Tensor:
        """(V,) the SDF with the grid's outer vertices held outside, and values within ``SNAP`` of
        zero read as ``-SNAP`` (gradients pass unchanged): a surface vertex is then never within
        about ``SNAP`` of an edge's length from a grid vertex, so no two surface vertices coincide
        (welded, they would make sliver faces and non-manifold edges)."""
        s = self.sdf
        s = torch.where(s.abs() < SNAP, s - s.detach() - SNAP, s)
        return torch.where(self.boundary, -s.abs().clamp(min=SNAP), s)

    def mesh(self, solid: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, 3) vertices, (F, 3) long faces of the surface (differentiable in sdf and deform).
        With ``solid``, the surface of the largest body with its closed cavities filled (what the
        stage outputs: training can close a dent into a cavity that no render shows)."""
        s = self.signed_distance()
        if solid:
            s = self.solid_signs(s)[0]
        return marching_tets(self.vertices(), s, self.tets)

    def solid_signs(self, sdf: torch.Tensor, floor: float = SNAP) -> tuple[torch.Tensor, dict[str, int]]:
        """``sdf`` (snapped: no value within ``SNAP`` of zero) with the signs of its largest inside
        body with the cavities filled: the vertices of closed cavities set inside and those of
        floaters outside, each at least ``floor`` from zero; and how many of each were changed."""
        n = self.resolution + 1  # the vertices are the lattice in (x, y, z) order
        above = (sdf > 0).cpu()
        inside = solid_body(above.reshape(n, n, n).numpy(), edge_neighbours())
        inside = torch.from_numpy(inside.reshape(-1))
        changed = {"cavity_vertices_filled": int((inside & ~above).sum()),
                   "floater_vertices_dropped": int((above & ~inside).sum())}
        far = sdf.abs().clamp(min=floor)
        return torch.where(inside.to(sdf.device), far, -far), changed

    @torch.no_grad()
    def fit_box(self, lo: torch.Tensor, hi: torch.Tensor, margin: float, bound: float) -> None:
        """Span the grid over [lo, hi] grown by ``margin`` of its size on each side (inside the
        [-bound, bound]^3 box of the field)."""
        size = (hi - lo).clamp(min=2 * bound / self.resolution)
        lo, hi = (lo - margin * size).clamp(min=-bound), (hi + margin * size).clamp(max=bound)
        self.center.copy_((lo + hi) / 2)
        self.half_extent.copy_((hi - lo) / 2)
        self.deform.zero_()

    @torch.no_grad()
    def init_sdf(
        self,
        density: Callable[[torch.Tensor], torch.Tensor],
        iso: float,
        solid: bool = False,
        chunk: int = 1 << 16,
    ) -> dict[str, int]:
        """Returns, with ``solid``, how many vertices were set inside (cavities) and outside (floaters)."""
        if not (iso > 0 and math.isfinite(iso)):
            raise ValueError(f"the iso-level must be a positive density, not {iso}")
        pts = self.vertices()
        sigma = torch.cat([density(pts[i : i + chunk]) for i in range(0, len(pts), chunk)])
        sigma = torch.nan_to_num(sigma, nan=0.0, posinf=1e30).clamp(min=1e-30)
        sdf = (sigma.log() - math.log(iso)).clamp(-1.0, 1.0)
        changed = {}
        if solid:  # set beyond the snap band, so the signs hold
            sdf, changed = self.solid_signs(sdf.where(sdf.abs() >= SNAP, -SNAP), floor=2 * SNAP)
        self.sdf.copy_(sdf)
        self.iso.fill_(iso)
        return changed

    @torch.no_grad()
    def fit_surface(self, verts: torch.Tensor, faces: torch.Tensor, inside: torch.Tensor | None = None) -> int:
        """The SDF of a closed surface ``verts``/``faces``: signs from ``inside`` ((V,) bool, each grid
        vertex inside the surface; None: the SDF's own signs), and on the vertices of the tets the
        surface crosses their distance to it in cells, at least ``2 SNAP`` (at most a tet's diameter,
        sqrt 3 cells); +-2 elsewhere, beyond them. Returns how many vertices were measured."""
        import trimesh

        if inside is not None:
            self.sdf.copy_(torch.where(inside.to(self.sdf.device), 1.0, -1.0))
        live = torch.zeros_like(self.sdf, dtype=torch.bool)
        live[self.tets[crossed_tets(self.sdf > 0, self.tets)[1]].reshape(-1)] = True  # their vertices
        if not live.any():  # no surface on this grid: every vertex on one side
            self.sdf.copy_(torch.where(self.sdf > 0, 2.0, -2.0))
            return 0
        pts = self.vertices()[live].cpu().double().numpy()
        mesh = trimesh.Trimesh(verts.cpu().double().numpy(), faces.cpu().numpy(), process=False)
        _, dist, _ = trimesh.proximity.closest_point(mesh, pts)
        cell = float(self.cell)
        mag = torch.full_like(self.sdf, 2.0)
        mag[live] = torch.from_numpy(dist / cell).to(mag).clamp(2 * SNAP, 2.0)
        self.sdf.copy_(torch.where(self.sdf > 0, mag, -mag))
        return int(live.sum())


def solid_body(above: np.ndarray, neighbours: np.ndarray | None = None) -> np.ndarray:
    """The largest connected body of a boolean lattice with its closed cavities filled (all False
    when it is empty). ``neighbours``: a (3, 3, 3) structuring element that connects both the body
    and the outside (a tet grid's ``edge_neighbours()``, so that the body is one surface and a
    cavity is what no grid edge joins to the outside); None: the body 26-connected and the
    outside 6-connected, as for a marching-cubes lattice."""
    from scipy import ndimage

    labels, n = ndimage.label(above, structure=np.ones((3, 3, 3)) if neighbours is None else neighbours)
    if n == 0:
        return np.zeros_like(above, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(sizes.argmax()), structure=neighbours)
