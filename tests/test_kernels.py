"""dreamfusion.kernels: each Triton kernel against its PyTorch reference in Triton's CPU
interpreter (in child processes that set TRITON_INTERPRET=1 before triton is imported, so this
process and the other tests never run triton interpreted), and the engine's choice of path."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dreamfusion import kernels
from dreamfusion.config import compose
from dreamfusion.kernels.check import TOLERANCE

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed (pip install -e '.[dev]')")


def interpreted(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)


@needs_triton
@pytest.mark.parametrize("job", kernels.JOBS)
def test_kernel_matches_its_reference_in_the_interpreter(job):
    """Values and gradients of every case of ``python -m dreamfusion.kernels.check`` within
    ``TOLERANCE``; sampled indices exactly equal. The largest errors are printed (pytest -s)."""
    r = interpreted(["-m", "dreamfusion.kernels.check", "--only", job])
    cases = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert r.returncode == 0 and cases, r.stdout + r.stderr
    worst = {k: max(c["max_abs_error"][k] for c in cases) for k in TOLERANCE[job]}
    print(f"\n{job}: {len(cases)} cases, largest absolute errors "
          + ", ".join(f"{k} {v:.2g} (tolerance {TOLERANCE[job][k]:g})" for k, v in worst.items()))
    for c in cases:
        assert c["ok"], c
    if job == "compositing":
        assert any(c["rays_terminated"] > 0 for c in cases)  # early termination was exercised
        assert any(c["rays_terminated"] == 0 for c in cases)
    if job == "sampling":
        assert all(c["indices_equal"] for c in cases) and any(c["samples"] == 0 for c in cases)


SCENE = textwrap.dedent("""
    import json, sys, torch
    from dreamfusion.config import compose
    from dreamfusion.data.cameras import sample_train
    from dreamfusion.kernels import compositing_triton, hashgrid_triton, sampling_triton
    from dreamfusion.renderer import raymarching
    from dreamfusion.renderer.scene import make_scene

    overrides = sys.argv[1:]
    cfg = compose(["trainer.accelerator=cpu", "model.data.train_dataset.width=16",
                   "model.data.train_dataset.height=16", "model.renderer.max_steps=48",
                   "model.renderer.grid_resolution=16", "model.nerf.encoder_cfg.num_levels=6",
                   "model.nerf.encoder_cfg.log2_hashmap_size=12", "model.nerf.encoder_cfg.desired_resolution=128",
                   *overrides])
    torch.manual_seed(0)
    scene = make_scene(cfg, "cpu")
    with torch.no_grad():
        for t in scene.nerf.encoder.tables:
            t.uniform_(-1, 1)  # features that matter, not the initial 1e-4
    scene.update_grid()
    cams = sample_train(cfg.model.data.train_dataset)
    light = torch.nn.functional.normalize(cams.position, dim=-1)
    results = []
    for kernels in (False, True):
        if kernels:  # the Triton modules stand in for the references the renderer calls on a CPU
            raymarching.sampling, raymarching.compositing = sampling_triton, compositing_triton
            grid = scene.nerf.encoder
            grid._encode = lambda u, used: hashgrid_triton.encode(u, used, grid.resolutions, grid.hashed,
                                                                  grid.smoothstep)
        torch.manual_seed(1)
        with torch.no_grad():
            shaded = scene.render(cams, "lambertian", torch.tensor([0.3]), light, perturb=True)
        scene.zero_grad()
        torch.manual_seed(1)
        out = scene.render(cams, "albedo", torch.tensor([0.3]), light, perturb=True, need_normals=False)
        loss = sum((out[k] * torch.linspace(-1, 1, out[k].numel()).reshape(out[k].shape)).sum()
                   for k in ("image", "opacity", "depth"))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in scene.named_parameters() if p.grad is not None}
        results.append(({k: shaded[k] for k in ("image", "opacity", "depth", "normal_image")}, grads))
    (a, ga), (b, gb) = results
    errors = {k: float((a[k] - b[k]).abs().max()) for k in a}
    errors["grad"] = max(float((ga[n] - gb[n]).abs().max() / ga[n].abs().max().clamp(min=1e-12)) for n in ga)
    errors["opacity_mean"] = float(a["opacity"].mean())
    print(json.dumps(errors))
""")


@needs_triton
@pytest.mark.parametrize("overrides", [[], ["model.renderer.dt_gamma=0.1"]], ids=["fixed-step", "dt_gamma"])
def test_a_scene_renders_the_same_through_the_kernels(overrides):
    """A whole training render (hash grid, sampling, compositing, shading, finite-difference
    normals) through the references and through the kernels (interpreted): the same pictures, and
    the same gradients of an albedo render. (Gradients through the finite-difference normals are
    not compared: they are so ill-conditioned that perturbing the hash tables by 1e-7 of their
    values moves the reference's own gradients by about 5%.)"""
    r = interpreted(["-c", SCENE, *overrides])
    assert r.returncode == 0, r.stderr
    errors = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\nscene through the kernels: {errors}")
    assert 0.05 < errors.pop("opacity_mean") < 0.95  # something to render
    assert errors.pop("grad") < 1e-4  # relative to each parameter's largest gradient
    assert max(errors.values()) < 1e-4, errors


def test_the_engine_takes_the_pytorch_path_on_a_cpu():
    from dreamfusion.renderer.scene import Scene, describe_path

    scene = Scene(compose(["trainer.accelerator=cpu", "trainer.compile=false"]), "cpu")
    assert scene.path == {"render": "pytorch", "hash_grid": "eager", "kernels": "cpu is not a CUDA device"}
    assert not scene.renderer.kernels and not scene.nerf.encoder.kernels
    assert describe_path(scene.path) == "render pytorch, hash grid eager (no kernels: cpu is not a CUDA device)"
    scene = Scene(compose(["trainer.accelerator=cpu", "trainer.kernels=torch"]), "cpu")
    assert scene.path["kernels"] == "trainer.kernels=torch"


def test_kernels_only_on_cuda_with_triton_and_a_compiler(monkeypatch):
    import importlib
    import shutil

    real_import = importlib.import_module
    assert kernels.unavailable("cpu") == "cpu is not a CUDA device"
    monkeypatch.setattr(kernels.importlib, "import_module",
                        lambda name: object() if name == "triton" else real_import(name))
    monkeypatch.setattr(kernels.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.delenv("CC", raising=False)
    assert kernels.unavailable("cuda") is None
    assert kernels.unavailable(torch.device("cuda", 0)) is None

    def broken(name):
        raise ImportError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setattr(kernels.importlib, "import_module", broken)
    assert kernels.unavailable("cuda") == "triton does not import (ImportError: libcuda.so.1: cannot open shared " \
                                          "object file)"
    monkeypatch.setattr(kernels.importlib, "import_module", lambda name: object())
    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    assert kernels.unavailable("cuda") == "no C compiler (gcc or clang) for Triton's launcher"
    monkeypatch.setattr(kernels.shutil, "which", shutil.which)


def test_metrics_and_the_progress_line_say_which_path_ran(tmp_path, tiny_overrides, capsys):
    from dreamfusion.stages import cli, nerf_sds

    rc = cli.run(nerf_sds.main, ["--output", str(tmp_path), *tiny_overrides, "trainer.max_steps=1"])
    assert rc == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["path"] == {"render": "pytorch", "hash_grid": "eager", "kernels": "cpu is not a CUDA device"}
    out = capsys.readouterr()
    assert "s/step (render pytorch, hash grid eager (no kernels: cpu is not a CUDA device)) ->" in out.out
    assert "nerf-sds [render pytorch, hash grid eager" in out.err  # the progress bar's label


def test_kernels_import_nothing_of_the_model():
    """The kernels package (references and check) imports torch, triton and itself only."""
    code = ("import sys, dreamfusion.kernels.check, dreamfusion.kernels.sampling, dreamfusion.kernels.compositing, "
            "dreamfusion.kernels.hashgrid; "
            "print(sorted(m for m in sys.modules if m.startswith('dreamfusion') and not m.startswith("
            "'dreamfusion.kernels')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "['dreamfusion']", r.stdout + r.stderr
