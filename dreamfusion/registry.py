"""One registry per swappable part: ``register(group, name)`` a class, ``find(group, name)`` it back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dreamfusion.errors import ConfigError

_REGISTRY: dict[str, dict[str, Any]] = {}


def register(group: str, name: str) -> Callable[[Any], Any]:
    """Class decorator: make ``cls`` selectable as ``group=name`` in the config."""

    def wrap(cls: Any) -> Any:
        options = _REGISTRY.setdefault(group, {})
        if name in options:
            raise ValueError(f"{group}={name} is registered twice ({options[name]} and {cls})")
        options[name] = cls
        return cls

    return wrap


def find(group: str, name: str) -> Any:
    """The class registered as ``group=name``; a ConfigError naming the options if there is none."""
    _import_builtin_options()
    options = _REGISTRY.get(group, {})
    if name not in options:
        raise ConfigError(f"{group}={name!r} is not an option; choose one of {sorted(options)}")
    return options[name]


def options(group: str) -> list[str]:
    _import_builtin_options()
    return sorted(_REGISTRY.get(group, {}))


def _import_builtin_options() -> None:
    # Importing the packages registers their options; nothing here imports a GPU-only package.
    import dreamfusion.background  # noqa: F401
    import dreamfusion.data  # noqa: F401
    import dreamfusion.geometry  # noqa: F401
    import dreamfusion.guidance  # noqa: F401
    import dreamfusion.loss  # noqa: F401
    import dreamfusion.material  # noqa: F401
    import dreamfusion.optim  # noqa: F401
    import dreamfusion.renderer  # noqa: F401
