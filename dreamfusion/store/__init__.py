"""Object storage (MinIO / any S3 server) through the ``minio`` SDK.

Endpoint, bucket and TLS are parameters; credentials come only from the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or ``MINIO_ACCESS_KEY``/``MINIO_SECRET_KEY``;
on a cluster a Kubernetes Secret), never from arguments, so they never reach a pipeline
parameter, a log line or compiled YAML.

Uses: periodic training checkpoints (a retried task resumes from the latest one, keyed by
run id, task and prompt hash), mirrored model weights, published results. Transient
errors (connection refused or reset, 5xx, SlowDown) are retried with exponential backoff for
``patience`` seconds (default ``DEFAULT_PATIENCE``, or ``$DREAMFUSION_STORE_PATIENCE``), with one
warning saying what is waited for and for how long, and one line when the store answers again:
an outage of a minute is waited out. Wrong credentials, a missing bucket or an endpoint that
stays unreachable become one :class:`~dreamfusion.errors.UserError` line.

Every checkpoint is stored with the SHA-256 of its bytes (object metadata) and checked when it
is read back: a corrupt or truncated stored checkpoint is reported in the log and the previous
one is used. This module imports nothing of the model.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dreamfusion.errors import UserError

log = logging.getLogger(__name__)
T = TypeVar("T")

PART_SIZE = 16 * 1024 * 1024  # files larger than this go up as a multipart upload
DEFAULT_PATIENCE = 300.0  # seconds a transient failure is retried before it is an error
SHA256_META = "sha256"  # object metadata holding a checkpoint's digest
CREDENTIAL_ENV = (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"))
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed"}
_CKPT_RE = re.compile(r"step-(\d+)\.pt$")


class StoreError(UserError):
    """The object store refused or could not be reached (one line, no traceback for users)."""


def store_patience() -> float:
    """Seconds a transient store failure is retried: ``$DREAMFUSION_STORE_PATIENCE`` or ``DEFAULT_PATIENCE``."""
    text = os.environ.get("DREAMFUSION_STORE_PATIENCE", "")
    try:
        value = float(text) if text else DEFAULT_PATIENCE
    except ValueError:
        raise StoreError(f"DREAMFUSION_STORE_PATIENCE={text!r} is not a number of seconds") from None
    if not (value >= 0 and value < float("inf")):
        raise StoreError(f"DREAMFUSION_STORE_PATIENCE={text!r} must be a finite number of seconds >= 0")
    return value


def credentials_from_env(env: dict[str, str] | None = None) -> tuple[str, str]:
    env = os.environ if env is None else env
    for key_var, secret_var in CREDENTIAL_ENV:
        if env.get(key_var) and env.get(secret_var):
            return env[key_var], env[secret_var]
    names = " or ".join(f"{a}/{b}" for a, b in CREDENTIAL_ENV)
    raise StoreError(f"no object-store credentials in the environment: set {names}")


def prompt_hash(prompt: str, negative_prompt: str = "") -> str:
    """A short stable id for a prompt (and its negative prompt): part of checkpoint keys."""
    return hashlib.sha256(f"{prompt}\x00{negative_prompt}".encode()).hexdigest()[:16]


def checkpoint_prefix(run_id: str, task: str, phash: str) -> str:
    for name, value in (("run id", run_id), ("task", task), ("prompt hash", phash)):
        if not value or "/" in value:
            raise StoreError(f"checkpoint {name} must be a non-empty name without '/': {value!r}")
    return f"checkpoints/{run_id}/{task}/{phash}/"


def checkpoint_key(run_id: str, task: str, phash: str, step: int) -> str:
    return f"{checkpoint_prefix(run_id, task, phash)}step-{int(step):09d}.pt"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    sha256: str = ""  # the digest stored with a checkpoint ("" for other objects)


def _split_endpoint(endpoint: str, secure: bool | None) -> tuple[str, bool]:
    """``host:port`` or ``http(s)://host:port``; a scheme decides TLS unless ``secure`` is given."""
    m = re.fullmatch(r"(?:(https?)://)?([^/\s]+)/?", endpoint.strip())
    if not m:
        raise StoreError(f"object-store endpoint must be host:port or http(s)://host:port, not {endpoint!r}")
    scheme, host = m.groups()
    if secure is None:
        secure = scheme == "https"
    return host, secure


class Store:
    """One bucket on one S3 endpoint. ``create_bucket=True`` makes the bucket when missing;
    otherwise a missing bucket is a :class:`StoreError` at the first call."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        secure: bool | None = None,
        *,
        retries: int | None = None,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        patience: float | None = None,
        create_bucket: bool = False,
        region: str | None = None,
        timeout: float = 30.0,
    ):
        import urllib3
        from minio import Minio

        self.host, self.secure = _split_endpoint(endpoint, secure)
        self.endpoint = ("https://" if self.secure else "http://") + self.host
        self.bucket = bucket
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.patience = patience if patience is not None else store_patience()
        self.create_bucket = create_bucket
        access, secret = credentials_from_env()
        # urllib3 retries nothing: every retry goes through _call, with our backoff and logging.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
            retries=urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0, raise_on_status=False),
            maxsize=4,
        )
        self.client = Minio(
            self.host, access_key=access, secret_key=secret, secure=self.secure, region=region or "us-east-1",
            http_client=http,
        )
        self._checked = False
        try:
            from minio.helpers import check_bucket_name

            check_bucket_name(bucket)
        except ValueError as e:
            raise StoreError(f"{e} (S3 bucket names: 3-63 characters, lower case, digits, '-' and '.')") from None

    # -- error handling ---------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T], *, check_bucket: bool = True) -> T:
        from minio.error import S3Error, ServerError

        if check_bucket and not self._checked:
            self.ensure_bucket()
        delay, last, began, attempt = self.backoff, None, time.monotonic(), 0
        while True:
            try:
                result = fn()
                if attempt:
                    log.warning("object store %s: %s succeeded after %.0f s of retries", self.endpoint, what,
                                time.monotonic() - began)
                return result
            except S3Error as e:
                if e.code in _CREDENTIAL_CODES:
                    raise StoreError(
                        f"object store {self.endpoint} refused the credentials ({e.code}) while trying to {what}: "
                        "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                    ) from None
                if e.code == "NoSuchBucket":
                    raise StoreError(f"bucket {self.bucket!r} does not exist on {self.endpoint}") from None
                if e.code not in _TRANSIENT_CODES:
                    raise StoreError(f"object store {self.endpoint} failed to {what}: {e.code}: {e.message}") from None
                last = f"{e.code}: {e.message}"
            except ServerError as e:  # 5xx without an S3 error body
                last = f"HTTP {e.status_code}"
            except Exception as e:  # connection refused/reset, timeouts: urllib3 and OS errors
                if not _is_transport_error(e):
                    raise
                last = f"{type(e).__name__}: {_short(e)}"
            attempt += 1
            waited = time.monotonic() - began
            if waited + delay > self.patience or (self.retries is not None and attempt > self.retries):
                break
            if attempt == 1:  # said once; the retries themselves go to the debug log
                log.warning("object store %s: could not %s (%s); retrying for up to %.0f s",
                            self.endpoint, what, last, self.patience)
            else:
                log.debug("object store %s: %s failed again (%s); retry %d", self.endpoint, what, last, attempt)
            time.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
        raise StoreError(
            f"object store {self.endpoint} unreachable: could not {what} after {attempt} tries over "
            f"{time.monotonic() - began:.0f} s ({last})"
        )

    def ensure_bucket(self) -> None:
        exists = self._call(
            f"check bucket {self.bucket!r}", lambda: self.client.bucket_exists(self.bucket), check_bucket=False
        )
        if not exists:
            if not self.create_bucket:
                raise StoreError(f"bucket {self.bucket!r} does not exist on {self.endpoint}")
            self._call(
                f"create bucket {self.bucket!r}", lambda: self.client.make_bucket(self.bucket), check_bucket=False
            )
        self._checked = True

    # -- objects ----------------------------------------------------------------------------
    def put_file(
        self, key: str, path: str | Path, content_type: str = "application/octet-stream", metadata: dict | None = None
    ) -> ObjectInfo:
        """Upload a file (multipart above 16 MB). The whole upload is retried on a transient error."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"cannot upload {path}: no such file")
        r = self._call(
            f"upload {path.name} to {self.bucket}/{key}",
            lambda: self.client.fput_object(
                self.bucket, key, str(path), content_type=content_type, part_size=PART_SIZE, metadata=metadata
            ),
        )
        return ObjectInfo(key, path.stat().st_size, r.etag)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        r = self._call(
            f"upload {self.bucket}/{key}",
            lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type),
        )
        return ObjectInfo(key, len(data), r.etag)

    def get_file(self, key: str, path: str | Path) -> Path:
        """Download to ``path`` through a temporary file, so a broken download leaves nothing behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")

        def fetch():
            try:
                self.client.fget_object(self.bucket, key, str(tmp))
            except Exception:
                tmp.unlink(missing_ok=True)
                raise
            tmp.replace(path)
            return path

        return self._missing_is_error(key, lambda: self._call(f"download {self.bucket}/{key}", fetch))

    def get_bytes(self, key: str) -> bytes:
        def fetch():
            resp = self.client.get_object(self.bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._missing_is_error(key, lambda: self._call(f"download {self.bucket}/{key}", fetch))

    def _missing_is_error(self, key: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except StoreError as e:
            if "NoSuchKey" in str(e):
                raise StoreError(f"no object {key!r} in bucket {self.bucket!r} on {self.endpoint}") from None
            raise

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def stat(self, key: str) -> ObjectInfo | None:
        from minio.error import S3Error

        def head():
            try:
                s = self.client.stat_object(self.bucket, key)
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"):
                    return None
                raise
            meta = {k.lower().removeprefix("x-amz-meta-"): v for k, v in (s.metadata or {}).items()}
            return ObjectInfo(key, s.size, s.etag, meta.get(SHA256_META, ""))

        return self._call(f"look up {self.bucket}/{key}", head)

    def list(self, prefix: str = "", recursive: bool = True) -> list[ObjectInfo]:
        """Objects under ``prefix``, sorted by key."""

        def listing():
            objs = self.client.list_objects(self.bucket, prefix=prefix, recursive=recursive)
            found = (ObjectInfo(o.object_name, o.size or 0, o.etag or "") for o in objs if not o.is_dir)
            return sorted(found, key=lambda o: o.key)

        return self._call(f"list {self.bucket}/{prefix}", listing)

    def delete(self, key: str) -> None:
        self._call(f"delete {self.bucket}/{key}", lambda: self.client.remove_object(self.bucket, key))

    def put_tree(self, folder: str | Path, prefix: str) -> list[ObjectInfo]:
        """Upload every file under ``folder`` to ``prefix/<relative path>``."""
        folder = Path(folder)
        out = []
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                key = f"{prefix.rstrip('/')}/{p.relative_to(folder).as_posix()}"
                out.append(self.put_file(key, p, _content_type(p)))
        return out

    # -- checkpoints ------------------------------------------------------------------------
    def put_checkpoint(self, path: str | Path, run_id: str, task: str, phash: str, step: int, keep: int = 0) -> str:
        """Upload a checkpoint under its (run id, task, prompt hash, step) key; ``keep > 0``
        deletes all but the newest ``keep`` checkpoints of that key prefix."""
        key = checkpoint_key(run_id, task, phash, step)
        self.put_file(key, path, metadata={SHA256_META: file_sha256(path)})
        if keep > 0:
            for old in self._checkpoints(run_id, task, phash)[:-keep]:
                self.delete(old[1])
        return key

    def _checkpoints(self, run_id: str, task: str, phash: str) -> list[tuple[int, str]]:
        found = []
        for o in self.list(checkpoint_prefix(run_id, task, phash)):
            m = _CKPT_RE.search(o.key)
            if m:
                found.append((int(m.group(1)), o.key))
        return sorted(found)

    def latest_checkpoint(self, run_id: str, task: str, phash: str) -> tuple[int, str] | None:
        """(step, key) of the newest stored checkpoint, or None."""
        found = self._checkpoints(run_id, task, phash)
        return found[-1] if found else None

    def download_latest_checkpoint(
        self, run_id: str, task: str, phash: str, folder: str | Path
    ) -> tuple[int, Path] | None:
        """The newest stored checkpoint whose bytes match the digest stored with it (size, for one
        stored without), downloaded into ``folder``; a corrupt or truncated one is logged and the
        previous one is tried. None when there is none, or none intact."""
        for step, key in reversed(self._checkpoints(run_id, task, phash)):
            path = self.get_file(key, Path(folder) / key.rsplit("/", 1)[-1])
            info = self.stat(key)
            why = None
            if info is None:
                why = "it vanished while being read"
            elif info.sha256 and file_sha256(path) != info.sha256:
                why = f"its SHA-256 is not the {info.sha256[:12]}... stored with it"
            elif path.stat().st_size != info.size:
                why = f"{path.stat().st_size} bytes read of {info.size}"
            if why is None:
                return step, path
            log.warning("stored checkpoint %s/%s is corrupt (%s): using the previous one", self.bucket, key, why)
            path.unlink(missing_ok=True)
        return None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_transport_error(e: BaseException) -> bool:
    import urllib3.exceptions as ue

    transport = (ue.HTTPError, ConnectionError, TimeoutError, OSError)
    return isinstance(e, transport) and not isinstance(e, FileNotFoundError)


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return text[:200]


_TYPES = {".html": "text/html", ".json": "application/json", ".png": "image/png", ".mp4": "video/mp4",
          ".glb": "model/gltf-binary", ".obj": "text/plain", ".mtl": "text/plain", ".txt": "text/plain"}


def _content_type(p: Path) -> str:
    return _TYPES.get(p.suffix.lower(), "application/octet-stream")
