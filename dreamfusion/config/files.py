"""Config files in the seed's layout (NeMo's dreamfusion.yaml), read as overrides.

Two layouts are accepted: the model file the seed documents (``defaults``, ``prompt``, ``data``,
the groups' own keys ...: everything under ``model``), or a run file with top-level ``trainer``
and ``model`` sections. ``defaults`` entries (``- nerf: torchngp``) choose group options and
``_self_`` is skipped; ``_target_`` keys (NeMo's class paths) are skipped, since the registry picks
the class. Every other key becomes a ``key=value`` override, so an unknown key or a bad value
fails with the same one-line error as on the command line, naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from dreamfusion.errors import ConfigError, UserError

MAX_BYTES = 1 << 20  # a config file, not a data file


def quote(text: str) -> str:
    """A string as a YAML scalar that override parsing reads back verbatim."""
    return "'" + text.replace("'", "''") + "'"


def _value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return v if v.startswith("${") else quote(v)
    return json.dumps(v)


def _defaults(path: Path, entries) -> list[str]:
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: model.defaults must be a list of 'group: option' entries")
    out = []
    for e in entries:
        if e == "_self_":
            continue
        if not (isinstance(e, dict) and len(e) == 1):
            raise ConfigError(f"{path}: model.defaults entry {e!r} is not 'group: option'")
        (group, option), = e.items()
        out.append(f"{group}={option}")
    return out


def overrides_from_file(path: str | Path) -> list[str]:
    """The overrides a YAML config file in the seed's layout stands for (see the module docstring)."""
    import yaml

    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise UserError(f"config file {path} is larger than {MAX_BYTES >> 10} KiB")
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read config file {path} ({e.strerror or type(e).__name__})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"config file {path} is not YAML ({first})") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of keys, not a {type(data).__name__}")
    root = data if ("model" in data or "trainer" in data) else {"model": data}
    out: list[str] = []

    def walk(prefix: str, node: dict) -> None:
        for k, v in node.items():
            if k == "_target_":
                continue
            key = f"{prefix}.{k}" if prefix else str(k)
            if key == "model.defaults":
                out.extend(_defaults(path, v))
            elif isinstance(v, dict):
                walk(key, v)
            else:
                out.append(f"{key}={_value(v)}")

    walk("", root)
    from dreamfusion.config import compose

    try:  # the file on its own, so that an error names the file
        compose(out)
    except ConfigError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    return out


def compose_with_file(path: str | Path | None, overrides: list[str]) -> list[str]:
    """``overrides`` after the file's (the file first: presets and command-line overrides win)."""
    return (overrides_from_file(path) if path is not None else []) + list(overrides)
