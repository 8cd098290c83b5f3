"""3D evaluation of the shapes prior: train the nerf-sds engine on a prompt, judge the NeRF.

    python -m dreamfusion.prior.evaluate_3d [--iters 600] [--prompts "a red cube" ...]

For each prompt: train with ``--preset cpu --preset shapes`` (the same settings ``make demo``
uses), render 24 azimuths of the validation circle, and compare the opacity with the true
primitive rendered analytically at the same cameras (silhouette IoU against each of the five
shapes) and the hue of the albedo with the prompt's colour, judged by
:func:`dreamfusion.prior.score.score` (IoU >= its ``MIN_IOU``, the named shape the best, the named
colour). Prints one line per prompt and writes a JSON report.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from dreamfusion.config import compose
from dreamfusion.config.presets import expand
from dreamfusion.data.cameras import Cameras
from dreamfusion.prior import score
from dreamfusion.prior.evaluate import PROMPTS_3D, evaluate_3d, prompt_error
from dreamfusion.train.trainer import Trainer


def train_and_render(
    prompt: str,
    cams: Cameras,
    iters: int,
    seed: int,
    folder: Path,
    progress: bool = True,
    extra: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train a NeRF for ``prompt`` and render it at ``cams``: rgb (B, H, W, 3) albedo, opacity (B, H, W)."""
    overrides = expand(["cpu", "shapes"]) + [
        f"model.prompt='{prompt}'",
        f"trainer.max_steps={iters}",
        f"trainer.seed={seed}",
        "trainer.val_check_interval=0",
        "trainer.checkpoint_interval=0",
        *(extra or []),
    ]
    trainer = Trainer(compose(overrides), folder, progress=progress)
    trainer.fit()
    return score.nerf_views(trainer.scene, cams)  # on the CPU, as the true primitives are rendered


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dreamfusion.prior.evaluate_3d", description=__doc__.split("\n")[0])
    p.add_argument("--prompts", nargs="+", default=list(PROMPTS_3D))
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", type=Path, default=Path("outputs/eval_prior_3d.json"))
    p.add_argument("overrides", nargs="*", help="extra config overrides for the nerf-sds engine")
    args = p.parse_args(argv)
    bad = prompt_error(args.prompts)  # before any training, not after the prompts before it
    if bad:
        p.error(bad)
    from dreamfusion.stages.cli import quiet_libraries

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:

        def render(prompt: str, cams: Cameras):
            return train_and_render(
                prompt, cams, args.iters, args.seed, Path(tmp) / prompt.replace(" ", "_"), extra=args.overrides
            )

        began = time.time()
        results = evaluate_3d(args.prompts, render)
    for r in results:
        ious = " ".join(f"{k} {v:.2f}" for k, v in sorted(r["ious"].items(), key=lambda kv: -kv[1]))
        print(
            f"{r['prompt']:18s} IoU {r['iou']:.3f}  best {r['best_shape']:8s} colour {str(r['colour']):7s} "
            f"hue {_num(r['hue'])}  yaw {r['yaw']:4.1f}  {'PASS' if r['passed'] else 'FAIL'}  {r['seconds']:.0f} s  "
            f"[{ious}]"
        )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(
        json.dumps({"iters": args.iters, "seconds": time.time() - began, "results": results}, indent=2, default=float)
    )
    return 0 if all(r["passed"] for r in results) else 1


def _num(x) -> str:
    return "  n/a" if x is None else f"{x:5.1f}"


if __name__ == "__main__":
    sys.exit(main())
