"""nerf-sds stage: optimise a NeRF for a prompt by Score Distillation Sampling.

    python -m dreamfusion.stages.nerf_sds --output DIR [GROUP=OPTION ...] [key=value ...]

Examples: ``guidance=shapes model.prompt="a red cube" trainer.max_steps=600``;
``model.resume_from_checkpoint=DIR/checkpoints/last.pt`` continues a run. Writes
checkpoints/, val/, metrics.json (and video.mp4 with model.export_video=true) under DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dreamfusion.stages import cli


def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(
        prog="python -m dreamfusion.stages.nerf_sds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", required=True, type=Path, help="folder for checkpoints, renders, metrics")
    parser.add_argument("--prompts", type=Path, help="prompt set from the prompt-expansion stage (no text encoder)")
    parser.add_argument("--preset", action="append", help="named override set applied first (e.g. cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", help="GROUP=OPTION or dotted.key=value")
    args = parser.parse_args(argv)

    from dreamfusion.config import compose
    from dreamfusion.config.presets import expand

    prompt_set = None
    overrides = expand(args.preset) + args.overrides
    if args.prompts is not None:
        from dreamfusion.data.prompt_set import PromptSet

        prompt_set = PromptSet.load(args.prompts)
        overrides += [
            f"model.prompt={_quote(prompt_set.prompt)}",
            f"model.negative_prompt={_quote(prompt_set.negative_prompt)}",
        ]
    cfg = compose(overrides)  # fails fast, before any model is loaded
    cli.quiet_libraries()
    from dreamfusion.train.trainer import Trainer

    args.output.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, args.output, progress=not args.quiet, prompt_set=prompt_set)
    metrics = trainer.fit()
    print(
        f"nerf-sds: {metrics['steps']} steps, loss {metrics['loss']:.4g}, "
        f"{metrics['seconds_per_step']:.3f} s/step -> {args.output}"
    )
    return 0


def _quote(text: str) -> str:
    """A string as a YAML scalar that override parsing reads back verbatim."""
    return "'" + text.replace("'", "''") + "'"


if __name__ == "__main__":
    sys.exit(cli.run(main))
