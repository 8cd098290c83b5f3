"""Renderers (``renderer`` group): volume ray marching with an occupancy grid (NeRF), and mesh
rasterizers (DMTet): ``torch_raster`` everywhere, ``nvdiffrast`` on CUDA."""

from dreamfusion.renderer.rasterizer import NvdiffrastRasterizer, RasterizerConfig, TorchRasterizer
from dreamfusion.renderer.raymarching import RaymarchingConfig, VolumeRenderer

__all__ = ["VolumeRenderer", "RaymarchingConfig", "TorchRasterizer", "NvdiffrastRasterizer", "RasterizerConfig"]
