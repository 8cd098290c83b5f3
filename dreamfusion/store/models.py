"""Model weights mirrored in the object store, for clusters that cannot reach the model hub.

    prefix = model_prefix("stabilityai/stable-diffusion-2-1-base")   # models/stabilityai/...
    mirror_model(store, "/data/sd-2-1-base", prefix)                 # a diffusers folder
    folder = fetch_model(store, prefix, default_cache_root())        # a local diffusers folder

A mirror is the files of a diffusers folder under ``models/<model id>/`` and a manifest,
``models/<model id>/dreamfusion-mirror.json`` (every file's path, size and sha256), uploaded
last: a mirror without its manifest is unfinished (or being replaced) and is never read.
Stages name a mirror by its URL, ``s3://<bucket>/models/<model id>``, as
``model.guidance.model_key``.

``fetch_model`` copies a mirror to ``<cache root>/mirrors/<bucket>/models/<model id>``. It
downloads into a ``.partial`` folder beside it, checks every file's size and sha256 against the
manifest, writes the manifest last and renames the folder into place, so the final path holds a
complete, verified copy or nothing; a killed download leaves only the ``.partial`` folder, which
the next call clears. A cached copy whose manifest equals the stored one is used as it is (one
small request, no file downloaded). Concurrent fetches of one model into one cache take turns
(a lock file beside the folder). This module imports nothing of the model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from dreamfusion.errors import UserError
from dreamfusion.store import Store, StoreError

log = logging.getLogger(__name__)

MODELS = "models"
MANIFEST = "dreamfusion-mirror.json"
MANIFEST_FORMAT = 1
MAX_ID_LENGTH = 200
URL_SCHEME = "s3://"
_ID_CHARS = re.compile(r"[A-Za-z0-9._@+=-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


# -- names --------------------------------------------------------------------------------------
def check_model_id(model_id: str, what: str = "model id") -> str:
    """The one check for a model id (it becomes part of object keys and cache paths): 1-200
    characters, parts separated by single ``/``, each of letters, digits and ``. _ - @ + =``;
    no leading or trailing ``/``, no ``.`` or ``..`` part, no control characters. Returns it."""
    if not isinstance(model_id, str) or not model_id:
        raise UserError(f"{what} must be a non-empty name, not {model_id!r}")
    if len(model_id) > MAX_ID_LENGTH:
        raise UserError(f"{what} is {len(model_id)} characters, at most {MAX_ID_LENGTH}: {model_id[:40]!r}...")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in model_id):
        raise UserError(f"{what} {model_id!r} contains a control character")
    if model_id.startswith("/") or model_id.endswith("/"):
        raise UserError(f"{what} {model_id!r} must not start or end with '/'")
    for part in model_id.split("/"):
        if part in ("", ".", ".."):
            raise UserError(f"{what} {model_id!r} has an empty, '.' or '..' part")
        if not _ID_CHARS.fullmatch(part):
            raise UserError(
                f"{what} {model_id!r}: use letters, digits and . _ - @ + = (and '/' between parts)"
            )
    return model_id


def model_prefix(model_id: str) -> str:
    """``models/<model id>``: where a model's files live in a bucket."""
    return f"{MODELS}/{check_model_id(model_id)}"


def _model_id(prefix: str) -> str:
    """The model id of a ``models/<model id>`` prefix (a trailing '/' is allowed)."""
    head, sep, model_id = prefix.rstrip("/").partition("/")
    if head != MODELS or not sep:
        raise UserError(f"model prefix must be {MODELS}/<model id>, not {prefix!r}")
    return check_model_id(model_id)


def model_url(bucket: str, prefix: str) -> str:
    """``s3://<bucket>/models/<model id>``: the model key stages read a mirror by."""
    return f"{URL_SCHEME}{bucket}/{MODELS}/{_model_id(prefix)}"


def is_model_url(key: str) -> bool:
    return key.startswith(URL_SCHEME)


def parse_model_url(url: str) -> tuple[str, str]:
    """``s3://<bucket>/models/<model id>`` -> (bucket, ``models/<model id>``)."""
    bucket, sep, prefix = url.removeprefix(URL_SCHEME).partition("/")
    if not is_model_url(url) or not bucket or not sep or not prefix.startswith(f"{MODELS}/"):
        raise UserError(f"model key {url!r} must be {URL_SCHEME}<bucket>/{MODELS}/<model id>")
    try:
        return bucket, f"{MODELS}/{_model_id(prefix)}"
    except UserError as e:
        raise UserError(f"model key {url!r}: {e}") from None


def default_cache_root() -> Path:
    """``$DREAMFUSION_CACHE``, else ``~/.cache/dreamfusion``."""
    return Path(os.environ.get("DREAMFUSION_CACHE") or Path.home() / ".cache" / "dreamfusion").expanduser()


def cache_folder(cache_root: str | Path, bucket: str, prefix: str) -> Path:
    """Where ``fetch_model`` puts a mirror: ``<cache root>/mirrors/<bucket>/models/<model id>``."""
    return Path(cache_root) / "mirrors" / bucket / MODELS / _model_id(prefix)


# -- manifest -----------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def model_files(folder: str | Path) -> list[str]:
    """Relative paths (``/``-separated, sorted) of a model folder's files, without hidden ones
    (``.cache/``, ``.gitattributes``) and without a manifest."""
    folder = Path(folder)
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and rel.as_posix() != MANIFEST:
            out.append(rel.as_posix())
    return sorted(out)


def build_manifest(folder: str | Path, source: str = "") -> dict:
    """Every file of ``folder`` with its size and sha256."""
    folder = Path(folder)
    for rel in model_files(folder):
        check_model_id(rel, f"file path in {folder}")
    files = [{"path": rel, "size": (folder / rel).stat().st_size, "sha256": _sha256(folder / rel)}
             for rel in model_files(folder)]
    return {
        "format": MANIFEST_FORMAT,
        "source": source,
        "files": files,
        "total_size": sum(f["size"] for f in files),
    }


def _check_manifest(data: bytes, where: str) -> dict:
    """Parse a stored manifest; every path must stay inside the model folder."""
    try:
        manifest = json.loads(data)
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT}")
        for f in manifest["files"]:
            check_model_id(f["path"], "file path")
            if not isinstance(f["size"], int) or f["size"] < 0 or not _SHA256.fullmatch(f["sha256"]):
                raise ValueError(f"bad size or sha256 for {f['path']!r}")
    except (ValueError, KeyError, TypeError, UserError) as e:
        raise UserError(f"model mirror {where} has a corrupt manifest ({e}): mirror the model again") from None
    return manifest


def read_manifest(store: Store, prefix: str) -> dict | None:
    """The stored manifest of a mirror, or None when there is none (never mirrored, unfinished)."""
    key = f"{MODELS}/{_model_id(prefix)}/{MANIFEST}"
    if store.stat(key) is None:
        return None
    return _check_manifest(store.get_bytes(key), model_url(store.bucket, prefix))


# -- mirror -------------------------------------------------------------------------------------
def mirror_model(store: Store, source_folder: str | Path, prefix: str, source: str = "") -> dict:
    """Upload the diffusers folder ``source_folder`` under ``prefix`` (``models/<model id>``)
    and return its manifest. Steps:

    1. hash every file (nothing is uploaded if one cannot be read);
    2. delete the previous manifest, if any, so the mirror reads as unfinished from here on;
    3. upload every file to ``<prefix>/<relative path>``;
    4. delete files of the previous mirror that the new one no longer has;
    5. check the stored sizes, then upload the manifest last.
    """
    prefix = f"{MODELS}/{_model_id(prefix)}"
    folder = Path(source_folder)
    if not folder.is_dir():
        raise UserError(f"cannot mirror {folder}: no such folder")
    manifest = build_manifest(folder, source or folder.name)
    if not manifest["files"]:
        raise UserError(f"cannot mirror {folder}: it holds no files")
    url = model_url(store.bucket, prefix)
    key, old = f"{prefix}/{MANIFEST}", None
    if store.stat(key) is not None:
        with contextlib.suppress(UserError):  # an unreadable old manifest is replaced all the same
            old = _check_manifest(store.get_bytes(key), url)
        store.delete(key)
    t0 = time.time()
    for i, f in enumerate(manifest["files"], 1):
        store.put_file(f"{prefix}/{f['path']}", folder / f["path"])
        log.info("mirror %s: %d/%d %s (%d bytes)", url, i, len(manifest["files"]), f["path"], f["size"])
    paths = {f["path"] for f in manifest["files"]}
    for f in (old or {}).get("files", []):
        if f["path"] not in paths:
            store.delete(f"{prefix}/{f['path']}")
    stored = {o.key: o.size for o in store.list(f"{prefix}/")}
    for f in manifest["files"]:
        size = stored.get(f"{prefix}/{f['path']}")
        if size != f["size"]:
            raise StoreError(f"model mirror {url}: {f['path']} was stored with size {size}, expected {f['size']}")
    store.put_bytes(key, json.dumps(manifest, indent=1).encode(), "application/json")
    log.info("mirror %s: %d files, %d bytes in %.1f s", url, len(paths), manifest["total_size"], time.time() - t0)
    return manifest


# -- fetch --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise UserError(f"cannot write the model cache {path.parent} ({e.strerror}): "
                        "set DREAMFUSION_CACHE to a writable folder") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_complete(folder: Path, manifest_bytes: bytes, manifest: dict) -> bool:
    """A cached copy is complete when it holds the same manifest and every file at its size
    (its hashes were checked when it was downloaded)."""
    try:
        if (folder / MANIFEST).read_bytes() != manifest_bytes:
            return False
        return all((folder / f["path"]).stat().st_size == f["size"] for f in manifest["files"])
    except OSError:
        return False


def fetch_model(store: Store, prefix: str, cache_root: str | Path) -> Path:
    """A verified local copy of the mirror at ``prefix`` (``models/<model id>``), as a diffusers
    folder under ``cache_root`` (see the module docstring). A missing or unfinished mirror, a
    missing file, or a file whose size or sha256 differs from the manifest is a UserError."""
    prefix = f"{MODELS}/{_model_id(prefix)}"
    url = model_url(store.bucket, prefix)
    final = cache_folder(cache_root, store.bucket, prefix)
    key = f"{prefix}/{MANIFEST}"
    if store.stat(key) is None:
        raise UserError(
            f"no model mirror at {url} (no {MANIFEST}: never mirrored, or the mirror did not finish): "
            "run python -m dreamfusion.stages.mirror_model"
        )
    manifest_bytes = store.get_bytes(key)
    manifest = _check_manifest(manifest_bytes, url)
    with _locked(final.with_name(final.name + ".lock")):
        if _is_complete(final, manifest_bytes, manifest):
            log.info("model %s: cached at %s", url, final)
            return final
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # what a killed download left
        stored = {o.key: o.size for o in store.list(f"{prefix}/")}
        for f in manifest["files"]:
            size = stored.get(f"{prefix}/{f['path']}")
            if size != f["size"]:
                found = "missing" if size is None else f"{size} bytes"
                raise UserError(f"model mirror {url} is incomplete: {f['path']} is {found}, the manifest says "
                                f"{f['size']} bytes: mirror the model again")
        free = shutil.disk_usage(final.parent).free
        if free < manifest["total_size"]:
            raise UserError(f"model {url} needs {manifest['total_size'] / 1e9:.2f} GB in {final.parent}, "
                            f"{free / 1e9:.2f} GB free (set DREAMFUSION_CACHE to a larger disk)")
        t0 = time.time()
        try:
            for f in manifest["files"]:
                path = store.get_file(f"{prefix}/{f['path']}", partial / f["path"])
                size, digest = path.stat().st_size, _sha256(path)
                if size != f["size"] or digest != f["sha256"]:
                    raise UserError(
                        f"model mirror {url} is corrupt: {f['path']} has sha256 {digest[:16]}... ({size} bytes), "
                        f"the manifest says {f['sha256'][:16]}... ({f['size']} bytes): mirror the model again"
                    )
            (partial / MANIFEST).write_bytes(manifest_bytes)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if final.exists():  # an older or broken copy: out of the way first, then removed
            old = final.with_name(final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(partial, final)
    log.info("model %s: %d files, %d bytes fetched in %.1f s -> %s", url, len(manifest["files"]),
             manifest["total_size"], time.time() - t0, final)
    return final


def fetch_model_url(url: str, endpoint: str, secure: bool | None = None, cache_root: str | Path | None = None) -> Path:
    """``fetch_model`` for a model key ``s3://<bucket>/models/<model id>`` on ``endpoint``
    (credentials from the environment); the cache root defaults to ``default_cache_root()``."""
    bucket, prefix = parse_model_url(url)
    if not endpoint:
        raise UserError(f"model key {url!r} is in an object store: give its endpoint (--store-endpoint)")
    store = Store(endpoint, bucket, secure)
    return fetch_model(store, prefix, default_cache_root() if cache_root is None else cache_root)
