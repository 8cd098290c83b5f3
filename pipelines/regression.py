"""regression: fixed prompts and seeds, short schedules, the offline prior; metrics compared
with the baseline stored in the object store; the run fails on a regression. The first run
(no baseline yet) records it; ``update_baseline`` re-records. Every (prompt, seed) pair is one
run: a baseline recorded with several seeds (e.g. ``seeds=[0, 1, 2]``) sets each metric's
tolerance from its spread over them."""

from kfp import dsl

from components.platform import cpu_task, use_store_secret
from components.regression_check import regression_check, regression_runs
from dreamfusion.config.presets import SHAPES_GUIDANCE_SCALE
from pipelines.stages import dmtet_branches, dmtet_presets, nerf_presets, text_to_3d_tasks
from pipelines.text_to_3d import DEFAULT_NODE_SELECTOR, DEFAULT_TOLERATIONS

# The offline prior's own settings (the `shapes` preset: the background it saw in training, a small
# starting blob), less the keys this pipeline's parameters set (guidance, guidance scale, resolution).
SHAPES_OVERRIDES = nerf_presets("shapes")
DMTET_SHAPES_OVERRIDES = dmtet_presets("shapes")


@dsl.pipeline(name="regression")
def regression(
    suite: str = "default",
    prompts: list = ["a red cube", "a blue sphere", "a green cone"],
    seeds: list = [0],
    iterations: int = 600,
    guidance_scale: float = SHAPES_GUIDANCE_SCALE,
    guidance: str = "shapes",
    guidance_model: str = "",
    resolution: int = 32,
    overrides: list = ["trainer.deterministic=true", *SHAPES_OVERRIDES],
    dmtet: bool = True,
    dmtet_iterations: int = 300,
    dmtet_resolution: int = 32,
    dmtet_grid: int = 32,
    dmtet_overrides: list = DMTET_SHAPES_OVERRIDES,
    tolerance: float = 0.25,
    clip_model: str = "",
    update_baseline: bool = False,
    store_endpoint: str = "minio-service.kubeflow:9000",
    store_secure: bool = False,
    checkpoint_bucket: str = "dreamfusion",
    baseline_bucket: str = "dreamfusion",
    gpu_node_selector: dict = DEFAULT_NODE_SELECTOR,
    gpu_tolerations: list = DEFAULT_TOLERATIONS,
):
    """Fixed seeds and short schedules; fails when metrics regress from the stored baseline

    Args:
        suite: Suite name, 1-63 letters, digits, ".", "_" or "-"; its baseline is regression/<suite>/baseline.json.
        prompts: Fixed prompts, JSON list of strings; each is trained and compared with its baseline metrics.
        seeds: Training seeds, JSON list of integers; each prompt runs once per seed; baseline spread sets tolerances.
        iterations: Training steps of nerf-sds per prompt (trainer.max_steps): a short schedule.
        guidance_scale: Classifier-free guidance weight of the SDS loss; 3 for shapes, 100 for Stable Diffusion.
        guidance: shapes (offline prior in the package) or sd_huggingface (Stable Diffusion via diffusers, GPU).
        guidance_model: Hub id, diffusers folder or store mirror s3://BUCKET/models/ID; empty: default (for shapes).
        resolution: Training render width and height in pixels (the shapes prior scores 32; 64 in DreamFusion).
        overrides: Overrides applied last, JSON list of "key=value" or "GROUP=OPTION"; default: deterministic, shapes.
        dmtet: true: refine each NeRF into a DMTet surface (dmtet-finetune) before export; false: export NeRFs.
        dmtet_iterations: Training steps of dmtet-finetune per prompt (its trainer.max_steps): a short schedule.
        dmtet_resolution: DMTet training render width and height in pixels (the guidance resizes to what it scores).
        dmtet_grid: DMTet tetrahedral grid cells per axis over the object: 32, 64 or 128.
        dmtet_overrides: Overrides of dmtet-finetune only, JSON list, applied last; default: its shapes preset.
        tolerance: Floor of the slack (3 std over baseline seeds if larger): IoU 0.2x it; occupancy, faces 2x it.
        clip_model: CLIP folder in the image or s3://BUCKET/models/ID mirror; scores turntables; empty: no CLIP score.
        update_baseline: true: record this run as the suite's baseline; false: compare (a first run records one).
        store_endpoint: S3/MinIO endpoint for checkpoints, s3:// models and baselines, host:port or http(s)://host:port.
        store_secure: true: TLS (https) to the store, whatever the endpoint's scheme; false: http.
        checkpoint_bucket: Existing bucket for the training checkpoints (keyed by inputs: a retry or rerun resumes).
        baseline_bucket: Bucket holding the suites' baselines; made when missing.
        gpu_node_selector: Node labels the GPU tasks require, JSON object; must match labels your GPU nodes carry.
        gpu_tolerations: Kubernetes tolerations of the GPU tasks, JSON list; must tolerate your GPU nodes' taints.
    """

    runs = regression_runs(prompts=prompts, seeds=seeds).set_display_name("regression-runs")
    cpu_task(runs, retries=0)

    def fan_out(refine: bool) -> None:
        with dsl.ParallelFor(runs.output, parallelism=3) as run:
            t = text_to_3d_tasks(
                prompt=run.prompt, negative_prompt="", seed=run.seed, iterations=iterations,
                guidance_scale=guidance_scale,
                guidance=guidance, guidance_model=guidance_model, resolution=resolution,
                mesh_resolution=128, video_frames=24, video_size=256, dmtet=refine, dmtet_iterations=dmtet_iterations,
                dmtet_resolution=dmtet_resolution, dmtet_grid=dmtet_grid, dmtet_overrides=dmtet_overrides,
                store_endpoint=store_endpoint, store_bucket=checkpoint_bucket, store_secure=store_secure,
                gpu_node_selector=gpu_node_selector, gpu_tolerations=gpu_tolerations, overrides=overrides,
            )
        check = regression_check(
            prompt_sets=dsl.Collected(t.prompts.outputs["prompt_set"]),
            renders=dsl.Collected(t.nerf.outputs["renders"]),
            meshes=dsl.Collected(t.mesh.outputs["mesh"]),
            videos=dsl.Collected(t.video.outputs["video"]),
            suite=suite, tolerance=tolerance, clip_model=clip_model, update_baseline=update_baseline,
            store_endpoint=store_endpoint, store_bucket=baseline_bucket, store_secure=store_secure,
        ).set_display_name("regression-check")
        cpu_task(check, retries=0)  # a regression is not mended by a retry
        use_store_secret(check)
        check.set_caching_options(False)  # the baseline may change between runs

    dmtet_branches(dmtet, fan_out)
