"""Object storage (MinIO / any S3 server) through the ``minio`` SDK.

Endpoint, bucket and TLS are parameters; credentials come only from the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or ``MINIO_ACCESS_KEY``/``MINIO_SECRET_KEY``;
on a cluster a Kubernetes Secret), never from arguments, so they never reach a pipeline
parameter, a log line or compiled YAML.

Uses: periodic training checkpoints (a retried task resumes from the latest one, keyed by
run id, task and prompt hash), mirrored model weights, published results. Transient
errors (connection refused or reset, 5xx, SlowDown) are retried with exponential backoff;
wrong credentials, a missing bucket or an endpoint that stays unreachable become one
:class:`~dreamfusion.errors.UserError` line. This module imports nothing of the model.
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
CREDENTIAL_ENV = (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"))
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed"}
_CKPT_RE = re.compile(r"step-(\d+)\.pt$")


class StoreError(UserError):
    """The object store refused or could not be reached (one line, no traceback for users)."""


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
        retries: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        create_bucket: bool = False,
        region: str | None = None,
        timeout: float = 30.0,
    ):
        import urllib3
        from minio import Minio

        self.host, self.secure = _split_endpoint(endpoint, secure)
        self.endpoint = ("https://" if self.secure else "http://") + self.host
        self.bucket = bucket
        self.retries, self.backoff, self.max_backoff = max(retries, 0), backoff, max_backoff
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
        delay, last = self.backoff, None
        for attempt in range(self.retries + 1):
            try:
                return fn()
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
            if attempt < self.retries:
                log.warning(
                    "object store %s: %s failed (%s); retry %d/%d in %.1f s",
                    self.endpoint, what, last, attempt + 1, self.retries, delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        raise StoreError(
            f"object store {self.endpoint} unreachable: could not {what} after {self.retries + 1} tries ({last})"
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
    def put_file(self, key: str, path: str | Path, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Upload a file (multipart above 16 MB). The whole upload is retried on a transient error."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"cannot upload {path}: no such file")
        r = self._call(
            f"upload {path.name} to {self.bucket}/{key}",
            lambda: self.client.fput_object(
                self.bucket, key, str(path), content_type=content_type, part_size=PART_SIZE
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
            return ObjectInfo(key, s.size, s.etag)

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
        self.put_file(key, path)
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
        latest = self.latest_checkpoint(run_id, task, phash)
        if latest is None:
            return None
        step, key = latest
        return step, self.get_file(key, Path(folder) / key.rsplit("/", 1)[-1])


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
