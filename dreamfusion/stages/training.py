"""What the two training stages (nerf-sds, dmtet-finetune) share: the object-store options, the
checkpoint key, resuming from the store, and finishing a run.

With --store-endpoint/--store-bucket every checkpoint is also uploaded under
checkpoints/<key>/<task>/<prompt hash>/ (credentials from the environment), and a start finds
the newest stored checkpoint for that key and resumes from it: a retried task carries on where
it stopped. The key is a digest of what determines the result (input files, presets and
overrides in order), so every retry and any later identical run finds the same checkpoints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from dreamfusion.config.files import quote
from dreamfusion.errors import UserError
from dreamfusion.names import check_name

log = logging.getLogger(__name__)
FAILED = "failed.txt"  # beside a task's stored checkpoints: why it cannot succeed with these inputs


def add_store_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    store = parser.add_argument_group("object-store checkpoints (resume a retried task)")
    store.add_argument(
        "--store-endpoint",
        help="S3/MinIO endpoint, host:port or http(s)://host:port (also of an s3:// model key)",
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
        help="checkpoint key (default: a digest of the inputs, presets and overrides)",
    )
    store.add_argument("--task", default=task, help=f"task name in the checkpoint key (default: {task})")
    store.add_argument("--store-keep", type=int, default=2, help="stored checkpoints kept per key (0: all)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start afresh: remove the checkpoints already in --output (by default a run continues from them)",
    )


# Settings that may differ between a run and its continuation: where it resumes from, how long it
# trains, how often it writes checkpoints and renders, and whether the kernels compute it (the same
# results to float rounding; a retry may land on another node).
CONTINUATION_KEYS = ("model.resume_from_checkpoint", "model.iters", "trainer.max_steps", "trainer.val_check_interval",
                     "trainer.checkpoint_interval", "trainer.nonfinite_limit", "trainer.kernels")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flat(v, key) if isinstance(v, dict) else {key: v})
    return out


def settings_differ(saved: dict, cfg) -> list[str]:
    """The keys whose values differ between a checkpoint's config and ``cfg``, less the
    ``CONTINUATION_KEYS``."""
    from dreamfusion.config import to_dict

    a, b = _flat(saved), _flat(to_dict(cfg))
    return sorted(k for k in set(a) | set(b) if k not in CONTINUATION_KEYS and a.get(k) != b.get(k))


def check_resume_point(cfg, fmt: str) -> None:
    """``model.resume_from_checkpoint``, when set, is a readable checkpoint of this stage's format
    (or, for a DMTet run, the nerf-sds one it starts from): checked before any model is built."""
    from dreamfusion.train.checkpoint import DMTET_FORMAT, FORMAT, load_checkpoint

    path = cfg.model.resume_from_checkpoint
    if not path:
        return
    state = load_checkpoint(path)
    if state["format"] not in (fmt, FORMAT):
        raise UserError(f"model.resume_from_checkpoint={path} is a {state['format']} checkpoint, not {fmt}")
    if state["format"] == DMTET_FORMAT:
        from dreamfusion.renderer.mesh_scene import check_solid

        check_solid(state, path, cfg.model.loss)


def resume_locally(output: Path, cfg, fmt: str, restart: bool) -> tuple[Path, int] | None:
    """The output folder's own newest checkpoint and its step when it continues this run, so that the same
    command picks up where a killed one stopped. A folder holding a run with other settings is
    refused with one line naming them; ``restart`` removes its checkpoints instead."""
    from dreamfusion.train.checkpoint import load_checkpoint

    folder = output / "checkpoints"
    found = sorted(folder.glob("step-*.pt")) + [folder / "last.pt"] if folder.is_dir() else []
    found = [p for p in found if p.is_file()]
    if restart:
        for p in found:
            p.unlink()
        return None
    if not found:
        return None
    try:
        state = load_checkpoint(folder / "last.pt")
        last = folder / "last.pt"
    except UserError as e:  # a kill between checkpoint files: the newest step file is whole
        steps = [p for p in found if p.name != "last.pt"]
        if not steps:
            raise UserError(f"{e}; remove it or use --restart") from None
        last = steps[-1]
        state = load_checkpoint(last)
    if state["format"] != fmt:
        raise UserError(f"--output {output} holds a {state['format']} run: use another folder, or --restart")
    differ = settings_differ(state["config"], cfg)
    if differ:
        shown = ", ".join(differ[:4]) + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
        raise UserError(f"--output {output} holds a run with other settings ({shown}): "
                        "use another folder, or --restart to replace it")
    return last, int(state["step"])


def checkpoints_in_store(args: argparse.Namespace) -> bool:
    """True when checkpoints go to the store; a bucket without an endpoint is a UserError."""
    if args.store_bucket and not args.store_endpoint:
        raise UserError("object-store checkpoints need --store-endpoint and --store-bucket together")
    if args.store_keep < 0:
        raise UserError(f"--store-keep {args.store_keep} must be >= 0")
    check_name(args.task, "--task")  # parts of the object key: checked before any work
    if args.key is not None:
        check_name(args.key, "--key")
    return bool(args.store_endpoint and args.store_bucket)


def inputs_digest(inputs: Path | list[Path | None] | None, overrides: list[str]) -> str:
    """The checkpoint key of a task: a digest of its inputs (every file of each input, a file or
    a folder, and the expanded presets and overrides, in order) and of the package version and
    checkpoint formats, the same for every retry and every identical run: another release never
    resumes from a stored checkpoint it might not read."""
    from dreamfusion import __version__
    from dreamfusion.train.checkpoint import DMTET_FORMAT, FORMAT

    h = hashlib.sha256(json.dumps([f"dreamfusion {__version__}", FORMAT, DMTET_FORMAT, overrides]).encode())
    for item in inputs if isinstance(inputs, list) else [inputs]:
        if item is None:
            continue
        files = sorted(f for f in item.rglob("*") if f.is_file()) if item.is_dir() else [item]
        for f in files:
            data = f.read_bytes()
            name = f.relative_to(item).as_posix() if item.is_dir() else f.name
            h.update(f"\0{name}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()[:16]


def check_model_url(args, cfg, prompt_set, checkpoints_in_store: bool) -> str | None:
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


def fetch_model(args: argparse.Namespace, model_url: str) -> None:
    """Make the guidance read ``model_url`` (s3://) from a verified local copy of the store's mirror."""
    from dreamfusion.guidance.stable_diffusion import use_local_copy
    from dreamfusion.store.models import fetch_model_url

    use_local_copy(model_url, fetch_model_url(model_url, args.store_endpoint, args.store_secure))


def resume_from_store(
    args: argparse.Namespace, key: str, cfg, stage: str, compose_with: Callable[[list[str]], object]
):
    """Resume from the newest stored checkpoint of (key, task, prompt hash), if any (not with
    ``--restart``). Returns the config to train with (``compose_with(extra overrides)``), the hook
    that uploads each new checkpoint, and the hook that records a failure no retry can mend.

    A user error or a diverged run is the same every time for the same inputs: it is recorded
    beside the checkpoints (``failed.txt``), and a retry of the task (KFP retries any failure, its
    retry policy has no condition) finds it and stops at once with the same line instead of
    training again. Store errors (an outage) are not recorded: a retry may succeed."""
    from dreamfusion.store import Store, StoreError, checkpoint_prefix, prompt_hash

    store = Store(args.store_endpoint, args.store_bucket, args.store_secure)
    phash = prompt_hash(cfg.model.prompt, cfg.model.negative_prompt)
    marker = checkpoint_prefix(key, args.task, phash) + FAILED
    if args.restart:
        if store.exists(marker):
            store.delete(marker)
    elif store.exists(marker):
        earlier = store.get_bytes(marker).decode("utf-8", "replace").strip()
        raise UserError(f"not retried: an earlier attempt with these inputs failed ({earlier[:300]}); "
                        "change the inputs, or --restart")
    found = None if args.restart else store.download_latest_checkpoint(
        key, args.task, phash, args.output / "checkpoints" / "from-store"
    )
    if found is not None:
        step, path = found
        where = f"{args.store_bucket}/{key}/{args.task}/{phash}"
        print(f"{stage}: resuming from stored checkpoint at step {step} ({where})", flush=True)
        cfg = compose_with([f"model.resume_from_checkpoint={quote(str(path))}"])

    def upload(path, step: int) -> None:
        stored = store.put_checkpoint(path, key, args.task, phash, step, keep=args.store_keep)
        print(f"{stage}: checkpoint at step {step} stored as {args.store_bucket}/{stored}", flush=True)

    def record_failure(error: UserError) -> None:
        if isinstance(error, StoreError):
            return
        try:
            store.put_bytes(marker, str(error).encode(), "text/plain; charset=utf-8")
        except StoreError as e:  # the error the user must see is the first one
            log.warning("could not record the failure in the store: %s", e)

    return cfg, upload, record_failure


def train(trainer_args: dict, output: Path, stage: str, record_failure=None) -> dict:
    """Build the trainer and train to the end (``finish``); a user error on the way (a diverged
    run, an incompatible checkpoint) is recorded with ``record_failure`` before it is raised."""
    from dreamfusion.train.trainer import Trainer

    try:
        return finish(Trainer(**trainer_args), output, stage)
    except UserError as e:
        if record_failure is not None:
            record_failure(e)
        raise


def continue_run(args: argparse.Namespace, cfg, fmt: str, stage: str, compose_with: Callable[[list[str]], object],
                 explicit: bool):
    """Before any model is built: check an explicit resume point (``explicit``: the user set
    model.resume_from_checkpoint), else continue from the output folder's own newest checkpoint
    when it is this run's (``resume_locally``). Returns the config to train with."""
    if explicit:
        check_resume_point(cfg, fmt)
        return cfg
    found = resume_locally(args.output, cfg, fmt, args.restart)
    if found is None:
        return cfg
    local, step = found  # read once here; the trainer reads it again to restore it
    print(f"{stage}: continuing from {local} (step {step})", flush=True)
    return compose_with([f"model.resume_from_checkpoint={quote(str(local))}"])


def finish(trainer, output: Path, stage: str) -> dict:
    """Train to the end and make sure the outputs exist. Resumed from a finished checkpoint (a
    retry after the last upload, or an identical earlier run), ``fit()`` trains nothing and may
    write neither last.pt nor a validation render."""
    metrics = trainer.fit()
    if not (output / "checkpoints" / "last.pt").exists():
        trainer.save()
    if not (output / "val").is_dir():
        trainer.validate()
    from dreamfusion.renderer.scene import describe_path

    loss = "n/a" if metrics["loss"] is None else f"{metrics['loss']:.4g}"
    path = f" ({describe_path(metrics['path'])})" if "path" in metrics else ""
    print(
        f"{stage}: {metrics['steps']} steps, loss {loss}, {metrics['seconds_per_step']:.3f} s/step{path} -> {output}"
    )
    return metrics
