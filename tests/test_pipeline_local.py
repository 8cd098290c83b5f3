"""text_to_3d through kfp.local (SubprocessRunner, use_venv=False) with tiny settings: end to end,
and with nerf-sds SIGKILLed mid-run, retried by kfp.local as compiled, resuming from the store."""

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


def _check_outputs(root: Path):
    glbs = list(root.rglob("mesh.glb"))
    mp4s = list(root.rglob("turntable.mp4"))
    previews = [p for p in root.rglob("preview") if p.is_file()]
    ckpts = [p for p in root.rglob("checkpoint") if p.is_file()]
    assert len(glbs) == 1 and glbs[0].read_bytes()[:4] == b"glTF"
    assert len(mp4s) == 1 and mp4s[0].read_bytes()[4:8] == b"ftyp"
    assert len(previews) == 1 and b"<html" in previews[0].read_bytes()[:2000].lower()
    assert len(ckpts) == 1 and ckpts[0].stat().st_size > 0
    stats = json.loads(next(root.rglob("mesh_stats.json")).read_text())
    assert stats["faces"] > 0


def test_text_to_3d_locally(tmp_path, kfp_local, tiny_overrides):
    from pipelines.text_to_3d import text_to_3d

    overrides, model = _split(tiny_overrides)
    text_to_3d(
        prompt="a red cube", seed=0, iterations=4, guidance_scale=100.0, guidance="sd_huggingface",
        guidance_model=model, resolution=32, mesh_resolution=32, video_frames=4, video_size=48,
        overrides=overrides + ["trainer.val_check_interval=0", "trainer.checkpoint_interval=2"],
        checkpoint_store_endpoint="",
    )
    assert kfp_local == []  # no retries
    _check_outputs(tmp_path / "root")


def _nerf_sds_processes():
    """This test's descendants running the nerf_sds component (the 'pod': sh and its python)."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if "--function_to_execute" in cmd and cmd[cmd.index("--function_to_execute") + 1] == "nerf_sds":
            found.append(p)
    return found


def test_nerf_sds_sigkilled_then_retried_resumes_from_store(tmp_path, kfp_local, s3, tiny_overrides, monkeypatch,
                                                            capfd):
    from dreamfusion.store import Store
    from pipelines.text_to_3d import text_to_3d

    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)  # credentials reach the tasks only through the environment
    store = Store(s3.endpoint, "ckpt-retry", create_bucket=True)
    store.ensure_bucket()
    killed = {}

    def kill_after_a_stored_checkpoint():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            steps = [int(m.group(1)) for o in store.list("checkpoints/") if (m := re.search(r"step-(\d+)\.pt$", o.key))]
            procs = _nerf_sds_processes()
            if steps and max(steps) >= 8 and procs:
                for p in procs:  # the whole pod goes, as on preemption or an OOM kill
                    p.send_signal(signal.SIGKILL)
                killed.update(step=max(steps), keys=[o.key for o in store.list("checkpoints/")])
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_after_a_stored_checkpoint, daemon=True)
    watcher.start()
    overrides, model = _split(tiny_overrides)
    text_to_3d(
        prompt="a red cube", seed=0, iterations=24, guidance_scale=100.0, guidance="sd_huggingface",
        guidance_model=model, resolution=32, mesh_resolution=32, video_frames=4, video_size=48,
        video_renderer="raster",
        overrides=overrides + ["trainer.val_check_interval=0", "trainer.checkpoint_interval=4"],
        checkpoint_store_endpoint=s3.endpoint, checkpoint_bucket="ckpt-retry",
    )
    watcher.join(5)
    out = capfd.readouterr().out
    assert killed, "nerf-sds finished before it could be killed"
    assert 8 <= killed["step"] < 24
    assert kfp_local == [60.0], "exactly one retry, after the compiled 60 s back-off"
    # The retry found the killed attempt's checkpoints: same key (a digest of the task's inputs,
    # not the run's id, which would defeat KFP's cache), task and prompt.
    key, task, phash = killed["keys"][0].split("/")[1:4]
    assert re.fullmatch(r"[0-9a-f]{16}", key) and task == "nerf-sds-seed0"
    assert {k.split("/")[1] for k in killed["keys"]} == {key}
    resumed = re.findall(r"nerf-sds: resuming from stored checkpoint at step (\d+) \((\S+)\)", out)
    assert resumed == [(str(killed["step"]), f"ckpt-retry/{key}/{task}/{phash}")]
    assert killed["step"] > 0
    metrics = json.loads(next((tmp_path / "root").rglob("renders/metrics.json")).read_text())
    assert metrics["steps"] == 24 and metrics["steps_this_run"] == 24 - killed["step"]
    assert store.latest_checkpoint(key, task, phash)[0] == 24
    assert {o.key.split("/")[1] for o in store.list("checkpoints/")} == {key}
    _check_outputs(tmp_path / "root")
    print(f"killed after step {killed['step']} was stored; the retry resumed there and ran to 24")
