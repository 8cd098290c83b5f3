"""One prompt through the stages, as a reusable piece of a pipeline body.

prompt-expansion -> nerf-sds -> mesh-export -> video-render. The geometry checkpoint that the
export stages read is whatever ``_geometry`` returns: today nerf-sds's; the DMTet fine-tune
stage, when it lands, becomes one more step there (behind a ``dmtet`` parameter) and the
export stages take its checkpoint, with no change below.
"""

from __future__ import annotations

from dataclasses import dataclass

from kfp import dsl

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
) -> StageTasks:
    p = prompt_expansion(
        prompt=prompt, negative_prompt=negative_prompt, guidance=guidance, guidance_model=guidance_model,
        overrides=overrides, store_endpoint=store_endpoint, store_secure=store_secure,
    ).set_display_name("prompt-expansion")
    cpu_task(p, memory="8G")
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

    geometry = n.outputs["checkpoint"]  # the DMTet stage slots in here
    m = mesh_export(checkpoint=geometry, resolution=mesh_resolution).set_display_name("mesh-export")
    gpu_task(m, gpu_node_selector, gpu_tolerations, cpu="4", memory="16G", timeout_s=3600)

    v = video_render(
        checkpoint=geometry, mesh=m.outputs["mesh"], frames=video_frames, size=video_size, title=prompt,
        renderer=video_renderer,
    ).set_display_name("video-render")
    gpu_task(v, gpu_node_selector, gpu_tolerations, cpu="4", memory="16G", timeout_s=3600)
    return StageTasks(p, n, m, v)
