"""Exports: textured meshes (GLB, OBJ+MTL+PNG, stats), turntable videos, HTML previews.

Modules (importing this package loads none of the mesh libraries):

* ``fields``: what an export reads: a ``VolumeSource`` (density + colour field, e.g. a NeRF)
  or a ``MeshSource`` (triangles + colour field, e.g. what DMTet produces);
* ``sources``: checkpoint files -> sources, one loader per checkpoint format;
* ``extract``: density grid, automatic iso-level, marching cubes;
* ``mesh_ops``: cleanup, decimation, normals, watertightness;
* ``texture``: xatlas UV atlas, albedo baking, seam dilation;
* ``writers``: GLB, OBJ+MTL+PNG, stats JSON; ``pipeline``: all of the above in order;
* ``raster``: a small pure-PyTorch triangle rasterizer (texture baking and mesh renders);
* ``turntable``: turntable frames from a NeRF (volume rendering) or a mesh (rasterization);
* ``video``: MP4 writing; ``preview``: the self-contained HTML preview;
* ``turntable_video``: a turntable video of any source (renderer and mesh chosen per source)
  -> MP4, poster, preview.
"""
