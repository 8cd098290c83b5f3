"""Checkpoints: weights, occupancy grid and mean density, optimizer, step, RNG states, resolved config.

Written atomically (temporary file, then rename), read with ``weights_only=True``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamfusion import files
from dreamfusion.config import compose
from dreamfusion.config.schema import RootConfig
from dreamfusion.errors import UserError

FORMAT = "dreamfusion-nerf/1"
DMTET_FORMAT = "dreamfusion-dmtet/1"
FORMATS = {FORMAT: "nerf-sds", DMTET_FORMAT: "dmtet-finetune"}


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: str | Path, state: dict[str, Any], fmt: str = FORMAT) -> Path:
    path = Path(path)
    with files.atomic_path(path) as tmp:
        torch.save({"format": fmt, **state}, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint of either training stage; a missing, corrupt or foreign file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure: truncated, empty, random bytes, another format
        first = (str(e).splitlines() or ["no detail"])[0][:200]
        raise UserError(f"checkpoint {path} is not readable ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or state.get("format") not in FORMATS:
        kinds = ", ".join(f"{stage} ({fmt})" for fmt, stage in FORMATS.items())
        raise UserError(f"{path} is not a training checkpoint of {kinds}")
    return state


def restore_config(state: dict[str, Any], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RootConfig:
    """The config a checkpoint was trained with (plus ``overrides``)."""
    try:
        return compose(list(overrides), base=state["config"])
    except UserError as e:
        raise UserError(f"checkpoint {path}: {e}") from None
