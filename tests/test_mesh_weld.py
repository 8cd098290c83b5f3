"""Welding by an exact rule, and the independent manifold check every exported mesh goes through.

The copies of a point that UV seams make are bit-identical; distinct vertices of a fine mesh can
be closer than any rounding step. Welding by rounding (the old rule) merged those and left edges
with 4 or 6 faces; the exact rule keeps them apart. Checked against trimesh, not against the
project's own edge count.
"""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from conftest import manifold_faults

from dreamfusion.export import mesh_ops


def _split_like_a_seam(v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every face gets its own copies of its vertices (the worst case of UV seams)."""
    return v[f.reshape(-1)], np.arange(3 * len(f)).reshape(-1, 3)


def test_exact_weld_undoes_seams_and_keeps_near_vertices_apart():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=2e-6)  # neighbours ~1e-7 apart
    v, f = sphere.vertices.astype(np.float32), sphere.faces
    sv, sf = _split_like_a_seam(v, f)
    pos, wf = mesh_ops.weld(sv, sf)
    assert len(pos) == len(np.unique(v, axis=0)) == len(sphere.vertices)
    assert len(wf) == len(f)
    assert mesh_ops.is_watertight(sv, sf)
    ref = trimesh.Trimesh(pos.astype(np.float64), wf, process=False)
    assert ref.is_watertight and ref.is_winding_consistent


def test_rounding_would_make_edges_with_four_faces_the_exact_rule_does_not():
    """Two boxes whose edges are 1e-7 apart: rounding to 6 decimals (the old rule) merges the
    edges into one with four faces; the exact rule keeps two closed boxes."""
    a = trimesh.creation.box(extents=(1, 1, 1))
    b = trimesh.creation.box(extents=(1, 1, 1))
    b.apply_translation((1 + 1e-7, 1 + 1e-7, 0))
    m = trimesh.util.concatenate([a, b])
    v, f = m.vertices.astype(np.float32), m.faces
    _, inv = np.unique(np.round(v.astype(np.float64), 6), axis=0, return_inverse=True)
    counts, _ = mesh_ops.edge_use(inv.reshape(-1)[f])
    assert (counts == 4).sum() == 1
    pos, wf = mesh_ops.weld(v, f)
    counts, consistent = mesh_ops.edge_use(wf)
    assert len(pos) == 16 and (counts == 2).all() and consistent
    assert mesh_ops.is_watertight(v, f)


def test_weld_drops_faces_that_collapse():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=np.float32)  # vertex 3 copies vertex 1
    pos, f = mesh_ops.weld(v, np.array([[0, 1, 2], [0, 1, 3]]))
    assert len(pos) == 3 and len(f) == 1 and pos[f[0]].tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert len(mesh_ops.weld_index(np.array([[0.0, 0, 0], [-0.0, 0, 0]]))[0]) == 1  # -0 is 0


def test_vertex_normals_are_continuous_across_seams():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    sv, sf = _split_like_a_seam(sphere.vertices.astype(np.float32), sphere.faces)
    n = mesh_ops.vertex_normals(sv, sf)
    radial = sv / np.linalg.norm(sv, axis=1, keepdims=True)
    assert np.degrees(np.arccos(np.clip((n * radial).sum(1), -1, 1))).max() < 2.0
    welded = mesh_ops.vertex_normals(sphere.vertices, sphere.faces, welded=True)
    assert np.allclose(n, welded[sphere.faces.reshape(-1)], atol=1e-6)


def _write(tmp_path, m: trimesh.Trimesh, name: str):
    path = tmp_path / f"{name}.glb"
    m.export(path)
    return path


def test_manifold_check_finds_planted_faults(tmp_path):
    box = trimesh.creation.box(extents=(1, 1, 1))
    assert manifold_faults(_write(tmp_path, box, "box")) == []
    # two boxes sharing one edge: that edge has four faces
    other = trimesh.creation.box(extents=(1, 1, 1))
    other.apply_translation((1, 1, 0))
    pair = trimesh.util.concatenate([box, other])
    pair.merge_vertices()
    faults = manifold_faults(_write(tmp_path, pair, "pair"))
    assert any("not used by exactly two faces" in s and "4" in s for s in faults), faults
    flipped = box.copy()
    flipped.faces[0] = flipped.faces[0][::-1]
    assert "winding not consistent" in manifold_faults(_write(tmp_path, flipped, "flipped"))
    open_box = trimesh.Trimesh(box.vertices, box.faces[1:], process=False)
    faults = manifold_faults(_write(tmp_path, open_box, "open"))
    assert "not watertight" in faults and not mesh_ops.is_watertight(open_box.vertices, open_box.faces)


@pytest.mark.parametrize("shift", [0.0, 1e-7])
def test_project_and_trimesh_agree_on_near_coincident_vertices(tmp_path, shift):
    """Two boxes whose corners nearly touch: the exact rule merges them only when they coincide."""
    a = trimesh.creation.box(extents=(1, 1, 1))
    b = trimesh.creation.box(extents=(1, 1, 1))
    b.apply_translation((1 + shift, 1 + shift, 1 + shift))  # corner (0.5,0.5,0.5) of a vs of b
    m = trimesh.util.concatenate([a, b])
    ours = mesh_ops.is_watertight(m.vertices.astype(np.float32), m.faces)
    theirs = not manifold_faults(_write(tmp_path, m, f"touch{shift}"))
    assert ours == theirs


def test_marching_cubes_vertices_are_distinct_points_when_the_field_touches_the_iso_level():
    """A field a hair above the iso-level at lattice points: every edge from such a point crosses
    within 1e-6 of a cell of it, and in float32 those distinct vertices share one position. Moved
    apart by ``apart_from_iso``, the vertices are distinct points and the mesh welded by position
    is manifold (trimesh)."""
    from dreamfusion.export.extract import apart_from_iso

    n = 24
    x = np.arange(n, dtype=np.float32)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    grid = 10.0 - np.maximum(np.maximum(np.abs(X - 11.5), np.abs(Y - 11.5)), np.abs(Z - 11.5)).round()
    grid = np.pad(grid.astype(np.float32), 1)
    iso = 4.0
    grid[grid == iso] += 2e-6  # the cube's layer at distance 6
    assert (np.abs(grid - iso) < 1e-5).sum() > 500
    import mcubes

    v, f = mcubes.marching_cubes(grid, iso)
    assert len(np.unique(v.astype(np.float32), axis=0)) < len(v)  # coincident vertices without the rule
    moved = apart_from_iso(grid, iso)
    assert np.abs(moved - grid).max() <= 1e-3 * 10 + 1e-6 and ((moved >= iso) == (grid >= iso)).all()
    v, f = mcubes.marching_cubes(moved, iso)
    assert len(np.unique(v.astype(np.float32), axis=0)) == len(v)
    pos, wf = mesh_ops.weld(v, f)
    m = trimesh.Trimesh(pos.astype(np.float64), wf, process=False)
    assert m.is_watertight and m.is_winding_consistent


class _Gyroid:
    """A sphere of gyroid: a closed surface with hundreds of handles, which quadric decimation
    pinches into edges with four faces."""

    def density(self, p):
        import torch

        k = 2 * np.pi * 6
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        s, c = torch.sin, torch.cos
        g = s(k * x) * c(k * y) + s(k * y) * c(k * z) + s(k * z) * c(k * x)
        return 20 * torch.sigmoid(g / 0.1) * torch.sigmoid((0.5 - p.norm(dim=-1)) / 0.01)


def test_decimation_never_leaves_a_non_manifold_export(tmp_path):
    from dreamfusion.export.extract import marching_cubes, sample_density
    from dreamfusion.export.fields import ConstantColor, VolumeSource
    from dreamfusion.export.pipeline import ExportOptions, export

    source = VolumeSource(_Gyroid(), ConstantColor(), 1.0)
    v, f = marching_cubes(sample_density(source, 96, 10.0, progress=False))
    dv, df = mesh_ops.decimate(v, f, 2000)
    assert mesh_ops.is_watertight(v, f) and not mesh_ops.is_watertight(dv, df)  # what the export must avoid
    res = export(source, tmp_path, ExportOptions(resolution=96, iso=10.0, faces=2000, texture=64, progress=False))
    assert res.stats["watertight"] and res.stats["resolution_used"] < 96 and res.stats["resolution"] == 96
    assert manifold_faults(tmp_path / "mesh.glb") == []
