"""Tetrahedral grids and differentiable marching tetrahedra (DMTet's surface layer).

``tet_grid(n)``: the cube [-1, 1]^3 cut into n^3 cells, each cell into the six tetrahedra of its
Kuhn (Freudenthal) subdivision: tetrahedron ``(0, e_a, e_a + e_b, 1)`` for every order (a, b, c)
of the axes. Neighbouring cells split their shared face along the same diagonal, so the grid is
conforming (every inner triangle is shared by exactly two tetrahedra) and the surface that
marching tetrahedra extract from it is closed and manifold. Every tetrahedron is positively
oriented (``det[v1 - v0, v2 - v0, v3 - v0] > 0``). Grids are generated here, never downloaded,
and cached on disk under ``$DREAMFUSION_CACHE/tets/kuhn-<n>.npz``.

``marching_tets(verts, sdf, tets)``: the zero level set of ``sdf`` (positive inside) as a
triangle mesh. Its vertices lie on the grid edges whose ends have opposite signs, at the zero
of the linear interpolation, ``p = (p_a s_b - p_b s_a) / (s_b - s_a)``: differentiable with
respect to both the grid's vertex positions and the SDF values. One vertex per crossing edge
(shared by the tetrahedra around it), so the mesh is watertight; every triangle turns
counter-clockwise seen from outside (normals point from positive to negative SDF).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from dreamfusion.files import atomic_path

RESOLUTIONS = (32, 64, 128)
"""The grid sizes a config may choose (cells per axis)."""

EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
"""The six edges of a tetrahedron, as pairs of its local vertex indices."""


def _kuhn_templates() -> np.ndarray:
    """(6, 4, 3) the corners of a unit cube's six Kuhn tetrahedra, each positively oriented."""
    out = []
    for order in itertools.permutations(range(3)):
        corner = np.zeros(3, dtype=np.int64)
        path = [corner.copy()]
        for axis in order:
            corner[axis] = 1
            path.append(corner.copy())
        t = np.array(path)
        if np.linalg.det((t[1:] - t[0]).astype(float)) < 0:
            t[[2, 3]] = t[[3, 2]]
        out.append(t)
    return np.array(out)


def build_tet_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) float32 vertices on the (n+1)^3 lattice of [-1, 1]^3 and (6 n^3, 4) int32 tetrahedra."""
    if n < 1:
        raise ValueError(f"a tet grid needs at least one cell per axis, not {n}")
    g = np.arange(n + 1)
    lattice = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    verts = (lattice * (2.0 / n) - 1.0).astype(np.float32)
    cells = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1).reshape(-1, 1, 1, 3)
    corners = cells + _kuhn_templates()[None]  # (n^3, 6, 4, 3)
    index = (corners[..., 0] * (n + 1) + corners[..., 1]) * (n + 1) + corners[..., 2]
    return verts, index.reshape(-1, 4).astype(np.int32)


def tet_grid(n: int, cache: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid of ``n`` cells per axis as (V, 3) float32 and (T, 4) long tensors, from the disk
    cache when there (written atomically on first use; a damaged file is rebuilt)."""
    if cache is None:
        from dreamfusion.store.models import default_cache_root

        cache = default_cache_root() / "tets"
    path = Path(cache) / f"kuhn-{n}.npz"
    verts = tets = None
    if path.is_file():
        try:
            with np.load(path) as z:
                verts, tets = z["verts"], z["tets"]
            if verts.shape != ((n + 1) ** 3, 3) or tets.shape != (6 * n**3, 4):
                verts = tets = None
        except Exception:  # a truncated or foreign file: build it again
            verts = tets = None
    if verts is None:
        verts, tets = build_tet_grid(n)
        try:
            with atomic_path(path) as tmp:  # its temporary name keeps the .npz suffix np.savez wants
                np.savez(tmp, verts=verts, tets=tets)
        except OSError:  # a read-only cache costs a rebuild next time, nothing else
            pass
    return torch.from_numpy(verts), torch.from_numpy(tets.astype(np.int64))


def edge_neighbours() -> np.ndarray:
    """(3, 3, 3) bool: the lattice offsets joined to a vertex by an edge of the grid (the three
    axis steps, the three face diagonals and the one cell diagonal of the Kuhn subdivision, each
    both ways: 14 of the 26 neighbours), as a structuring element for ``scipy.ndimage``. Vertices
    are connected on the grid's surface exactly when they are connected through these."""
    out = np.zeros((3, 3, 3), dtype=bool)
    for t in _kuhn_templates():
        for a, b in EDGES:
            d = t[b] - t[a]
            out[tuple(1 + d)] = out[tuple(1 - d)] = True
    return out


def boundary_mask(n: int) -> torch.Tensor:
    """(V,) bool: the grid vertices on the faces of the cube."""
    g = torch.arange(n + 1)
    lattice = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    return ((lattice == 0) | (lattice == n)).any(-1)


def _triangle_table() -> tuple[torch.Tensor, torch.Tensor]:
    """(16, 6) local edge indices of the (up to two) triangles per inside/outside pattern of a
    positively oriented tetrahedron, oriented so normals point from inside to outside; (16,)
    triangle counts. Orientation is decided on a reference tetrahedron: any positively oriented
    one is its image under an affine map of positive determinant, which keeps it."""
    ref = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    edge_of = {frozenset(e): i for i, e in enumerate(EDGES)}
    table = -np.ones((16, 6), dtype=np.int64)
    count = np.zeros(16, dtype=np.int64)
    for code in range(16):
        inside = [v for v in range(4) if code >> v & 1]
        outside = [v for v in range(4) if not code >> v & 1]
        if len(inside) in (0, 4):
            continue
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            tris = [[edge_of[frozenset((lone, o))] for o in others]]
        else:
            (a, b), (c, d) = inside, outside
            ac, ad, bd, bc = (edge_of[frozenset(p)] for p in ((a, c), (a, d), (b, d), (b, c)))
            tris = [[ac, ad, bd], [ac, bd, bc]]
        mid = np.array([ref[list(e)].mean(0) for e in EDGES])
        out_dir = ref[outside].mean(0) - ref[inside].mean(0)
        for k, tri in enumerate(tris):
            p = mid[tri]
            if np.dot(np.cross(p[1] - p[0], p[2] - p[0]), out_dir) < 0:
                tri = [tri[0], tri[2], tri[1]]
            table[code, 3 * k : 3 * k + 3] = tri
        count[code] = len(tris)
    return torch.from_numpy(table), torch.from_numpy(count)


TRIANGLES, TRIANGLE_COUNT = _triangle_table()
_EDGES = torch.tensor(EDGES)
_BITS = torch.tensor([1, 2, 4, 8])


def crossed_tets(inside: torch.Tensor, tets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(V,) bool inside, (T, 4) tets -> (T, 4) each corner's inside, (T,) whether the surface
    crosses the tet (some corners inside, not all)."""
    occ = inside[tets]
    n_in = occ.sum(1)
    return occ, (n_in > 0) & (n_in < 4)


def marching_tets(
    verts: torch.Tensor, sdf: torch.Tensor, tets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, 3) positions, (V,) SDF (> 0 inside), (T, 4) long -> (M, 3) vertices, (F, 3) long faces."""
    dev = verts.device
    with torch.no_grad():
        inside = sdf > 0
        occ, live = crossed_tets(inside, tets)
        tv = tets[live]
        if tv.shape[0] == 0:
            return verts.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=dev)
        code = (occ[live].long() * _BITS.to(dev)).sum(1)
        ends = tv[:, _EDGES.to(dev)].sort(-1).values  # (T', 6, 2)
        crossing = inside[ends[..., 0]] != inside[ends[..., 1]]
        key = ends[..., 0] * verts.shape[0] + ends[..., 1]
        unique, inverse = torch.unique(key[crossing], return_inverse=True)
        local = torch.full(crossing.shape, -1, dtype=torch.long, device=dev)
        local[crossing] = inverse
        a, b = unique // verts.shape[0], unique % verts.shape[0]
        table, count = TRIANGLES.to(dev)[code], TRIANGLE_COUNT.to(dev)[code]
        first = local.gather(1, table[:, :3])
        second = local[count == 2].gather(1, table[count == 2, 3:])
        faces = torch.cat([first, second])
    sa, sb = sdf[a], sdf[b]
    w = (sa / (sa - sb))[:, None]  # sa and sb have opposite signs: the denominator is never 0
    points = verts[a] * (1 - w) + verts[b] * w
    return points, faces
