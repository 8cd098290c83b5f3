"""nerf-sds: optimise a NeRF by Score Distillation Sampling (GPU)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components.platform import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def nerf_sds(
    prompt_set: Input[Artifact],
    checkpoint: Output[Model],
    renders: Output[Artifact],
    metrics: Output[Metrics],
    seed: int = 0,
    iterations: int = 10000,
    guidance_scale: float = 100.0,
    guidance: str = "sd_huggingface",
    guidance_model: str = "",
    resolution: int = 64,
    overrides: list = [],
    store_endpoint: str = "",
    store_bucket: str = "",
    store_secure: bool = False,
    task_name: str = "nerf-sds",
):
    """Checkpoint (Model), validation renders + metrics.json (Artifact), numbers (Metrics).
    With a store, checkpoints also go to ``store_bucket``, keyed by a digest of this task's inputs
    (computed by the stage), and a retried task resumes from them. No run id comes in: it would
    make KFP's cache key differ on every run."""
    import json
    import os
    import shutil

    from dreamfusion.stages import cli
    from dreamfusion.stages import nerf_sds as stage
    from dreamfusion.stages.settings import nerf_overrides

    # A retried task starts from nothing local (as a fresh pod would): only the store carries state.
    work = os.path.join(os.path.dirname(checkpoint.path), "nerf-sds-work")
    shutil.rmtree(work, ignore_errors=True)
    argv = ["--output", work, "--prompts", prompt_set.path]
    if store_endpoint:
        # The stage keys checkpoints by a digest of the prompt set and the overrides below: the
        # same for every retry of this task and for an identical later run.
        argv += ["--store-endpoint", store_endpoint, "--store-bucket", store_bucket,
                 "--store-secure" if store_secure else "--no-store-secure",
                 "--task", f"{task_name}-seed{seed}"]
    # Options first, then overrides: argparse takes no option after the positional overrides.
    argv += nerf_overrides(guidance=guidance, seed=seed, iterations=iterations, guidance_scale=guidance_scale,
                           resolution=resolution, guidance_model=guidance_model, overrides=overrides)
    rc = cli.run(stage.main, argv)
    if rc != 0:
        raise RuntimeError(f"nerf-sds exited with {rc}")
    shutil.copyfile(os.path.join(work, "checkpoints", "last.pt"), checkpoint.path)
    os.makedirs(renders.path, exist_ok=True)
    shutil.copytree(os.path.join(work, "val"), os.path.join(renders.path, "val"), dirs_exist_ok=True)
    shutil.copyfile(os.path.join(work, "metrics.json"), os.path.join(renders.path, "metrics.json"))
    m = json.load(open(os.path.join(work, "metrics.json")))
    for k in ("steps", "loss", "sds", "seconds_per_step", "mean_density", "occupied_fraction"):
        if isinstance(m.get(k), (int, float)):
            metrics.log_metric(k, float(m[k]))
    checkpoint.metadata.update({"step": m.get("steps"), "prompt": m.get("prompt"), "framework": "pytorch"})
