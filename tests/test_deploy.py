"""Deployment: manifests/ renders, validates against the Kubernetes schemas, passes hadolint and
checkov (with each skip justified in place), pins every image, and holds no credential.

Tools: kubectl (kustomize), kubernetes-validate and hadolint come with the dev extra; checkov
lives in its own venv (.venv-checkov at the repository root, made once in the background by conftest; its
dependencies conflict with the project's).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CHECKOV_VENV, CHECKOV_VERSION, checkov_ready, start_checkov_venv, wait_background

import dreamfusion
from components import platform
from pipelines.text_to_3d import DEFAULT_NODE_SELECTOR, DEFAULT_TOLERATIONS

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = {"kubeflow": "kubeflow", "standalone-minio": "dreamfusion"}  # overlay -> its namespace
K8S_VERSION = "1.30"  # the oldest Kubernetes these manifests support
BIN = Path(sys.executable).parent  # the venv's own tools first, never a kubectl from PATH
DOCKERFILES = sorted(ROOT.glob("images/*/Dockerfile"))
# Written only here, into a copy of manifests/: the Secret generator's input for standalone-minio.
FAKE_ENV = {"accesskey": "testaccesskey", "secretkey": "testsecretkey"}
# The manifests name the default registry; another one is set per overlay (manifests/README.md).
REGISTRY = getattr(platform, "DEFAULT_REGISTRY", platform.REGISTRY)
CPU_IMAGE = f"{REGISTRY}/dreamfusion-cpu:{dreamfusion.__version__}"
GPU_IMAGE = f"{REGISTRY}/dreamfusion-gpu:{dreamfusion.__version__}"


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not in {BIN}: install the dev extra (pip install -e '.[dev]')")
    return str(path)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 300), **kw)


def kustomize(path: Path) -> str:
    r = run([tool("kubectl"), "kustomize", str(path)])
    assert r.returncode == 0, f"kubectl kustomize {path} failed:\n{r.stderr}"
    return r.stdout


def docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def copy_manifests(dest: Path) -> Path:
    """manifests/ without any local minio.env, plus the fake one."""
    out = dest / "manifests"
    shutil.copytree(MANIFESTS, out, ignore=shutil.ignore_patterns("minio.env"))
    env = "".join(f"{k}={v}\n" for k, v in FAKE_ENV.items())
    (out / "overlays" / "standalone-minio" / "minio.env").write_text(env)
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    """Each overlay rendered by `kubectl kustomize`, as text."""
    copy = copy_manifests(tmp_path_factory.mktemp("deploy"))
    return {name: kustomize(copy / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def objects(rendered) -> dict[str, list[dict]]:
    return {name: docs(text) for name, text in rendered.items()}


def find(objs: list[dict], kind: str, name: str) -> dict:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_specs(objs: list[dict]):
    for o in objs:
        if o["kind"] in ("Job", "StatefulSet", "Deployment", "DaemonSet"):
            yield o, o["spec"]["template"]["spec"]


# -- rendering and schema validation -----------------------------------------------------------


def test_overlays_render_into_their_namespace(objects):
    expected = {
        ("ServiceAccount", "dreamfusion"), ("Role", "dreamfusion"), ("RoleBinding", "dreamfusion"),
        ("ConfigMap", "dreamfusion-gpu-scheduling"), ("Job", "dreamfusion-gpu-check"),
        ("Job", "dreamfusion-model-cache"), ("Job", "dreamfusion-buckets"),
        ("NetworkPolicy", "dreamfusion-pipeline-tasks"), ("NetworkPolicy", "dreamfusion-default-deny"),
        ("NetworkPolicy", "dreamfusion-store-clients"), ("NetworkPolicy", "dreamfusion-model-cache-https"),
    }
    extra = {
        "kubeflow": {("ConfigMap", "kfp-launcher")},
        "standalone-minio": {
            ("Namespace", "dreamfusion"), ("StatefulSet", "minio"), ("Service", "minio-service"),
            ("Service", "minio-headless"), ("Secret", platform.STORE_SECRET), ("NetworkPolicy", "minio"),
        },
    }
    for name, objs in objects.items():
        got = {(o["kind"], o["metadata"]["name"]) for o in objs}
        assert got == expected | extra[name], f"{name}: unexpected objects {sorted(got ^ (expected | extra[name]))}"
        for o in objs:
            if o["kind"] != "Namespace":
                assert o["metadata"].get("namespace") == OVERLAYS[name], f"{name}: {o['kind']}/{o['metadata']['name']}"
        binding = find(objs, "RoleBinding", "dreamfusion")
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dreamfusion", "namespace": OVERLAYS[name]}]


def validate(paths: list[Path]) -> subprocess.CompletedProcess:
    # Options before the files: kubernetes-validate reads everything after the first file as files.
    return run([tool("kubernetes-validate"), "-k", K8S_VERSION, "--strict", *map(str, paths)])


def test_every_object_validates_strictly(rendered, objects, tmp_path):
    paths = []
    for name, text in rendered.items():
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(text)
    r = validate(paths)
    lines = r.stdout.splitlines() + r.stderr.splitlines()
    passed = [line for line in lines if line.startswith("INFO") and " passed for resource " in line]
    others = [line for line in lines if line not in passed]
    # An unknown kind is only a WARN with exit code 0: every object must report "passed".
    assert r.returncode == 0 and not others, "\n".join(others)
    assert len(passed) == sum(len(objs) for objs in objects.values())


def test_validator_rejects_an_unknown_field(objects, tmp_path):
    job = find(objects["kubeflow"], "Job", "dreamfusion-gpu-check")
    job = json.loads(json.dumps(job))
    job["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(job))
    r = validate([tmp_path / "bad.yaml"])
    assert r.returncode != 0 and "'gpus' was unexpected" in r.stdout + r.stderr


# -- what the objects say --------------------------------------------------------------------


def test_gpu_check_schedules_like_the_pipelines(objects):
    (key, value), = DEFAULT_NODE_SELECTOR.items()
    for objs in objects.values():
        spec = find(objs, "Job", "dreamfusion-gpu-check")["spec"]["template"]["spec"]
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms == [{"matchExpressions": [{"key": key, "operator": "In", "values": [value]}]}]
        assert spec["tolerations"] == DEFAULT_TOLERATIONS
        (container,) = spec["containers"]
        assert container["image"] == GPU_IMAGE
        assert container["command"][:3] == ["python", "-m", "dreamfusion.renderer.gpu_check"]
        import dreamfusion.renderer.gpu_check  # noqa: F401 (the module the Job runs exists)
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_gpu_scheduling_is_set_in_one_place(tmp_path):
    """The node label and the taint are written once, in the ConfigMap; kustomize copies them."""
    holders = [p.relative_to(MANIFESTS).as_posix() for p in MANIFESTS.rglob("*.yaml")
               if "gpu.present" in p.read_text()]
    assert holders == ["base/gpu-scheduling.yaml"]
    copy = copy_manifests(tmp_path)
    cm = copy / "base" / "gpu-scheduling.yaml"
    text = cm.read_text()
    for old, new in [("nodeLabelKey: nvidia.com/gpu.present", "nodeLabelKey: example.com/gpu"),
                     ('nodeLabelValue: "true"', "nodeLabelValue: a100"), ("taintKey: nvidia.com/gpu", "taintKey: gpu")]:
        assert old in text, old
        text = text.replace(old, new)
    cm.write_text(text)
    spec = find(docs(kustomize(copy / "base")), "Job", "dreamfusion-gpu-check")["spec"]["template"]["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"] == [{"key": "example.com/gpu", "operator": "In", "values": ["a100"]}]
    assert spec["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_model_cache_job_mirrors_the_model_into_the_store(objects):
    for objs in objects.values():
        job = find(objs, "Job", "dreamfusion-model-cache")
        spec = job["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        assert c["image"] == CPU_IMAGE
        assert c["command"] == ["python", "-m", "dreamfusion.stages.mirror_model"]
        assert c["args"] == ["--model", "stabilityai/stable-diffusion-2-1-base", "--store-endpoint",
                             "minio-service:9000", "--store-bucket", "dreamfusion", "--no-store-secure"]
        from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
        assert from_secret == {env: {"name": platform.STORE_SECRET, "key": key}
                               for key, env in platform.STORE_SECRET_KEYS.items()}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        for path in ("/tmp", "/var/cache/dreamfusion"):
            assert "emptyDir" in volumes[mounts[path]], path
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "model-cache"


def test_pods_are_hardened(objects):
    for objs in objects.values():
        for o, spec in pod_specs(objs):
            what = f"{o['kind']}/{o['metadata']['name']}"
            assert spec["serviceAccountName"] == "dreamfusion" and spec["automountServiceAccountToken"] is False, what
            sc = spec["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= 1000, what
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, what
            for c in spec["containers"] + spec.get("initContainers", []):
                csc = c["securityContext"]
                assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True, what
                assert csc["capabilities"] == {"drop": ["ALL"]} and not csc.get("privileged"), what
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{what}: {bound}"
            if o["kind"] == "Job":
                assert o["spec"]["backoffLimit"] >= 0 and o["spec"]["ttlSecondsAfterFinished"] > 0, what
                assert spec["restartPolicy"] == "Never", what


def test_rbac_is_least_privilege(objects):
    for objs in objects.values():
        sa = find(objs, "ServiceAccount", "dreamfusion")
        assert sa["automountServiceAccountToken"] is False
        rules = find(objs, "Role", "dreamfusion")["rules"]
        assert rules == [{"apiGroups": [""], "resources": ["configmaps"],
                          "resourceNames": ["dreamfusion-gpu-scheduling"], "verbs": ["get"]}]
        assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def egress_ports(policy: dict) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for rule in policy["spec"].get("egress", []) for p in rule["ports"]}


def test_network_policies(objects):
    for objs in objects.values():
        policies = {o["metadata"]["name"]: o for o in objs if o["kind"] == "NetworkPolicy"}
        tasks = policies["dreamfusion-pipeline-tasks"]["spec"]
        assert tasks["podSelector"] == {"matchLabels": {"pipelines.kubeflow.org/v2_component": "true"}}
        assert tasks["ingress"] == [] and set(tasks["policyTypes"]) == {"Ingress", "Egress"}
        dns = {("UDP", 53), ("TCP", 53)}
        assert egress_ports(policies["dreamfusion-pipeline-tasks"]) == dns | {
            ("TCP", 9000), ("TCP", 8887), ("TCP", 8888), ("TCP", 8080), ("TCP", 6443)}
        deny = policies["dreamfusion-default-deny"]["spec"]
        assert deny["ingress"] == [] and deny["egress"] == []
        assert egress_ports(policies["dreamfusion-store-clients"]) == dns | {("TCP", 9000)}
        # HTTPS only for the model cache.
        https = [n for n, p in policies.items() if ("TCP", 443) in egress_ports(p)]
        assert https == ["dreamfusion-model-cache-https"]
        assert policies[https[0]]["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "model-cache"
        # Every dreamfusion pod falls under the default deny.
        for o, _ in pod_specs(objs):
            assert o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dreamfusion"


def test_kubeflow_overlay_sets_the_pipeline_root(objects):
    objs = objects["kubeflow"]
    root = find(objs, "ConfigMap", "kfp-launcher")["data"]["defaultPipelineRoot"]
    assert root == "minio://dreamfusion/pipeline-root"
    assert not [o for o in objs if o["kind"] in ("Secret", "StatefulSet", "Service")], "KFP's own store is used"


def test_standalone_overlay_runs_its_own_minio(objects):
    objs = objects["standalone-minio"]
    sts = find(objs, "StatefulSet", "minio")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["resources"]["requests"]["storage"]
    svc = find(objs, "Service", "minio-service")
    assert [p["port"] for p in svc["spec"]["ports"]] == [9000]
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    secret = find(objs, "Secret", platform.STORE_SECRET)
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == FAKE_ENV
    example = MANIFESTS / "overlays" / "standalone-minio" / "minio.env.example"
    assert set(re.findall(r"^(\w+)=CHANGE-ME", example.read_text(), re.M)) == set(FAKE_ENV)


def test_minio_env_is_never_committed():
    r = run(["git", "check-ignore", "-q", "manifests/overlays/standalone-minio/minio.env"], cwd=ROOT)
    if r.returncode == 128:
        pytest.skip("not a git checkout")
    assert r.returncode == 0, "manifests/overlays/standalone-minio/minio.env must be git-ignored"
    r = run(["git", "ls-files", "manifests"], cwd=ROOT)
    assert "manifests/overlays/standalone-minio/minio.env" not in r.stdout.splitlines()


# -- images ----------------------------------------------------------------------------------


def image_fields(node):
    """Every value of an `image:` key anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "image" and isinstance(v, str):
                yield v
            else:
                yield from image_fields(v)
    elif isinstance(node, list):
        for v in node:
            yield from image_fields(v)


def split_image(ref: str) -> tuple[str, str | None]:
    name, _, digest = ref.partition("@")
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, None
    return repo, tag


def test_every_image_is_pinned_and_ours_carry_the_version(objects):
    version = dreamfusion.__version__
    refs = {"components/platform.py": [platform.CPU_IMAGE, platform.GPU_IMAGE]}
    for path in sorted((ROOT / "pipelines").glob("*.yaml")):
        refs[path.relative_to(ROOT).as_posix()] = [i for d in docs(path.read_text()) for i in image_fields(d)]
    for name, objs in objects.items():
        refs[f"overlay {name}"] = [i for o in objs for i in image_fields(o)]
    kust = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    refs["manifests/base/kustomization.yaml"] = [f"{e['name']}:{e['newTag']}" for e in kust["images"]]
    assert all(refs.values()), {k: len(v) for k, v in refs.items()}
    ours = set()
    for where, images in refs.items():
        for ref in images:
            repo, tag = split_image(ref)
            assert tag and tag != "latest", f"{where}: {ref} is not pinned to a tag"
            if repo.rpartition("/")[2] in ("dreamfusion-cpu", "dreamfusion-gpu"):
                ours.add(repo.rpartition("/")[2])
                assert tag == version, f"{where}: {ref} should carry the package version {version}"
    assert ours == {"dreamfusion-cpu", "dreamfusion-gpu"}


# -- credentials -----------------------------------------------------------------------------

CREDENTIAL_KEYS = r"(?:accesskey|secretkey|AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|MINIO_ROOT_USER|MINIO_ROOT_PASSWORD)"
PLACEHOLDER = re.compile(r"^[\"']?CHANGE-ME[\w-]*[\"']?$")
KNOWN_DEFAULTS = re.compile(r"minioadmin|minio123", re.I)


def credential_findings(text: str, where: str) -> list[str]:
    """Literal credentials in a YAML or env file's text: a credential key with a literal value,
    a Secret with data, an env var of a credential name with a value, a well-known default."""
    found = [f"{where}: {m.group(0)}" for m in KNOWN_DEFAULTS.finditer(text)]
    for m in re.finditer(rf"^\s*-?\s*{CREDENTIAL_KEYS}\s*[:=][ \t]*(\S.*)?$", text, re.M):
        value = (m.group(1) or "").strip()
        if value and not PLACEHOLDER.match(value) and not value.startswith(("|", ">", "#")):
            found.append(f"{where}: {m.group(0).strip()}")
    try:
        parsed = docs(text)
    except yaml.YAMLError:
        return found
    for d in parsed:
        if isinstance(d, dict) and d.get("kind") == "Secret" and (d.get("data") or d.get("stringData")):
            found.append(f"{where}: Secret {d['metadata']['name']} holds data")
        for env in env_lists(d):
            for e in env:
                if isinstance(e, dict) and re.fullmatch(CREDENTIAL_KEYS, str(e.get("name")), re.I) and "value" in e:
                    found.append(f"{where}: env {e['name']} has a literal value")
    return found


def env_lists(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "env" and isinstance(v, list):
                yield v
            else:
                yield from env_lists(v)
    elif isinstance(node, list):
        for v in node:
            yield from env_lists(v)


def test_credential_scan_finds_planted_secrets():
    secret = base64.b64encode(b"s3cr3t-value").decode()
    samples = {
        "env.yaml": "env:\n  - name: AWS_SECRET_ACCESS_KEY\n    value: s3cr3t-value\n",
        "secret.yaml": f"apiVersion: v1\nkind: Secret\nmetadata: {{name: x}}\ndata:\n  secretkey: {secret}\n",
        "string.yaml": "kind: Secret\nmetadata: {name: x}\nstringData:\n  token: abc\n",
        "minio.env": "accesskey=realkey\n",
        "default.yaml": "args: [--password, minio123]\n",
    }
    for name, text in samples.items():
        assert credential_findings(text, name), name
    clean = "env:\n  - name: AWS_ACCESS_KEY_ID\n    valueFrom:\n      secretKeyRef: {name: s, key: accesskey}\n"
    assert credential_findings(clean, "clean.yaml") == []
    assert credential_findings("accesskey=CHANGE-ME\nsecretkey=CHANGE-ME-TOO\n", "example") == []


def test_no_literal_credentials_in_manifests_or_compiled_pipelines():
    files = [p for p in MANIFESTS.rglob("*") if p.is_file() and p.name != "minio.env"]
    files += sorted((ROOT / "pipelines").glob("*.yaml")) + sorted((ROOT / "components").rglob("*.yaml"))
    assert any(p.name == "kustomization.yaml" for p in files) and any(p.parent.name == "pipelines" for p in files)
    findings = [f for p in files for f in credential_findings(p.read_text(), p.relative_to(ROOT).as_posix())]
    assert findings == []


# -- linters ---------------------------------------------------------------------------------


def hadolint_errors(dockerfile: str | Path, text: str | None = None) -> list[dict]:
    cmd = [tool("hadolint"), "--no-fail", "-f", "json", "-" if text is not None else str(dockerfile)]
    r = run(cmd, input=text, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return [f for f in json.loads(r.stdout or "[]") if f["level"] == "error"]


def test_hadolint_reports_no_errors():
    assert hadolint_errors("-", "FROM debian:bookworm-slim\nWORKDIR relative\n"), "hadolint should flag DL3000"
    assert [p.parent.name for p in DOCKERFILES] == ["cpu", "gpu"]
    errors = {p.relative_to(ROOT).as_posix(): hadolint_errors(p) for p in DOCKERFILES}
    assert not any(errors.values()), json.dumps(errors, indent=1)


@pytest.fixture(scope="session")
def checkov(request) -> str:
    """checkov in its own venv at the pinned version, made in the background while other tests run
    (conftest; started here when collection did not)."""
    start_checkov_venv(request.config)
    wait_background(request.config, "checkov-venv", timeout=1800)
    assert checkov_ready(), f"checkov {CHECKOV_VERSION} is not in {CHECKOV_VENV}"
    return str(CHECKOV_VENV / "bin" / "checkov")


def test_checkov_passes_manifests_and_dockerfiles(checkov, rendered, objects, tmp_path):
    for name, text in rendered.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    for p in DOCKERFILES:  # checkov finds Dockerfiles by their name
        (tmp_path / p.parent.name).mkdir()
        shutil.copy(p, tmp_path / p.parent.name / "Dockerfile")
    env = {**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"}
    r = run([checkov, "-d", str(tmp_path), "--framework", "kubernetes", "dockerfile", "--skip-download",
             "--quiet", "-o", "json"], env=env, cwd=tmp_path)
    assert r.returncode in (0, 1) and r.stdout.lstrip().startswith(("[", "{")), r.stderr[-4000:]
    reports = json.loads(r.stdout)
    reports = {rep["check_type"]: rep for rep in (reports if isinstance(reports, list) else [reports])}
    assert "kubernetes" in reports and ("dockerfile" in reports) == bool(DOCKERFILES), list(reports)
    assert reports["kubernetes"]["summary"]["passed"] > 100
    # Every skip is an annotation in the manifests; checkov saw all of them.
    annotations = [k for objs in objects.values() for o in objs
                   for k in o["metadata"].get("annotations", {}) if k.startswith("checkov.io/skip")]
    assert reports["kubernetes"]["summary"]["skipped"] == len(annotations) > 0
    failed = [
        f"{f['check_id']} ({f.get('severity') or 'no severity'}) {f['resource']} in {f['file_path']}: {f['check_name']}"
        for rep in reports.values() for f in rep["results"].get("failed_checks", [])
        # Without a platform key checkov reports no severity: then every failed check counts.
        if (f.get("severity") or "").upper() not in ("LOW", "INFO")
    ]
    assert failed == [], "\n".join(failed)
