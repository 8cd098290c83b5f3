"""Geometry: the NeRF field (``nerf`` group); DMTet joins here."""

from dreamfusion.geometry.nerf import NeRF, NerfConfig

__all__ = ["NeRF", "NerfConfig"]
