"""The one place that imports GPU-only packages. A missing package is an error at use, never at import."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

from dreamfusion.errors import UserError

_HINTS = {
    "tinycudann": "tiny-cuda-nn is built into the GPU image; on a CPU use nerf=torchngp",
    "nvdiffrast": "nvdiffrast is built into the GPU image; on a CPU use the torch rasterizer",
}


def available(name: str) -> bool:
    """True if ``name`` imports and a CUDA device is present."""
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        importlib.import_module(name)
    except Exception:  # a broken build is as unavailable as a missing one
        return False
    return True


def require(name: str) -> ModuleType:
    """Import a GPU-only package, or raise a UserError saying how to do without it."""
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"{name} needs a CUDA device and none is present ({_HINTS.get(name.split('.')[0], '')})")
    try:
        return importlib.import_module(name)
    except Exception as e:
        raise UserError(f"{name} is not importable: {e} ({_HINTS.get(name.split('.')[0], '')})") from None


def compile_unavailable() -> str | None:
    """Why ``torch.compile`` cannot build kernels here, or None when it can. Inductor compiles its
    CPU kernels, and Triton its GPU launchers, with the host's C/C++ compiler; the CPU image ships
    none (it runs the same code eagerly)."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler ({cxx}) is installed"
    return None


def pick_device(name: str, setting: str):
    """``auto`` (CUDA when present, else the CPU), ``cpu`` or ``cuda``; ``cuda`` with no CUDA
    device is a UserError naming ``setting``, the option the user gave (e.g. ``--device cuda``)."""
    import torch

    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError(f"{setting} but no CUDA device is present")
        return torch.device("cuda")
    return torch.device("cpu")
