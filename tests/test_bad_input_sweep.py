"""A sweep of bad input over every stage's command line: empty, oversized, unicode and control
characters, negative and huge numbers, NaN and inf, wrong types, missing, truncated, random-bytes
and wrong-kind artifacts, unreachable S3 and wrong credentials. Each must end with exit code 2 and
one ``error:`` line, no traceback, and the output folder's earlier contents intact."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import pytest

from dreamfusion.stages import cli

EARLIER = b"an earlier run's output"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_overrides):
    """A NeRF checkpoint, a prompt set, a GLB, and broken copies of each."""
    from dreamfusion.export.synthetic import SMALL_BLOB, blob_checkpoint
    from dreamfusion.stages import mesh_export, prompt_expansion

    d = tmp_path_factory.mktemp("inputs")
    ckpt = blob_checkpoint(d / "nerf" / "last.pt", SMALL_BLOB)
    assert cli.run(prompt_expansion.main, ["--output", str(d / "prompts"), *tiny_overrides,
                                           "model.prompt=a red cube"]) == 0
    assert cli.run(mesh_export.main, ["--checkpoint", str(ckpt), "--output", str(d / "mesh"), "--resolution", "32",
                                      "--texture", "64", "--quiet"]) == 0
    data = ckpt.read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    (d / "random.pt").write_bytes(os.urandom(4096))
    (d / "empty.pt").write_bytes(b"")
    (d / "random.glb").write_bytes(os.urandom(4096))
    for name, damage in (("prompts-truncated", "json"), ("prompts-random", "emb"), ("prompts-empty", "none")):
        shutil.copytree(d / "prompts", d / name)
        if damage == "json":
            p = d / name / "prompts.json"
            p.write_bytes(p.read_bytes()[:20])
        elif damage == "emb":
            (d / name / "embeddings.safetensors").write_bytes(os.urandom(2048))
        else:
            for f in (d / name).iterdir():
                f.unlink()
    (d / "config.yaml").write_bytes(b"\x00\xff" + os.urandom(200))
    return {"ckpt": ckpt, "glb": d / "mesh" / "mesh.glb", "dir": d}


def _free_endpoint() -> str:
    from dreamfusion.store.local_server import _free_port

    return f"127.0.0.1:{_free_port()}"


M = "model.prompt=a red cube"
CASES = {
    # prompt-expansion
    "pe empty prompt": ("prompt_expansion", ["model.prompt="]),
    "pe blank prompt": ("prompt_expansion", ["model.prompt='   '"]),
    "pe oversized prompt": ("prompt_expansion", ["model.prompt=" + "a" * 5000]),
    "pe control character": ("prompt_expansion", ["model.prompt=a\x1bcube"]),
    "pe tokens over the limit": ("prompt_expansion", ["model.prompt=" + "red " * 200]),
    "pe unknown key": ("prompt_expansion", [M, "model.nosuch=1"]),
    "pe unknown option": ("prompt_expansion", [M, "guidance=nosuch"]),
    "pe random-bytes config": ("prompt_expansion", ["--config", "{dir}/config.yaml", M]),
    "pe missing config": ("prompt_expansion", ["--config", "{dir}/none.yaml", M]),
    # nerf-sds
    "ns NaN guidance scale": ("nerf_sds", [M, "model.guidance_scale=nan"]),
    "ns inf guidance scale": ("nerf_sds", [M, "model.guidance_scale=inf"]),
    "ns negative guidance scale": ("nerf_sds", [M, "model.guidance_scale=-1"]),
    "ns inf loss weight": ("nerf_sds", [M, "model.loss.lambda_opacity=inf"]),
    "ns negative steps": ("nerf_sds", [M, "trainer.max_steps=-5"]),
    "ns huge steps": ("nerf_sds", [M, "trainer.max_steps=1000000000000"]),
    "ns steps of the wrong type": ("nerf_sds", [M, "trainer.max_steps=abc"]),
    "ns float where an int goes": ("nerf_sds", [M, "trainer.max_steps=1.5"]),
    "ns negative seed": ("nerf_sds", [M, "trainer.seed=-1"]),
    "ns huge render": ("nerf_sds", [M, "model.data.train_dataset.width=100000"]),
    "ns huge grid": ("nerf_sds", [M, "model.renderer.grid_resolution=100000"]),
    "ns unicode key": ("nerf_sds", [M, "modèl.prompt=x"]),
    "ns missing prompt set": ("nerf_sds", ["--prompts", "{dir}/none"]),
    "ns truncated prompt set": ("nerf_sds", ["--prompts", "{dir}/prompts-truncated"]),
    "ns random-bytes prompt set": ("nerf_sds", ["--prompts", "{dir}/prompts-random"]),
    "ns empty prompt set": ("nerf_sds", ["--prompts", "{dir}/prompts-empty"]),
    "ns prompt set that is a file": ("nerf_sds", ["--prompts", "{ckpt}"]),
    "ns random-bytes resume point": ("nerf_sds", [M, "model.resume_from_checkpoint={dir}/random.pt"]),
    "ns truncated resume point": ("nerf_sds", [M, "model.resume_from_checkpoint={dir}/truncated.pt"]),
    "ns bad task name": ("nerf_sds", ["--task", "../x", M]),
    "ns unreachable store": ("nerf_sds", ["--store-endpoint", "{free}", "--store-bucket", "b", M]),
    "ns malformed store endpoint": ("nerf_sds", ["--store-endpoint", "http://a b", "--store-bucket", "b", M]),
    "ns wrong store credentials": ("nerf_sds", ["--store-endpoint", "{s3}", "--store-bucket", "sweep", M]),
    # dmtet-finetune
    "dm random-bytes checkpoint": ("dmtet_finetune", ["--checkpoint", "{dir}/random.pt"]),
    "dm truncated checkpoint": ("dmtet_finetune", ["--checkpoint", "{dir}/truncated.pt"]),
    "dm empty checkpoint": ("dmtet_finetune", ["--checkpoint", "{dir}/empty.pt"]),
    "dm GLB as checkpoint": ("dmtet_finetune", ["--checkpoint", "{glb}"]),
    "dm NaN weight": ("dmtet_finetune", ["--checkpoint", "{ckpt}", "model.loss.lambda_normal_consistency=nan"]),
    "dm grid not offered": ("dmtet_finetune", ["--checkpoint", "{ckpt}", "model.renderer.grid_resolution=48"]),
    # mesh-export
    "me missing checkpoint": ("mesh_export", ["--checkpoint", "{dir}/none.pt"]),
    "me truncated checkpoint": ("mesh_export", ["--checkpoint", "{dir}/truncated.pt"]),
    "me random-bytes checkpoint": ("mesh_export", ["--checkpoint", "{dir}/random.pt"]),
    "me GLB as checkpoint": ("mesh_export", ["--checkpoint", "{glb}"]),
    "me negative resolution": ("mesh_export", ["--checkpoint", "{ckpt}", "--resolution", "-1"]),
    "me huge resolution": ("mesh_export", ["--checkpoint", "{ckpt}", "--resolution", "100000"]),
    "me NaN iso": ("mesh_export", ["--checkpoint", "{ckpt}", "--iso", "nan"]),
    "me inf iso": ("mesh_export", ["--checkpoint", "{ckpt}", "--iso", "inf"]),
    "me zero faces": ("mesh_export", ["--checkpoint", "{ckpt}", "--faces", "0"]),
    "me texture of the wrong type": ("mesh_export", ["--checkpoint", "{ckpt}", "--texture", "1e9"]),
    "me name with a newline": ("mesh_export", ["--checkpoint", "{ckpt}", "--name", "a\nb"]),
    "me oversized name": ("mesh_export", ["--checkpoint", "{ckpt}", "--name", "n" * 300]),
    # video-render
    "vr missing checkpoint": ("video_render", ["--checkpoint", "{dir}/none.pt"]),
    "vr random-bytes checkpoint": ("video_render", ["--checkpoint", "{dir}/random.pt"]),
    "vr random-bytes mesh": ("video_render", ["--mesh", "{dir}/random.glb"]),
    "vr random-bytes viewer GLB": ("video_render", ["--checkpoint", "{ckpt}", "--glb", "{dir}/random.glb"]),
    "vr negative frames": ("video_render", ["--checkpoint", "{ckpt}", "--frames", "-1"]),
    "vr huge frames": ("video_render", ["--checkpoint", "{ckpt}", "--frames", "1000000000"]),
    "vr zero size": ("video_render", ["--checkpoint", "{ckpt}", "--size", "0"]),
    "vr huge size": ("video_render", ["--checkpoint", "{ckpt}", "--size", "100000"]),
    "vr NaN fps": ("video_render", ["--checkpoint", "{ckpt}", "--fps", "nan"]),
    "vr inf fps": ("video_render", ["--checkpoint", "{ckpt}", "--fps", "inf"]),
    "vr NaN elevation": ("video_render", ["--checkpoint", "{ckpt}", "--elevation", "nan"]),
    "vr bad background": ("video_render", ["--checkpoint", "{ckpt}", "--background", "1,2"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_loses_nothing(case, inputs, tiny_overrides, tmp_path, capsys, monkeypatch,
                                                 s3_env):
    stage, argv = CASES[case]
    monkeypatch.setenv("DREAMFUSION_STORE_PATIENCE", "1")
    if "credentials" in case:
        from dreamfusion.store import Store

        Store(s3_env.endpoint, "sweep", create_bucket=True).ensure_bucket()
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    values = {"dir": inputs["dir"], "ckpt": inputs["ckpt"], "glb": inputs["glb"], "free": _free_endpoint(),
              "s3": s3_env.endpoint}
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_bytes(EARLIER)
    args = [a.format(**values) for a in argv]
    extra = list(tiny_overrides) if stage in ("prompt_expansion", "nerf_sds") else []
    # options (and their values) first, then the overrides: argparse takes no option after them
    options = [a for a in args if a.startswith("--") or "=" not in a]
    overrides = [a for a in args if a not in options]
    main = importlib.import_module(f"dreamfusion.stages.{stage}").main
    rc = cli.run(main, ["--output", str(out), *options, *extra, *overrides])
    err = capsys.readouterr().err
    assert rc == 2, (case, err[-2000:])
    assert err.startswith("error: ") and err.count("\n") == 1, (case, err[-2000:])
    assert "Traceback" not in err
    assert (out / "earlier.txt").read_bytes() == EARLIER and sorted(p.name for p in out.iterdir()) == ["earlier.txt"]


def test_read_only_output_folder(tmp_path, inputs, capsys):
    """A folder this process may not write in (when not root: root writes anywhere)."""
    if os.geteuid() == 0:
        pytest.skip("root may write in any folder")
    from dreamfusion.stages import mesh_export

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc = cli.run(mesh_export.main, ["--checkpoint", str(inputs["ckpt"]), "--output", str(ro / "out")])
        err = capsys.readouterr().err
        assert rc == 2 and "no permission to write" in err and err.count("\n") == 1
    finally:
        ro.chmod(0o755)


def test_the_sweep_covers_every_stage():
    stages = {s for s, _ in CASES.values()}
    assert stages == {p.stem for p in Path(cli.__file__).parent.glob("*.py")} - {
        "__init__", "cli", "training", "settings", "mirror_model"}


PIPELINE_CASES = {
    "negative iterations": ({"iterations": -1}, "trainer.max_steps=-1"),
    "huge iterations": ({"iterations": 10**12}, "must be at most 1,000,000"),
    "NaN guidance scale": ({"guidance_scale": float("nan")}, "model.guidance_scale=nan"),
    "inf guidance scale": ({"guidance_scale": float("inf")}, "model.guidance_scale=inf"),
    "zero resolution": ({"resolution": 0}, "model.data.train_dataset.width=0"),
    "huge resolution": ({"resolution": 100000}, "must be at most 2,048"),
    "negative seed": ({"seed": -3}, "trainer.seed=-3"),
    "unknown guidance": ({"guidance": "nosuch"}, "nosuch"),
    "bad override": ({"overrides": ["model.nosuch=1"]}, "model.nosuch"),
    "override without =": ({"overrides": ["oops"]}, "key=value"),
    "DMTet grid not offered": ({"dmtet": True, "dmtet_grid": 48}, "dmtet-finetune: model.renderer.grid_resolution=48"),
    "DMTet negative steps": ({"dmtet": True, "dmtet_iterations": -2}, "dmtet-finetune: trainer.max_steps=-2"),
    "DMTet bad override": ({"dmtet": True, "dmtet_overrides": ["model.loss.lambda_laplacian_smoothness=nan"]},
                           "dmtet-finetune: model.loss.lambda_laplacian_smoothness=nan"),
    "mesh grid too small": ({"mesh_resolution": 4}, "resolution 4 is impossible"),
    "empty prompt": ({"prompt": " "}, "model.prompt"),
    "control character in prompt": ({"prompt": "a\x07cube"}, "not readable"),
    "oversized prompt": ({"prompt": "x" * 2000}, "2000 characters; at most 1000"),
}


@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_pipeline_parameters_fail_the_first_task_in_one_line(case, tmp_path, tiny_overrides):
    """The text_to_3d parameters as prompt-expansion (the first task) receives them."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kfp.dsl import Artifact

    from components.prompt_expansion import prompt_expansion

    bad, message = PIPELINE_CASES[case]
    out = Artifact(uri=str(tmp_path / "ps"))
    out.path = str(tmp_path / "ps")
    model = next(o.split("=", 1)[1] for o in tiny_overrides if o.startswith("model.guidance.model_key"))
    args = dict(prompt="a red cube", prompt_set=out, guidance="sd_huggingface", guidance_model=model,
                overrides=[o for o in tiny_overrides  # the resolution parameter sets the training size
                           if not o.startswith(("model.guidance.model_key", "model.data.train_dataset."))],
                dmtet_overrides=["renderer=torch_raster", "trainer.compile=false"])
    with pytest.raises(SystemExit) as e:
        prompt_expansion.python_func(**{**args, **bad})
    text = str(e.value)
    assert text.startswith("error: ") and "\n" not in text and message in text, text
    assert not (tmp_path / "ps").exists()
