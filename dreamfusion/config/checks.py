"""Value checks used by the config dataclasses' ``check()``; each failure names key and value."""

from __future__ import annotations

import math
from collections.abc import Sequence

from dreamfusion.config.node import Node
from dreamfusion.errors import ConfigError


def _name(node: Node, key: str) -> str:
    path = node.__dict__.get("_path", "")
    return f"{path}.{key}" if path else key


def fail(node: Node, key: str, why: str) -> None:
    raise ConfigError(f"{_name(node, key)}={getattr(node, key)!r}: {why}")


def _finite_bound(node: Node, keys: Sequence[str], holds, bound: str) -> None:
    for key in keys:
        value = getattr(node, key)
        if not (holds(value) and math.isfinite(value)):
            fail(node, key, f"must be {bound}" if math.isfinite(value) else f"must be a finite number {bound}")


def positive(node: Node, *keys: str) -> None:
    _finite_bound(node, keys, lambda v: v > 0, "> 0")


def non_negative(node: Node, *keys: str) -> None:
    _finite_bound(node, keys, lambda v: v >= 0, ">= 0")


def within(node: Node, key: str, lo: float, hi: float, why: str = "") -> None:
    value = getattr(node, key)
    if not lo <= value <= hi:
        fail(node, key, f"must be within [{lo}, {hi}]" + (f" ({why})" if why else ""))


def at_most(node: Node, keys: Sequence[str], hi: float, why: str) -> None:
    """Sizes bounded so that what they allocate fits in memory; ``why`` says what the bound keeps."""
    for key in keys:
        if getattr(node, key) > hi:
            fail(node, key, f"must be at most {hi:,} ({why})")


def one_of(node: Node, key: str, choices: Sequence[str]) -> None:
    if getattr(node, key) not in choices:
        fail(node, key, f"must be one of {list(choices)}")


def interval(node: Node, key: str, lo: float | None = None, hi: float | None = None, strict: bool = False) -> None:
    """A [low, high] pair with low <= high (low < high if strict), inside (lo, hi) when given."""
    value = getattr(node, key)
    if len(value) != 2:
        fail(node, key, "must be a pair [low, high]")
    a, b = value
    if a > b or (strict and a == b):
        fail(node, key, "low must be below high")
    if lo is not None and not a > lo:
        fail(node, key, f"must lie inside ({lo}, {hi})")
    if hi is not None and not b < hi:
        fail(node, key, f"must lie inside ({lo}, {hi})")
