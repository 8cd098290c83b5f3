"""Text-to-3D with DreamFusion: a NeRF optimised by Score Distillation Sampling, then DMTet.

The library is organised by the seed's config groups (nerf, background, material,
renderer, guidance, optim, loss, data); stages in ``dreamfusion.stages`` are the
command-line entry points that pipelines run.
"""

# The package version, and the tag of every image (images/, components/platform.py, manifests/).
__version__ = "0.1.0"
