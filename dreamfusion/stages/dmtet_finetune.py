"""dmtet-finetune stage: refine a nerf-sds NeRF into a clean surface (DreamFusion-DMTet, Magic3D).

    python -m dreamfusion.stages.dmtet_finetune --checkpoint NERF/checkpoints/last.pt --output DIR
        [--prompts PROMPT_SET] [--preset cpu] [GROUP=OPTION ...] [key=value ...]

The run's config is the one saved in the NeRF checkpoint with the seed's DMTet changes on top
(``renderer=nvdiffrast``, ``loss=dmtet``, 512x512 renders, SDS timesteps in [0.02, 0.5], no
latent warm-up, 5000 steps), then the presets (``cpu``: the torch rasterizer, a 32^3 tet grid,
64x64 renders), then the overrides. The tet grid is fitted to the NeRF's occupied extent, its SDF
set from the NeRF's density minus the iso-level mesh-export chooses; the NeRF's colour field and
background are trained on. Writes checkpoints/ (format ``dreamfusion-dmtet/1``, which mesh-export
and video-render read directly), val/ and metrics.json under DIR, like nerf-sds;
the same command run again into DIR continues from DIR's newest checkpoint exactly (a DIR holding
another run is refused; --restart starts afresh).

With --store-endpoint/--store-bucket, checkpoints also go to the store and a retried task
resumes from them (``dreamfusion.stages.training``); the key covers the NeRF checkpoint's bytes.
Exit code 2 with one ``error:`` line for bad input, before anything is loaded or written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dreamfusion.errors import UserError
from dreamfusion.stages import cli, training

STAGE = "dmtet-finetune"


def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(
        prog="python -m dreamfusion.stages.dmtet_finetune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="nerf-sds checkpoint to refine (last.pt)"
    )
    parser.add_argument("--output", required=True, type=Path, help="folder for checkpoints, renders, metrics")
    parser.add_argument(
        "--prompts", type=Path, help="prompt set from the prompt-expansion stage (no text encoder)"
    )
    parser.add_argument("--config", type=Path, help="YAML config in the seed's layout (applied first)")
    parser.add_argument("--preset", action="append", help="named override set applied first (e.g. cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    training.add_store_arguments(parser, STAGE)
    training.add_run_arguments(parser)
    parser.add_argument("overrides", nargs="*", help="GROUP=OPTION or dotted.key=value")
    args = parser.parse_args(argv)
    cli.output_folder(args.output)
    in_store = training.checkpoints_in_store(args)
    if args.output.exists() and not args.output.is_dir():
        raise UserError(f"--output {args.output} is a file, not a folder")

    from dreamfusion.config.files import compose_with_file
    from dreamfusion.config.presets import DMTET_PRESETS, expand
    from dreamfusion.train.checkpoint import DMTET_FORMAT, FORMAT, load_checkpoint

    state = load_checkpoint(args.checkpoint)
    if state["format"] != FORMAT:
        raise UserError(
            f"{args.checkpoint} is a {state['format']} checkpoint; --checkpoint takes the nerf-sds one "
            "(continue a DMTet run with model.resume_from_checkpoint=DIR/checkpoints/last.pt)"
        )
    base = state["config"]
    del state  # the trainer reads the checkpoint again; do not hold two copies of the weights
    prompt_set = None
    overrides = compose_with_file(args.config, expand(args.preset, DMTET_PRESETS) + args.overrides)
    if args.prompts is not None:
        from dreamfusion.data.prompt_set import PromptSet

        prompt_set = PromptSet.load(args.prompts)
    key = (
        (args.key or training.inputs_digest([args.checkpoint, args.prompts], overrides)) if in_store else None
    )
    if prompt_set is not None:
        overrides += [
            f"model.prompt={training.quote(prompt_set.prompt)}",
            f"model.negative_prompt={training.quote(prompt_set.negative_prompt)}",
        ]
    def config(extra: list[str]):
        return compose_dmtet(base, args.checkpoint, overrides + extra)

    cfg = config([])  # fails fast, before any model is loaded
    from dreamfusion import registry

    if not getattr(registry.find("renderer", cfg.model.defaults["renderer"]), "mesh", False):
        raise UserError(
            f"renderer={cfg.model.defaults['renderer']} does not draw meshes: use torch_raster or nvdiffrast"
        )
    model_url = training.check_model_url(args, cfg, prompt_set, in_store)
    # the user's own model.resume_from_checkpoint (a DMTet run to continue) replaces the NeRF
    explicit = str(cfg.model.resume_from_checkpoint) != str(args.checkpoint)
    cfg = training.continue_run(args, cfg, DMTET_FORMAT, STAGE, config, explicit=explicit)
    args.output.mkdir(parents=True, exist_ok=True)
    on_checkpoint = record_failure = None
    if in_store:
        cfg, on_checkpoint, record_failure = training.resume_from_store(args, key, cfg, STAGE, config)
    if model_url:
        training.fetch_model(args, model_url)
    cli.quiet_libraries()
    training.train(dict(cfg=cfg, output=args.output, progress=not args.quiet, prompt_set=prompt_set,
                        on_checkpoint=on_checkpoint), args.output, STAGE, record_failure)
    return 0


def compose_dmtet(saved: dict, nerf: Path | str, overrides: list[str]):
    """The config of a DMTet run refining the NeRF checkpoint ``nerf`` whose saved config is
    ``saved``: that config, then the seed's DMTet changes, then ``overrides`` (presets first)."""
    from dreamfusion.config import compose
    from dreamfusion.config.presets import DMTET_BASE

    start = [f"model.resume_from_checkpoint={training.quote(str(nerf))}"]
    return compose(start + DMTET_BASE + overrides, base=nerf_config_for_dmtet(saved))


def nerf_config_for_dmtet(saved: dict) -> dict:
    """A NeRF checkpoint's config as the base of a DMTet run: without the renderer and loss
    groups (DMTet chooses its own) and without the values that were interpolated (``model.iters``
    follows ``trainer.max_steps`` again); everything else (NeRF, background, guidance, cameras,
    trainer) kept."""
    import copy

    from dreamfusion.config import compose, interpolations

    out = copy.deepcopy(saved)
    model = out.setdefault("model", {})
    for group in ("renderer", "loss"):
        model.pop(group, None)
        model.get("defaults", {}).pop(group, None)
    choices = [f"{g}={o}" for g, o in model.get("defaults", {}).items()]
    for path in interpolations(compose(choices)):
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


if __name__ == "__main__":
    sys.exit(cli.run(main))
