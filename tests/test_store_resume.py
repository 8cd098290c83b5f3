"""nerf-sds with object-store checkpoints: killed with SIGKILL, the retried task (a fresh pod:
an empty output folder) finds the newest stored checkpoint and finishes from there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from dreamfusion.store import Store, prompt_hash


def _stage(out, args, env):
    cmd = [sys.executable, "-m", "dreamfusion.stages.nerf_sds", "--output", str(out), "--quiet", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_sigkill_then_retry_resumes_from_store(tmp_path, s3_env, tiny_overrides):
    s3 = s3_env
    env = {**os.environ, **s3.env}
    store = Store(s3.endpoint, "ckpt-resume", create_bucket=True)
    store.ensure_bucket()
    args = [
        "--store-endpoint", f"http://{s3.endpoint}", "--store-bucket", "ckpt-resume",
        "--run-id", "run-0001", "--task", "nerf-sds",
        *tiny_overrides,
        "model.prompt=a red cube", "trainer.max_steps=24", "trainer.checkpoint_interval=4",
        "trainer.val_check_interval=0",
    ]
    ph = prompt_hash("a red cube", compose_negative(tiny_overrides))

    first = _stage(tmp_path / "attempt-1", args, env)
    deadline = time.time() + 300
    latest = None
    while time.time() < deadline and first.poll() is None:
        latest = store.latest_checkpoint("run-0001", "nerf-sds", ph)
        if latest and latest[0] >= 8:
            break
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[1]
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    assert first.returncode == -signal.SIGKILL
    stored_step = store.latest_checkpoint("run-0001", "nerf-sds", ph)[0]
    assert 0 < stored_step < 24

    retry = _stage(tmp_path / "attempt-2", args, env)  # a fresh pod: nothing local survives
    out, err = retry.communicate(timeout=300)
    assert retry.returncode == 0, err
    assert f"resuming from stored checkpoint at step {stored_step}" in out
    metrics = json.loads((tmp_path / "attempt-2" / "metrics.json").read_text())
    assert metrics["steps"] == 24 and metrics["steps_this_run"] == 24 - stored_step
    assert store.latest_checkpoint("run-0001", "nerf-sds", ph)[0] == 24
    assert len(store.list(f"checkpoints/run-0001/nerf-sds/{ph}/")) == 2  # --store-keep 2
    print(f"killed after step {stored_step} was stored; retry ran {metrics['steps_this_run']} steps to 24")


def test_key_is_a_digest_of_the_inputs_and_an_identical_run_finds_it_complete(tmp_path, s3_env, tiny_overrides):
    """Without --key the checkpoints are keyed by the inputs: an identical second run (another
    output folder, as a later pipeline run) resumes from the first's final checkpoint, trains
    nothing and still writes every output; another seed is another key."""
    from dreamfusion.stages.training import inputs_digest

    s3 = s3_env
    env = {**os.environ, **s3.env}
    store = Store(s3.endpoint, "ckpt-digest", create_bucket=True)
    store.ensure_bucket()
    overrides = [*tiny_overrides, "model.prompt=a red cube", "trainer.max_steps=4", "trainer.checkpoint_interval=2",
                 "trainer.val_check_interval=2"]
    args = ["--store-endpoint", s3.endpoint, "--store-bucket", "ckpt-digest", *overrides]
    key = inputs_digest(None, overrides)
    ph = prompt_hash("a red cube", compose_negative(tiny_overrides))
    outs = []
    for attempt in ("run-1", "run-2"):
        p = _stage(tmp_path / attempt, args, env)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(out)
    assert "resuming" not in outs[0]
    assert f"resuming from stored checkpoint at step 4 (ckpt-digest/{key}/nerf-sds/{ph})" in out
    assert (tmp_path / "run-2" / "checkpoints" / "last.pt").stat().st_size > 0
    assert list((tmp_path / "run-2" / "val").glob("*.png"))
    metrics = json.loads((tmp_path / "run-2" / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["steps_this_run"] == 0
    assert {o.key.split("/")[1] for o in store.list("checkpoints/")} == {key}
    assert inputs_digest(None, overrides + ["trainer.seed=1"]) != key


def test_store_errors_are_one_line(tmp_path, s3, tiny_overrides):
    env = {**os.environ, **s3.env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    base = ["--store-bucket", "ckpt-resume", "--run-id", "r", *tiny_overrides, "trainer.max_steps=1"]
    p = _stage(tmp_path / "a", ["--store-endpoint", s3.endpoint, *base], env)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: object store") and "refused the credentials" in lines[-1]
    assert "Traceback" not in err and "wrong-secret" not in err

    env = {**os.environ, **s3.env}
    p = _stage(tmp_path / "b", ["--store-endpoint", s3.endpoint, *base[:1], "missing-bucket", *base[2:]], env)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and err.strip().splitlines()[-1] == (
        f"error: bucket 'missing-bucket' does not exist on http://{s3.endpoint}"
    )


def compose_negative(overrides):
    from dreamfusion.config import compose

    return compose(overrides + ["model.prompt=a red cube"]).model.negative_prompt
