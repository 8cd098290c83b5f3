"""mirror-model: copy a diffusers model into the object store, for clusters without the model hub.

    python -m dreamfusion.stages.mirror_model --model stabilityai/stable-diffusion-2-1-base \\
        --store-endpoint minio-service.kubeflow:9000 --store-bucket models [--create-bucket]
    python -m dreamfusion.stages.mirror_model --model /data/sd-2-1-base --store-endpoint ... --store-bucket ...

A hub id is downloaded with huggingface_hub (``--revision``; into ``$DREAMFUSION_CACHE/hub``,
default ``~/.cache/dreamfusion``), only the files the guidance loads: model_index.json and the
unet, vae, text_encoder, tokenizer and scheduler folders' configs and safetensors weights, the
fp16 variant where the hub has one (mirrored under the plain file name, so it loads without a
variant; weights are cast to the run's precision when loaded). A local diffusers folder is
mirrored as it is, with no download. The files go to ``models/<model id>/`` (``--name``;
default: the hub id, or the folder's name) with a manifest of sizes and sha256 uploaded last.

Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or MINIO_ACCESS_KEY /
MINIO_SECRET_KEY). The last line printed is the model key stages read the mirror by:
``model.guidance.model_key=s3://BUCKET/models/<model id>`` (with --store-endpoint).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from dreamfusion.errors import UserError
from dreamfusion.stages import cli

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_FP16 = re.compile(r"([\w-]+)\.fp16\.safetensors")  # a single-file fp16 variant
_PLAIN = re.compile(r"[\w-]+\.safetensors(\.index\.json)?")  # no variant; shards and their index


def main(argv: list[str]) -> int:
    p = cli.ArgumentParser(
        prog="python -m dreamfusion.stages.mirror_model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="hub model id, or a local diffusers folder")
    p.add_argument("--name", help="model id in the store (default: the hub id, or the folder's name)")
    p.add_argument("--revision", help="hub revision: branch, tag or commit (hub models only)")
    p.add_argument("--store-endpoint", required=True, help="S3/MinIO endpoint, host:port or http(s)://host:port")
    p.add_argument("--store-bucket", required=True, help="bucket for the mirror")
    p.add_argument(
        "--store-secure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TLS (default: from the endpoint's scheme, else off)",
    )
    p.add_argument("--create-bucket", action="store_true", help="create the bucket when it does not exist")
    args = p.parse_args(argv)

    from dreamfusion.store import Store
    from dreamfusion.store.models import check_model_id, default_cache_root, mirror_model, model_prefix, model_url

    # 1. Everything that can be wrong with the input, before any download.
    local = _local_folder(args.model)
    if local is not None:
        if args.revision:
            raise UserError("--revision applies to hub models only, not to a local folder")
        if not (local / "unet" / "config.json").is_file():
            raise UserError(f"--model {args.model}: not a diffusers model folder (no unet/config.json)")
    else:
        _check_repo_id(args.model)
    model_id = check_model_id(args.name or (local.name if local is not None else args.model), "--name")
    prefix = model_prefix(model_id)
    store = Store(args.store_endpoint, args.store_bucket, args.store_secure, create_bucket=args.create_bucket)
    store.ensure_bucket()  # credentials, endpoint and bucket checked before a multi-GB download

    # 2. The files: a local folder as it is, or the hub's files for the guidance.
    if local is not None:
        folder, source = local, str(local)
    else:
        folder = download_from_hub(args.model, args.revision, default_cache_root(), model_id)
        source = f"{args.model}@{args.revision or 'main'}"

    # 3. Upload, manifest last.
    manifest = mirror_model(store, folder, prefix, source=source)
    url = model_url(args.store_bucket, prefix)
    mb = manifest["total_size"] / 1e6
    print(f"mirror-model: {len(manifest['files'])} files ({mb:.1f} MB) from {source} -> {url}")
    print(f"model.guidance.model_key={url}")
    return 0


def _local_folder(model: str) -> Path | None:
    """A path (absolute, ``./``, ``../``, ``~`` or an existing folder) -> the folder; a hub id -> None."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if model.startswith(("/", "./", "../", "~")):
        raise UserError(f"--model {model}: no such folder")
    return None


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"--model {repo_id!r} is neither a folder nor a hub model id ({e})") from None


def select_hub_files(repo_files: list[str]) -> dict[str, str]:
    """The hub files the guidance loads -> the names they get in the mirror.

    model_index.json, then per component folder its JSON/text configs (tokenizer files
    included) and safetensors weights: the fp16 variant (``*.fp16.safetensors``, renamed to the
    plain name) where the folder has a single-file one, else the plain safetensors (with a
    shard index). Other formats (.bin, .ckpt, onnx, flax) and other folders are left out."""
    chosen = {"model_index.json": "model_index.json"} if "model_index.json" in repo_files else {}
    for comp in COMPONENTS:
        names = [f.removeprefix(comp + "/") for f in repo_files if f.startswith(comp + "/")]
        names = [n for n in names if "/" not in n]
        configs = [n for n in names if n.endswith((".json", ".txt", ".model")) and ".index." not in n]
        fp16 = {n: m.group(1) + ".safetensors" for n in names if (m := _FP16.fullmatch(n))}
        weights = fp16 or {n: n for n in names if _PLAIN.fullmatch(n)}
        if comp in ("unet", "vae", "text_encoder") and names and not weights:
            raise UserError(f"the hub model has no safetensors weights for {comp}")
        for n, target in {**{c: c for c in configs}, **weights}.items():
            chosen[f"{comp}/{n}"] = f"{comp}/{target}"
    if not any(k.startswith("unet/") for k in chosen):
        raise UserError("the hub model has no unet folder: not a diffusers text-to-image model")
    return chosen


def download_from_hub(repo_id: str, revision: str | None, cache_root: Path, model_id: str) -> Path:
    """Download the files ``select_hub_files`` picks into the hub cache under ``cache_root/hub``
    and return a folder of links to them under their mirror names (``cache_root/staging/<id>``)."""
    import shutil

    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
        wanted = select_hub_files(files)
        snapshot = Path(snapshot_download(
            repo_id, revision=revision, cache_dir=cache_root / "hub", allow_patterns=list(wanted)
        ))
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, OSError, ValueError) as e:
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"could not download {repo_id!r} from the model hub: {line}") from None
    staging = cache_root / "staging" / model_id
    shutil.rmtree(staging, ignore_errors=True)
    for hub_name, name in wanted.items():
        src = (snapshot / hub_name).resolve()
        if not src.is_file():
            raise UserError(f"the hub download of {repo_id!r} lacks {hub_name}")
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).symlink_to(src)
    return staging


if __name__ == "__main__":
    sys.exit(cli.run(main))
