"""A step whose loss or gradient is not finite is skipped, counted, rolled back from and, when it
keeps coming, stops the run in one line. NaNs are injected into the real training loop."""

import json
import subprocess
import sys

import pytest
import torch

from dreamfusion.config import compose
from dreamfusion.errors import RunFailed
from dreamfusion.train.trainer import Trainer


def _trainer(tmp_path, tiny_overrides, *extra):
    cfg = compose(tiny_overrides + ["trainer.val_check_interval=0", "trainer.deterministic=true", *extra])
    return Trainer(cfg, tmp_path, progress=False)


def _poison(trainer, steps, kind):
    """Make the loss non-finite (``loss``) or its gradient non-finite with a finite loss (``grad``) at
    the given step numbers, each once."""
    real, left = trainer.loss, set(steps)

    def loss(sds, render, step, iters):
        total, parts = real(sds, render, step, iters)
        if step in left:
            left.discard(step)
            if kind == "loss":
                total = total * float("nan")
            else:  # d sqrt(s) / ds at s = 0 is inf, times the 0 upstream: NaN, while the value stays 0
                p = next(trainer.scene.parameters()) if hasattr(trainer.scene, "parameters") else render["opacity"]
                total = total + 0 * torch.sqrt((p * 0).sum())
        return total, parts

    trainer.loss = loss


def _weights(trainer):
    return [p.detach().clone() for g in trainer.optimizer.param_groups for p in g["params"]]


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_a_non_finite_step_is_skipped_and_counted(tmp_path, tiny_overrides, kind):
    t = _trainer(tmp_path, tiny_overrides, "trainer.max_steps=3", "trainer.checkpoint_interval=0")
    _poison(t, {1}, kind)
    t.train_step()
    before = _weights(t)
    moments = {k: v.clone() for k, v in t.optimizer.state_dict()["state"][0].items() if torch.is_tensor(v)}
    record = t.train_step()  # step 1: poisoned
    after = _weights(t)
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "a non-finite step changed the weights"
    assert all(torch.equal(moments[k], v) for k, v in t.optimizer.state_dict()["state"][0].items() if k in moments)
    assert t.health["nonfinite_steps"] == 1 and t.streak == 1
    assert (record["loss"] is None) == (kind == "loss")
    t.train_step()
    assert t.streak == 0 and any(not torch.equal(a, b) for a, b in zip(after, _weights(t)))
    metrics = t.fit()
    assert metrics["nonfinite_steps"] == 1 and metrics["rollbacks"] == 0
    json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: no NaN written


def test_k_in_a_row_roll_back_to_the_last_checkpoint_with_half_the_learning_rate(tmp_path, tiny_overrides):
    t = _trainer(
        tmp_path, tiny_overrides, "trainer.max_steps=10", "trainer.checkpoint_interval=4", "trainer.nonfinite_limit=3"
    )
    base = [g["lr"] for g in t.optimizer.param_groups]
    _poison(t, {5, 6, 7}, "loss")  # steps 5, 6, 7 (0-based) after the checkpoint at step 4
    seen = []
    step = t.train_step

    def spy():
        seen.append(t.step)
        return step()

    t.train_step = spy
    metrics = t.fit()
    # 0..7, then back to 4 (the checkpoint), then 4..9 again.
    assert seen == [0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7, 8, 9]
    assert (metrics["steps"], metrics["nonfinite_steps"], metrics["rollbacks"], metrics["lr_scale"]) == (10, 3, 1, 0.5)
    assert [g["lr"] for g in t.optimizer.param_groups] == [0.5 * lr for lr in base]
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert saved["health"]["rollbacks"] == 1 and saved["optimizer"]["param_groups"][0]["lr"] == 0.5 * base[0]


def test_without_a_checkpoint_a_roll_back_returns_to_the_start(tmp_path, tiny_overrides):
    t = _trainer(
        tmp_path, tiny_overrides, "trainer.max_steps=4", "trainer.checkpoint_interval=0", "trainer.nonfinite_limit=2"
    )
    start = _weights(t)
    _poison(t, {0, 1}, "loss")
    t.train_step(), t.train_step()
    t.rollback()
    assert t.step == 0 and all(torch.equal(a, b) for a, b in zip(start, _weights(t)))


def test_a_run_that_keeps_diverging_stops_in_one_line(tmp_path, tiny_overrides):
    t = _trainer(
        tmp_path, tiny_overrides, "trainer.max_steps=50", "trainer.checkpoint_interval=0", "trainer.nonfinite_limit=2"
    )
    real = t.loss

    def always(sds, render, step, iters):
        total, parts = real(sds, render, step, iters)
        return total * float("nan"), parts

    t.loss = always
    with pytest.raises(RunFailed, match=r"^training diverged: 2 non-finite steps in a row, 2 times") as e:
        t.fit()
    assert "\n" not in str(e.value) and t.health["rollbacks"] == 2 and t.health["nonfinite_steps"] == 4

    # Through the stage's command line, with the loss poisoned in that process: exit 2, one error line.
    poison = (
        "import sys; from dreamfusion import loss as L; from dreamfusion.stages import cli, nerf_sds; "
        "real = L.DreamFusionLoss.__call__; "
        "L.DreamFusionLoss.__call__ = lambda self, *a: (lambda t, p: (t * float('nan'), p))(*real(self, *a)); "
        "sys.exit(cli.run(nerf_sds.main))"
    )
    cmd = [
        sys.executable,
        "-c",
        poison,
        "--output",
        str(tmp_path / "stage"),
        "--quiet",
        *tiny_overrides,
        "trainer.max_steps=40",
        "trainer.nonfinite_limit=2",
        "trainer.val_check_interval=0",
        "trainer.checkpoint_interval=0",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged" in errors[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "stage" / "checkpoints" / "last.pt").exists()  # nothing diverged was saved
