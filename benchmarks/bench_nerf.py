"""Per-iteration time of NeRF + SDS training on this machine, per path, split by phase.

Runs the trainer's own step with the tiny guidance model (built from configs) at the seed's
defaults and with the ``cpu`` preset, on every path this machine has:

- ``pytorch eager``: the PyTorch references (``trainer.compile=false trainer.kernels=torch``);
- ``pytorch compiled``: the hash grid under torch.compile (needs a C++ compiler);
- ``kernels``: dreamfusion.kernels' Triton kernels (a CUDA device, triton and a C compiler);
- ``tcnn``: tiny-cuda-nn's hash grid (``nerf=tcnn``, where tinycudann imports on a CUDA device),
  rendering with the kernels where they run.

A path the machine lacks prints one line saying why. The steps measured are of the image phase
(after the latent warm-up: ``model.latent_iter_ratio=0``, so the VAE encodes every render) and
do not include an occupancy-grid update: ``grid`` is one update's time over
``renderer.update_interval`` (what it adds to every step on average).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import torch

from dreamfusion import gpu, kernels
from dreamfusion.config import compose
from dreamfusion.config.presets import PRESETS
from dreamfusion.guidance.tiny import build_tiny_model
from dreamfusion.renderer.scene import describe_path
from dreamfusion.stages.cli import quiet_libraries
from dreamfusion.train.trainer import Trainer

PHASES = ("grid", "render", "guidance", "backward")
# (warm-up steps, measured steps) for a setting on a device. A seed-default step takes seconds on a
# CPU (1024 samples a ray, 2^19-entry tables): a few steps only. Warm-up and measured steps all
# fall between two grid updates (steps 1-15).
STEPS = {("seed defaults", "cpu"): (1, 1), ("seed defaults", "cuda"): (5, 10), ("cpu preset", "cpu"): (5, 10),
         ("cpu preset", "cuda"): (5, 10)}
SETTINGS = {"seed defaults": [], "cpu preset": PRESETS["cpu"]}


def tcnn_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"tinycudann needs a CUDA device ({device.type} here)"
    return None if gpu.available("tinycudann") else "tinycudann does not import"


# path -> (its overrides, why it cannot run on a device, or None)
PATHS = {
    "pytorch eager": (["trainer.compile=false", "trainer.kernels=torch"], lambda device: None),
    "pytorch compiled": (["trainer.compile=true", "trainer.kernels=torch"], lambda device: gpu.compile_unavailable()),
    "kernels": (["trainer.compile=false", "trainer.kernels=auto"], kernels.unavailable),
    "tcnn": (["nerf=tcnn", "trainer.compile=false", "trainer.kernels=auto"], tcnn_unavailable),
}


def measure(overrides: list[str], folder: str, warmup: int, steps: int) -> tuple[dict[str, float], str]:
    """Mean seconds a step by phase and in all (``total``), and the path the scene reports."""
    trainer = Trainer(compose(overrides), folder, progress=False)
    for _ in range(1 + warmup):  # step 0 updates the grid (and compiles what is compiled)
        trainer.train_step()
    sync()
    began = time.perf_counter()
    trainer.scene.update_grid()
    sync()
    grid = (time.perf_counter() - began) / trainer.scene.renderer.update_interval
    trainer.times = type(trainer.times)()
    began = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync()
    out = trainer.times.mean()
    out["total"] = (time.perf_counter() - began) / steps - out["grid"] + grid
    out["grid"] = grid
    return out, describe_path(trainer.scene.path)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    quiet_libraries()
    rows: dict[str, dict[str, tuple[dict[str, float], str] | str]] = {}
    devices = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(os.path.join(tmp, "tiny"))
        for setting, preset in SETTINGS.items():
            base = preset + [f"model.guidance.model_key={model}", "model.prompt=a red cube",
                             "model.latent_iter_ratio=0"]
            device = gpu.pick_device(compose(base).trainer.accelerator, "trainer.accelerator")
            devices[setting] = device
            warmup, steps = STEPS[(setting, device.type)]
            rows[setting] = {}
            for path, (overrides, unavailable) in PATHS.items():
                why = unavailable(device)
                if why is None:
                    print(f"measuring {setting}, {path} ({warmup + 1 + steps} steps) ...", file=sys.stderr, flush=True)
                    run_dir = os.path.join(tmp, f"{setting}-{path}".replace(" ", "-"))
                    rows[setting][path] = measure(base + overrides, run_dir, warmup, steps)
                else:
                    rows[setting][path] = why
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA device")
          + "; tiny guidance model, 64x64 renders, batch 1, image phase (the VAE encodes each render)")
    print(f"{'setting':14s} {'path':17s} {'grid':>7s} {'render':>7s} {'guidance':>9s} {'backward':>9s} "
          f"{'total s/it':>11s}  what ran")
    for setting, paths in rows.items():
        warmup, steps = STEPS[(setting, devices[setting].type)]
        for path, row in paths.items():
            if isinstance(row, str):
                print(f"{setting:14s} {path:17s} not available: {row}")
                continue
            t, what = row
            phases = " ".join(f"{t[p]:{w}.3f}" for p, w in zip(PHASES, (7, 7, 9, 9)))
            print(f"{setting:14s} {path:17s} {phases} {t['total']:11.3f}  {what} on {devices[setting].type}, "
                  f"{steps} step{'s' * (steps != 1)} after {warmup + 1}")
        ran = {p: r[0]["total"] for p, r in paths.items() if not isinstance(r, str)}
        fastest = min(ran, key=ran.get)
        print(f"{setting:14s} fastest: {fastest}, {ran['pytorch eager'] / ran[fastest]:.2f}x the speed of eager "
              f"({ran[fastest] / ran['pytorch eager']:.2f} of its time a step)")
    print("(phase times on CUDA are approximate: kernels run asynchronously; totals are synchronised)")


if __name__ == "__main__":
    main()
