"""Accelerated kernels, each held to the PyTorch reference beside it (imported as ``dreamfusion.kernels``).

| job | PyTorch reference | Triton kernel |
| --- | --- | --- |
| occupancy-grid ray sampling: rays -> packed samples | ``sampling`` | ``sampling_triton`` |
| volume compositing, forward and backward | ``compositing`` | ``compositing_triton`` |
| hash-grid encoding, forward and backward | ``hashgrid`` | ``hashgrid_triton`` |

A kernel module offers the very function its reference does (``march_rays``, ``composite``,
``encode``), with the same arguments, results and gradients (to float32 rounding). The Triton
modules import triton when imported: import them only where ``unavailable(device)`` is None.
``python -m dreamfusion.kernels.check`` compares every kernel with its reference (on a CPU, run
it with ``TRITON_INTERPRET=1``: Triton's interpreter runs kernels on CPU tensors).

This package imports nothing of the model (only torch, and triton in the kernel modules).
"""

from __future__ import annotations

import importlib
import os
import shutil

import torch

__all__ = ["unavailable", "JOBS"]

JOBS = ("sampling", "compositing", "hashgrid")
"""The reference modules; each has a ``<job>_triton`` kernel module."""


def unavailable(device: torch.device | str) -> str | None:
    """Why the Triton kernels cannot run on ``device`` here, or None when they can: they need a
    CUDA device, an importable ``triton`` (the GPU image installs torch's pinned version) and a C
    compiler (Triton builds its CUDA launcher with one the first time a kernel runs)."""
    if torch.device(device).type != "cuda":
        return f"{torch.device(device).type} is not a CUDA device"
    try:
        importlib.import_module("triton")
    except Exception as e:  # a broken install is as unusable as a missing one
        return f"triton does not import ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    cc = os.environ.get("CC")
    if not (shutil.which(cc) if cc else shutil.which("gcc") or shutil.which("clang")):
        return f"no C compiler ({cc or 'gcc or clang'}) for Triton's launcher"
    return None
