"""The one config system: the seed's groups and keys, ``key=value`` overrides, strict checking.

    cfg = compose(["guidance=tiny", "trainer.max_steps=20", "model.prompt=a red cube"])

* ``GROUP=OPTION`` (or ``model.GROUP=OPTION``) picks a registered option for a group.
* ``dotted.key=value`` sets a key; values are parsed as YAML (``[0.02, 0.5]``, ``true``).
* An unknown key, a value of the wrong type or an impossible value raises ``ConfigError``
  with one line naming the key and the value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dreamfusion.config import node as _node
from dreamfusion.config.node import Node, set_paths, track_reads
from dreamfusion.config.schema import DEFAULTS, GROUPS, ModelConfig, RootConfig
from dreamfusion.errors import ConfigError

__all__ = [
    "compose",
    "to_dict",
    "Node",
    "track_reads",
    "leaf_paths",
    "interpolations",
    "GROUPS",
    "DEFAULTS",
    "RootConfig",
]


def compose(overrides: Sequence[str] = (), base: Mapping[str, Any] | None = None) -> RootConfig:
    """Resolve the config: defaults, then ``base`` (a saved config), then ``overrides``."""
    from dreamfusion import registry

    previous, _node._reads = _node._reads, None  # composing and checking are not "reading"
    try:
        choices = dict(DEFAULTS)
        if base is not None:
            choices.update(base.get("model", {}).get("defaults", {}))
        keyed = []
        for item in overrides:
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            group = key.removeprefix("model.")
            if group in GROUPS:
                choices[group] = value.strip()
            else:
                keyed.append((key, value))
        groups = {g: registry.find(g, choices[g]).Config() for g in GROUPS}
        cfg = OmegaConf.structured(RootConfig(model=ModelConfig(defaults=choices, **groups)))
        OmegaConf.set_struct(cfg, True)
        if base is not None:
            saved = OmegaConf.create(dict(base))
            saved.model.pop("defaults", None)
            _merge(cfg, saved, "the saved config")
        for key, value in keyed:
            try:
                parsed = OmegaConf.from_dotlist([f"{key}={value}"])
            except yaml.YAMLError as e:  # e.g. a control character in the value
                why = str(e).splitlines()[0]
                raise ConfigError(f"override {f'{key}={value}'!r:.120} is not readable: {why}") from None
            _merge(cfg, parsed, f"{key}={value}")
        links = _interpolations(OmegaConf.to_container(cfg, resolve=False))
        try:
            root = OmegaConf.to_object(cfg)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{_key_of(e)}: {_reason(e)}") from None
        set_paths(root)
        object.__setattr__(root, "_links", links)
        _check(root)
        return root
    finally:
        _node._reads = previous


def to_dict(cfg: RootConfig) -> dict[str, Any]:
    """The resolved config as plain data (what checkpoints and metrics carry)."""
    previous, _node._reads = _node._reads, None
    try:
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    finally:
        _node._reads = previous


def leaf_paths(cfg: RootConfig) -> list[str]:
    """Dotted paths of every leaf key (lists and dicts of values count as one leaf)."""
    out: list[str] = []

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            path = f"{prefix}.{k}" if prefix else k
            if isinstance(v, Mapping) and k != "defaults":
                walk(v, path)
            else:
                out.append(path)

    walk(to_dict(cfg), "")
    return out


def interpolations(cfg: RootConfig) -> dict[str, str]:
    """{key: the key its value was interpolated from}, e.g. model.iters -> trainer.max_steps."""
    return dict(cfg.__dict__.get("_links", {}))


def _interpolations(d: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(d, Mapping):
        for k, v in d.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, str) and v.startswith("${") and v.endswith("}"):
                out[path] = v[2:-1]
            else:
                out.update(_interpolations(v, path))
    return out


def _merge(cfg, other, what: str) -> None:
    try:
        cfg.merge_with(other)
    except OmegaConfBaseException as e:
        key = _key_of(e) or what.partition("=")[0]
        value = what.partition("=")[2] if "=" in what else ""
        if "not in struct" in str(e) or "Key '" in str(e) and "not" in str(e):
            raise ConfigError(f"unknown config key {key!r} (in {what})") from None
        raise ConfigError(f"{key}={value!r}: {_reason(e)}") from None


def _key_of(e: OmegaConfBaseException) -> str:
    return str(getattr(e, "full_key", "") or "")


def _reason(e: OmegaConfBaseException) -> str:
    return str(e).splitlines()[0]


def _check(node: Node) -> None:
    """Run every node's ``check()`` (value ranges), children first."""
    for name in node.__dataclass_fields__:
        child = object.__getattribute__(node, name)
        if isinstance(child, Node):
            _check(child)
    check = getattr(node, "check", None)
    if check is not None:
        check()
