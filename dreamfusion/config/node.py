"""Base class of every config dataclass: records which keys the code reads.

Reading is tracked only inside ``track_reads()``; a test uses it to prove that every
key of the resolved config is consumed by something (the seed's NeMo ships dead keys).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_reads: set[str] | None = None


class Node:
    """Mixin for config dataclasses. ``_path`` is set by ``config.compose`` (e.g. ``model.nerf``)."""

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if _reads is not None and not name.startswith("_"):
            fields = object.__getattribute__(self, "__dataclass_fields__")
            if name in fields:
                path = object.__getattribute__(self, "__dict__").get("_path", "")
                _reads.add(f"{path}.{name}" if path else name)
        return value


@contextlib.contextmanager
def track_reads() -> Iterator[set[str]]:
    """Collect the dotted paths of every config field read in the block."""
    global _reads
    previous, _reads = _reads, set()
    try:
        yield _reads
    finally:
        _reads = previous


def set_paths(node: Node, path: str = "") -> None:
    """Give every Node in the tree its dotted path, for read tracking and error messages."""
    object.__setattr__(node, "_path", path)
    for name in object.__getattribute__(node, "__dataclass_fields__"):
        child = object.__getattribute__(node, name)
        if isinstance(child, Node):
            set_paths(child, f"{path}.{name}" if path else name)
