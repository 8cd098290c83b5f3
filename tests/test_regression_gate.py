"""The regression gate on real runs: the stages as the regression pipeline chains them (prompt-expansion,
nerf-sds, mesh-export) with the shipped shapes prior, scored by dreamfusion.prior.score and checked
against a baseline in a real S3 server.

A baseline of two seeds of "a blue sphere" is recorded; a healthy run with a third seed passes (within
3 standard deviations of the baseline's seeds, at least the floor); a deliberately broken run fails,
naming the metric: its guidance was given the text of
"a red sphere" under the prompt "a blue sphere" (the embeddings of another prompt's set, what a
mixed-up artifact would do), so it grows a red sphere. Also the quick check that the prior drives
nerf-sds to the named object: every healthy run has the right shape and colour and IoU >= 0.7.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dreamfusion.prior.model import SHAPES_DIR
from dreamfusion.store import Store
from dreamfusion.store.regression import RegressionError, check_regression, collect_metrics

pytestmark = pytest.mark.skipif(not (Path(SHAPES_DIR) / "unet").is_dir(), reason="no trained prior (make prior)")

PRESETS = ["--preset", "cpu", "--preset", "shapes"]
# make demo's settings on a short schedule: 100 steps, a 32^3 occupancy grid (a third of a step's
# time at 64^3), no torch.compile (its start-up costs more than it saves in 100 steps)
TRAIN = ["trainer.max_steps=100", "trainer.val_check_interval=0", "trainer.checkpoint_interval=0",
         "trainer.compile=false", "model.renderer.grid_resolution=32"]


def _stage(module, argv):
    from dreamfusion.stages import cli

    rc = cli.run(module.main, argv)
    assert rc == 0, f"{module.__name__} exited with {rc}"


def _runs(work: Path, runs: list[tuple[Path, str, int]]) -> list[tuple[Path, Path, Path]]:
    """(prompt set, name, seed) each through nerf-sds and mesh-export, as separate processes two at a
    time with one thread each (at 32x32 a step gains little from a second thread)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def script(prompt_set: Path, nerf: Path, mesh: Path, seed: int) -> str:
        return " && ".join([
            shlex.join([sys.executable, "-m", "dreamfusion.stages.nerf_sds", "--output", str(nerf), "--prompts",
                        str(prompt_set), *PRESETS, "--quiet", f"trainer.seed={seed}", *TRAIN]),
            shlex.join([sys.executable, "-m", "dreamfusion.stages.mesh_export", "--checkpoint",
                        str(nerf / "checkpoints" / "last.pt"), "--output", str(mesh), "--resolution", "64",
                        "--texture", "64", "--faces", "3000", "--quiet"]),
        ])

    out = [(prompt_set, work / name, work / f"{name}-mesh", seed) for prompt_set, name, seed in runs]
    for wave in (out[i:i + 2] for i in range(0, len(out), 2)):
        procs = [subprocess.Popen(["bash", "-c", script(*run)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for run in wave]
        for p in procs:
            log, _ = p.communicate(timeout=900)
            assert p.returncode == 0, log[-3000:]
    return [run[:3] for run in out]


def test_broken_run_fails_the_gate_and_another_seed_passes(s3_env, tmp_path):
    from dreamfusion.stages import cli, prompt_expansion

    cli.quiet_libraries()
    blue, red = tmp_path / "blue", tmp_path / "red"
    _stage(prompt_expansion, ["--output", str(blue), *PRESETS, "model.prompt=a blue sphere"])
    _stage(prompt_expansion, ["--output", str(red), *PRESETS, "model.prompt=a red sphere"])
    swapped = tmp_path / "swapped"  # says "a blue sphere"; its embeddings are those of "a red sphere"
    shutil.copytree(blue, swapped)
    shutil.copy(red / "embeddings.safetensors", swapped / "embeddings.safetensors")
    assert json.loads((swapped / "prompts.json").read_text())["prompt"] == "a blue sphere"

    def metrics(*runs):
        return collect_metrics(*zip(*runs))

    runs = _runs(tmp_path, [(blue, "seed0", 0), (blue, "seed1", 1), (blue, "seed2", 2), (swapped, "broken", 2)])
    baseline, healthy, broken = metrics(*runs[:2]), metrics(runs[2]), metrics(runs[3])
    rows = baseline["a blue sphere"] + healthy["a blue sphere"]
    for r in rows:  # the prior drives nerf-sds to the named object
        assert r["shape_ok"] == 1.0 and r["colour_ok"] == 1.0 and r["iou"] >= 0.7, r
    assert broken["a blue sphere"][0]["colour_ok"] == 0.0, broken

    store = Store(s3_env.endpoint, "gate", secure=False, create_bucket=True)
    recorded = check_regression(store, "blue", baseline)
    assert recorded.status == "recorded"
    spread = recorded.baseline["prompts"]["a blue sphere"]["spread"]["iou"]
    print(f"\ngate: baseline IoU {[round(r['iou'], 3) for r in baseline['a blue sphere']]} (std {spread:.3f}), "
          f"healthy {healthy['a blue sphere'][0]['iou']:.3f}, broken {broken['a blue sphere'][0]['iou']:.3f} "
          f"colour_ok {broken['a blue sphere'][0]['colour_ok']}")

    assert check_regression(store, "blue", healthy).status == "passed"
    with pytest.raises(RegressionError) as e:
        check_regression(store, "blue", broken)
    assert "'a blue sphere' colour wrong (right in the baseline)" in str(e.value)
    assert "\n" not in str(e.value) and e.value.result.status == "failed"
