"""text_to_3d through kfp.local (SubprocessRunner, use_venv=False) with tiny settings: end to end
through the DMTet fine-tune (and without it), and with nerf-sds and dmtet-finetune each SIGKILLed
mid-run, retried by kfp.local as compiled, resuming from the store."""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
pytest.importorskip("kfp")


def _split(tiny_overrides):
    """(overrides, guidance model): the model goes in as the pipeline's guidance_model."""
    overrides = [o for o in tiny_overrides if not o.startswith("model.guidance.model_key")]
    model = next(o.split("=", 1)[1] for o in tiny_overrides if o.startswith("model.guidance.model_key"))
    return overrides, model


# dmtet-finetune's own settings: the CPU preset at the tiny test sizes (its NeRF's come with the checkpoint)
DMTET_TINY = ["renderer=torch_raster", "trainer.compile=false", "model.renderer.iso_resolution=48"]


def _check_outputs(root: Path, dmtet: bool = True):
    glbs = list(root.rglob("mesh.glb"))
    mp4s = list(root.rglob("turntable.mp4"))
    previews = [p for p in root.rglob("preview") if p.is_file()]
    ckpts = sorted(p for p in root.rglob("checkpoint") if p.is_file())
    assert len(glbs) == 1 and glbs[0].read_bytes()[:4] == b"glTF"
    assert len(mp4s) == 1 and mp4s[0].read_bytes()[4:8] == b"ftyp"
    assert len(previews) == 1 and b"<html" in previews[0].read_bytes()[:2000].lower()
    assert [p.parent.name for p in ckpts] == (["dmtet-finetune", "nerf-sds"] if dmtet else ["nerf-sds"])
    stats = json.loads(next(root.rglob("mesh_stats.json")).read_text())
    assert stats["faces"] > 0
    assert stats["source"] == ("dmtet" if dmtet else "nerf")  # the export read the DMTet surface


def test_text_to_3d_locally(tmp_path, kfp_local, tiny_overrides):
    from pipelines.text_to_3d import text_to_3d

    overrides, model = _split(tiny_overrides)
    text_to_3d(
        prompt="a red cube", seed=0, iterations=4, guidance_scale=100.0, guidance="sd_huggingface",
        guidance_model=model, resolution=32, mesh_resolution=32, video_frames=4, video_size=48,
        overrides=overrides + ["trainer.val_check_interval=0", "trainer.checkpoint_interval=2"],
        dmtet=True, dmtet_iterations=3, dmtet_resolution=32, dmtet_grid=32, dmtet_overrides=DMTET_TINY,
        checkpoint_store_endpoint="",
    )
    assert kfp_local == []  # no retries
    _check_outputs(tmp_path / "root")
    metrics = json.loads(next((tmp_path / "root").rglob("dmtet-finetune/renders/metrics.json")).read_text())
    assert metrics["steps"] == 3 and {"normal_consistency", "laplacian_smoothness"} <= set(metrics["history"][-1])


def test_text_to_3d_without_dmtet_skips_the_task(tmp_path, kfp_local, tiny_overrides):
    from pipelines.text_to_3d import text_to_3d

    overrides, model = _split(tiny_overrides)
    text_to_3d(
        prompt="a red cube", seed=0, iterations=2, guidance_scale=100.0, guidance="sd_huggingface",
        guidance_model=model, resolution=32, mesh_resolution=32, video_frames=2, video_size=48,
        video_renderer="raster", overrides=overrides + ["trainer.val_check_interval=0"], dmtet=False,
        checkpoint_store_endpoint="",
    )
    assert not list((tmp_path / "root").rglob("dmtet-finetune"))
    _check_outputs(tmp_path / "root", dmtet=False)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"dmtet_overrides": DMTET_TINY + ["model.loss.lambda_laplacian_smoothness=-1"]},
         "error: dmtet-finetune: model.loss.lambda_laplacian_smoothness=-1.0: must be >= 0"),
        ({"seed": -1}, "error: trainer.seed=-1: must be within [0, 4294967295]"),
    ],
)
def test_a_setting_later_tasks_refuse_fails_the_first_task(tmp_path, kfp_local, tiny_overrides, capfd, bad,
                                                             message):
    """A setting nerf-sds or dmtet-finetune would refuse fails prompt-expansion, the first task, in
    one line: no training task starts."""
    from pipelines.text_to_3d import text_to_3d

    overrides, model = _split(tiny_overrides)
    args = dict(prompt="a red cube", seed=0, iterations=4, guidance_scale=100.0, guidance="sd_huggingface",
                guidance_model=model, resolution=32, mesh_resolution=32, video_frames=4, video_size=48,
                overrides=overrides, dmtet=True, dmtet_iterations=3, dmtet_resolution=32, dmtet_grid=32,
                dmtet_overrides=DMTET_TINY, checkpoint_store_endpoint="")
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="prompt-expansion"):
        text_to_3d(**{**args, **bad})
    out = capfd.readouterr()
    err = out.out + out.err  # kfp.local relays the task's log lines
    assert message in err, err[-3000:]
    assert not list((tmp_path / "root").rglob("nerf-sds")) and not list((tmp_path / "root").rglob("dmtet-finetune"))
    print(f"\nrefused by the first task in {time.monotonic() - began:.1f} s")


def _task_processes(function: str):
    """This test's descendants running a component's function (the 'pod': sh and its python)."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if "--function_to_execute" in cmd and cmd[cmd.index("--function_to_execute") + 1] == function:
            found.append(p)
    return found


# (component function, its task in the checkpoint keys, its log prefix)
TRAINING_TASKS = (("nerf_sds", "nerf-sds-seed0", "nerf-sds"), ("dmtet_finetune", "dmtet-finetune", "dmtet-finetune"))


def test_training_tasks_sigkilled_then_retried_resume_from_store(tmp_path, kfp_local, s3, tiny_overrides,
                                                                  monkeypatch, capfd):
    """nerf-sds, then dmtet-finetune, each SIGKILLed (the whole pod) once a checkpoint past step 8
    is stored; kfp.local retries each as compiled and the retry resumes from the stored step."""
    from dreamfusion.store import Store
    from pipelines.text_to_3d import text_to_3d

    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)  # credentials reach the tasks only through the environment
    store = Store(s3.endpoint, "ckpt-retry", create_bucket=True)
    store.ensure_bucket()
    killed: dict[str, dict] = {}

    def kill_each_after_a_stored_checkpoint():
        deadline = time.monotonic() + 900
        for function, task, _ in TRAINING_TASKS:
            while time.monotonic() < deadline:
                keys = [o.key for o in store.list("checkpoints/") if o.key.split("/")[2] == task]
                steps = [int(m.group(1)) for k in keys if (m := re.search(r"step-(\d+)\.pt$", k))]
                procs = _task_processes(function)
                if steps and max(steps) >= 8 and procs:
                    for p in procs:  # the whole pod goes, as on preemption or an OOM kill
                        p.send_signal(signal.SIGKILL)
                    killed[function] = {"step": max(steps), "keys": keys}
                    break
                time.sleep(0.1)

    watcher = threading.Thread(target=kill_each_after_a_stored_checkpoint, daemon=True)
    watcher.start()
    overrides, model = _split(tiny_overrides)
    text_to_3d(
        prompt="a red cube", seed=0, iterations=24, guidance_scale=100.0, guidance="sd_huggingface",
        guidance_model=model, resolution=32, mesh_resolution=32, video_frames=4, video_size=48,
        video_renderer="raster",
        overrides=overrides + ["trainer.val_check_interval=0", "trainer.checkpoint_interval=4"],
        dmtet=True, dmtet_iterations=24, dmtet_resolution=32, dmtet_grid=32,
        dmtet_overrides=DMTET_TINY + ["trainer.val_check_interval=0", "trainer.checkpoint_interval=4"],
        checkpoint_store_endpoint=s3.endpoint, checkpoint_bucket="ckpt-retry",
    )
    watcher.join(5)
    out = capfd.readouterr().out
    assert set(killed) == {"nerf_sds", "dmtet_finetune"}, f"a task finished before it could be killed: {killed}"
    assert kfp_local == [60.0, 60.0], "exactly one retry of each, after the compiled 60 s back-off"
    keys = set()
    for function, task, prefix in TRAINING_TASKS:
        k = killed[function]
        assert 8 <= k["step"] < 24
        # The retry found the killed attempt's checkpoints: same key (a digest of the task's inputs,
        # not the run's id, which would defeat KFP's cache), task and prompt.
        key, stored_task, phash = k["keys"][0].split("/")[1:4]
        assert re.fullmatch(r"[0-9a-f]{16}", key) and stored_task == task
        assert {x.split("/")[1] for x in k["keys"]} == {key}
        resumed = re.findall(rf"{prefix}: resuming from stored checkpoint at step (\d+) \((\S+)\)", out)
        assert resumed == [(str(k["step"]), f"ckpt-retry/{key}/{task}/{phash}")]
        metrics = json.loads(next((tmp_path / "root").rglob(f"{prefix}/renders/metrics.json")).read_text())
        assert metrics["steps"] == 24 and metrics["steps_this_run"] == 24 - k["step"]
        assert store.latest_checkpoint(key, task, phash)[0] == 24
        keys.add(key)
        print(f"{prefix}: killed after step {k['step']} was stored; the retry resumed there and ran to 24")
    assert {o.key.split("/")[1] for o in store.list("checkpoints/")} == keys
    _check_outputs(tmp_path / "root")
