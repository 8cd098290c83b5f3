"""nerf-sds stage: optimise a NeRF for a prompt by Score Distillation Sampling.

    python -m dreamfusion.stages.nerf_sds --output DIR [GROUP=OPTION ...] [key=value ...]

Examples: ``guidance=shapes model.prompt="a red cube" trainer.max_steps=600``. Writes
checkpoints/, val/, metrics.json (and video.mp4 with model.export_video=true) under DIR. The same
command run again into DIR continues from DIR's newest checkpoint (after a kill, or with a larger
trainer.max_steps); a DIR holding a run with other settings is refused with one line naming them,
and --restart removes its checkpoints and starts afresh. ``model.resume_from_checkpoint=PATH``
continues from another checkpoint (checked before any model is built).

With --store-endpoint/--store-bucket every checkpoint is also uploaded to object storage under
checkpoints/<key>/<task>/<prompt hash>/ (credentials from AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY or MINIO_ACCESS_KEY / MINIO_SECRET_KEY), and a start finds the newest
stored checkpoint for that key and resumes from it: a retried task carries on where it stopped
(``dreamfusion.stages.training``). The key is a digest of what determines the result (the
prompt set's files, the presets and overrides in order), so every retry of a task, and any
later run with identical inputs, finds the same checkpoints (a finished one is not trained
again); --key names it by hand instead.

``model.guidance.model_key=s3://BUCKET/models/<id>`` reads a model mirrored in the object store
(``dreamfusion.stages.mirror_model``) from --store-endpoint (--store-bucket is then optional: it
is only for checkpoints), through a verified local cache (``$DREAMFUSION_CACHE``). The config,
the checkpoints and the prompt-set check keep the s3:// key; only the guidance sees the folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dreamfusion.stages import cli, training


def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(
        prog="python -m dreamfusion.stages.nerf_sds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", required=True, type=Path, help="folder for checkpoints, renders, metrics")
    parser.add_argument("--prompts", type=Path, help="prompt set from the prompt-expansion stage (no text encoder)")
    parser.add_argument("--config", type=Path, help="YAML config in the seed's layout (applied first)")
    parser.add_argument("--preset", action="append", help="named override set applied first (e.g. cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    training.add_store_arguments(parser, "nerf-sds")
    training.add_run_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="GROUP=OPTION or dotted.key=value")
    args = parser.parse_args(argv)
    cli.output_folder(args.output)
    checkpoints_in_store = training.checkpoints_in_store(args)

    from dreamfusion.config import compose
    from dreamfusion.config.files import compose_with_file
    from dreamfusion.config.presets import expand
    from dreamfusion.train.checkpoint import FORMAT

    prompt_set = None
    overrides = compose_with_file(args.config, expand(args.preset) + args.overrides)
    if args.prompts is not None:
        from dreamfusion.data.prompt_set import PromptSet

        prompt_set = PromptSet.load(args.prompts)
    # The key is taken after the prompt set is validated and before its own overrides are added.
    key = (args.key or training.inputs_digest(args.prompts, overrides)) if checkpoints_in_store else None
    if args.prompts is not None:
        overrides += [
            f"model.prompt={training.quote(prompt_set.prompt)}",
            f"model.negative_prompt={training.quote(prompt_set.negative_prompt)}",
        ]
    cfg = compose(overrides)  # fails fast, before any model is loaded
    model_url = training.check_model_url(args, cfg, prompt_set, checkpoints_in_store)
    cfg = training.continue_run(args, cfg, FORMAT, "nerf-sds", lambda extra: compose(overrides + extra),
                                explicit=bool(cfg.model.resume_from_checkpoint))
    args.output.mkdir(parents=True, exist_ok=True)
    on_checkpoint = record_failure = None
    if checkpoints_in_store:
        cfg, on_checkpoint, record_failure = training.resume_from_store(
            args, key, cfg, "nerf-sds", lambda extra: compose(overrides + extra)
        )
    if model_url:
        training.fetch_model(args, model_url)
    cli.quiet_libraries()
    training.train(dict(cfg=cfg, output=args.output, progress=not args.quiet, prompt_set=prompt_set,
                        on_checkpoint=on_checkpoint), args.output, "nerf-sds", record_failure)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
