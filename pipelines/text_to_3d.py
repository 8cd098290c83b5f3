"""text_to_3d: one prompt -> GLB, turntable video, HTML preview."""

from kfp import dsl

from pipelines.stages import text_to_3d_tasks

DEFAULT_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
DEFAULT_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@dsl.pipeline(
    name="text-to-3d",
    description="DreamFusion: a prompt -> NeRF by SDS -> textured mesh (GLB), turntable video, preview",
)
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
    checkpoint_store_endpoint: str = "minio-service.kubeflow:9000",
    checkpoint_bucket: str = "dreamfusion",
    checkpoint_store_secure: bool = False,
    gpu_node_selector: dict = DEFAULT_NODE_SELECTOR,
    gpu_tolerations: list = DEFAULT_TOLERATIONS,
):
    text_to_3d_tasks(
        prompt=prompt, negative_prompt=negative_prompt, seed=seed, iterations=iterations,
        guidance_scale=guidance_scale, guidance=guidance, guidance_model=guidance_model, resolution=resolution,
        mesh_resolution=mesh_resolution, video_frames=video_frames, video_size=video_size,
        video_renderer=video_renderer,
        store_endpoint=checkpoint_store_endpoint, store_bucket=checkpoint_bucket, store_secure=checkpoint_store_secure,
        gpu_node_selector=gpu_node_selector, gpu_tolerations=gpu_tolerations, overrides=overrides,
    )
