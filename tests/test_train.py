"""End-to-end training on a CPU with a tiny diffusers model built from configs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from dreamfusion.config import compose, interpolations, leaf_paths, track_reads
from dreamfusion.errors import ConfigError
from dreamfusion.train.checkpoint import load_checkpoint
from dreamfusion.train.trainer import Trainer


def stage(out, overrides, **kw):
    cmd = [sys.executable, "-m", "dreamfusion.stages.nerf_sds", "--output", str(out), "--quiet", *overrides]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_pruning_keeps_the_newest_checkpoint_of_this_run(tmp_path):
    """A folder holding later step files (another run's) keeps them and this run's newest: pruning
    removes only this run's older ones."""
    from dreamfusion.train.trainer import prune

    for step in (2, 4, 6, 900):
        (tmp_path / f"step-{step:06d}.pt").write_bytes(b"x")
    assert [p.name for p in prune(tmp_path, 6)] == ["step-000002.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000004.pt", "step-000006.pt", "step-000900.pt"]


def test_resume_point_is_checked_before_any_model_is_built(tmp_path, tiny_overrides, capsys):
    import time as _time

    from dreamfusion.stages import cli, nerf_sds

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    for path, message in ((tmp_path / "none.pt", "does not exist"), (bad, "bad.pt")):
        began = _time.perf_counter()
        rc = cli.run(nerf_sds.main, ["--output", str(tmp_path / "out"), *tiny_overrides,
                                     f"model.resume_from_checkpoint={path}"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
        assert _time.perf_counter() - began < 5 and not (tmp_path / "out").exists()


def test_twenty_steps_end_to_end(tmp_path, tiny_overrides):
    p = stage(
        tmp_path,
        tiny_overrides
        + [
            "trainer.max_steps=20",
            "trainer.val_check_interval=10",
            "trainer.checkpoint_interval=10",
            "model.prompt=a red cube",
        ],
    )
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "nerf-sds: 20 steps" in out
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["step"] == 20
    assert ckpt["config"]["model"]["prompt"] == "a red cube"
    assert ckpt["renderer"]["mean_density"] > 0 and ckpt["renderer"]["grid_updates"] == 5
    assert {"nerf", "background", "optimizer", "rng"} <= set(ckpt)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*.pt")) == ["step-000010.pt", "step-000020.pt"]
    for step in (10, 20):
        img = Image.open(tmp_path / "val" / f"step-{step:06d}.png")
        assert img.size == (2 * 24, 2 * 24)  # two views side by side, shaded over normals
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 20 and metrics["loss"] == metrics["loss"]  # not NaN
    assert set(metrics["step_times"]) == {"grid", "render", "guidance", "backward"}


def test_killed_run_resumes_to_the_same_weights(tmp_path, tiny_overrides):
    common = tiny_overrides + [
        "trainer.max_steps=6",
        "trainer.deterministic=true",
        "trainer.val_check_interval=0",
        "trainer.checkpoint_interval=3",
        "model.latent_iter_ratio=0.5",
    ]
    # Uninterrupted.
    full = Trainer(compose(common), tmp_path / "full", progress=False)
    full.fit()

    # Killed with SIGKILL once the step-3 checkpoint exists, then resumed from it.
    killed = tmp_path / "killed"
    p = stage(killed, common)
    ckpt3 = killed / "checkpoints" / "step-000003.pt"
    deadline = time.time() + 240
    while not ckpt3.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert ckpt3.exists()
    # The same command again: it continues from the folder's newest checkpoint, no flag needed.
    out, err = stage(killed, common).communicate(timeout=600)
    assert "nerf-sds: continuing from" in out and "(step 3)" in out, (out, err)
    b = torch.load(killed / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert b["step"] == 6

    a = full.state()
    for part in ("nerf", "background", "renderer"):
        for k in a[part]:
            assert torch.allclose(a[part][k].float(), b[part][k].float(), atol=1e-6, rtol=0), (part, k)
    assert float(a["renderer"]["mean_density"]) == pytest.approx(float(b["renderer"]["mean_density"]), abs=1e-6)
    history = json.loads((killed / "metrics.json").read_text())["history"]
    assert len(history) == len(full.times.history) and [h["loss"] for h in history] == pytest.approx(
        [h["loss"] for h in full.times.history], abs=1e-5)  # the whole run's history, not the steps since the resume

    # another run's settings into that folder: one line naming them, its checkpoints untouched
    before = sorted(p.name for p in (killed / "checkpoints").iterdir())
    out, err = stage(killed, common + ["trainer.seed=7", "model.guidance_scale=50"]).communicate(timeout=600)
    assert err.startswith("error: --output") and err.count("\n") == 1, err
    assert "holds a run with other settings (model.guidance_scale, trainer.seed)" in err and "--restart" in err
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == before
    # a larger max_steps continues the same run
    out, err = stage(killed, common[:-5] + ["trainer.max_steps=8", *common[-4:]]).communicate(timeout=600)
    assert "(step 6)" in out and json.loads((killed / "metrics.json").read_text())["steps"] == 8, (out, err)
    # --restart starts afresh: the old run's checkpoints are gone, the new run's newest is kept
    p = stage(killed, ["--restart", *common, "trainer.max_steps=2", "trainer.checkpoint_interval=1"])
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0 and "continuing" not in out, err
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["last.pt", "step-000001.pt",
                                                                           "step-000002.pt"]


def test_learning_rate_falls_to_its_final_ratio(tmp_path, tiny_overrides):
    """Constant until ``lr_decay_start`` of the run, then exponential down to ``lr_final_ratio`` at the
    last step (the analytic schedule below), each parameter group from its own rate; and a roll-back's
    halving multiplies it."""
    cfg = compose(tiny_overrides + ["trainer.max_steps=9", "trainer.val_check_interval=0",
                                    "trainer.checkpoint_interval=0", "model.optim.lr_final_ratio=0.01",
                                    "model.optim.lr_decay_start=0.5"])
    t = Trainer(cfg, tmp_path, progress=False)
    base = [g["lr"] for g in t.optimizer.param_groups]
    assert len(set(base)) == 2  # hash tables at 10x: both groups follow the schedule
    seen, real = [], t.optimizer.step

    def spy(*a, **k):
        seen.append([g["lr"] for g in t.optimizer.param_groups])
        return real(*a, **k)

    t.optimizer.step = spy
    t.fit()
    # decay from step 4.5 of 9 to the last step (8): 0.01 ** ((s - 4.5) / 3.5)
    expected = [1.0] * 5 + [0.01 ** ((s - 4.5) / 3.5) for s in (5, 6, 7, 8)]
    assert len(seen) == 9
    for lrs, e in zip(seen, expected):
        assert lrs == pytest.approx([b * e for b in base], rel=1e-12)
    assert seen[-1][0] == pytest.approx(0.01 * base[0])
    t.health["lr_scale"], t.step = 0.5, 8  # as after a roll-back
    seen.clear()
    t.train_step()
    assert seen[0] == pytest.approx([0.5 * 0.01 * b for b in base])
    for bad in ("model.optim.lr_final_ratio=0", "model.optim.lr_final_ratio=1.5", "model.optim.lr_decay_start=nan"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            compose(tiny_overrides + [bad])


def test_run_ends_on_the_average_of_its_last_weights(tmp_path, tiny_overrides):
    """``average_from=0.5`` of 9 steps: the weights after steps 5-8 (0-based), each alike, are what
    the run ends on, what its last checkpoint holds and what the occupancy grid is built from; a run
    resumed from a checkpoint in the middle of the average ends on the same weights."""
    common = tiny_overrides + ["trainer.max_steps=9", "trainer.val_check_interval=0", "trainer.deterministic=true",
                               "trainer.checkpoint_interval=3", "model.optim.average_from=0.5"]
    t = Trainer(compose(common), tmp_path / "full", progress=False)
    after, real = [], t.optimizer.step

    def spy(*a, **k):
        out = real(*a, **k)
        after.append([p.detach().clone() for g in t.optimizer.param_groups for p in g["params"]])
        return out

    t.optimizer.step = spy
    grid_from, update = [], t.scene.update_grid

    def spy_grid():
        grid_from.append([p.detach().clone() for g in t.optimizer.param_groups for p in g["params"]])
        update()

    t.scene.update_grid = spy_grid
    metrics = t.fit()
    assert len(after) == 9 and metrics["averaged_steps"] == 4
    mean = [torch.stack(ws).double().mean(0) for ws in zip(*after[5:])]
    params = [p for g in t.optimizer.param_groups for p in g["params"]]
    assert all(torch.allclose(p.double(), m, atol=1e-6, rtol=0) for p, m in zip(params, mean))
    assert not all(torch.equal(p, w) for p, w in zip(params, after[-1]))  # not the last step's weights
    last = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert "average" not in last and last["averaged_steps"] == 4
    assert all(torch.equal(v, t.scene.nerf.state_dict()[k]) for k, v in last["nerf"].items())
    assert all(torch.equal(p, w) for p, w in zip(params, grid_from[-1]))  # the grid was rebuilt from the average
    # from the step-6 checkpoint (the average of steps 5 holds one step): the same end
    mid = torch.load(tmp_path / "full" / "checkpoints" / "step-000006.pt", map_location="cpu", weights_only=True)
    assert mid["average"]["n"] == 1
    resume = f"model.resume_from_checkpoint={tmp_path / 'full' / 'checkpoints' / 'step-000006.pt'}"
    r = Trainer(compose(common + [resume]), tmp_path / "resumed", progress=False)
    assert r.fit()["averaged_steps"] == 4
    for k, v in r.scene.nerf.state_dict().items():
        assert torch.allclose(v.float(), t.scene.nerf.state_dict()[k].float(), atol=1e-6, rtol=0), k
    for bad in ("model.optim.average_from=-0.1", "model.optim.average_from=1.5", "model.optim.average_from=nan"):
        with pytest.raises(ConfigError, match="average_from"):
            compose(tiny_overrides + [bad])


@pytest.mark.parametrize("background", ["static", "random", "torchngp"])
def test_every_config_key_is_read(tmp_path, tiny_overrides, background):
    cfg = compose(
        tiny_overrides
        + [
            f"background={background}",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "trainer.checkpoint_interval=2",
            "model.export_video=true",
        ]
    )
    with track_reads() as reads:
        Trainer(cfg, tmp_path, progress=False).fit()
    links = interpolations(cfg)
    read = reads | {links[k] for k in reads if k in links}
    unread = [k for k in leaf_paths(cfg) if k not in read]
    assert unread == [], f"config keys consumed by nothing: {unread}"
    assert (tmp_path / "video.mp4").stat().st_size > 0


def test_prompt_expansion_then_training_without_text_encoder(tmp_path, tiny_overrides, tiny_model):
    from dreamfusion.data.prompt_set import PromptSet

    prompts = tmp_path / "prompts"
    run = [sys.executable, "-m", "dreamfusion.stages.prompt_expansion", "--output", str(prompts)]
    r = subprocess.run(run + tiny_overrides + ["model.prompt=a blue sphere's side"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ps = PromptSet.load(prompts)
    assert ps.views["back"] == "a blue sphere's side, back view"
    assert ps.embeddings["front"].shape[0] == 1
    # The same texts encoded directly give the same embeddings.
    from dreamfusion.guidance.stable_diffusion import GuidanceConfig, StableDiffusionGuidance

    g = StableDiffusionGuidance(GuidanceConfig(precision="32", model_key=str(tiny_model)))
    assert torch.allclose(g.encode_text([ps.views["side"]]), ps.embeddings["side"], atol=1e-6)

    p = stage(tmp_path / "run", ["--prompts", str(prompts), *tiny_overrides, "trainer.max_steps=2"])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["config"]["model"]["prompt"] == (
        "a blue sphere's side"
    )


def test_prompt_expansion_rejects_an_over_long_prompt(tmp_path, tiny_overrides):
    long = "a " + "very " * 40 + "red cube"  # the tiny tokenizer: a token a character
    run = [sys.executable, "-m", "dreamfusion.stages.prompt_expansion", "--output", str(tmp_path)]
    r = subprocess.run(run + tiny_overrides + [f"model.prompt={long}"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: the front prompt is") and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(run + ["--truncate"] + tiny_overrides + [f"model.prompt={long}"], capture_output=True, text=True)
    assert r.returncode == 0 and "cut to" in r.stderr


def test_one_prompt_rule_in_prompt_expansion_and_nerf_sds(tmp_path, tiny_overrides, capsys):
    """The same prompt gets the same one-line refusal from both stages: too many tokens for the text
    encoder (nerf-sds encoding its own prompts), too many characters, control characters."""
    from dreamfusion.stages import cli, nerf_sds, prompt_expansion

    tokens = "a " + "very " * 40 + "red cube"  # the tiny tokenizer: a token a character
    for prompt, message in ((tokens, "tokens; the text encoder takes at most 32: "),
                            ("x" * 5000, "error: model.prompt 'xxx"),
                            ("a\tred cube", "holds control characters ('\\t')")):
        for stage in (prompt_expansion, nerf_sds):
            out = tmp_path / f"{stage.__name__.rsplit('.', 1)[-1]}-{len(prompt)}"
            argv = ["--output", str(out), *tiny_overrides, "trainer.max_steps=1", f"model.prompt={prompt}"]
            rc = cli.run(stage.main, argv)
            err = capsys.readouterr().err
            assert rc == 2 and err.count("\n") == 1 and message in err, (stage.__name__, err)
            assert "5000 characters; at most 1000" in err if len(prompt) == 5000 else True
            assert not (out / "checkpoints").exists()


def test_template_expansion_is_bounded():
    import time

    from dreamfusion.data.templates import MAX_PROMPTS, expand_template
    from dreamfusion.errors import UserError

    assert len(expand_template("x" + "{a|b}" * 8)) == 256
    began = time.perf_counter()
    with pytest.raises(UserError, match=r"names 1,099,511,627,776 prompts; at most 500 a template"):
        expand_template("x" + "{a|b}" * 40)
    assert time.perf_counter() - began < 1.0  # counted, not expanded
    assert MAX_PROMPTS == 500


def test_template_expansion():
    from dreamfusion.data.templates import expand_template
    from dreamfusion.errors import UserError

    assert expand_template("a {red|blue} {cube|sphere}") == [
        "a red cube",
        "a red sphere",
        "a blue cube",
        "a blue sphere",
    ]
    assert expand_template("a hamburger") == ["a hamburger"]
    with pytest.raises(UserError):
        expand_template("a {red|} cube")
    with pytest.raises(UserError):
        expand_template("a {red cube")


def test_deterministic_runs_pin_cublas_and_algorithms(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        Trainer(compose(tiny_overrides + ["trainer.deterministic=true"]), tmp_path, progress=False)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
        Trainer(compose(tiny_overrides + ["trainer.deterministic=false"]), tmp_path, progress=False)
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_latent_warm_up_renders_no_colour(tmp_path, tiny_overrides, monkeypatch):
    """During the latent warm-up the model input is normals + opacity: no albedo, shading or
    background is computed for a colour image that would be thrown away."""
    trainer = Trainer(compose(tiny_overrides + ["model.latent_iter_ratio=0.5", "trainer.max_steps=4"]), tmp_path,
                      progress=False)
    calls = []
    for obj, name in ((trainer.scene.nerf, "albedo_from"), (trainer.scene.background, "forward"),
                      (trainer.scene, "material")):
        original = getattr(obj, name)
        monkeypatch.setattr(obj, name, lambda *a, _o=original, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    assert trainer.train_step()["latent"] and trainer.train_step()["latent"]
    assert calls == []
    assert not trainer.train_step()["latent"]
    assert {"albedo_from", "forward", "material"} <= set(calls)
