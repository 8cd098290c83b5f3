"""The dmtet-finetune stage end to end on a CPU: initialisation from a NeRF, training, exact
resume, the checkpoint format the export stages read, and the bad-input contract."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamfusion.export.synthetic import SMALL_BLOB, blob_checkpoint, blob_sphere_radius
from dreamfusion.train.checkpoint import load_checkpoint

DMTET_TINY = [
    "--preset",
    "cpu",
    "model.data.train_dataset.width=32",
    "model.data.train_dataset.height=32",
    "model.renderer.iso_resolution=64",
]


def run_stage(module: str, args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"dreamfusion.stages.{module}", *args], capture_output=True, text=True, timeout=600, **kw
    )


@pytest.fixture(scope="module")
def nerf(tmp_path_factory, tiny_overrides) -> Path:
    """A NeRF trained for 12 steps with the tiny guidance model."""
    out = tmp_path_factory.mktemp("nerf")
    r = run_stage(
        "nerf_sds",
        ["--output", str(out), "--quiet", *tiny_overrides, "trainer.max_steps=12", "trainer.val_check_interval=0",
         "model.prompt=a red cube"],
    )
    assert r.returncode == 0, r.stderr
    return out / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def dmtet(tmp_path_factory, nerf) -> Path:
    out = tmp_path_factory.mktemp("dmtet")
    r = run_stage(
        "dmtet_finetune",
        ["--checkpoint", str(nerf), "--output", str(out), "--quiet", *DMTET_TINY, "trainer.max_steps=6",
         "trainer.checkpoint_interval=3", "trainer.val_check_interval=3", "trainer.deterministic=true"],
    )
    assert r.returncode == 0, r.stderr
    assert "dmtet-finetune: 6 steps" in r.stdout
    return out


def test_init_from_a_nerf_is_mesh_exports_surface(tmp_path, monkeypatch):
    """The start is the surface mesh-export gives the NeRF (its density at mesh-export's own
    iso-level, on mesh-export's lattice: for this blob NeRF, its sphere where the occupancy grid
    keeps it): every vertex within half a tet cell of it, on average within 5% of a cell; the tet
    grid is fitted to it."""
    import trimesh

    from dreamfusion.export.extract import marching_cubes, sample_density
    from dreamfusion.export.sources import load_source
    from dreamfusion.renderer.mesh_scene import MeshScene
    from dreamfusion.stages.dmtet_finetune import compose_dmtet

    ckpt = blob_checkpoint(tmp_path / "last.pt", SMALL_BLOB)
    cfg = compose_dmtet(load_checkpoint(ckpt)["config"], ckpt, ["renderer=torch_raster",
                        "model.renderer.grid_resolution=32", "model.renderer.iso_resolution=96"])
    scene = MeshScene(cfg)
    facts = scene.init_from_nerf(ckpt)
    volume = sample_density(load_source(ckpt), 96, None, progress=False)
    assert facts["iso"] == pytest.approx(volume.iso.value)  # mesh-export's level, found the same way
    assert facts["distance_fitted_vertices"] > 0
    with torch.no_grad():
        v, _ = scene.dmtet.mesh()
    want = trimesh.Trimesh(*marching_cubes(volume), process=False)
    _, dist, _ = trimesh.proximity.closest_point(want, v.numpy())
    cell = float((2 * scene.dmtet.half_extent / 32).mean())
    assert dist.max() < 0.5 * cell and dist.mean() < 0.05 * cell
    # The grid hugs the object: the carved surface lies inside the blob's sphere at the (lowered) level.
    radius = blob_sphere_radius(volume.iso.value, blob_density=12.0, blob_radius=0.4)
    extent = torch.from_numpy(np.abs(want.vertices).max(0)).float()
    assert (extent <= radius + 1e-6).all(), (extent, radius)
    half = scene.dmtet.half_extent
    assert (half > extent).all() and (half < extent * 1.25).all()


def _blob_scene(tmp_path, loss_override: str):
    """A MeshScene started from the synthetic blob NeRF (32^3 tets, the NeRF's solid on a 96-cell
    lattice) under one extra loss override; and the checkpoint."""
    from dreamfusion.renderer.mesh_scene import MeshScene
    from dreamfusion.stages.dmtet_finetune import compose_dmtet

    ckpt = blob_checkpoint(tmp_path / "last.pt", SMALL_BLOB)
    cfg = compose_dmtet(load_checkpoint(ckpt)["config"], ckpt, ["renderer=torch_raster",
                        "model.renderer.grid_resolution=32", "model.renderer.iso_resolution=96", loss_override])
    scene = MeshScene(cfg)
    scene.init_from_nerf(ckpt)
    return scene, ckpt


def test_silhouette_term_holds_the_nerfs_outline(tmp_path):
    """``lambda_silhouette``: the target is the NeRF's solid at mesh-export's level (the blob's analytic
    sphere), its coverage at a camera is the sphere's exact projected disc but for border pixels, the
    term is the mean squared coverage difference, and its gradient reaches the SDF and the deformation."""
    from dreamfusion.data.cameras import Cameras, look_at
    from dreamfusion.export.extract import marching_cubes, sample_density
    from dreamfusion.export.sources import load_source
    from dreamfusion.loss import DMTetLoss
    from dreamfusion.prior.data import projected_sphere_area

    scene, ckpt = _blob_scene(tmp_path, "model.loss.lambda_silhouette=1000")
    volume = sample_density(load_source(ckpt), 96, None, progress=False)
    # one body, no cavity: the target is mesh-export's own marching-cubes surface, vertex for vertex
    want_v, want_f = marching_cubes(volume)
    tv, tf = scene.target
    assert tv.shape == want_v.shape and tf.shape == want_f.shape
    assert np.allclose(np.sort(tv.numpy(), 0), np.sort(want_v, 0), atol=1e-6)
    eye = torch.tensor([[0.0, 0.0, 6.0]])
    fovy = torch.tensor([math.radians(30.0)])
    cams = Cameras(look_at(eye), fovy, torch.tensor([90.0]), torch.tensor([0.0]), torch.tensor([6.0]), 64, 64)
    scene.train()
    scene.prepare(0)
    out = scene.render(cams, "albedo")
    target = out["silhouette_target"]
    disc = projected_sphere_area(float(tv.norm(dim=-1).mean()), 6.0, float(fovy), 64)  # the lattice's sphere
    border = 2 * math.pi * math.sqrt(disc / math.pi)  # pixels along the outline
    assert abs(float(target.sum()) - disc) < 0.5 * border
    from dreamfusion.loss import DMTetLossConfig

    loss = DMTetLoss(DMTetLossConfig(lambda_sds=0, lambda_normal_consistency=0, lambda_laplacian_smoothness=0,
                                     lambda_silhouette=1000))
    _, parts = loss(torch.zeros(()), out, 0, 10)
    assert parts["silhouette"] == pytest.approx(float((out["opacity"].detach() - target).pow(2).mean()), rel=1e-6)
    assert parts["silhouette"] < 0.02  # the start's outline is the target's but for antialiasing
    scene.dmtet.deform.data.copy_(3 * torch.sign(scene.dmtet.grid))  # grown by about half a cell: off the target
    scene.prepare(1)
    moved = scene.render(cams, "albedo")
    total, moved_parts = loss(torch.zeros(()), moved, 1, 10)
    assert moved_parts["silhouette"] > parts["silhouette"]
    total.backward()
    assert scene.dmtet.deform.grad.abs().sum() > 0 and torch.isfinite(scene.dmtet.deform.grad).all()


def test_surface_distance_is_the_point_to_plane_distance_to_the_nerfs_solid(tmp_path):
    """``lambda_surface_distance``: each surface vertex's offset is its distance, in tet cells, to the
    NeRF's solid along the solid's normal: the solid's own vertices moved out or in along their normals
    (trimesh's) by a known amount read back that amount; the term is the mean square over the faces'
    area, and its gradient pulls each vertex along the solid's normals at its faces."""
    import trimesh

    from dreamfusion.loss import DMTetLoss, DMTetLossConfig

    scene, _ = _blob_scene(tmp_path, "model.loss.lambda_surface_distance=100")
    assert scene.target is not None
    cell = float(scene.dmtet.cell)
    tv, tf = scene.target
    normal = torch.from_numpy(trimesh.Trimesh(tv.numpy(), tf.numpy(), process=False).vertex_normals.copy()).float()
    for shift in (0.3, -0.2):
        offset = scene.surface_offset(tv + shift * cell * normal)
        assert offset.median() == pytest.approx(shift, abs=0.01)
        # but at the creases where the occupancy grid cuts the blob's sphere (nearest across the crease)
        assert (offset - shift).abs().quantile(0.75) < 0.01 and (offset - shift).abs().quantile(0.9) < 0.1
    # the start lies on the solid: within half a cell everywhere, a tenth of one on average
    scene.train()
    scene.prepare(0)
    verts, faces = scene.mesh()
    start = scene.surface_offset(verts)
    assert start.abs().max() < 0.5 and start.abs().mean() < 0.1
    vn = torch.from_numpy(trimesh.Trimesh(verts.detach().numpy(), faces.numpy(), process=False).vertex_normals.copy())
    v = (verts.detach() + 0.25 * cell * vn.float()).requires_grad_()
    offset, area = scene.surface_samples(v, faces)
    render = {"vertices": v, "faces": faces, "surface_offset": offset, "surface_area": area}
    loss = DMTetLoss(DMTetLossConfig(lambda_sds=0, lambda_normal_consistency=0, lambda_laplacian_smoothness=0,
                                     lambda_surface_distance=100))
    total, parts = loss(torch.zeros(()), render, 0, 10)
    assert parts["surface_distance"] == pytest.approx(float((area * offset.detach() ** 2).sum() / area.sum()))
    assert 0.2**2 < parts["surface_distance"] < 0.3**2 * 1.2
    total.backward()
    from scipy.spatial import cKDTree

    from dreamfusion.renderer.mesh_scene import vertex_normals

    # the gradient, written out: each face pulls its three vertices by a third of 2 a d n / (cell sum a),
    # n the solid's normal at its centroid's nearest point: along the normal, never sliding
    centroid = v.detach()[faces].mean(1)
    n_face = vertex_normals(tv, tf)[cKDTree(tv.numpy()).query(centroid.numpy())[1]]
    pull = 100 * 2 * (area * offset.detach())[:, None] * n_face / (3 * cell * area.sum())
    expected = torch.zeros_like(v).index_add(0, faces.reshape(-1), pull.repeat_interleave(3, 0))
    used = expected.norm(dim=-1) > 0
    assert torch.allclose(v.grad[used], expected[used], rtol=1e-3, atol=1e-6 * float(expected.norm(dim=-1).max()))
    g = v.grad[used] / v.grad[used].norm(dim=-1, keepdim=True)
    along = (g * normal[cKDTree(tv.numpy()).query(v.detach()[used].numpy())[1]]).sum(-1)
    assert along.median() > 0.97  # outwards, along the solid's normal at the vertex's nearest point
    with pytest.raises(ValueError, match="lambda_surface_distance"):
        loss(torch.zeros(()), {"vertices": v, "faces": faces}, 0, 10)


def test_surface_distance_samples_the_faces_not_only_the_vertices(tmp_path):
    """A coarse icosphere whose vertices lie on a finely triangulated sphere (the solid): its vertices
    read 0 cells, its faces' centroids the chords' analytic depth R - |c|, inside, and the term is
    their mean over the area; so a surface held by it cannot shrink by its faces' sagitta."""
    import trimesh

    from dreamfusion.loss import DMTetLoss, DMTetLossConfig

    scene, _ = _blob_scene(tmp_path, "model.loss.lambda_surface_distance=100")
    cell, radius = float(scene.dmtet.cell), 0.3
    fine = trimesh.creation.icosphere(subdivisions=6, radius=radius)
    scene.target = (torch.tensor(fine.vertices, dtype=torch.float32), torch.tensor(fine.faces))
    scene._target_index = None
    coarse = trimesh.creation.icosphere(subdivisions=2, radius=radius)
    verts, faces = torch.tensor(coarse.vertices, dtype=torch.float32), torch.tensor(coarse.faces)
    assert scene.surface_offset(verts).abs().max() < 0.01  # on the solid, to its own chords' depth
    offset, area = scene.surface_samples(verts, faces)
    depth = (radius - verts[faces].mean(1).norm(dim=-1)) / cell  # analytic: how far inside each centroid is
    assert depth.min() > 0.05  # the sagitta is not negligible at this size
    assert torch.allclose(offset, -depth, atol=0.01 + 0.05 * float(depth.max()))
    assert torch.allclose(area, torch.tensor(coarse.area_faces, dtype=torch.float32), rtol=1e-4)
    loss = DMTetLoss(DMTetLossConfig(lambda_sds=0, lambda_normal_consistency=0, lambda_laplacian_smoothness=0,
                                     lambda_surface_distance=1))
    _, parts = loss(torch.zeros(()), {"vertices": verts, "faces": faces, "surface_offset": offset,
                                      "surface_area": area}, 0, 10)
    analytic = float((area * depth**2).sum() / area.sum())
    assert parts["surface_distance"] == pytest.approx(analytic, rel=0.1)


def test_silhouette_term_without_a_target_is_refused():
    from dreamfusion.loss import DMTetLoss, DMTetLossConfig

    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    render = {"vertices": v, "faces": torch.tensor([[0, 1, 2]]), "opacity": torch.zeros(1, 4, 4)}
    with pytest.raises(ValueError, match="lambda_silhouette"):
        DMTetLoss(DMTetLossConfig(lambda_silhouette=1.0))(torch.zeros(()), render, 0, 10)


def test_dmtet_config_keeps_the_seeds_fixed_t_range_after_an_annealed_nerf(tmp_path):
    """A NeRF trained with ``t_max_final`` (above DMTet's t range): its DMTet config is valid, fixed [0.02, 0.5]."""
    from dreamfusion.stages.dmtet_finetune import compose_dmtet

    ckpt = blob_checkpoint(tmp_path / "last.pt", SMALL_BLOB + ["model.guidance.t_max_final=0.8"])
    assert load_checkpoint(ckpt)["config"]["model"]["guidance"]["t_max_final"] == 0.8
    cfg = compose_dmtet(load_checkpoint(ckpt)["config"], ckpt, ["renderer=torch_raster"])
    assert cfg.model.guidance.t_range == [0.02, 0.5] and cfg.model.guidance.t_max_final is None


def test_stage_outputs(dmtet):
    ckpt = load_checkpoint(dmtet / "checkpoints" / "last.pt")
    assert ckpt["format"] == "dreamfusion-dmtet/1" and ckpt["step"] == 6
    assert {"nerf", "background", "dmtet", "optimizer", "rng", "config"} <= set(ckpt)
    cfg = ckpt["config"]["model"]
    assert cfg["defaults"]["renderer"] == "torch_raster" and cfg["defaults"]["loss"] == "dmtet"
    assert cfg["guidance"]["t_range"] == [0.02, 0.5] and cfg["latent_iter_ratio"] == 0
    assert cfg["prompt"] == "a red cube"  # from the NeRF's config
    metrics = json.loads((dmtet / "metrics.json").read_text())
    assert set(metrics["step_times"]) == {"marching_tets", "rasterize", "guidance", "backward"}
    last = metrics["history"][-1]
    assert {"sds", "normal_consistency", "laplacian_smoothness"} <= set(last)
    assert all(np.isfinite(last[k]) for k in ("sds", "normal_consistency", "laplacian_smoothness"))
    assert metrics["surface_faces"] > 100 and metrics["init"]["iso_method"] in ("silhouette", "carved", "otsu")
    assert sorted(p.name for p in (dmtet / "val").iterdir()) == ["step-000003.png", "step-000006.png"]
    # training moved the geometry: SDF and offsets differ between the step-3 and step-6 checkpoints
    s3 = load_checkpoint(dmtet / "checkpoints" / "step-000003.pt")["dmtet"]
    assert not torch.equal(s3["sdf"], ckpt["dmtet"]["sdf"])
    assert not torch.equal(s3["deform"], ckpt["dmtet"]["deform"])


def test_killed_run_resumes_to_the_same_weights(tmp_path, nerf, dmtet):
    args = ["--checkpoint", str(nerf), "--quiet", *DMTET_TINY, "trainer.max_steps=6",
            "trainer.checkpoint_interval=3", "trainer.val_check_interval=3", "trainer.deterministic=true"]
    killed = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "dreamfusion.stages.dmtet_finetune", "--output", str(killed), *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt3 = killed / "checkpoints" / "step-000003.pt"
    deadline = time.time() + 300
    while not ckpt3.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert ckpt3.exists()
    r = run_stage("dmtet_finetune", ["--output", str(tmp_path / "resumed"), *args,
                                     f"model.resume_from_checkpoint={ckpt3}"])
    assert r.returncode == 0, r.stderr
    a = load_checkpoint(dmtet / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert b["step"] == 6
    for part in ("nerf", "background", "dmtet"):
        for k in a[part]:
            assert torch.allclose(a[part][k].float(), b[part][k].float(), atol=1e-6, rtol=0), (part, k)


def test_mesh_export_reads_the_surface_itself(tmp_path, dmtet):
    """No marching cubes on a DMTet checkpoint: mesh-export writes the trained surface."""
    out = tmp_path / "mesh"
    r = run_stage("mesh_export", ["--checkpoint", str(dmtet / "checkpoints" / "last.pt"), "--output", str(out),
                                  "--texture", "64", "--quiet"])
    assert r.returncode == 0, r.stderr
    stats = json.loads((out / "mesh_stats.json").read_text())
    metrics = json.loads((dmtet / "metrics.json").read_text())
    assert stats["source"] == "dmtet" and "iso_method" not in stats and "resolution" not in stats
    assert stats["faces_before_decimation"] == metrics["surface_faces"]
    assert stats["watertight"] is True
    import trimesh

    m = trimesh.load(out / "mesh.glb", force="mesh")
    m.merge_vertices(merge_tex=True, merge_norm=True)
    assert m.is_watertight and m.is_winding_consistent and m.volume > 0


def test_video_render_rasterizes_a_dmtet_checkpoint(tmp_path, dmtet):
    out = tmp_path / "video"
    r = run_stage("video_render", ["--checkpoint", str(dmtet / "checkpoints" / "last.pt"), "--output", str(out),
                                   "--frames", "3", "--size", "32", "--viewer-texture", "64", "--quiet"])
    assert r.returncode == 0, r.stderr
    assert "rasterization" in r.stdout
    info = json.loads((out / "video.json").read_text())
    assert info["renderer"] == "rasterization" and info["frames"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "{missing}"], "does not exist"),
        (["--checkpoint", "{dmtet_ckpt}"], "--checkpoint takes the nerf-sds one"),
        (["--checkpoint", "{nerf}", "renderer=torchngp_raymarching"], "does not draw meshes"),
        (["--checkpoint", "{nerf}", "model.renderer.grid_resolution=48"], "grid_resolution=48"),
        (["--checkpoint", "{nerf}", "--preset", "fast"], "preset 'fast' does not exist"),
        (["--checkpoint", "{nerf}", "--store-bucket", "b"], "--store-endpoint and --store-bucket together"),
        (["--checkpoint", "{nerf}", "model.loss.lambda_laplacian_smoothness=-1"], "must be >= 0"),
        # continuing a run that kept no NeRF solid under a loss that needs one
        (["--checkpoint", "{nerf}", "model.resume_from_checkpoint={dmtet_ckpt}",
          "model.loss.lambda_surface_distance=9"], "holds no NeRF solid"),
    ],
)
def test_bad_input_is_one_line_before_any_output(tmp_path, nerf, dmtet, args, message):
    out = tmp_path / "out"
    values = {"missing": tmp_path / "nope.pt", "dmtet_ckpt": dmtet / "checkpoints" / "last.pt", "nerf": nerf}
    args = [a.format(**values) for a in args]
    r = run_stage("dmtet_finetune", ["--output", str(out), *args])
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not out.exists()  # nothing written
