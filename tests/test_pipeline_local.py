"""text_to_3d through kfp.local (SubprocessRunner, use_venv=False) with tiny settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
pytest.importorskip("kfp")


def test_text_to_3d_locally(tmp_path, tiny_overrides, monkeypatch):
    from kfp import local

    from pipelines.text_to_3d import text_to_3d

    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    overrides = [o for o in tiny_overrides if not o.startswith("model.guidance.model_key")]
    model = next(o.split("=", 1)[1] for o in tiny_overrides if o.startswith("model.guidance.model_key"))
    run = text_to_3d(
        prompt="a red cube", seed=0, iterations=4, guidance_scale=100.0, guidance="sd_huggingface",
        guidance_model=model, resolution=32, mesh_resolution=32, video_frames=4, video_size=48,
        overrides=overrides + ["trainer.val_check_interval=0", "trainer.checkpoint_interval=2"],
        checkpoint_store_endpoint="",
    )
    root = tmp_path / "root"
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
