"""No credential reaches a log, a metric, an artifact, a stored object or compiled YAML: the stages
run against a real S3 server whose access key and secret are known to this test (and nowhere
else), with the credentials only in their environment; then every byte they wrote or printed,
every object in the store and the compiled pipelines are searched for the credentials (as text
and base64)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

from dreamfusion.store import Store
from dreamfusion.store.local_server import LocalS3

ROOT = Path(__file__).resolve().parents[1]
ACCESS = "AKIALEAKCHECK7Q3Z"
SECRET = "leak-check-secret-4f9c2e71b0a8d653"


def _needles() -> list[bytes]:
    out = []
    for s in (ACCESS, SECRET):
        out += [s.encode(), base64.b64encode(s.encode()), s.encode("utf-16-le")]
    return out


def _hits(data: bytes, where: str) -> list[str]:
    return [f"{where} holds {n[:6]!r}..." for n in _needles() if n in data]


def test_credentials_appear_in_no_output(tmp_path, tiny_overrides, monkeypatch):
    server = LocalS3(tmp_path / "weed", access_key=ACCESS, secret_key=SECRET).start()
    try:
        env = {k: v for k, v in os.environ.items() if "ACCESS_KEY" not in k and "SECRET" not in k}
        env.update({"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET})
        for k, v in (("AWS_ACCESS_KEY_ID", ACCESS), ("AWS_SECRET_ACCESS_KEY", SECRET)):
            monkeypatch.setenv(k, v)
        Store(server.endpoint, "leaks", create_bucket=True).ensure_bucket()
        out = tmp_path / "out"
        store = ["--store-endpoint", server.endpoint, "--store-bucket", "leaks"]
        logs = []

        def run(module, *args):
            r = subprocess.run([sys.executable, "-m", f"dreamfusion.stages.{module}", *args], env=env,
                               capture_output=True, timeout=600)
            logs.append((module, r.stdout + r.stderr))
            assert r.returncode == 0, r.stderr.decode()[-2000:]

        run("nerf_sds", "--output", str(out / "nerf"), *store, *tiny_overrides, "model.prompt=a red cube",
            "trainer.max_steps=4", "trainer.checkpoint_interval=2", "trainer.val_check_interval=2")
        run("mesh_export", "--checkpoint", str(out / "nerf" / "checkpoints" / "last.pt"), "--output",
            str(out / "mesh"), "--resolution", "32", "--texture", "64")
        run("video_render", "--checkpoint", str(out / "nerf" / "checkpoints" / "last.pt"), "--output",
            str(out / "video"), "--frames", "2", "--size", "32", "--renderer", "raster", "--glb",
            str(out / "mesh" / "mesh.glb"), "--viewer-texture", "64")
        # a wrong secret: the error names the problem, not the secret
        bad = {**env, "AWS_SECRET_ACCESS_KEY": SECRET[::-1]}
        r = subprocess.run([sys.executable, "-m", "dreamfusion.stages.nerf_sds", "--output", str(out / "bad"),
                            *store, *tiny_overrides, "model.prompt=a red cube", "trainer.max_steps=2"],
                           env=bad, capture_output=True, timeout=600)
        assert r.returncode == 2 and b"refused the credentials" in r.stderr
        logs.append(("nerf_sds wrong secret", r.stdout + r.stderr))

        found = []
        for module, text in logs:
            found += _hits(text, f"{module}'s log")
        files = [p for p in out.rglob("*") if p.is_file()]
        assert len(files) > 10
        for p in files:
            found += _hits(p.read_bytes(), str(p.relative_to(out)))
        st = Store(server.endpoint, "leaks")
        objects = st.list("")
        assert objects, "the run stored its checkpoints"
        for o in objects:
            found += _hits(st.get_bytes(o.key), f"s3://leaks/{o.key}")
        for y in sorted((ROOT / "pipelines").glob("*.yaml")) + sorted((ROOT / "manifests").rglob("*.yaml")):
            found += _hits(y.read_bytes(), str(y.relative_to(ROOT)))
        assert found == [], found
        print(f"\nno credential in {len(files)} files, {len(objects)} stored objects, {len(logs)} logs")
    finally:
        server.stop()
