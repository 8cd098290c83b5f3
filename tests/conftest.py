import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# An unreachable test endpoint fails in seconds (stages wait out outages for 300 s by default)
os.environ.setdefault("DREAMFUSION_STORE_PATIENCE", "8")
torch.set_num_threads(2)

# Settings that make a training step take a fraction of a second on a CPU.
TINY = [
    "trainer.precision=32",
    "trainer.accelerator=cpu",
    "model.data.train_dataset.width=32",
    "model.data.train_dataset.height=32",
    "model.data.val_dataset.width=24",
    "model.data.val_dataset.height=24",
    "model.data.val_dataset.n_views=2",
    "model.data.test_dataset.width=24",
    "model.data.test_dataset.height=24",
    "model.data.test_dataset.n_views=4",
    "model.renderer.max_steps=48",
    "model.renderer.grid_resolution=16",
    "model.renderer.update_interval=4",
    "model.nerf.encoder_cfg.num_levels=6",
    "model.nerf.encoder_cfg.log2_hashmap_size=12",
    "model.nerf.encoder_cfg.desired_resolution=128",
    "model.nerf.sigma_net_cfg.num_hidden_dims=16",
    "model.nerf.features_net_cfg.num_hidden_dims=16",
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny diffusers model (latent, with VAE) built from configs: no download."""
    from dreamfusion.guidance.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_overrides(tiny_model):
    return TINY + [f"model.guidance.model_key={tiny_model}"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3 server (SeaweedFS ``weed mini``) on 127.0.0.1 for one test module."""
    from dreamfusion.store.local_server import LocalS3

    server = LocalS3(tmp_path_factory.mktemp("weed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    """The S3 server's credentials in the environment, and no others."""
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        monkeypatch.delenv(k, raising=False)
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    return s3


@pytest.fixture
def kfp_local(tmp_path, monkeypatch):
    """kfp.local with SubprocessRunner(use_venv=False), pipeline root ``tmp_path/root``. Retries
    run as compiled, but their back-off (60 s and up on GPU tasks) is appended to the returned
    list instead of slept."""
    local = pytest.importorskip("kfp.local")
    from kfp.local.orchestrator import task_executor

    delays = []
    monkeypatch.setattr(task_executor, "time", SimpleNamespace(sleep=delays.append))
    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    return delays


def manifold_faults(path) -> list[str]:
    """What trimesh, independently of the project's mesh code, finds wrong with an exported mesh:
    edges not used by exactly two faces, inconsistent winding, not watertight, no volume. The copies
    of a point that UV seams make are merged by trimesh's own vertex merge, at a precision where
    distinct float32 positions stay distinct."""
    import numpy as np
    import trimesh

    m = trimesh.load(path, force="mesh", process=False)
    m.merge_vertices(merge_tex=True, merge_norm=True, digits_vertex=12)
    faults = []
    e = np.sort(m.edges, axis=1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    if (counts != 2).any():
        used = sorted(set(counts.tolist()))
        faults.append(f"{int((counts != 2).sum())} edges not used by exactly two faces ({used})")
    if not m.is_winding_consistent:
        faults.append("winding not consistent")
    if not m.is_watertight:
        faults.append("not watertight")
    elif m.volume <= 0:
        faults.append(f"volume {m.volume:.3g}")
    return faults


@pytest.fixture(autouse=True)
def torch_threads_restored():
    """Every test ends with the process's torch thread count it began with: code made for a worker
    process (training a prior, a world evaluation's runs) sets it, and a later test comparing an
    in-process run with a two-thread subprocess would sum in another order."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def exported_meshes_are_manifold(tmp_path_factory):
    """Every mesh a test exports (a GLB beside mesh-export's ``*_stats.json``) is checked by
    ``manifold_faults``, and the export's own watertight verdict must agree with it."""
    import json
    import time
    from pathlib import Path

    began = time.time()
    yield
    base = Path(tmp_path_factory.getbasetemp())
    for stats in base.rglob("*_stats.json"):
        glb = stats.with_name(stats.name[: -len("_stats.json")] + ".glb")
        if not glb.is_file() or glb.stat().st_mtime < began:
            continue
        faults = manifold_faults(glb)
        assert not faults, f"{glb}: {'; '.join(faults)}"
        reported = json.loads(stats.read_text()).get("watertight")
        assert reported is True, f"{glb}: trimesh finds it watertight but the export reported {reported}"


# Slow set-up that mostly waits on the disk and the network runs in the background, niced, while
# the other tests run: the CPU image (tests/test_images.py, whose tests run last and wait for it)
# and checkov's own venv (tests/test_deploy.py).
IMAGE_BASE = "localhost/debian:bookworm-slim"
BUILDAH = ["buildah", "--storage-driver", "vfs"]  # no daemon: as root, vfs and chroot work in containers and VMs
CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = Path(__file__).resolve().parents[1] / ".venv-checkov"


def can_build_images() -> bool:
    import shutil

    return os.geteuid() == 0 and shutil.which("buildah") is not None and shutil.which("debootstrap") is not None


def _image_to_replace() -> str:
    """The ID of the image the CPU image's tag names before this session builds it; where it names none,
    an empty placeholder committed under the tag, so that every build replaces one (tests/test_images.py
    checks that the build removes what it replaces)."""
    import subprocess

    from components.platform import CPU_IMAGE

    def run(*args: str) -> str:
        return subprocess.run(BUILDAH + list(args), capture_output=True, text=True, check=True).stdout.strip()

    if not subprocess.run(BUILDAH + ["images", "-q", CPU_IMAGE], capture_output=True, text=True).stdout.strip():
        ctr = run("from", "scratch")
        run("commit", "-q", ctr, CPU_IMAGE)
        run("rm", ctr)
    return run("images", "-q", "--no-trunc", CPU_IMAGE).split()[0]


def checkov_ready() -> bool:
    import subprocess

    python = CHECKOV_VENV / "bin" / "python"
    version = "import importlib.metadata as m; print(m.version('checkov'))"  # `checkov --version` takes 9 s
    if not (CHECKOV_VENV / "bin" / "checkov").exists() or not python.exists():
        return False
    r = subprocess.run([str(python), "-c", version], capture_output=True, text=True, timeout=120)
    return r.stdout.strip() == CHECKOV_VERSION


def _background(config, name: str, cmd: str, env: dict | None = None) -> None:
    import subprocess
    import tempfile
    import time

    root = Path(__file__).resolve().parents[1]
    log = Path(tempfile.mkdtemp(prefix=f"{name}-")) / "log"
    with open(log, "w") as f:
        proc = subprocess.Popen(["nice", "-n", "10", "bash", "-c", cmd], cwd=root, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    if not hasattr(config, "background_jobs"):
        config.background_jobs = {}
    config.background_jobs[name] = SimpleNamespace(proc=proc, log=log, began=time.time())


def wait_background(config, name: str, timeout: float = 2400) -> tuple[float, str] | None:
    """Wait for the background job ``name`` (None when none was started): (seconds it took, log tail);
    a failed job fails the caller with its log."""
    import time

    job = getattr(config, "background_jobs", {}).get(name)
    if job is None:
        return None
    rc = job.proc.wait(timeout=timeout)
    tail = job.log.read_text()[-4000:]
    assert rc == 0, f"{name} failed:\n{tail}"
    return time.time() - job.began, tail


def pytest_collection_modifyitems(config, items):
    images = [i for i in items if i.get_closest_marker("images")]
    if images:
        items[:] = [i for i in items if not i.get_closest_marker("images")] + images


def pytest_collection_finish(session):
    if can_build_images() and any(i.get_closest_marker("images") for i in session.items):
        # LAYERS=false: no intermediate layers; with the vfs driver each one is a full copy of the file system
        env = dict(os.environ, ENGINE="buildah", BASE=IMAGE_BASE, LAYERS="false")
        if Path("/opt/wheels").is_dir():  # this machine's local CPU torch wheel; users get the PyTorch CPU index
            env.update(WHEELS="/opt/wheels", TORCH_INDEX="")
        ca = Path("/etc/ssl/certs/ca-certificates.crt")
        if ca.is_file():  # the CA bundle that pip trusts on this host, as a build secret
            env["PIP_CA"] = str(ca)
        session.config.replaced_image = _image_to_replace()
        _background(session.config, "image-build", f"images/debian-base.sh {IMAGE_BASE} && make images KIND=cpu", env)
    if any(i.nodeid.startswith("tests/test_deploy.py::test_checkov") for i in session.items):
        start_checkov_venv(session.config)


def start_checkov_venv(config) -> None:
    """Make checkov's venv at the pinned version in the background, unless it is there already."""
    import shlex
    import sys

    if checkov_ready() or "checkov-venv" in getattr(config, "background_jobs", {}):
        return
    venv = shlex.quote(str(CHECKOV_VENV))
    _background(config, "checkov-venv", f"{shlex.quote(sys.executable)} -m venv --clear {venv} && {venv}/bin/pip "
                f"install -q --disable-pip-version-check checkov=={CHECKOV_VERSION}")


def pytest_sessionfinish(session):
    import signal

    for job in getattr(session.config, "background_jobs", {}).values():
        if job.proc.poll() is None:  # interrupted before the tests that wait for it
            os.killpg(job.proc.pid, signal.SIGTERM)
            job.proc.wait()


@pytest.fixture(scope="session")
def image_build(request):
    """The background build of the CPU image, waited for: (seconds it took, its log's tail)."""
    done = wait_background(request.config, "image-build")
    if done is None:
        pytest.skip("building images here needs root, buildah and debootstrap (.ci/run installs them)")
    return done
