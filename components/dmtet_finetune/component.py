"""dmtet-finetune: refine the NeRF into a DMTet surface with its own texture (GPU)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components.platform import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def dmtet_finetune(
    nerf_checkpoint: Input[Model],
    prompt_set: Input[Artifact],
    checkpoint: Output[Model],
    renders: Output[Artifact],
    metrics: Output[Metrics],
    iterations: int = 5000,
    resolution: int = 512,
    grid_resolution: int = 128,
    overrides: list = [],
    store_endpoint: str = "",
    store_bucket: str = "",
    store_secure: bool = False,
    task_name: str = "dmtet-finetune",
):
    """Checkpoint (Model, format dreamfusion-dmtet/1, read directly by mesh-export and
    video-render), validation renders + metrics.json (Artifact), numbers (Metrics). The config is
    the NeRF checkpoint's with the seed's DMTet changes; ``overrides`` (DMTet-only: the NeRF's own
    are already in its checkpoint) go last. With a store, checkpoints also go to ``store_bucket``,
    keyed by a digest of this task's inputs, and a retried task resumes from them."""
    import json
    import os
    import shutil

    from dreamfusion.stages import cli
    from dreamfusion.stages import dmtet_finetune as stage
    from dreamfusion.stages.settings import dmtet_overrides

    # A retried task starts from nothing local (as a fresh pod would): only the store carries state.
    work = os.path.join(os.path.dirname(checkpoint.path), "dmtet-work")
    shutil.rmtree(work, ignore_errors=True)
    argv = ["--checkpoint", nerf_checkpoint.path, "--output", work, "--prompts", prompt_set.path]
    if store_endpoint:
        argv += ["--store-endpoint", store_endpoint, "--store-bucket", store_bucket,
                 "--store-secure" if store_secure else "--no-store-secure", "--task", task_name]
    # Options first, then overrides: argparse takes no option after the positional overrides.
    argv += dmtet_overrides(iterations=iterations, resolution=resolution, grid=grid_resolution, overrides=overrides)
    rc = cli.run(stage.main, argv)
    if rc != 0:
        raise RuntimeError(f"dmtet-finetune exited with {rc}")
    shutil.copyfile(os.path.join(work, "checkpoints", "last.pt"), checkpoint.path)
    os.makedirs(renders.path, exist_ok=True)
    shutil.copytree(os.path.join(work, "val"), os.path.join(renders.path, "val"), dirs_exist_ok=True)
    shutil.copyfile(os.path.join(work, "metrics.json"), os.path.join(renders.path, "metrics.json"))
    m = json.load(open(os.path.join(work, "metrics.json")))
    for k in ("steps", "loss", "sds", "seconds_per_step", "surface_faces", "surface_vertices"):
        if isinstance(m.get(k), (int, float)):
            metrics.log_metric(k, float(m[k]))
    checkpoint.metadata.update({"step": m.get("steps"), "prompt": m.get("prompt"), "framework": "pytorch",
                                "format": "dreamfusion-dmtet/1"})
