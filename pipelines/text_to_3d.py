"""text_to_3d: one prompt -> GLB, turntable video, HTML preview."""

from kfp import dsl

from pipelines.stages import text_to_3d_tasks

DEFAULT_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
DEFAULT_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@dsl.pipeline(name="text-to-3d")
def text_to_3d(
    prompt: str = "a hamburger",
    negative_prompt: str = "",
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
    checkpoint_store_endpoint: str = "minio-service.kubeflow:9000",
    checkpoint_bucket: str = "dreamfusion",
    checkpoint_store_secure: bool = False,
    gpu_node_selector: dict = DEFAULT_NODE_SELECTOR,
    gpu_tolerations: list = DEFAULT_TOLERATIONS,
):
    """DreamFusion: a prompt -> NeRF by SDS -> DMTet surface -> textured mesh (GLB), turntable video, preview

    Args:
        prompt: Text to turn into a 3D object, e.g. "a hamburger"; the shapes prior knows e.g. "a red cube".
        negative_prompt: What the object must not look like (the diffusion model's negative prompt); empty: none.
        seed: Random seed of training (initial weights, cameras, noise); part of the stored checkpoints' key.
        iterations: Training steps of nerf-sds (trainer.max_steps): about 10000 for Stable Diffusion, 600 for shapes.
        guidance_scale: Classifier-free guidance weight of the SDS loss; 100 for Stable Diffusion, 3 for shapes.
        guidance: sd_huggingface (Stable Diffusion via diffusers, GPU) or shapes (offline prior in the package).
        guidance_model: Hub id, diffusers folder or store mirror s3://BUCKET/models/ID; empty: default (for shapes).
        resolution: Training render width and height in pixels (64 in DreamFusion; the shapes prior scores 32).
        mesh_resolution: Marching-cubes cells per axis of the mesh export; higher: a finer mesh and a slower export.
        video_frames: Frames in one turn of the turntable video, played at 30 fps (120: a 4 s turn).
        video_size: Width and height in pixels of the turntable video's frames, an even number.
        video_renderer: volume (render the NeRF itself, slow) or raster (rasterize the exported mesh, fast).
        overrides: Config overrides, JSON list of "dotted.key=value" or "GROUP=OPTION"; applied last, they win.
        dmtet: true: refine the NeRF into a DMTet surface (dmtet-finetune) before export; false: export the NeRF.
        dmtet_iterations: Training steps of dmtet-finetune (its trainer.max_steps); 5000 in the seed.
        dmtet_resolution: DMTet training render width and height in pixels; 512 in the seed.
        dmtet_grid: DMTet tetrahedral grid cells per axis over the object: 32, 64 or 128 (the seed's).
        dmtet_overrides: Overrides of dmtet-finetune only, JSON list, applied last (NeRF's are in its checkpoint).
        checkpoint_store_endpoint: S3/MinIO host:port or http(s)://host:port (checkpoints, s3:// models); empty: none.
        checkpoint_bucket: Existing bucket for the training checkpoints (keyed by inputs: a retry or rerun resumes).
        checkpoint_store_secure: true: TLS (https) to the store, whatever the endpoint's scheme; false: http.
        gpu_node_selector: Node labels the GPU tasks require, JSON object; must match labels your GPU nodes carry.
        gpu_tolerations: Kubernetes tolerations of the GPU tasks, JSON list; must tolerate your GPU nodes' taints.
    """
    text_to_3d_tasks(
        prompt=prompt, negative_prompt=negative_prompt, seed=seed, iterations=iterations,
        guidance_scale=guidance_scale, guidance=guidance, guidance_model=guidance_model, resolution=resolution,
        mesh_resolution=mesh_resolution, video_frames=video_frames, video_size=video_size,
        video_renderer=video_renderer, dmtet=dmtet, dmtet_iterations=dmtet_iterations,
        dmtet_resolution=dmtet_resolution, dmtet_grid=dmtet_grid, dmtet_overrides=dmtet_overrides,
        store_endpoint=checkpoint_store_endpoint, store_bucket=checkpoint_bucket, store_secure=checkpoint_store_secure,
        gpu_node_selector=gpu_node_selector, gpu_tolerations=gpu_tolerations, overrides=overrides,
    )
