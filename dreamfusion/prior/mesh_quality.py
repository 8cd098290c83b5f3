"""Mesh quality against the shapes world's true primitives: the figures one mesh is judged by.

* ``chamfer``: symmetric Chamfer distance between 20,000 points sampled on each surface (mean of
  both nearest-neighbour directions), as a fraction of the primitive's size (2 * HALF);
* ``non_manifold_edges``: edges with more than two faces, ``boundary_edges``: with one (after
  merging the copies of each point that UV seams make in exported files, by the export's exact rule);
* ``bodies``: connected pieces of surface (1 for a clean object; floaters and closed interior
  cavities add one each);
* ``normal_noise_deg`` (cubes): the mean angle between the normals of adjacent faces that lie on
  the cube's flat faces (centroid within 10% of the size from the face plane, 20% away from its
  edges): 0 for a perfectly flat face; lumps and facets raise it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dreamfusion.prior.data import HALF, SHAPES

SAMPLES = 20_000


def primitive(shape: str, yaw: float = 0.0):
    """The true primitive of the shapes world as a trimesh (centred, +Y up, half-size HALF), turned by
    ``yaw`` degrees about +Y (the turn ``dreamfusion.prior.evaluate.best_yaw`` reports)."""
    import trimesh

    if yaw:
        m = primitive(shape)
        m.apply_transform(trimesh.transformations.rotation_matrix(math.radians(yaw), [0, 1, 0]))
        return m

    if shape == "cube":
        return trimesh.creation.box(extents=(2 * HALF,) * 3)
    if shape == "sphere":
        return trimesh.creation.icosphere(subdivisions=5, radius=HALF)
    if shape == "cone":  # base radius HALF at y = -HALF, apex at y = +HALF
        m = trimesh.creation.cone(radius=HALF, height=2 * HALF, sections=128)
        m.apply_transform(trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0]))
        m.apply_translation([0, -HALF, 0])
        return m
    if shape == "cylinder":
        from dreamfusion.prior.data import CYLINDER_RADIUS

        m = trimesh.creation.cylinder(radius=CYLINDER_RADIUS, height=2 * HALF, sections=128)
        m.apply_transform(trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0]))
        return m
    if shape == "torus":  # lying flat: its axis is +Y
        from dreamfusion.prior.data import TORUS_MAJOR, TORUS_MINOR

        m = trimesh.creation.torus(major_radius=TORUS_MAJOR, minor_radius=TORUS_MINOR, major_sections=96,
                                   minor_sections=48)
        m.apply_transform(trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0]))
        return m
    raise ValueError(f"unknown shape {shape!r}; one of {SHAPES}")


def welded(verts: np.ndarray, faces: np.ndarray):
    """A trimesh of the mesh with the copies of each point merged by the export's exact rule."""
    import trimesh

    from dreamfusion.export.mesh_ops import weld

    v, f = weld(verts, faces)
    m = trimesh.Trimesh(v.astype(np.float64), f, process=False)
    m.remove_unreferenced_vertices()
    return m


def load(path: str | Path):
    import trimesh

    m = trimesh.load(path, force="mesh", process=False)
    return welded(m.vertices, m.faces)


def chamfer(mesh, target, n: int = SAMPLES, seed: int = 0) -> float:
    import trimesh
    from scipy.spatial import cKDTree

    a, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    b, _ = trimesh.sample.sample_surface(target, n, seed=seed + 1)
    return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


def edge_counts(mesh) -> tuple[int, int]:
    """(non-manifold edges: more than two faces, boundary edges: one face)."""
    e = np.sort(mesh.edges, axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return int((counts > 2).sum()), int((counts == 1).sum())


def cube_normal_noise(mesh, yaw: float = 0.0) -> float:
    """Mean angle in degrees between adjacent face normals on the flat faces of the cube turned by
    ``yaw`` degrees about +Y."""
    import trimesh

    c = mesh.triangles_center
    if yaw:  # turn the face centres back onto the axis-aligned cube
        c = trimesh.transform_points(c, trimesh.transformations.rotation_matrix(math.radians(-yaw), [0, 1, 0]))
    a = np.abs(c)
    axis = a.argmax(1)
    near_plane = np.abs(a.max(1) - HALF) < 0.2 * HALF
    others = np.sort(a, axis=1)[:, :2]
    inside = (others < 0.8 * HALF).all(1)
    flat = near_plane & inside
    pairs = mesh.face_adjacency
    both = flat[pairs[:, 0]] & flat[pairs[:, 1]] & (axis[pairs[:, 0]] == axis[pairs[:, 1]])
    if not both.any():
        return float("nan")
    return float(np.degrees(mesh.face_adjacency_angles[both]).mean())


def facts(mesh, shape: str, yaw: float = 0.0) -> dict:
    """The geometric figures of the module doc for one welded mesh (a trimesh) judged as ``shape``
    turned by ``yaw`` degrees about +Y; the silhouette IoU and the verdicts are
    ``dreamfusion.prior.score``'s."""
    non_manifold, boundary = edge_counts(mesh)
    out = {
        "chamfer": chamfer(mesh, primitive(shape, yaw)) / (2 * HALF),
        "non_manifold_edges": non_manifold,
        "boundary_edges": boundary,
        "bodies": len(mesh.split(only_watertight=False)),
        "faces": int(len(mesh.faces)),
    }
    if shape == "cube":
        out["normal_noise_deg"] = cube_normal_noise(mesh, yaw)
    return out
