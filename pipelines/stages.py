"""One prompt through the stages, as a reusable piece of a pipeline body.

prompt-expansion -> nerf-sds [-> dmtet-finetune] -> mesh-export -> video-render. The export
stages read the DMTet checkpoint when the fine-tune runs, else the NeRF's.

``dmtet`` is either a pipeline parameter (text_to_3d: the chain splits after nerf-sds into a
``dsl.If`` branch with dmtet-finetune and the exports and a ``dsl.Else`` branch with the exports
alone; only one runs) or a Python bool, fixed when the pipeline is compiled (catalog and
regression wrap their whole fan-out in the If/Else, because KFP cannot collect outputs from
inside a condition of a ParallelFor iteration).
"""

from __future__ import annotations

from dataclasses import dataclass

from kfp import dsl

from components.dmtet_finetune import dmtet_finetune
from components.mesh_export import mesh_export
from components.nerf_sds import nerf_sds
from components.platform import cpu_task, gpu_task, use_store_secret
from components.prompt_expansion import prompt_expansion
from components.video_render import video_render


@dataclass
class StageTasks:
    prompts: dsl.PipelineTask
    nerf: dsl.PipelineTask
    mesh: dsl.PipelineTask
    video: dsl.PipelineTask
    dmtet: dsl.PipelineTask | None = None


def text_to_3d_tasks(
    *,
    prompt,
    negative_prompt,
    seed,
    iterations,
    guidance_scale,
    guidance,
    guidance_model,
    resolution,
    mesh_resolution,
    video_frames,
    video_size,
    store_endpoint,
    store_bucket,
    store_secure,
    gpu_node_selector,
    gpu_tolerations,
    overrides,
    video_renderer="volume",
    dmtet=False,
    dmtet_iterations=5000,
    dmtet_resolution=512,
    dmtet_grid=128,
    dmtet_overrides=(),
) -> StageTasks | None:
    # The first task checks what every later task will be given (dreamfusion.stages.settings).
    p = prompt_expansion(
        prompt=prompt, negative_prompt=negative_prompt, guidance=guidance, guidance_model=guidance_model,
        overrides=overrides, store_endpoint=store_endpoint, store_secure=store_secure,
        seed=seed, iterations=iterations, guidance_scale=guidance_scale, resolution=resolution,
        dmtet=dmtet, dmtet_iterations=dmtet_iterations, dmtet_resolution=dmtet_resolution, dmtet_grid=dmtet_grid,
        dmtet_overrides=dmtet_overrides, mesh_resolution=mesh_resolution,
    ).set_display_name("prompt-expansion")
    cpu_task(p, memory="8G", retries=0)  # its failures are refused settings: a retry would repeat them
    use_store_secret(p)  # a guidance model s3://BUCKET/models/<id> is read from the store

    n = nerf_sds(
        prompt_set=p.outputs["prompt_set"], seed=seed, iterations=iterations, guidance_scale=guidance_scale,
        guidance=guidance, guidance_model=guidance_model, resolution=resolution, overrides=overrides,
        store_endpoint=store_endpoint, store_bucket=store_bucket, store_secure=store_secure,
        task_name="nerf-sds",  # no run id: checkpoints are keyed by the inputs, the cache key stays stable
    ).set_display_name("nerf-sds")
    gpu_task(n, gpu_node_selector, gpu_tolerations, cpu="8", memory="32G", timeout_s=6 * 3600, retries=3)
    use_store_secret(n)
    n.set_caching_options(True)

    def exports(geometry) -> tuple[dsl.PipelineTask, dsl.PipelineTask]:
        m = mesh_export(checkpoint=geometry, resolution=mesh_resolution).set_display_name("mesh-export")
        gpu_task(m, gpu_node_selector, gpu_tolerations, cpu="4", memory="16G", timeout_s=3600)
        v = video_render(
            checkpoint=geometry, mesh=m.outputs["mesh"], frames=video_frames, size=video_size, title=prompt,
            renderer=video_renderer,
        ).set_display_name("video-render")
        gpu_task(v, gpu_node_selector, gpu_tolerations, cpu="4", memory="16G", timeout_s=3600)
        return m, v

    def refine() -> StageTasks:
        d = dmtet_finetune(
            nerf_checkpoint=n.outputs["checkpoint"], prompt_set=p.outputs["prompt_set"], iterations=dmtet_iterations,
            resolution=dmtet_resolution, grid_resolution=dmtet_grid, overrides=dmtet_overrides,
            store_endpoint=store_endpoint, store_bucket=store_bucket, store_secure=store_secure,
        ).set_display_name("dmtet-finetune")
        gpu_task(d, gpu_node_selector, gpu_tolerations, cpu="8", memory="32G", timeout_s=6 * 3600, retries=3)
        use_store_secret(d)
        d.set_caching_options(True)
        return StageTasks(p, n, *exports(d.outputs["checkpoint"]), dmtet=d)

    if isinstance(dmtet, bool):
        return refine() if dmtet else StageTasks(p, n, *exports(n.outputs["checkpoint"]))
    with dsl.If(dmtet == True, name="dmtet"):  # noqa: E712 (a pipeline parameter, not a bool)
        refine()
    with dsl.Else(name="nerf-only"):
        exports(n.outputs["checkpoint"])
    return None


def dmtet_branches(dmtet, body) -> None:
    """``body(True)`` under ``dsl.If(dmtet)``, ``body(False)`` under its ``dsl.Else``: for pipelines
    that collect the stages' outputs across a ParallelFor (only one branch runs)."""
    with dsl.If(dmtet == True, name="dmtet"):  # noqa: E712 (a pipeline parameter, not a bool)
        body(True)
    with dsl.Else(name="nerf-only"):
        body(False)


def _less_parameters(names: tuple[str, ...], stage: str) -> list[str]:
    from dreamfusion.config.presets import DMTET_PRESETS, PRESETS, expand
    from dreamfusion.stages.settings import DMTET_PARAMETER_KEYS, NERF_PARAMETER_KEYS

    table, keys = (PRESETS, NERF_PARAMETER_KEYS) if stage == "nerf" else (DMTET_PRESETS, DMTET_PARAMETER_KEYS)
    return [o for o in expand(list(names), table) if not o.startswith(keys)]


def nerf_presets(*names: str) -> list[str]:
    """nerf-sds's named presets as a pipeline's ``overrides``, less the keys its parameters set
    (``NERF_PARAMETER_KEYS``: guidance, guidance scale, resolution, ...)."""
    return _less_parameters(names, "nerf")


def dmtet_presets(*names: str) -> list[str]:
    """dmtet-finetune's named presets as ``dmtet_overrides``, less the keys its parameters set
    (``DMTET_PARAMETER_KEYS``: iterations, grid, resolution)."""
    return _less_parameters(names, "dmtet")
