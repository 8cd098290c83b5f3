"""catalog: many prompts (literal or templates) fanned out over GPU nodes, then published
with an index (JSON + HTML gallery) to a bucket under <catalog name>/<date>/."""

from kfp import dsl

from components.platform import cpu_task, use_store_secret
from components.prompt_expansion import expand_templates
from components.publish_catalog import publish_catalog
from pipelines.stages import dmtet_branches, text_to_3d_tasks
from pipelines.text_to_3d import DEFAULT_NODE_SELECTOR, DEFAULT_TOLERATIONS

DEFAULT_PARALLELISM = 4


def build_catalog(parallelism: int = DEFAULT_PARALLELISM):
    """The catalog pipeline with at most ``parallelism`` prompts in flight. KFP fixes a
    ParallelFor's parallelism when compiling (IR ``iteratorPolicy.parallelismLimit`` is a
    constant), so it is a compile option: ``dreamfusion-kfp compile --parallelism N`` or
    ``dreamfusion-kfp submit catalog --parallelism N``; the committed YAML uses 4."""

    @dsl.pipeline(name="catalog")
    def catalog(
        catalog_name: str = "nightly",
        prompts: list = ["a hamburger", "a red cube"],
        templates: list = [],
        date: str = "",
        seed: int = 0,
        iterations: int = 10000,
        guidance_scale: float = 100.0,
        guidance: str = "sd_huggingface",
        guidance_model: str = "stabilityai/stable-diffusion-2-1-base",
        resolution: int = 64,
        mesh_resolution: int = 256,
        video_frames: int = 120,
        video_size: int = 512,
        video_renderer: str = "volume",
        overrides: list = [],
        dmtet: bool = True,
        dmtet_iterations: int = 5000,
        dmtet_resolution: int = 512,
        dmtet_grid: int = 128,
        dmtet_overrides: list = [],
        store_endpoint: str = "minio-service.kubeflow:9000",
        store_secure: bool = False,
        checkpoint_bucket: str = "dreamfusion",
        catalog_bucket: str = "catalog",
        gpu_node_selector: dict = DEFAULT_NODE_SELECTOR,
        gpu_tolerations: list = DEFAULT_TOLERATIONS,
    ):
        """A batch of prompts or templates -> models published to a bucket with an index page

        Args:
            catalog_name: Catalog name, 1-63 letters, digits, ".", "_" or "-"; published under <name>/<date>/.
            prompts: Literal prompts to model, JSON list of strings; listed before the templates' prompts.
            templates: Prompt templates, JSON list: "a {red|blue} {car|chair}" names 4 prompts; repeats dropped.
            date: Date in the published path, YYYY-MM-DD; empty: the day the catalog is published (UTC).
            seed: Random seed of training for every prompt; part of the stored checkpoints' key.
            iterations: Training steps of nerf-sds per prompt: about 10000 for Stable Diffusion, 600 for shapes.
            guidance_scale: Classifier-free guidance weight of the SDS loss; 100 for Stable Diffusion, 3 for shapes.
            guidance: sd_huggingface (Stable Diffusion via diffusers, GPU) or shapes (offline prior in the package).
            guidance_model: Hub id, diffusers folder or store mirror s3://BUCKET/models/ID; empty: default (for shapes).
            resolution: Training render width and height in pixels (64 in DreamFusion; the shapes prior scores 32).
            mesh_resolution: Marching-cubes cells per axis of the mesh export; higher: a finer mesh, a slower export.
            video_frames: Frames in one turn of each turntable video, played at 30 fps (120: a 4 s turn).
            video_size: Width and height in pixels of the turntable videos' frames, an even number.
            video_renderer: volume (render the NeRF itself, slow) or raster (rasterize the exported mesh, fast).
            overrides: Config overrides, JSON list of "dotted.key=value" or "GROUP=OPTION"; applied last, they win.
            dmtet: true: refine each NeRF into a DMTet surface (dmtet-finetune) before export; false: export NeRFs.
            dmtet_iterations: Training steps of dmtet-finetune (its trainer.max_steps); 5000 in the seed.
            dmtet_resolution: DMTet training render width and height in pixels; 512 in the seed.
            dmtet_grid: DMTet tetrahedral grid cells per axis over the object: 32, 64 or 128 (the seed's).
            dmtet_overrides: Overrides of dmtet-finetune only, JSON list, applied last (NeRF's are in its checkpoint).
            store_endpoint: S3/MinIO endpoint (checkpoints, s3:// models, catalog), host:port or http(s)://host:port.
            store_secure: true: TLS (https) to the store, whatever the endpoint's scheme; false: http.
            checkpoint_bucket: Existing bucket for the training checkpoints (keyed by inputs: a retry or rerun resumes).
            catalog_bucket: Bucket the models, index.json and the index.html gallery go to; made when missing.
            gpu_node_selector: Node labels the GPU tasks require, JSON object; must match labels your GPU nodes carry.
            gpu_tolerations: Kubernetes tolerations of the GPU tasks, JSON list; must tolerate your GPU nodes' taints.
        """
        expand = expand_templates(prompts=prompts, templates=templates, catalog_name=catalog_name, date=date)
        expand.set_display_name("expand-templates")
        cpu_task(expand, retries=0)
        def fan_out(refine: bool) -> None:
            with dsl.ParallelFor(expand.output, parallelism=parallelism) as prompt:
                t = text_to_3d_tasks(
                    prompt=prompt, negative_prompt="", seed=seed, iterations=iterations, guidance_scale=guidance_scale,
                    guidance=guidance, guidance_model=guidance_model, resolution=resolution,
                    mesh_resolution=mesh_resolution, video_frames=video_frames, video_size=video_size,
                    video_renderer=video_renderer, dmtet=refine, dmtet_iterations=dmtet_iterations,
                    dmtet_resolution=dmtet_resolution, dmtet_grid=dmtet_grid, dmtet_overrides=dmtet_overrides,
                    store_endpoint=store_endpoint, store_bucket=checkpoint_bucket, store_secure=store_secure,
                    gpu_node_selector=gpu_node_selector, gpu_tolerations=gpu_tolerations, overrides=overrides,
                )
            pub = publish_catalog(
                prompt_sets=dsl.Collected(t.prompts.outputs["prompt_set"]),
                meshes=dsl.Collected(t.mesh.outputs["mesh"]),
                videos=dsl.Collected(t.video.outputs["video"]),
                catalog_name=catalog_name, date=date,
                store_endpoint=store_endpoint, store_bucket=catalog_bucket, store_secure=store_secure,
            ).set_display_name("publish-catalog")
            cpu_task(pub)
            use_store_secret(pub)
            pub.set_caching_options(False)  # publishing is a side effect

        dmtet_branches(dmtet, fan_out)

    return catalog


catalog = build_catalog()
