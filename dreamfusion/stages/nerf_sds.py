"""nerf-sds stage: optimise a NeRF for a prompt by Score Distillation Sampling.

    python -m dreamfusion.stages.nerf_sds --output DIR [GROUP=OPTION ...] [key=value ...]

Examples: ``guidance=shapes model.prompt="a red cube" trainer.max_steps=600``;
``model.resume_from_checkpoint=DIR/checkpoints/last.pt`` continues a run. Writes
checkpoints/, val/, metrics.json (and video.mp4 with model.export_video=true) under DIR.

With --store-endpoint/--store-bucket every checkpoint is also uploaded to object storage under
checkpoints/<key>/<task>/<prompt hash>/ (credentials from AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY or MINIO_ACCESS_KEY / MINIO_SECRET_KEY), and a start finds the newest
stored checkpoint for that key and resumes from it: a retried task carries on where it stopped.
The key is a digest of what determines the result (the prompt set's files, the presets and
overrides in order), so every retry of a task, and any later run with identical inputs, finds
the same checkpoints (a finished one is not trained again); --key names it by hand instead.

``model.guidance.model_key=s3://BUCKET/models/<id>`` reads a model mirrored in the object store
(``dreamfusion.stages.mirror_model``) from --store-endpoint (--store-bucket is then optional: it
is only for checkpoints), through a verified local cache (``$DREAMFUSION_CACHE``). The config,
the checkpoints and the prompt-set check keep the s3:// key; only the guidance sees the folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from dreamfusion.errors import UserError
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
    store = parser.add_argument_group("object-store checkpoints (resume a retried task)")
    store.add_argument(
        "--store-endpoint", help="S3/MinIO endpoint, host:port or http(s)://host:port (also of an s3:// model key)"
    )
    store.add_argument("--store-bucket", help="bucket for checkpoints (must exist)")
    store.add_argument(
        "--store-secure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TLS (default: from the endpoint's scheme, else off)",
    )
    store.add_argument(
        "--key",
        "--run-id",
        dest="key",
        help="checkpoint key (default: a digest of the prompt set, presets and overrides)",
    )
    store.add_argument("--task", default="nerf-sds", help="task name in the checkpoint key (default: nerf-sds)")
    store.add_argument("--store-keep", type=int, default=2, help="stored checkpoints kept per key (0: all)")
    parser.add_argument("overrides", nargs="*", help="GROUP=OPTION or dotted.key=value")
    args = parser.parse_args(argv)
    if args.store_bucket and not args.store_endpoint:
        raise UserError("object-store checkpoints need --store-endpoint and --store-bucket together")
    checkpoints_in_store = bool(args.store_endpoint and args.store_bucket)

    from dreamfusion.config import compose
    from dreamfusion.config.presets import expand

    prompt_set = None
    overrides = expand(args.preset) + args.overrides
    if args.prompts is not None:
        from dreamfusion.data.prompt_set import PromptSet

        prompt_set = PromptSet.load(args.prompts)
    # The key is taken after the prompt set is validated and before its own overrides are added.
    key = (args.key or inputs_digest(args.prompts, overrides)) if checkpoints_in_store else None
    if args.prompts is not None:
        overrides += [
            f"model.prompt={_quote(prompt_set.prompt)}",
            f"model.negative_prompt={_quote(prompt_set.negative_prompt)}",
        ]
    cfg = compose(overrides)  # fails fast, before any model is loaded
    model_url = _check_model_url(args, cfg, prompt_set, checkpoints_in_store)
    args.output.mkdir(parents=True, exist_ok=True)
    on_checkpoint = None
    if checkpoints_in_store:
        cfg, on_checkpoint = _object_store(args, key, cfg, overrides)
    if model_url:
        from dreamfusion.guidance.stable_diffusion import use_local_copy
        from dreamfusion.store.models import fetch_model_url

        use_local_copy(model_url, fetch_model_url(model_url, args.store_endpoint, args.store_secure))
    cli.quiet_libraries()
    from dreamfusion.train.trainer import Trainer

    trainer = Trainer(cfg, args.output, progress=not args.quiet, prompt_set=prompt_set, on_checkpoint=on_checkpoint)
    metrics = trainer.fit()
    # Resumed from a finished checkpoint (a retry after the last upload, or an identical earlier
    # run), fit() trains nothing and may write neither last.pt nor a validation render.
    if not (args.output / "checkpoints" / "last.pt").exists():
        trainer.save()
    if not (args.output / "val").is_dir():
        trainer.validate()
    loss = "n/a" if metrics["loss"] is None else f"{metrics['loss']:.4g}"
    print(
        f"nerf-sds: {metrics['steps']} steps, loss {loss}, "
        f"{metrics['seconds_per_step']:.3f} s/step -> {args.output}"
    )
    return 0


def inputs_digest(prompts: Path | None, overrides: list[str]) -> str:
    """The checkpoint key of a task: a digest of its inputs (every file of the prompt set and the
    expanded presets and overrides, in order), the same for every retry and every identical run."""
    h = hashlib.sha256(json.dumps(overrides).encode())
    if prompts is not None:
        files = sorted(f for f in prompts.rglob("*") if f.is_file()) if prompts.is_dir() else [prompts]
        for f in files:
            data = f.read_bytes()
            name = f.relative_to(prompts).as_posix() if prompts.is_dir() else f.name
            h.update(f"\0{name}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()[:16]


def _check_model_url(args, cfg, prompt_set, checkpoints_in_store: bool) -> str | None:
    """The s3:// model key to fetch, or None; a malformed key, a missing endpoint or a prompt
    set encoded for another model fails here, before anything is downloaded or loaded."""
    from dreamfusion.store.models import is_model_url, parse_model_url

    model_key = cfg.model.guidance.model_key
    if not is_model_url(model_key):
        if args.store_endpoint and not checkpoints_in_store:
            raise UserError("object-store checkpoints need --store-endpoint and --store-bucket together")
        return None
    parse_model_url(model_key)
    if not args.store_endpoint:
        raise UserError(f"model.guidance.model_key={model_key} needs --store-endpoint")
    if prompt_set is not None and prompt_set.model_key != model_key:  # the trainer's check, made early
        raise UserError(
            f"the prompt set was encoded for {prompt_set.model_key!r} but model.guidance.model_key={model_key!r}"
        )
    return model_key


def _object_store(args, key: str, cfg, overrides: list[str]):
    """Resume from the newest stored checkpoint of (key, task, prompt hash), if any, and
    return the config to train with and the hook that uploads each new checkpoint."""
    from dreamfusion.config import compose
    from dreamfusion.store import Store, prompt_hash

    store = Store(args.store_endpoint, args.store_bucket, args.store_secure)
    phash = prompt_hash(cfg.model.prompt, cfg.model.negative_prompt)
    found = store.download_latest_checkpoint(key, args.task, phash, args.output / "checkpoints" / "from-store")
    if found is not None:
        step, path = found
        where = f"{args.store_bucket}/{key}/{args.task}/{phash}"
        print(f"nerf-sds: resuming from stored checkpoint at step {step} ({where})", flush=True)
        cfg = compose(overrides + [f"model.resume_from_checkpoint={_quote(str(path))}"])

    def upload(path, step: int) -> None:
        stored = store.put_checkpoint(path, key, args.task, phash, step, keep=args.store_keep)
        print(f"nerf-sds: checkpoint at step {step} stored as {args.store_bucket}/{stored}", flush=True)

    return cfg, upload


def _quote(text: str) -> str:
    """A string as a YAML scalar that override parsing reads back verbatim."""
    return "'" + text.replace("'", "''") + "'"


if __name__ == "__main__":
    sys.exit(cli.run(main))
