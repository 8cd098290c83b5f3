"""Mesh clean-up and measures: floating components, decimation, welding, normals, watertightness."""

from __future__ import annotations

import logging

import numpy as np

from dreamfusion.export._deps import require

log = logging.getLogger(__name__)


def compact(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop faces with a repeated vertex and vertices no face uses."""
    faces = np.asarray(faces, dtype=np.int64)
    ok = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    faces = faces[ok]
    used, inverse = np.unique(faces.ravel(), return_inverse=True)
    return np.asarray(verts)[used], inverse.reshape(-1, 3)


def components(n_verts: int, faces: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components over shared vertices -> (count, component label of each face)."""
    sp = require("scipy.sparse")
    csgraph = require("scipy.sparse.csgraph")
    f = np.asarray(faces, dtype=np.int64)
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    adj = sp.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_verts, n_verts))
    count, labels = csgraph.connected_components(adj, directed=False)
    return count, labels[f[:, 0]]


def drop_small_components(
    verts: np.ndarray, faces: np.ndarray, min_fraction: float = 0.02
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Keep the components with at least ``min_fraction`` of the largest one's faces (floaters go)."""
    count, labels = components(len(verts), faces)
    sizes = np.bincount(labels, minlength=count)
    keep = sizes >= max(1, min_fraction * sizes.max())
    info = {
        "components": int(count),
        "components_kept": int(keep.sum()),
        "faces_dropped": int(sizes[~keep].sum()),
    }
    if keep.all():
        return verts, faces, info
    v, f = compact(verts, faces[keep[labels]])
    log.info("dropped %d floating components (%d faces)", count - int(keep.sum()), info["faces_dropped"])
    return v, f, info


def decimate(verts: np.ndarray, faces: np.ndarray, target_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric edge-collapse decimation (fast-simplification) to about ``target_faces`` faces."""
    if len(faces) <= target_faces:
        return verts, faces
    fs = require("fast_simplification")
    v, f = fs.simplify(
        np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int32), target_count=int(target_faces)
    )
    return compact(v.astype(np.float32), f)


def weld_index(verts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices that are the same point -> (distinct positions (P, 3) float32, index (V,) into them).

    The rule is exact: two vertices are one when their float32 coordinates are equal (the copies a
    UV seam or a file format makes), never when they are merely close. Rounding positions merges
    distinct vertices of a fine mesh, which leaves degenerate faces and edges with 4 or 6 faces."""
    v = np.ascontiguousarray(verts, dtype=np.float32).reshape(-1, 3) + np.float32(0.0)  # -0.0 -> 0.0
    if len(v) == 0:
        return v, np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(v, axis=0, return_inverse=True)
    return uniq, inverse.reshape(-1).astype(np.int64)


def weld(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices at the same point (``weld_index``) and drop the faces that become degenerate
    (a repeated vertex) -> positions, faces."""
    pos, index = weld_index(verts)
    f = index[np.asarray(faces, dtype=np.int64)].reshape(-1, 3)
    ok = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    return pos, f[ok]


def face_normals(verts: np.ndarray, faces: np.ndarray, unit: bool = True) -> np.ndarray:
    v = np.asarray(verts, dtype=np.float64)
    n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    if unit:
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)
    return n


def vertex_normals(verts: np.ndarray, faces: np.ndarray, welded: bool = False) -> np.ndarray:
    """Area-weighted smooth normals. Unless ``welded`` (the faces already share vertices), copies
    of one point (UV seams) are merged first, so normals are continuous across seams."""
    if welded:
        pos, wf, index = np.asarray(verts), np.asarray(faces, dtype=np.int64), None
    else:
        pos, index = weld_index(verts)
        wf = index[np.asarray(faces, dtype=np.int64)]
    fn = face_normals(pos, wf, unit=False)  # length = 2 * area
    acc = np.zeros((len(pos), 3))
    for i in range(3):
        np.add.at(acc, wf[:, i], fn)
    acc /= np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-20)
    out = (acc if index is None else acc[index]).astype(np.float32)
    bad = ~np.isfinite(out).all(1) | (np.linalg.norm(out, axis=1) < 0.5)
    out[bad] = (0.0, 1.0, 0.0)
    return out


def edge_use(faces: np.ndarray) -> tuple[np.ndarray, bool]:
    """How many faces use each undirected edge, and whether no directed edge occurs twice (the
    winding is consistent where edges are shared by two faces)."""
    f = np.asarray(faces, dtype=np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    n = int(f.max()) + 1
    directed = e[:, 0] * n + e[:, 1]
    consistent = len(np.unique(directed)) == len(directed)
    lo, hi = e.min(1), e.max(1)
    _, counts = np.unique(lo * n + hi, return_counts=True)
    return counts, consistent


def is_watertight(verts: np.ndarray, faces: np.ndarray) -> bool:
    """After ``weld``: every edge is shared by exactly two faces, with opposite directions."""
    _, f = weld(verts, faces)
    if len(f) == 0:
        return False
    counts, consistent = edge_use(f)
    return consistent and bool((counts == 2).all())


def surface_samples(verts: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points uniformly distributed over the surface (area-weighted)."""
    rng = np.random.default_rng(seed)
    v = np.asarray(verts, dtype=np.float64)
    area = 0.5 * np.linalg.norm(face_normals(v, faces, unit=False), axis=1)
    f = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    a, b, c = v[faces[f, 0]], v[faces[f, 1]], v[faces[f, 2]]
    return (1 - s)[:, None] * a + (s * (1 - r2))[:, None] * b + (s * r2)[:, None] * c
