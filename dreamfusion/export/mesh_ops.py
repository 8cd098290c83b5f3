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


def weld(verts: np.ndarray, faces: np.ndarray, decimals: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices at the same position (undoes UV seams) -> positions, faces."""
    key = np.round(np.asarray(verts, dtype=np.float64), decimals)
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)
    pos = np.zeros((len(uniq), 3), dtype=np.float64)
    np.add.at(pos, inverse.ravel(), verts)
    pos /= np.bincount(inverse.ravel(), minlength=len(uniq))[:, None]
    return pos.astype(np.float32), inverse.reshape(-1)[np.asarray(faces)]


def face_normals(verts: np.ndarray, faces: np.ndarray, unit: bool = True) -> np.ndarray:
    v = np.asarray(verts, dtype=np.float64)
    n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    if unit:
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-20)
    return n


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted smooth normals, continuous across UV seams (computed on welded positions)."""
    pos, wf = weld(verts, faces)
    fn = face_normals(pos, wf, unit=False)  # length = 2 * area
    acc = np.zeros((len(pos), 3))
    for i in range(3):
        np.add.at(acc, wf[:, i], fn)
    acc /= np.maximum(np.linalg.norm(acc, axis=1, keepdims=True), 1e-20)
    welded_index = weld_index(verts)
    out = acc[welded_index].astype(np.float32)
    bad = ~np.isfinite(out).all(1) | (np.linalg.norm(out, axis=1) < 0.5)
    out[bad] = (0.0, 1.0, 0.0)
    return out


def weld_index(verts: np.ndarray, decimals: int = 6) -> np.ndarray:
    key = np.round(np.asarray(verts, dtype=np.float64), decimals)
    return np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)


def is_watertight(verts: np.ndarray, faces: np.ndarray) -> bool:
    """Every edge (of the welded mesh) is shared by exactly two faces, with opposite directions."""
    _, f = weld(verts, faces)
    if len(f) == 0:
        return False
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    n = int(f.max()) + 1
    directed = e[:, 0].astype(np.int64) * n + e[:, 1]
    if len(np.unique(directed)) != len(directed):
        return False  # an edge used twice in the same direction: non-manifold or inconsistent winding
    undirected = np.sort(e, axis=1)
    _, counts = np.unique(undirected[:, 0].astype(np.int64) * n + undirected[:, 1], return_counts=True)
    return bool((counts == 2).all())


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
