"""Per-iteration time of NeRF + SDS training at 64x64 on this machine, split by phase.

Runs the trainer's own step with the tiny guidance model (built from configs) under the
``cpu`` preset, once with the hash grid compiled and once on the plain eager PyTorch path.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from dreamfusion.config import compose
from dreamfusion.config.presets import PRESETS
from dreamfusion.guidance.tiny import build_tiny_model
from dreamfusion.stages.cli import quiet_libraries
from dreamfusion.train.trainer import Trainer

WARMUP, STEPS = 10, 30


def measure(overrides: list[str], folder: str) -> dict[str, float]:
    trainer = Trainer(compose(overrides), folder, progress=False)
    for _ in range(WARMUP):
        trainer.train_step()
    sync()
    trainer.times = type(trainer.times)()
    began = time.perf_counter()
    for _ in range(STEPS):
        trainer.train_step()
    sync()
    out = trainer.times.mean()
    out["total"] = (time.perf_counter() - began) / STEPS
    return out


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(os.path.join(tmp, "tiny"))
        base = PRESETS["cpu"] + [
            f"model.guidance.model_key={model}",
            "model.prompt=a red cube",
            f"trainer.max_steps={WARMUP + STEPS}",
        ]
        rows = {
            "cpu preset, compiled hash grid": measure(base, tmp),
            "cpu preset, eager PyTorch": measure(base + ["trainer.compile=false"], tmp),
        }
        if torch.cuda.is_available():
            seed = [
                f"model.guidance.model_key={model}",
                "model.prompt=a red cube",
                "trainer.precision=32",
                f"trainer.max_steps={WARMUP + STEPS}",
                "trainer.accelerator=cuda",
            ]
            rows["seed defaults, cuda, eager"] = measure(seed, tmp)
            rows["cpu preset, cuda, eager"] = measure(base + ["trainer.accelerator=cuda", "trainer.compile=false"], tmp)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, 64x64 renders, batch 1, "
        f"{STEPS} steps after {WARMUP} warm-up steps (latent warm-up phase included)"
    )
    print(f"{'configuration':34s} {'grid':>7s} {'render':>7s} {'guidance':>9s} {'backward':>9s} {'total s/it':>11s}")
    for name, t in rows.items():
        phases = f"{t['grid']:7.3f} {t['render']:7.3f} {t['guidance']:9.3f} {t['backward']:9.3f}"
        print(f"{name:34s} {phases} {t['total']:11.3f}")
    print("(phase times on cuda are approximate: kernels run asynchronously; totals are synchronised)")
    fast, slow = rows["cpu preset, compiled hash grid"]["total"], rows["cpu preset, eager PyTorch"]["total"]
    print(f"eager / compiled: {slow / fast:.2f}x")


if __name__ == "__main__":
    main()
