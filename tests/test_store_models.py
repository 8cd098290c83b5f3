"""Model weights mirrored in the object store (air-gapped clusters), against a real S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamfusion.errors import UserError
from dreamfusion.store import Store
from dreamfusion.store.models import (
    MANIFEST,
    cache_folder,
    check_model_id,
    fetch_model,
    mirror_model,
    model_prefix,
    parse_model_url,
)

SHAPES = Path(__file__).resolve().parents[1] / "dreamfusion" / "prior" / "shapes"
ROOT = Path(__file__).resolve().parents[1]
BUCKET = "models-test"


def _store(s3, bucket=BUCKET):
    return Store(s3.endpoint, bucket, secure=False, create_bucket=True)


def _folder(tmp_path: Path, name: str = "model", **files: bytes) -> Path:
    folder = tmp_path / name
    files = files or {"unet/config.json": b'{"a": 1}', "unet/weights.safetensors": os.urandom(70_000),
                      "tokenizer/vocab.json": b"{}"}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def _run(main, argv, capsys):
    from dreamfusion.stages import cli

    rc = cli.run(main, argv)
    out, err = capsys.readouterr()
    return rc, out, err


# -- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("good", ["shapes", "stabilityai/stable-diffusion-2-1-base", "a/b/c@v1.0+fp16", "x" * 200])
def test_model_id_accepted(good):
    assert check_model_id(good) == good
    assert model_prefix(good) == f"models/{good}"


@pytest.mark.parametrize(
    "bad, words",
    [("", "non-empty"), ("x" * 201, "at most 200"), ("a/../b", "'..' part"), ("..", "'..' part"),
     ("/abs", "start or end with '/'"), ("a/", "start or end"), ("a//b", "empty"), ("a\nb", "control character"),
     ("a\x00b", "control character"), ("a b", "letters, digits"), ("a\\b", "letters, digits")],
)
def test_model_id_refused(bad, words):
    with pytest.raises(UserError, match="model id") as e:
        check_model_id(bad)
    assert words in str(e.value) and "\n" not in str(e.value).replace(repr(bad), "")


def test_model_url():
    assert parse_model_url("s3://b-1/models/org/name") == ("b-1", "models/org/name")
    for bad in ("s3://b-1", "s3://b-1/models/", "s3://b-1/weights/x", "s3:///models/x", "s3://b/models/../x"):
        with pytest.raises(UserError, match="model key"):
            parse_model_url(bad)


def test_select_hub_files():
    from dreamfusion.stages.mirror_model import select_hub_files

    listing = [
        "model_index.json", "feature_extractor/preprocessor_config.json", "v2-1_512-ema-pruned.ckpt",
        "scheduler/scheduler_config.json", "tokenizer/merges.txt", "tokenizer/vocab.json",
        "tokenizer/tokenizer_config.json", "text_encoder/config.json", "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.bin", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.fp16.bin",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin",
    ]
    chosen = select_hub_files(listing)
    assert chosen["unet/diffusion_pytorch_model.fp16.safetensors"] == "unet/diffusion_pytorch_model.safetensors"
    assert chosen["text_encoder/model.fp16.safetensors"] == "text_encoder/model.safetensors"
    assert chosen["vae/diffusion_pytorch_model.safetensors"] == "vae/diffusion_pytorch_model.safetensors"
    assert sorted(chosen.values()) == sorted(set(chosen.values()))  # one file per mirror name
    assert not [f for f in chosen if f.endswith((".bin", ".ckpt")) or f.startswith("feature_extractor")]
    assert {"model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json"} <= set(chosen)


# -- mirror and fetch ---------------------------------------------------------------------------
def test_mirror_fetch_and_cache(s3_env, tmp_path, monkeypatch):
    st = _store(s3_env)
    manifest = mirror_model(st, SHAPES, "models/shapes")
    keys = [o.key for o in st.list("models/shapes/")]
    assert f"models/shapes/{MANIFEST}" in keys and "models/shapes/unet/diffusion_pytorch_model.safetensors" in keys
    assert len(manifest["files"]) == len(keys) - 1

    cache = tmp_path / "cache"
    folder = fetch_model(st, "models/shapes", cache)
    assert folder == cache_folder(cache, BUCKET, "models/shapes") == cache / "mirrors" / BUCKET / "models" / "shapes"
    for f in manifest["files"]:
        assert (folder / f["path"]).read_bytes() == (SHAPES / f["path"]).read_bytes()
    assert not folder.with_name("shapes.partial").exists()

    # A complete cache is used as it is: no file is downloaded, nothing is rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    calls = []
    original = Store.get_file
    monkeypatch.setattr(Store, "get_file", lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    assert fetch_model(st, "models/shapes", cache) == folder
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == mtimes


def test_remirror_replaces_files_and_cache(s3_env, tmp_path):
    st = _store(s3_env)
    a = _folder(tmp_path, "a", **{"unet/config.json": b"1", "unet/old.bin": b"old", "vae/w": b"w"})
    b = _folder(tmp_path, "b", **{"unet/config.json": b"22", "vae/w": b"w"})
    mirror_model(st, a, "models/re")
    cache = tmp_path / "cache"
    first = fetch_model(st, "models/re", cache)
    assert (first / "unet" / "old.bin").exists()
    mirror_model(st, b, "models/re")
    assert "models/re/unet/old.bin" not in [o.key for o in st.list("models/re/")]  # the old mirror's extra file
    second = fetch_model(st, "models/re", cache)
    assert second == first and (second / "unet" / "config.json").read_bytes() == b"22"
    assert not (second / "unet" / "old.bin").exists()


def test_corrupt_object_is_detected(s3_env, tmp_path):
    st = _store(s3_env)
    src = _folder(tmp_path)
    mirror_model(st, src, "models/corrupt")
    data = (src / "unet" / "weights.safetensors").read_bytes()
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(255 - x for x in data[:100]) + data[100:])  # same size, other bytes
    st.put_file("models/corrupt/unet/weights.safetensors", bad)
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as e:
        fetch_model(st, "models/corrupt", cache)
    msg = str(e.value)
    assert "\n" not in msg and "corrupt" in msg and "unet/weights.safetensors" in msg and "sha256" in msg
    final = cache_folder(cache, BUCKET, "models/corrupt")
    assert not final.exists() and not final.with_name("corrupt.partial").exists()

    # Another size is caught by the listing, before any download.
    st.put_bytes("models/corrupt/unet/weights.safetensors", b"short")
    with pytest.raises(UserError, match="incomplete: unet/weights.safetensors is 5 bytes"):
        fetch_model(st, "models/corrupt", cache)
    assert not final.exists()


def test_killed_download_leaves_nothing(s3_env, tmp_path, monkeypatch):
    st = _store(s3_env)
    mirror_model(st, _folder(tmp_path), "models/killed")
    cache = tmp_path / "cache"
    final = cache_folder(cache, BUCKET, "models/killed")
    original, calls = Store.get_file, []

    def dies(self, key, path):
        calls.append(key)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill in the middle of the second file
        return original(self, key, path)

    monkeypatch.setattr(Store, "get_file", dies)
    with pytest.raises(KeyboardInterrupt):
        fetch_model(st, "models/killed", cache)
    assert not final.exists()
    monkeypatch.setattr(Store, "get_file", original)
    # What a SIGKILL would leave (a .partial folder) is cleared by the next fetch.
    junk = final.with_name("killed.partial") / "unet" / "weights.safetensors"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"half")
    folder = fetch_model(st, "models/killed", cache)
    assert folder == final and (folder / MANIFEST).exists() and not junk.parent.parent.exists()


def test_unwritable_cache_is_one_line(s3_env, tmp_path):
    st = _store(s3_env)
    mirror_model(st, _folder(tmp_path), "models/ro")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UserError, match="cannot write the model cache .*: set DREAMFUSION_CACHE"):
        fetch_model(st, "models/ro", tmp_path / "file" / "cache")  # a file where a folder should be


def test_unfinished_mirror_is_not_used(s3_env, tmp_path):
    st = _store(s3_env)
    mirror_model(st, _folder(tmp_path), "models/half")
    st.delete(f"models/half/{MANIFEST}")  # as an upload that stopped before its manifest
    with pytest.raises(UserError, match="no model mirror at s3://models-test/models/half"):
        fetch_model(st, "models/half", tmp_path / "cache")
    assert not (tmp_path / "cache" / "mirrors" / BUCKET / "models" / "half").exists()


# -- stages -------------------------------------------------------------------------------------
def test_mirror_model_cli_local_folder(s3_env, tmp_path):
    env = {**os.environ, **s3_env.env, "DREAMFUSION_CACHE": str(tmp_path / "cache")}
    r = subprocess.run(
        [sys.executable, "-m", "dreamfusion.stages.mirror_model", "--model", str(SHAPES), "--name", "shapes-cli",
         "--store-endpoint", s3_env.endpoint, "--store-bucket", "fresh-bucket", "--no-store-secure",
         "--create-bucket"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "model.guidance.model_key=s3://fresh-bucket/models/shapes-cli"
    assert not (tmp_path / "cache").exists()  # a local folder is mirrored without a download
    st = _store(s3_env, "fresh-bucket")
    assert st.exists(f"models/shapes-cli/{MANIFEST}")


def test_mirror_model_cli_bad_input(s3_env, tmp_path, capsys):
    from dreamfusion.stages import mirror_model as stage

    common = ["--store-endpoint", s3_env.endpoint, "--store-bucket", BUCKET, "--no-store-secure"]
    cases = [
        (["--model", str(tmp_path / "nope")], "no such folder"),
        (["--model", str(_folder(tmp_path, "x", **{"a.txt": b"a"}))], "not a diffusers model folder"),
        (["--model", str(SHAPES), "--revision", "main"], "hub models only"),
        (["--model", str(SHAPES), "--name", "../up"], "'..' part"),
        (["--model", "not a/hub/id"], "neither a folder nor a hub model id"),
        (["--model", "org/model"], "could not download 'org/model' from the model hub"),  # HF_HUB_OFFLINE=1
    ]
    _store(s3_env)  # the bucket exists: the hub case gets as far as the download
    for argv, words in cases:
        rc, out, err = _run(stage.main, argv + common, capsys)
        assert rc == 2, (argv, err)
        assert err.startswith("error: ") and words in err and err.count("\n") == 1, (argv, err)


def test_prompt_expansion_reads_the_mirror(s3_env, tmp_path, capsys, monkeypatch):
    from dreamfusion.data.prompt_set import PromptSet
    from dreamfusion.stages import prompt_expansion

    mirror_model(_store(s3_env), SHAPES, "models/shapes")
    monkeypatch.setenv("DREAMFUSION_CACHE", str(tmp_path / "cache"))
    url = f"s3://{BUCKET}/models/shapes"
    common = ["guidance=shapes", "model.prompt=a red cube"]
    rc, _, err = _run(prompt_expansion.main, ["--output", str(tmp_path / "local")] + common, capsys)
    assert rc == 0, err
    argv = ["--output", str(tmp_path / "s3"), "--store-endpoint", s3_env.endpoint, "--no-store-secure"]
    rc, _, err = _run(prompt_expansion.main, argv + common + [f"model.guidance.model_key={url}"], capsys)
    assert rc == 0, err
    local, mirrored = PromptSet.load(tmp_path / "local"), PromptSet.load(tmp_path / "s3")
    assert mirrored.model_key == url  # the key, not the cache folder
    assert local.embeddings.keys() == mirrored.embeddings.keys()
    for k, v in local.embeddings.items():
        assert torch.equal(v, mirrored.embeddings[k]), k
    assert (tmp_path / "cache" / "mirrors" / BUCKET / "models" / "shapes" / MANIFEST).exists()


def test_nerf_sds_reads_the_mirror(s3_env, tmp_path, capsys, monkeypatch):
    from conftest import TINY

    from dreamfusion.stages import nerf_sds, prompt_expansion

    mirror_model(_store(s3_env), SHAPES, "models/shapes")
    monkeypatch.setenv("DREAMFUSION_CACHE", str(tmp_path / "cache"))
    url = f"s3://{BUCKET}/models/shapes"
    store = ["--store-endpoint", s3_env.endpoint, "--no-store-secure"]
    model = ["guidance=shapes", f"model.guidance.model_key={url}", "model.prompt=a blue sphere"]
    rc, _, err = _run(prompt_expansion.main, ["--output", str(tmp_path / "prompts")] + store + model, capsys)
    assert rc == 0, err
    # The endpoint alone serves the model; checkpoints stay local without --store-bucket.
    argv = ["--output", str(tmp_path / "run"), "--prompts", str(tmp_path / "prompts"), "--quiet"] + store
    rc, out, err = _run(nerf_sds.main, argv + model + TINY + ["trainer.max_steps=2"], capsys)
    assert rc == 0, err
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["step"] == 2
    assert ckpt["config"]["model"]["guidance"]["model_key"] == url
    assert ckpt["config"]["model"]["guidance"]["local_files_only"] is True  # as the shapes guidance sets it


def test_missing_mirror_is_one_line(s3_env, tmp_path, capsys, monkeypatch):
    from dreamfusion.stages import prompt_expansion

    _store(s3_env)
    monkeypatch.setenv("DREAMFUSION_CACHE", str(tmp_path / "cache"))
    argv = ["--output", str(tmp_path / "out"), "--store-endpoint", s3_env.endpoint, "--no-store-secure",
            "guidance=shapes", f"model.guidance.model_key=s3://{BUCKET}/models/never-mirrored"]
    rc, _, err = _run(prompt_expansion.main, argv, capsys)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: no model mirror at s3://{BUCKET}/models/never-mirrored")
    assert not (tmp_path / "out").exists()


def test_s3_key_needs_an_endpoint(tmp_path, capsys, monkeypatch):
    """Checked before any model loads or any store is reached (no S3 server here)."""
    from dreamfusion.data.prompt_set import PromptSet
    from dreamfusion.stages import nerf_sds, prompt_expansion

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("dreamfusion.stages.cli.quiet_libraries", no_model)
    url = "s3://some-bucket/models/sd"
    key = f"model.guidance.model_key={url}"
    rc, _, err = _run(prompt_expansion.main, ["--output", str(tmp_path / "p"), key], capsys)
    assert rc == 2 and err == f"error: model.guidance.model_key={url} needs --store-endpoint\n"
    rc, _, err = _run(nerf_sds.main, ["--output", str(tmp_path / "n"), key], capsys)
    assert rc == 2 and err == f"error: model.guidance.model_key={url} needs --store-endpoint\n"
    rc, _, err = _run(prompt_expansion.main, ["--output", str(tmp_path / "p"), "model.guidance.model_key=s3://b"],
                      capsys)
    assert rc == 2 and "must be s3://<bucket>/models/<model id>" in err and err.count("\n") == 1
    # A prompt set encoded for another model is refused before the mirror is fetched.
    views = ("front", "side", "back", "overhead")
    emb = {k: torch.zeros(1, 4, 8) for k in (*views, "negative")}
    PromptSet("a", "", {v: "a" for v in views}, "dreamfusion-shapes", emb).save(tmp_path / "ps")
    argv = ["--output", str(tmp_path / "n"), "--prompts", str(tmp_path / "ps"), "--store-endpoint", "127.0.0.1:1", key]
    rc, _, err = _run(nerf_sds.main, argv, capsys)
    assert rc == 2 and "the prompt set was encoded for 'dreamfusion-shapes'" in err and err.count("\n") == 1
    assert json.loads((tmp_path / "ps" / "prompts.json").read_text())["model_key"] == "dreamfusion-shapes"
