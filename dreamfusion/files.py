"""Writing outputs so that a killed process leaves the previous file or the new one, never a part.

``atomic_path(path)`` yields a temporary name beside ``path`` (same folder, so the same file
system) and renames it into place only when the block finishes; on an error the temporary file is
removed and ``path`` is untouched. ``write_bytes``/``write_text``/``write_json`` are the common
cases. A set of files that belong together (a mesh and its stats) is written member by member
with ``atomic_path`` after its marker file (the stats) has been removed, and the marker last: a
reader that finds the marker finds the whole new set.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """``.STEM.PID.tmp.SUFFIX`` beside ``path``: hidden, unique to this process, and with the
    suffix that tools choosing a format by it (ffmpeg) need."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp(\.[^.]*)?$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # called before this process writes anything: a name with its pid is an earlier one's
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files (``temporary_name``) under ``folder`` that a killed process left:
    those whose process is gone (or is this one, before it has written). A SIGKILL skips
    ``atomic_path``'s clean-up, so a stage calls this on its output folder before it starts.
    Returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.rglob(".*.tmp*"):
        m = _TEMPORARY.match(p.name)
        if m and p.is_file() and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data, **kw) -> Path:
    return write_text(path, json.dumps(data, indent=2, **kw) + "\n")
