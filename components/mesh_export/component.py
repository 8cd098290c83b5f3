"""mesh-export: checkpoint -> GLB (embedded texture), OBJ+MTL+PNG, mesh stats."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components.platform import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def mesh_export(
    checkpoint: Input[Model],
    mesh: Output[Artifact],
    stats: Output[Metrics],
    resolution: int = 256,
    faces: int = 50000,
    texture: int = 2048,
):
    """A NeRF (or, later, DMTet) checkpoint to a folder with mesh.glb, mesh.obj/.mtl/.png, mesh_stats.json."""
    import json
    import os

    from dreamfusion.stages import cli
    from dreamfusion.stages import mesh_export as stage

    argv = ["--checkpoint", checkpoint.path, "--output", mesh.path, "--resolution", str(resolution),
            "--faces", str(faces), "--texture", str(texture), "--quiet"]
    rc = cli.run(stage.main, argv)
    if rc != 0:
        raise RuntimeError(f"mesh-export exited with {rc}")
    s = json.load(open(os.path.join(mesh.path, "mesh_stats.json")))
    for k, v in s.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            stats.log_metric(k, float(v))
    mesh.metadata["glb"] = "mesh.glb"
