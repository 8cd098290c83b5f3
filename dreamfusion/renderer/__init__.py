"""Renderers (``renderer`` group): volume ray marching with an occupancy grid; rasterization joins for DMTet."""

from dreamfusion.renderer.raymarching import RaymarchingConfig, VolumeRenderer

__all__ = ["VolumeRenderer", "RaymarchingConfig"]
