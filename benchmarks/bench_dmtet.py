"""Per-iteration time of DMTet fine-tuning on this machine, split into marching tetrahedra,
rasterization (with shading and antialiasing), guidance and backward.

Starts from a NeRF whose density is its blob (a sphere, no training needed) and runs the
trainer's own step with the shapes prior that ships in the package, under the stage's ``cpu`` and
``shapes`` presets (the torch rasterizer, a 32^3 tet grid, four 32x32 views a step): what
``make demo`` runs. On a
CUDA machine also the seed's settings: nvdiffrast, a 128^3 grid, 512x512 renders.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from dreamfusion.config.presets import DMTET_PRESETS, expand
from dreamfusion.export.synthetic import SMALL_BLOB, blob_checkpoint
from dreamfusion.stages.cli import quiet_libraries
from dreamfusion.stages.dmtet_finetune import compose_dmtet
from dreamfusion.train.checkpoint import load_checkpoint
from dreamfusion.train.trainer import Trainer

WARMUP, STEPS = 5, 30
PHASES = ("marching_tets", "rasterize", "guidance", "backward")


def measure(nerf: Path, overrides: list[str], folder: str) -> tuple[dict[str, float], int]:
    cfg = compose_dmtet(load_checkpoint(nerf)["config"], nerf, overrides)
    trainer = Trainer(cfg, folder, progress=False)
    for _ in range(WARMUP):
        trainer.train_step()
    sync()
    trainer.times = type(trainer.times)()
    began = time.perf_counter()
    for _ in range(STEPS):
        trainer.train_step()
    sync()
    names = trainer.scene.TIMINGS
    out = {names.get(k, k): v for k, v in trainer.times.mean().items()}
    out["total"] = (time.perf_counter() - began) / STEPS
    return out, int(trainer.scene.stats()["surface_faces"])


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        nerf = blob_checkpoint(Path(tmp) / "nerf.pt", expand(["shapes"]) + SMALL_BLOB)
        steps = [f"trainer.max_steps={WARMUP + STEPS}", "model.renderer.iso_resolution=128"]
        cpu = DMTET_PRESETS["cpu"] + DMTET_PRESETS["shapes"] + steps
        rows = {
            "cpu+shapes (torch, grid 32, 4 x 32x32)": measure(nerf, cpu, tmp),
            "cpu+shapes, no antialiasing": measure(nerf, cpu + ["model.renderer.antialias=false"], tmp),
        }
        if torch.cuda.is_available():
            seed = steps + ["trainer.accelerator=cuda"]
            rows["seed (nvdiffrast, grid 128, 512x512)"] = measure(nerf, seed, tmp)
            rows["torch rasterizer on cuda, grid 128, 512x512"] = measure(nerf, seed + ["renderer=torch_raster"], tmp)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, shapes prior, "
          f"{STEPS} steps after {WARMUP} warm-up steps; a sphere NeRF as the start")
    print(f"{'configuration':44s} {'faces':>7s} " + " ".join(f"{p:>13s}" for p in PHASES) + f" {'total s/it':>11s}")
    for name, (t, faces) in rows.items():
        print(f"{name:44s} {faces:7d} " + " ".join(f"{t[p]:13.4f}" for p in PHASES) + f" {t['total']:11.4f}")
    print("(phase times on cuda are approximate: kernels run asynchronously; totals are synchronised)")


if __name__ == "__main__":
    main()
