"""The object store against a real S3 server: SeaweedFS ``weed mini`` on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from dreamfusion.store import PART_SIZE, Store, StoreError, checkpoint_key, prompt_hash
from dreamfusion.store.local_server import LocalS3, _free_port


def _store(s3, bucket="test-bucket", **kw):
    kw.setdefault("create_bucket", True)
    return Store(s3.endpoint, bucket, secure=False, **kw)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_get_list(s3_env, tmp_path):
    st = _store(s3_env)
    st.put_bytes("run/a.txt", b"alpha")
    f = tmp_path / "b.json"
    f.write_text('{"b": 1}')
    st.put_file("run/sub/b.json", f)
    st.put_bytes("other/c.txt", b"gamma")
    assert [o.key for o in st.list("run/")] == ["run/a.txt", "run/sub/b.json"]
    assert st.get_bytes("run/a.txt") == b"alpha"
    out = st.get_file("run/sub/b.json", tmp_path / "dl" / "b.json")
    assert out.read_text() == '{"b": 1}'
    assert st.exists("other/c.txt") and not st.exists("other/missing.txt")
    with pytest.raises(StoreError, match="no object 'run/missing'"):
        st.get_bytes("run/missing")
    assert not (tmp_path / "dl" / "b.json.part").exists()


def test_multipart_checkpoint_over_16mb(s3_env, tmp_path):
    import torch

    ckpt = tmp_path / "last.pt"
    torch.save({"step": 7, "weights": torch.randn(5 * 1024 * 1024)}, ckpt)  # 20 MiB of float32
    size = ckpt.stat().st_size
    assert size > PART_SIZE
    st = _store(s3_env)
    key = st.put_checkpoint(ckpt, "run-mp", "nerf-sds", prompt_hash("a red cube"), 7)
    info = st.stat(key)
    assert info.size == size
    assert info.etag.endswith("-2"), f"expected a 2-part multipart ETag, got {info.etag}"
    back = st.get_file(key, tmp_path / "back.pt")
    assert _sha(back.read_bytes()) == _sha(ckpt.read_bytes())
    assert torch.load(back, weights_only=True)["step"] == 7


def test_resume_from_latest(s3_env, tmp_path):
    st = _store(s3_env)
    ph = prompt_hash("a blue sphere")
    assert st.latest_checkpoint("run-r", "nerf-sds", ph) is None
    for step in (5, 10, 100, 20):  # key order must be numeric, not upload order
        f = tmp_path / f"c{step}.pt"
        f.write_bytes(f"step {step}".encode())
        st.put_checkpoint(f, "run-r", "nerf-sds", ph, step)
    assert st.latest_checkpoint("run-r", "nerf-sds", ph) == (100, checkpoint_key("run-r", "nerf-sds", ph, 100))
    step, path = st.download_latest_checkpoint("run-r", "nerf-sds", ph, tmp_path / "resume")
    assert step == 100 and path.read_bytes() == b"step 100"
    # other prompts, tasks and runs are separate: each finds its own latest, not this one's
    others = [("run-r", "nerf-sds", prompt_hash("a red cube"), 3), ("run-r", "dmtet-finetune", ph, 4),
              ("run-other", "nerf-sds", ph, 6)]
    for run, task, h, step in others:
        assert st.latest_checkpoint(run, task, h) is None
        f = tmp_path / f"{run}-{task}.pt"
        f.write_bytes(f"{run} {task} {step}".encode())
        st.put_checkpoint(f, run, task, h, step)
    for run, task, h, step in others:
        assert st.latest_checkpoint(run, task, h) == (step, checkpoint_key(run, task, h, step))
        got = st.download_latest_checkpoint(run, task, h, tmp_path / "other")[1].read_bytes()
        assert got == f"{run} {task} {step}".encode()
    assert st.latest_checkpoint("run-r", "nerf-sds", ph)[0] == 100
    # keep= prunes older ones
    f = tmp_path / "c200.pt"
    f.write_bytes(b"step 200")
    st.put_checkpoint(f, "run-r", "nerf-sds", ph, 200, keep=2)
    assert [s for s, _ in st._checkpoints("run-r", "nerf-sds", ph)] == [100, 200]


def test_wrong_credentials(s3_env, monkeypatch):
    _store(s3_env).put_bytes("x.txt", b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StoreError) as e:
        _store(s3_env, create_bucket=False).list()
    msg = str(e.value)
    assert "refused the credentials" in msg and "\n" not in msg
    assert "not-the-secret" not in msg


def test_no_credentials(monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(StoreError, match="no object-store credentials"):
        Store("127.0.0.1:9000", "bucket")


def test_minio_credential_names(s3, monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MINIO_ACCESS_KEY", s3.access_key)
    monkeypatch.setenv("MINIO_SECRET_KEY", s3.secret_key)
    _store(s3).put_bytes("minio-names.txt", b"read with MINIO_* names")
    assert _store(s3, create_bucket=False).get_bytes("minio-names.txt") == b"read with MINIO_* names"
    # They are what the store signs with: a wrong MINIO_SECRET_KEY is refused.
    monkeypatch.setenv("MINIO_SECRET_KEY", "not-the-secret")
    with pytest.raises(StoreError, match="refused the credentials"):
        _store(s3, create_bucket=False).get_bytes("minio-names.txt")


def test_missing_bucket(s3_env):
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        _store(s3_env, bucket="no-such-bucket", create_bucket=False).list()
    with pytest.raises(StoreError, match="bucket names"):
        Store(s3_env.endpoint, "B")


def test_unreachable_endpoint(s3_env):
    port = _free_port()
    t = time.monotonic()
    with pytest.raises(StoreError, match=r"unreachable: could not check bucket .* after 3 tries"):
        Store(f"http://127.0.0.1:{port}", "test-bucket", retries=2, backoff=0.05).list()
    assert time.monotonic() - t < 10


def test_local_server_ports_are_distinct_and_below_the_ephemeral_range(tmp_path):
    """weed mini exits at start when two of its services share a port, or when a port was taken
    first, as a port in the kernel's ephemeral range can be by any outgoing connection."""
    path = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if not path.is_file():
        pytest.skip("not Linux")
    ephemeral_low = int(path.read_text().split()[0])
    for i in range(20):
        ports = LocalS3(tmp_path / str(i)).ports
        used = [*ports.values(), ports["admin.port"] + 10000]  # the admin worker's port
        assert len(set(used)) == len(used)
        assert all(1024 <= p < ephemeral_low for p in used)


def test_server_restart_mid_operation(tmp_path, monkeypatch):
    """The server goes down during a run of uploads (and during a multipart upload); the
    retries carry every operation through once it is back, and nothing is lost."""
    server = LocalS3(tmp_path / "weed").start()
    try:
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        st = Store(server.endpoint, "restart", create_bucket=True, retries=12, backoff=0.25, max_backoff=2.0)
        payloads = {f"obj/{i:02d}": os.urandom(1024 * (i + 1)) for i in range(12)}
        big = tmp_path / "big.pt"
        big.write_bytes(os.urandom(PART_SIZE + 3 * 1024 * 1024))
        done: list[str] = []
        errors: list[BaseException] = []

        def writer():
            try:
                for i, (k, v) in enumerate(payloads.items()):
                    st.put_bytes(k, v)
                    done.append(k)
                    if i == 5:
                        st.put_file("obj/big.pt", big)
                        done.append("obj/big.pt")
                    time.sleep(0.1)
            except BaseException as e:  # surfaced in the main thread
                errors.append(e)

        th = threading.Thread(target=writer)
        th.start()
        while len(done) < 3:
            time.sleep(0.02)
        t0 = time.monotonic()
        server.stop()  # mid-run: the writer is between uploads or inside one
        print("stop took", time.monotonic() - t0)
        down_at = len(done)
        time.sleep(1.5)
        t0 = time.monotonic()
        server.start()
        print("start took", time.monotonic() - t0)
        th.join(120)
        print("writer done after", time.monotonic() - t0)
        assert not th.is_alive() and not errors, errors
        assert down_at < len(payloads)
        assert len(done) == len(payloads) + 1
        keys = [o.key for o in st.list("obj/")]
        assert keys == sorted([*payloads, "obj/big.pt"])
        for k, v in payloads.items():
            assert st.get_bytes(k) == v, k
        assert _sha(st.get_bytes("obj/big.pt")) == _sha(big.read_bytes())

        # a download that starts while the server is down succeeds once it is back
        server.stop()
        got: dict[str, bytes] = {}
        th = threading.Thread(target=lambda: got.setdefault("v", st.get_bytes("obj/03")))
        th.start()
        time.sleep(1.0)
        server.start()
        th.join(60)
        assert got.get("v") == payloads["obj/03"]
    finally:
        server.stop()
