"""Images and Kubernetes settings shared by the components and applied by the pipelines."""

from __future__ import annotations

import os

from kfp import dsl, kubernetes

from dreamfusion import __version__ as VERSION  # the one place the version (so every image tag) is defined

DEFAULT_REGISTRY = "ghcr.io/dreamfusion"
# Compiling for images pushed elsewhere (`make push REGISTRY=...`): DREAMFUSION_IMAGE_REGISTRY=... make pipelines
REGISTRY = os.environ.get("DREAMFUSION_IMAGE_REGISTRY", DEFAULT_REGISTRY)
GPU_IMAGE = f"{REGISTRY}/dreamfusion-gpu:{VERSION}"  # CUDA runtime, tinycudann, nvdiffrast
CPU_IMAGE = f"{REGISTRY}/dreamfusion-cpu:{VERSION}"  # slim: CPU torch, no CUDA

# The Kubernetes Secret whose keys become the S3 credentials (KFP's own MinIO secret by default).
STORE_SECRET = "mlpipeline-minio-artifact"
STORE_SECRET_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}

GPU_TASKS = ("nerf-sds", "dmtet-finetune", "mesh-export", "video-render")  # display names of the tasks that get a GPU


def use_store_secret(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Credentials for the object store come from a Secret: never a parameter, never in YAML."""
    return kubernetes.use_secret_as_env(task, secret_name=STORE_SECRET, secret_key_to_env=STORE_SECRET_KEYS)


def gpu_task(
    task: dsl.PipelineTask,
    node_selector,
    tolerations,
    *,
    cpu: str = "4",
    memory: str = "24G",
    shm: str = "8Gi",
    timeout_s: int = 4 * 3600,
    retries: int = 2,
) -> dsl.PipelineTask:
    """One NVIDIA GPU on a node picked by ``node_selector`` (a dict pipeline parameter) that
    tolerates ``tolerations`` (a list pipeline parameter); /dev/shm as a memory emptyDir;
    a pod deadline; retries with exponential backoff (a retried nerf-sds resumes from the store)."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=shm)
    kubernetes.set_timeout(task, timeout_s)
    task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="3600s")
    return task


def cpu_task(
    task: dsl.PipelineTask, *, cpu: str = "1", memory: str = "4G", timeout_s: int = 3600, retries: int = 2
) -> dsl.PipelineTask:
    """CPU and memory requests (no GPU), a pod deadline, retries with exponential backoff."""
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
    kubernetes.set_timeout(task, timeout_s)
    if retries:  # 0 for tasks whose failures are deterministic (checks, gates): a retry would repeat them
        task.set_retry(num_retries=retries, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="1800s")
    return task
