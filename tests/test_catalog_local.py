"""catalog through kfp.local (SubprocessRunner, use_venv=False): two prompts fanned out by
ParallelFor (parallelism 2), checkpoints and the published catalog on a real S3 server
(SeaweedFS), credentials only in the environment; the bucket is then read back."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
pytest.importorskip("kfp")

PROMPTS = ["a red cube", "a blue sphere"]  # kfp.local runs tasks one by one: each prompt costs


def test_catalog_publishes_index_and_gallery(kfp_local, s3, tiny_overrides, monkeypatch):
    from dreamfusion.store import Store
    from pipelines.catalog import build_catalog

    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)  # the only way credentials reach the tasks
    Store(s3.endpoint, "ckpt-catalog", create_bucket=True).ensure_bucket()
    overrides = [o for o in tiny_overrides if not o.startswith("model.guidance.model_key")]
    model = next(o.split("=", 1)[1] for o in tiny_overrides if o.startswith("model.guidance.model_key"))

    build_catalog(parallelism=2)(
        catalog_name="nightly-test", prompts=PROMPTS, templates=[], date="2030-01-02", seed=0, iterations=4,
        guidance_scale=100.0, guidance="sd_huggingface", guidance_model=model, resolution=32,
        mesh_resolution=32, video_frames=4, video_size=48, video_renderer="raster",
        overrides=overrides + ["trainer.val_check_interval=0", "trainer.checkpoint_interval=2"],
        dmtet=True, dmtet_iterations=2, dmtet_resolution=32, dmtet_grid=32,
        dmtet_overrides=["renderer=torch_raster", "trainer.compile=false", "model.renderer.iso_resolution=48"],
        store_endpoint=s3.endpoint, checkpoint_bucket="ckpt-catalog", catalog_bucket="catalog-test",
    )
    assert kfp_local == [], "no task should have needed a retry"

    store = Store(s3.endpoint, "catalog-test")
    prefix = "nightly-test/2030-01-02"
    index = json.loads(store.get_bytes(f"{prefix}/index.json"))
    assert (index["catalog"], index["date"], index["prefix"]) == ("nightly-test", "2030-01-02", prefix)
    assert index["count"] == len(PROMPTS)
    assert sorted(e["prompt"] for e in index["items"]) == sorted(PROMPTS)
    assert len({e["folder"] for e in index["items"]}) == len(PROMPTS)  # one folder per prompt, nothing overwritten
    keys = {o.key for o in store.list(f"{prefix}/")}
    page = store.get_bytes(f"{prefix}/index.html").decode()
    for e in index["items"]:
        for field in ("glb", "obj", "video", "poster", "preview"):
            assert f"{prefix}/{e[field]}" in keys, (field, e)
        assert store.get_bytes(f"{prefix}/{e['glb']}")[:4] == b"glTF"
        assert store.get_bytes(f"{prefix}/{e['video']}")[4:8] == b"ftyp"
        assert store.get_bytes(f"{prefix}/{e['poster']}")[:8] == b"\x89PNG\r\n\x1a\n"
        assert e["prompt"] in page and f'href="{e["glb"]}"' in page and f'href="{e["video"]}"' in page
        assert f'src="{e["poster"]}"' in page and f'href="{e["preview"]}"' in page
    # nerf-sds and dmtet-finetune stored their checkpoints under a digest of each task's inputs (no
    # run id: it would defeat KFP's cache): per task, one key per prompt and one prompt hash under each
    ckpts = [o.key.split("/") for o in Store(s3.endpoint, "ckpt-catalog").list("checkpoints/")]
    assert {k[2] for k in ckpts} == {"nerf-sds-seed0", "dmtet-finetune"}
    for task in ("nerf-sds-seed0", "dmtet-finetune"):
        mine = [k for k in ckpts if k[2] == task]
        keys = {k[1] for k in mine}
        assert len(keys) == len(PROMPTS) and all(re.fullmatch(r"[0-9a-f]{16}", k) for k in keys), (task, keys)
        assert len({k[3] for k in mine}) == len(PROMPTS)
        assert all(len({c[3] for c in mine if c[1] == k}) == 1 for k in keys)


def test_catalog_name_and_date_are_checked_before_any_gpu_work():
    from components.prompt_expansion import expand_templates
    from dreamfusion.errors import UserError
    from dreamfusion.store.catalog import catalog_prefix

    assert catalog_prefix("nightly", "2030-01-02") == "nightly/2030-01-02"
    assert catalog_prefix("nightly").startswith("nightly/20")
    for name in ("", "a/b", "../x", "-x", "x" * 64, "nightly test"):
        with pytest.raises(UserError, match="catalog name"):
            catalog_prefix(name, "2030-01-02")
    for date in ("2030-1-2", "2030-02-30", "tomorrow", "2030-01-02/x"):
        with pytest.raises(UserError, match="catalog date"):
            catalog_prefix("nightly", date)
    with pytest.raises(SystemExit) as e:  # the catalog's first task: one line, no traceback
        expand_templates.python_func(prompts=["a red cube"], catalog_name="nightly", date="02/01/2030")
    assert str(e.value) == "error: catalog date '02/01/2030': must be YYYY-MM-DD (or empty for today)"
    assert expand_templates.python_func(prompts=["a red cube"], templates=["a {red|blue} cube"]) == [
        "a red cube", "a blue cube"]
    for prompts, templates, message in (
        ([], ["x" + "{a|b}" * 40], "names 1,099,511,627,776 prompts; at most 500 a template"),
        ([], ["x" + "{a|b}" * 8, "y" + "{a|b}" * 8], "more than 500 prompts; split it"),
        (["a\x00cube"], [], "holds control characters"),
        (["x" * 1001], [], "1001 characters; at most 1000"),
    ):
        with pytest.raises(SystemExit) as e:
            expand_templates.python_func(prompts=prompts, templates=templates)
        assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)


def test_publish_uploads_nothing_when_a_result_is_incomplete(s3, tmp_path, monkeypatch):
    from dreamfusion.errors import UserError
    from dreamfusion.store import Store
    from dreamfusion.store.catalog import Result, publish

    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    store = Store(s3.endpoint, "catalog-partial", create_bucket=True)
    results = []
    for i, prompt in enumerate(["a red cube", "a blue sphere"]):
        mesh, video = tmp_path / f"m{i}", tmp_path / f"v{i}"
        mesh.mkdir()
        video.mkdir()
        for f in ("mesh.glb", "mesh.obj"):
            (mesh / f).write_bytes(b"x")
        for f in ("turntable.mp4", "poster.png", "preview.html"):
            (video / f).write_bytes(b"x")
        results.append(Result(prompt, mesh, video))
    (tmp_path / "v1" / "poster.png").unlink()
    with pytest.raises(UserError, match=r"result for 'a blue sphere' lacks poster.png"):
        publish(store, "nightly", "2030-01-02", results)
    assert store.list("nightly/") == []
