"""The CPU image runs the compiled pipeline's tasks as a cluster would.

`make images` builds images/cpu (here with buildah, no daemon, from a Debian base made by
images/debian-base.sh); then, in one container of that image, as its non-root user, the container
command and arguments of prompt-expansion and nerf-sds exactly as pipelines/text_to_3d.yaml gives
them run with an executor-input JSON like the one KFP's launcher passes (artifact URIs under
minio://, which the launcher maps to /minio/... local paths), and their output artifacts are
checked inside the container. Needs root and buildah (.ci/run installs them); skipped otherwise.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import BUILDAH, can_build_images

from components.platform import CPU_IMAGE, GPU_IMAGE
from dreamfusion import __version__
from dreamfusion.config.presets import DMTET_PRESETS, expand

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts/text-to-3d/run-0"
OVERRIDES = expand(["cpu", "shapes"])  # what make demo passes as the pipeline's overrides
DMTET_OVERRIDES = expand(["cpu", "shapes"], DMTET_PRESETS) + ["model.renderer.iso_resolution=64"]

pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(not can_build_images(),
                       reason="building images here needs root, buildah and debootstrap (.ci/run installs them)"),
]


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def cpu_image(image_build) -> str:
    took, _ = image_build  # conftest builds it (images/debian-base.sh, make images KIND=cpu) while other tests run
    size = json.loads(_run(BUILDAH + ["inspect", "--type", "image", CPU_IMAGE], timeout=60).stdout)
    print(f"\nimages: built {CPU_IMAGE} in {took:.0f} s, beside the other tests")
    assert size["FromImageID"]
    return CPU_IMAGE


@pytest.fixture(scope="module")
def container(cpu_image):
    r = _run(BUILDAH + ["from", "--pull-never", cpu_image], timeout=600)
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip().splitlines()[-1]
    yield name
    _run(BUILDAH + ["rm", name], timeout=300)


# buildah's runtime, not the command, failed to start: buildah re-executes itself from a sealed memfd
# copy, and sealing can fail with EBUSY under load. Nothing ran in the container, so running it again is safe.
RUNTIME_START_FAILURES = ("sealing memfd copy",)


def _in(container: str, *cmd: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
    for attempt in range(3):
        r = _run(BUILDAH + ["run", "--isolation", "chroot", *flags, container, "--", *cmd], timeout=timeout)
        if r.returncode == 0 or not any(m in r.stderr for m in RUNTIME_START_FAILURES):
            return r
        print(f"images: buildah run did not start ({r.stderr.splitlines()[0]}); again")
        time.sleep(2 * (attempt + 1))
    return r


def _executor(spec: dict, component: str) -> dict:
    return spec["deploymentSpec"]["executors"][spec["components"][component]["executorLabel"]]["container"]


def _executor_input(spec: dict, component: str, task: str, values: dict, inputs: dict) -> dict:
    """What KFP's launcher passes as {{$}}: every input parameter resolved (given or default),
    input artifacts by URI, output artifacts with URIs under the pipeline root."""
    comp = spec["components"][component]
    unknown = set(values) - set(comp.get("inputDefinitions", {}).get("parameters", {}))
    assert not unknown, f"{component} has no inputs {unknown}"
    params = {}
    for name, d in comp.get("inputDefinitions", {}).get("parameters", {}).items():
        if name in values:
            params[name] = values[name]
        elif "defaultValue" in d:  # the YAML writes integers as 10000.0; the launcher passes them as integers
            v = d["defaultValue"]
            params[name] = int(v) if d.get("parameterType") == "NUMBER_INTEGER" else v
        else:
            assert d.get("isOptional"), f"{component}: no value for required input {name}"

    def artifact(name: str, d: dict, uri: str) -> dict:
        return {"artifacts": [{"name": name, "type": {"schemaTitle": d["artifactType"]["schemaTitle"],
                                                      "schemaVersion": d["artifactType"]["schemaVersion"]},
                               "uri": uri, "metadata": {}}]}

    in_arts = {name: artifact(name, d, inputs[name])
               for name, d in comp.get("inputDefinitions", {}).get("artifacts", {}).items()}
    out_arts = {name: artifact(name, d, f"{PIPELINE_ROOT}/{task}/{name}")
                for name, d in comp.get("outputDefinitions", {}).get("artifacts", {}).items()}
    return {"inputs": {"parameterValues": params, "artifacts": in_arts},
            "outputs": {"artifacts": out_arts, "outputFile": f"/tmp/kfp_outputs/{task}/output_metadata.json"}}


def _run_task(container: str, spec: dict, component: str, task: str, values: dict, inputs: dict | None = None,
              env: dict | None = None):
    ex = _executor(spec, component)
    executor_input = json.dumps(_executor_input(spec, component, task, values, inputs or {}))
    argv = list(ex["command"]) + [executor_input if a == "{{$}}" else a for a in ex["args"]]
    assert ex["image"] in (CPU_IMAGE, GPU_IMAGE)
    began = time.time()
    r = _in(container, "mkdir", "-p", f"/tmp/kfp_outputs/{task}")
    assert r.returncode == 0, r.stderr
    r = _in(container, *argv, timeout=1200, env=env)
    print(f"images: {task} ran in the image in {time.time() - began:.1f} s")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    return r


def test_image_is_tagged_with_the_package_version(cpu_image):
    assert cpu_image.endswith(f":{__version__}")
    info = json.loads(_run(BUILDAH + ["inspect", "--type", "image", cpu_image], timeout=60).stdout)
    assert info["OCIv1"]["config"]["User"] == "1000:1000"


def test_rebuild_removes_the_image_it_replaces(cpu_image, image_build, request):
    """Every build replaces the image its tag named before (conftest commits an empty one under the tag
    when there was none); the replaced image must not stay behind unnamed (about 2 GB a build with vfs)."""
    previous = request.config.replaced_image
    now = _run(BUILDAH + ["images", "-q", "--no-trunc", cpu_image], timeout=60).stdout.split()
    assert now and previous not in now, "the build did not replace the tagged image"
    every = _run(BUILDAH + ["images", "-a", "-q", "--no-trunc"], timeout=60).stdout.split()
    dangling = _run(BUILDAH + ["images", "-q", "--no-trunc", "--filter", "dangling=true"], timeout=60).stdout.split()
    assert previous not in dangling, f"the replaced image {previous[:19]} stayed behind, unnamed"
    if previous not in every:
        assert f"removed the image it replaces ({previous[:19]})" in image_build[1]


def test_compiled_tasks_run_in_the_cpu_image(container):
    spec = yaml.safe_load_all((ROOT / "pipelines/text_to_3d.yaml").read_text()).__next__()
    assert _in(container, "id", "-u").stdout.strip() == "1000", "the image runs as its non-root user"
    r = _in(container, "sh", "-c", "command -v cc gcc g++ c++ clang || echo none")
    assert r.stdout.strip() == "none", f"no compiler in the final image: {r.stdout}"
    r = _in(container, "python", "-c", "import torch, kfp; print(torch.__version__, torch.version.cuda)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0].startswith("2.13.0") and r.stdout.split()[1] == "None", r.stdout
    r = _in(container, "sh", "-c", "touch $DREAMFUSION_CACHE/w $HF_HOME.w /minio/w && echo writable")
    assert r.stdout.strip() == "writable", r.stderr

    # prompt-expansion, as the pipeline calls it for the offline prior (make demo's settings).
    _run_task(container, spec, "comp-prompt-expansion", "prompt-expansion",
              {"prompt": "a red cube", "guidance": "shapes", "guidance_model": "dreamfusion-shapes",
               "overrides": OVERRIDES})
    prompt_set = f"{PIPELINE_ROOT}/prompt-expansion/prompt_set"
    local = prompt_set.replace("minio://", "/minio/")
    r = _in(container, "python", "-c", f"import json; print(json.load(open('{local}/prompts.json'))['prompt'])")
    assert r.returncode == 0 and r.stdout.strip() == "a red cube", (r.stdout, r.stderr)

    # nerf-sds: 5 steps with the shipped prior, no store (no credentials in this container).
    _run_task(container, spec, "comp-nerf-sds", "nerf-sds",
              {"seed": 0, "iterations": 5, "guidance_scale": 10.0, "guidance": "shapes",
               "guidance_model": "dreamfusion-shapes", "resolution": 32, "overrides": OVERRIDES,
               "store_endpoint": ""},
              inputs={"prompt_set": prompt_set})
    base = f"{PIPELINE_ROOT}/nerf-sds".replace("minio://", "/minio/")
    check = (
        "import json, torch\n"
        f"ck = torch.load('{base}/checkpoint', map_location='cpu', weights_only=False)\n"
        f"m = json.load(open('{base}/renders/metrics.json'))\n"
        "out = json.load(open('/tmp/kfp_outputs/nerf-sds/output_metadata.json'))\n"
        "print(json.dumps({'step': ck['step'], 'steps': m['steps'], 'outputs': sorted(out['artifacts'])}))\n"
    )
    r = _in(container, "python", "-c", check)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["step"] == 5 and got["steps"] == 5, got
    assert {"checkpoint", "metrics", "renders"} <= set(got["outputs"]), got

    # dmtet-finetune from that NeRF, as the pipeline's dmtet branch calls it: 4 steps, the stage's
    # cpu preset (the torch rasterizer; the image has no compiler and needs none).
    _run_task(container, spec, "comp-dmtet-finetune", "dmtet-finetune",
              {"iterations": 4, "resolution": 32, "grid_resolution": 32, "store_endpoint": "",
               "overrides": DMTET_OVERRIDES},
              inputs={"nerf_checkpoint": f"{PIPELINE_ROOT}/nerf-sds/checkpoint", "prompt_set": prompt_set})
    base = f"{PIPELINE_ROOT}/dmtet-finetune".replace("minio://", "/minio/")
    check = (
        "import json, torch\n"
        f"ck = torch.load('{base}/checkpoint', map_location='cpu', weights_only=True)\n"
        f"m = json.load(open('{base}/renders/metrics.json'))\n"
        "print(json.dumps({'format': ck['format'], 'step': ck['step'], 'faces': m['surface_faces']}))\n"
    )
    r = _in(container, "python", "-c", check)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["format"] == "dreamfusion-dmtet/1" and got["step"] == 4 and got["faces"] > 100, got


def test_air_gapped_model_cache_in_the_cpu_image(container, s3):
    """The model-cache Job's command (manifests/base) mirrors a model into the store from the CPU
    image, and the compiled prompt-expansion task then loads it from there (s3:// model key)
    with credentials only in its environment, as the Secret gives them on a cluster."""
    from dreamfusion.store import Store

    job = yaml.safe_load((ROOT / "manifests/base/model-cache-job.yaml").read_text())
    c = job["spec"]["template"]["spec"]["containers"][0]
    argv = list(c["command"]) + list(c["args"])
    bucket = argv[argv.index("--store-bucket") + 1]
    # The hub is out of reach here: mirror the prior the image ships, to the test's S3 server.
    r = _in(container, "python", "-c", "import dreamfusion.prior as p, pathlib; "
            "print(pathlib.Path(p.__file__).parent / 'shapes')")
    argv[argv.index("--model") + 1] = r.stdout.strip()
    argv[argv.index("--store-endpoint") + 1] = s3.endpoint
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3.env.items():
            mp.setenv(k, v)
        Store(s3.endpoint, bucket, create_bucket=True).ensure_bucket()  # the bucket-init Job's work
        r = _in(container, *argv, env=s3.env, timeout=600)
        assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
        key = r.stdout.strip().splitlines()[-1].split("=", 1)[1]
        assert key == f"s3://{bucket}/models/shapes", r.stdout
        assert Store(s3.endpoint, bucket).exists("models/shapes/dreamfusion-mirror.json")

    spec = next(yaml.safe_load_all((ROOT / "pipelines/text_to_3d.yaml").read_text()))
    _run_task(container, spec, "comp-prompt-expansion", "prompt-expansion-mirror",
              {"prompt": "a blue sphere", "guidance": "shapes", "guidance_model": key, "overrides": OVERRIDES,
               "store_endpoint": s3.endpoint},
              env=s3.env)
    local = f"{PIPELINE_ROOT}/prompt-expansion-mirror/prompt_set".replace("minio://", "/minio/")
    r = _in(container, "python", "-c", f"import json; print(json.load(open('{local}/prompts.json'))['model_key'])")
    assert r.stdout.strip() == key, (r.stdout, r.stderr)
