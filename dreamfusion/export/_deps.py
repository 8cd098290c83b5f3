"""The export's third-party libraries, imported at use: a missing one is a clear UserError."""

from __future__ import annotations

import importlib
from types import ModuleType

from dreamfusion.errors import UserError

# module name -> pip requirement that provides it
PACKAGES = {
    "mcubes": "PyMCubes",
    "xatlas": "xatlas",
    "fast_simplification": "fast-simplification",
    "trimesh": "trimesh",
    "scipy": "scipy",
    "imageio_ffmpeg": "imageio-ffmpeg",
}


def require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pip = PACKAGES.get(module.split(".")[0], module.split(".")[0])
        raise UserError(
            f"the export needs the Python package {pip!r} ({e}); install it with: pip install {pip}"
        ) from None
