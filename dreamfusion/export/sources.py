"""Checkpoint files -> export sources, one loader per checkpoint format.

``load_source(path)`` reads a checkpoint once, looks at its ``format`` key and hands the state
to the loader registered for that format. nerf-sds checkpoints (``dreamfusion-nerf/1``) load as
a ``VolumeSource`` (with the scene, for volume rendering); dmtet-finetune checkpoints
(``dreamfusion-dmtet/1``) as a ``MeshSource``: the trained surface itself, never re-extracted.
A missing, corrupt or foreign file, or a mesh file where a checkpoint belongs, is a UserError.
Every source's ``meta["checkpoint"]`` names the file it was loaded from.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dreamfusion import gpu
from dreamfusion.errors import UserError
from dreamfusion.export.fields import MeshSource, NerfFields, VolumeSource

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")
Loader = Callable[[dict[str, Any], Path, torch.device, tuple[str, ...]], "VolumeSource | MeshSource"]
_LOADERS: dict[str, Loader] = {}


def register_source(fmt: str) -> Callable[[Loader], Loader]:
    """Decorator: ``loader(state, path, device, overrides) -> VolumeSource | MeshSource`` for
    checkpoints of ``fmt`` (``overrides``: ``key=value`` config changes, e.g. render settings)."""

    def wrap(fn: Loader) -> Loader:
        _LOADERS[fmt] = fn
        return fn

    return wrap


def formats() -> list[str]:
    return sorted(_LOADERS)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state dict of a checkpoint of any registered format (UserError otherwise)."""
    path = Path(path)
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        raise UserError(
            f"checkpoint {path} is a folder" + (f"; did you mean {last}?" if last.is_file() else "")
        )
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    if path.suffix.lower() in MESH_SUFFIXES:
        raise UserError(f"{path} is a mesh file, not a checkpoint; pass it with --mesh")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise UserError(f"checkpoint {path} is not readable ({type(e).__name__}: {first})") from None
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt not in _LOADERS:
        what = f"a {fmt!r} checkpoint" if isinstance(fmt, str) else "not a dreamfusion checkpoint"
        raise UserError(f"{path} is {what}; expected one of the formats {formats()}")
    return state


def load_source(
    path: str | Path, device: torch.device | str = "cpu", overrides: tuple[str, ...] = ()
) -> VolumeSource | MeshSource:
    state = read_checkpoint(path)
    source = _LOADERS[state["format"]](state, Path(path), torch.device(device), tuple(overrides))
    source.meta.setdefault("checkpoint", str(path))
    return source


def pick_device(name: str) -> torch.device:
    """``--device``: ``auto`` (CUDA when present, else the CPU), ``cpu`` or ``cuda``."""
    return gpu.pick_device(name, f"--device {name}")


@register_source("dreamfusion-nerf/1")
def _nerf(
    state: dict[str, Any], path: Path, device: torch.device, overrides: tuple[str, ...]
) -> VolumeSource:
    from dreamfusion.renderer.scene import Scene
    from dreamfusion.train.checkpoint import restore_config

    cfg = restore_config(state, path, overrides)
    scene = Scene(cfg, device)
    scene.load_state(state, path)
    scene.eval()
    fields = NerfFields(scene.nerf)
    r = scene.renderer
    updated = int(r.grid_updates) > 0
    return VolumeSource(
        density=fields,
        color=fields,
        bound=fields.bound,
        occupancy=r.occupancy() if updated else None,
        density_grid=r.density_grid.detach().clone() if updated else None,
        mean_density=float(r.mean_density) if updated else None,
        kind="nerf",
        meta={"scene": scene, "config": cfg, "step": int(state.get("step", 0)), "checkpoint": str(path)},
    )


@register_source("dreamfusion-dmtet/1")
def _dmtet(state: dict[str, Any], path: Path, device: torch.device, overrides: tuple[str, ...]) -> MeshSource:
    """The DMTet surface (marching tetrahedra on the trained grid, no marching cubes: its largest
    body with closed cavities filled), coloured by the NeRF colour field trained with it."""
    from dreamfusion.renderer.mesh_scene import MeshScene
    from dreamfusion.train.checkpoint import restore_config

    cfg = restore_config(state, path, overrides)
    scene = MeshScene(cfg, device)
    scene.load_state(state, path)
    scene.eval()
    with torch.no_grad():
        verts, faces = scene.mesh()  # eval mode: the stage's output surface
    fields = NerfFields(scene.nerf)
    return MeshSource(
        vertices=verts.cpu().numpy(),
        faces=faces.cpu().numpy(),
        color=fields,
        kind="dmtet",
        meta={"scene": scene, "config": cfg, "step": int(state.get("step", 0)), "checkpoint": str(path)},
    )
