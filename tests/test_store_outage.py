"""The object store's faults against a real S3 server: a 60 s outage in the middle of a nerf-sds
run is waited out (one warning saying what is waited for and for how long, one line when the
store is back) and every checkpoint arrives; a corrupt stored checkpoint is detected by its
SHA-256 and the previous one is used; an unreachable endpoint is one line after the patience."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from dreamfusion.store import Store, StoreError, checkpoint_key, file_sha256, prompt_hash
from dreamfusion.store.local_server import LocalS3, _free_port


def test_corrupt_stored_checkpoint_falls_back_to_the_previous_one(s3_env, tmp_path, caplog):
    store = Store(s3_env.endpoint, "ckpt-corrupt", create_bucket=True)
    good = {}
    for step in (4, 8, 12):
        p = tmp_path / f"step-{step}.pt"
        p.write_bytes(os.urandom(4096 + step))
        good[step] = p.read_bytes()
        store.put_checkpoint(p, "key", "task", "ph", step)
    assert store.stat(checkpoint_key("key", "task", "ph", 12)).sha256 == file_sha256(tmp_path / "step-12.pt")

    # step 12 truncated and step 8 bit-flipped in the store, each keeping the digest it was stored with
    for step, data in ((12, good[12][:1000]), (8, bytes([good[8][0] ^ 1]) + good[8][1:])):
        store.client.put_object("ckpt-corrupt", checkpoint_key("key", "task", "ph", step), _io(data), len(data),
                                metadata={"sha256": file_sha256(tmp_path / f"step-{step}.pt")})
    with caplog.at_level(logging.WARNING, logger="dreamfusion.store"):
        step, path = store.download_latest_checkpoint("key", "task", "ph", tmp_path / "down")
    assert step == 4 and path.read_bytes() == good[4]
    corrupt = [r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage()]
    assert len(corrupt) == 2 and "step-000000012.pt" in corrupt[0] and "using the previous one" in corrupt[0]
    assert sorted(p.name for p in (tmp_path / "down").iterdir()) == [path.name]  # the corrupt copies are gone


def _io(data: bytes):
    import io

    return io.BytesIO(data)


def test_unreachable_endpoint_is_said_once_then_one_error(s3_env, caplog):
    port = _free_port()
    began = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="dreamfusion.store"):
        with pytest.raises(StoreError, match=r"unreachable: could not check bucket .* over \d+ s") as e:
            Store(f"http://127.0.0.1:{port}", "test-bucket", patience=3, backoff=0.2, max_backoff=0.5).list()
    assert 2 <= time.monotonic() - began < 8 and "\n" not in str(e.value)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "retrying for up to 3 s" in warnings[0], warnings


def test_nerf_sds_waits_out_a_60_second_outage(tmp_path, monkeypatch, tiny_overrides):
    """The server stops right after the first stored checkpoint and comes back 60 s later; the run
    (patience 120 s) finishes, and every checkpoint it kept is in the store, intact."""
    server = LocalS3(tmp_path / "weed").start()
    try:
        env = {**os.environ, **server.env, "DREAMFUSION_STORE_PATIENCE": "120"}
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        store = Store(server.endpoint, "outage", create_bucket=True)
        store.ensure_bucket()
        cmd = [sys.executable, "-m", "dreamfusion.stages.nerf_sds", "--output", str(tmp_path / "run"), "--quiet",
               "--store-endpoint", server.endpoint, "--store-bucket", "outage", "--key", "outage-run",
               "--store-keep", "0", *tiny_overrides, "model.prompt=a red cube", "trainer.max_steps=12",
               "trainer.checkpoint_interval=4", "trainer.val_check_interval=0"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        ph = prompt_hash("a red cube", "")
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and not store.latest_checkpoint("outage-run", "nerf-sds", ph):
            time.sleep(0.1)
        assert p.poll() is None, p.communicate()
        server.stop()
        down = time.monotonic()
        time.sleep(60)
        assert p.poll() is None, "the run gave up during the outage: " + p.communicate()[1][-2000:]
        server.start()
        out, err = p.communicate(timeout=300)
        print(f"\noutage: {time.monotonic() - down:.0f} s from stop to the run's end")
        assert p.returncode == 0, err[-3000:]
        assert err.count("retrying for up to 120 s") == 1, err
        assert "succeeded after" in err and "Traceback" not in err
        stored = store.list(f"checkpoints/outage-run/nerf-sds/{ph}/")
        assert [o.key.rsplit("/", 1)[-1] for o in stored] == [f"step-{s:09d}.pt" for s in (4, 8, 12)]
        for o in stored:
            assert store.stat(o.key).sha256 == file_sha256(store.get_file(o.key, tmp_path / "check" / "x.pt"))
        assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 12
    finally:
        server.stop()


def test_checkpoint_key_covers_the_package_version_and_formats(monkeypatch):
    import dreamfusion
    from dreamfusion.stages.training import inputs_digest
    from dreamfusion.train import checkpoint

    base = inputs_digest(None, ["trainer.seed=0"])
    assert inputs_digest(None, ["trainer.seed=0"]) == base
    monkeypatch.setattr(dreamfusion, "__version__", "99.0.0")
    assert inputs_digest(None, ["trainer.seed=0"]) != base
    monkeypatch.undo()
    monkeypatch.setattr(checkpoint, "FORMAT", "dreamfusion-nerf/2")
    assert inputs_digest(None, ["trainer.seed=0"]) != base


def test_a_failure_no_retry_can_mend_is_not_trained_again(s3_env, tmp_path, tiny_overrides):
    """A store-backed nerf-sds run that diverges (its loss poisoned) records why beside its
    checkpoints; the task's retry (the same command, as KFP retries it) stops at once with that
    line instead of training again; --restart clears it."""
    poison = (
        "import sys; from dreamfusion import loss as L; from dreamfusion.stages import cli, nerf_sds; "
        "real = L.DreamFusionLoss.__call__; "
        "L.DreamFusionLoss.__call__ = lambda self, *a: (lambda t, p: (t * float('nan'), p))(*real(self, *a)); "
        "sys.exit(cli.run(nerf_sds.main))"
    )
    Store(s3_env.endpoint, "failures", create_bucket=True).ensure_bucket()
    args = ["--quiet", "--store-endpoint", s3_env.endpoint, "--store-bucket", "failures", "--key", "diverges",
            *tiny_overrides, "model.prompt=a red cube", "trainer.max_steps=30", "trainer.checkpoint_interval=0",
            "trainer.nonfinite_limit=2"]
    env = {**os.environ, **s3_env.env}
    first = subprocess.run([sys.executable, "-c", poison, "--output", str(tmp_path / "a1"), *args], env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 2 and "training diverged" in first.stderr, first.stderr[-2000:]
    marker = f"checkpoints/diverges/nerf-sds/{prompt_hash('a red cube', '')}/failed.txt"
    assert "training diverged" in Store(s3_env.endpoint, "failures").get_bytes(marker).decode()

    began = time.monotonic()
    retry = subprocess.run([sys.executable, "-m", "dreamfusion.stages.nerf_sds", "--output", str(tmp_path / "a2"),
                            *args], env=env, capture_output=True, text=True, timeout=600)
    assert retry.returncode == 2 and retry.stderr.count("\n") == 1, retry.stderr
    assert retry.stderr.startswith("error: not retried: an earlier attempt with these inputs failed (training diverged")
    assert not (tmp_path / "a2" / "checkpoints").exists()  # nothing trained
    print(f"\nretry refused in {time.monotonic() - began:.1f} s")

    restart = subprocess.run([sys.executable, "-m", "dreamfusion.stages.nerf_sds", "--output",
                              str(tmp_path / "a3"), "--restart", *args[:-3], "trainer.max_steps=2"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert restart.returncode == 0, restart.stderr[-2000:]
    assert not Store(s3_env.endpoint, "failures").exists(marker)
