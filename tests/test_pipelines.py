"""Every pipeline compiles; the YAML validates offline against the kfp-pipeline-spec protos;
GPUs only on GPU stages; no credentials in the YAML; the committed YAML is a fresh compile."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

kfp = pytest.importorskip("kfp")
from google.protobuf import json_format  # noqa: E402
from kfp.pipeline_spec import pipeline_spec_pb2  # noqa: E402

from components.platform import CPU_IMAGE, GPU_IMAGE, GPU_TASKS  # noqa: E402
from pipelines.compile import compile_all, pipelines  # noqa: E402

NAMES = sorted(pipelines())


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    return {p.stem: p for p in compile_all(out)}


def _docs(path: Path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2, "pipeline spec + platform spec"
    return docs


def _spec(path: Path):
    spec_doc, platform_doc = _docs(path)
    spec = json_format.ParseDict(spec_doc, pipeline_spec_pb2.PipelineSpec())  # unknown fields raise
    platform = json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec())
    return spec, platform


def _dag_tasks(spec):
    """(name, task) of every task in every DAG (root and loops)."""
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    for dag in dags:
        yield from dag.tasks.items()


def _tasks(spec):
    """(display name, executor label) of every container task in every DAG (root and loops)."""
    for name, task in _dag_tasks(spec):
        comp = spec.components[task.component_ref.name]
        if comp.executor_label:
            yield task.task_info.name or name, comp.executor_label


@pytest.mark.parametrize("name", NAMES)
def test_validates_offline(name, compiled):
    spec, platform = _spec(compiled[name])
    assert spec.pipeline_info.name == name.replace("_", "-")
    assert "kubernetes" in platform.platforms
    kfp.components.load_component_from_file(str(compiled[name]))
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    tasks = list(_tasks(spec))
    assert {label for _, label in tasks} == set(executors)
    for task, label in tasks:
        image = executors[label]["container"]["image"]
        assert image == (GPU_IMAGE if task in GPU_TASKS else CPU_IMAGE), (task, image)


@pytest.mark.parametrize("name", NAMES)
def test_gpu_only_on_gpu_stages(name, compiled):
    spec, platform = _spec(compiled[name])
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    k8s = json_format.MessageToDict(platform.platforms["kubernetes"])["deploymentSpec"]["executors"]
    seen_gpu, seen_cpu = set(), set()
    for task, label in _tasks(spec):
        res = executors[label]["container"].get("resources", {})
        acc = res.get("accelerator", {})
        kube = k8s.get(label, {})
        if task in GPU_TASKS:
            seen_gpu.add(task)
            assert acc.get("resourceType") == "nvidia.com/gpu" and acc.get("resourceCount") == "1", (task, res)
            assert kube["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("gpu_node_selector")
            assert kube["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("gpu_tolerations")
            assert {"mountPath": "/dev/shm", "medium": "Memory"}.items() <= kube["emptyDirMounts"][0].items()
        else:
            seen_cpu.add(task)
            assert not acc, (task, res)
            assert "nodeSelector" not in kube and "tolerations" not in kube
        assert res.get("resourceCpuRequest") and res.get("resourceMemoryRequest"), task
        assert int(kube["activeDeadlineSeconds"]) > 0, task
    assert seen_gpu == set(GPU_TASKS)
    assert seen_cpu
    # retries with backoff on every task but those whose failures a retry would repeat (checks, gates)
    no_retry = ("prompt-expansion", "expand-templates", "regression-runs", "regression-check")
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    for dag in dags:
        for name, t in dag.tasks.items():
            if spec.components[t.component_ref.name].executor_label:
                if name.rstrip("-0123456789") in no_retry:
                    assert t.retry_policy.max_retry_count == 0, name
                else:
                    assert t.retry_policy.max_retry_count >= 2 and t.retry_policy.backoff_duration.seconds >= 30, name


@pytest.mark.parametrize("name", NAMES)
def test_no_credentials_in_yaml(name, compiled, monkeypatch):
    text = compiled[name].read_text()
    for word in ("AWS_SECRET_ACCESS_KEY:", "secret_key=", "minio123", "minioadmin", "password"):
        assert word.lower() not in text.lower(), word
    spec, platform = _spec(compiled[name])
    params = json_format.MessageToDict(spec.root.input_definitions).get("parameters", {})
    assert not [p for p in params if any(w in p.lower() for w in ("secret", "access_key", "password", "credential"))]
    k8s = json_format.MessageToDict(platform.platforms["kubernetes"])["deploymentSpec"]["executors"]
    store_users = [label for label, ex in k8s.items() if "secretAsEnv" in ex]
    assert store_users, "object-store tasks take credentials from a Secret"
    for label in store_users:
        envs = {e["envVar"] for s in k8s[label]["secretAsEnv"] for e in s["keyToEnv"]}
        assert envs == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


@pytest.mark.parametrize("name", NAMES)
def test_committed_yaml_is_fresh(name, compiled):
    committed = ROOT / "pipelines" / f"{name}.yaml"
    assert committed.exists(), f"{committed} missing: run python -m pipelines.compile"
    # byte for byte, the header comment too (pipelines.compile prints its dict defaults with sorted
    # keys; kfp prints them in protobuf map order, which varies between processes)
    old, new = committed.read_text(), compiled[name].read_text()
    assert old == new, f"{committed} is stale: run python -m pipelines.compile"


# Words that say nothing about a parameter beyond its name.
_FILLER = {"the", "a", "an", "of", "for", "to", "in", "on", "and", "or", "this", "its", "is", "be", "value"}


def _undescribed(doc: dict) -> list[str]:
    """Root parameters whose description is missing, empty or only restates the parameter's name."""
    bad = []
    for pname, spec in doc["root"].get("inputDefinitions", {}).get("parameters", {}).items():
        text = (spec.get("description") or "").strip()
        words = set(re.findall(r"[a-z0-9]+", text.lower())) - set(pname.lower().split("_")) - _FILLER
        if not words:
            bad.append(f"{pname}: {text!r}")
    return bad


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_every_parameter_is_described(path, compiled):
    """The KFP UI shows each parameter's description next to its field: the ``Args:`` section of the
    pipeline function's docstring, one line per parameter saying what it does and its unit or options.
    Checked in the committed YAML (what users upload) and in a fresh compile of the same pipeline."""
    docs = [_docs(path)[0]] + ([_docs(compiled[path.stem])[0]] if path.stem in compiled else [])
    for doc in docs:
        assert doc["root"].get("inputDefinitions", {}).get("parameters"), f"{path.name}: no parameters"
        bad = _undescribed(doc)
        assert not bad, (f"{path.name}: describe these parameters in the pipeline function's docstring "
                         f"(Args: section), then run python -m pipelines.compile: {bad}")
        summary = doc["pipelineInfo"].get("description", "")
        assert summary.strip() and "\n" not in summary, f"{path.name}: one-line pipeline description: {summary!r}"


def test_undescribed_parameters_are_found():
    doc = {"root": {"inputDefinitions": {"parameters": {
        "seed": {"description": "Random seed of training."},
        "checkpoint_bucket": {"description": "The checkpoint bucket."},
        "guidance_model": {},
        "video_size": {"description": "  "},
    }}}}
    assert [b.split(":")[0] for b in _undescribed(doc)] == ["checkpoint_bucket", "guidance_model", "video_size"]


def _deps(dag) -> dict[str, set[str]]:
    return {dag[t].task_info.name: {dag[d].task_info.name for d in dag[t].dependent_tasks} for t in dag}


def test_text_to_3d_shape(compiled):
    """prompt-expansion -> nerf-sds, then one of two branches on the ``dmtet`` parameter: the
    DMTet fine-tune and the exports of its checkpoint, or the exports of the NeRF's."""
    spec, _ = _spec(compiled["text_to_3d"])
    root = spec.root.dag.tasks
    assert _deps(root) == {
        "prompt-expansion": set(),
        "nerf-sds": {"prompt-expansion"},
        "condition-branches-1": {"nerf-sds", "prompt-expansion"},
    }
    branches = spec.components[root["condition-branches-1"].component_ref.name].dag.tasks
    by_name = {t.task_info.name: t for t in branches.values()}
    assert set(by_name) == {"dmtet", "nerf-only"}
    flag = "inputs.parameter_values['pipelinechannel--dmtet'] == true"
    assert by_name["dmtet"].trigger_policy.condition == flag
    assert by_name["nerf-only"].trigger_policy.condition == f"!({flag})"
    refine = spec.components[by_name["dmtet"].component_ref.name].dag.tasks
    assert _deps(refine) == {
        "dmtet-finetune": set(),
        "mesh-export": {"dmtet-finetune"},
        "video-render": {"dmtet-finetune", "mesh-export"},
    }
    # the exports read the DMTet checkpoint; the fine-tune reads nerf-sds's checkpoint and prompt set
    d = refine["dmtet-finetune"].inputs.artifacts
    assert d["nerf_checkpoint"].component_input_artifact == "pipelinechannel--nerf-sds-checkpoint"
    assert d["prompt_set"].component_input_artifact == "pipelinechannel--prompt-expansion-prompt_set"
    m = refine["mesh-export"].inputs.artifacts["checkpoint"].task_output_artifact
    assert (m.producer_task, m.output_artifact_key) == ("dmtet-finetune", "checkpoint")
    plain = spec.components[by_name["nerf-only"].component_ref.name].dag.tasks
    assert _deps(plain) == {"mesh-export": set(), "video-render": {"mesh-export"}}
    params = spec.root.input_definitions.parameters
    ui = {"prompt", "negative_prompt", "seed", "iterations", "guidance_scale", "guidance_model", "resolution"}
    assert ui <= set(params)
    assert params["dmtet"].default_value.bool_value is True  # on by default
    assert {"dmtet_iterations", "dmtet_resolution", "dmtet_grid", "dmtet_overrides"} <= set(params)


@pytest.mark.parametrize("name", ["catalog", "regression"])
def test_fan_outs_branch_on_dmtet(name, compiled):
    """catalog and regression run their whole fan-out in one of two branches (KFP cannot collect
    outputs from a condition inside a loop): with dmtet-finetune, or without it."""
    spec, _ = _spec(compiled[name])
    names = [t.task_info.name for _, t in _dag_tasks(spec)]
    assert names.count("dmtet-finetune") == 1
    assert names.count("mesh-export") == 2 and names.count("nerf-sds") == 2
    assert spec.root.input_definitions.parameters["dmtet"].default_value.bool_value is True


@pytest.mark.parametrize("name", NAMES)
def test_nerf_sds_cache_key_is_stable_across_runs(name, compiled):
    """No nerf-sds input comes from a run-specific placeholder (the job's id, name or time): one
    would change KFP's cache key on every run, and nerf-sds and every task after it would never
    hit the cache. Its checkpoints are keyed by a digest of its inputs instead."""
    spec, _ = _spec(compiled[name])
    found = 0
    for _, task in _dag_tasks(spec):
        if not task.component_ref.name.startswith("comp-nerf-sds"):
            continue
        found += 1
        comp = spec.components[task.component_ref.name]
        assert "run_id" not in comp.input_definitions.parameters
        for pname, value in task.inputs.parameters.items():
            fed = json_format.MessageToJson(value)
            assert "{{$" not in fed and "pipeline_job" not in fed, (name, pname, fed)
    assert found >= 1, f"{name}: no nerf-sds task"


def test_catalog_parallelism_and_publish(compiled):
    spec, _ = _spec(compiled["catalog"])
    loops = [t for _, t in _dag_tasks(spec) if t.HasField("parameter_iterator")]
    assert len(loops) == 2 and {t.iterator_policy.parallelism_limit for t in loops} == {4}  # one per dmtet branch
    names = [t.task_info.name for _, t in _dag_tasks(spec)]
    assert "expand-templates" in names and names.count("publish-catalog") == 2

    from kfp import compiler

    from pipelines.catalog import build_catalog

    out = compiled["catalog"].parent / "catalog-p2.yaml"
    compiler.Compiler().compile(build_catalog(2), str(out))
    spec2, _ = _spec(out)
    loops2 = [t for _, t in _dag_tasks(spec2) if t.HasField("parameter_iterator")]
    assert [t.iterator_policy.parallelism_limit for t in loops2] == [2, 2]


def test_library_never_imports_kfp():
    import subprocess

    code = (
        "import sys, dreamfusion.store, dreamfusion.store.catalog, dreamfusion.store.regression;"
        "import dreamfusion.stages.nerf_sds, dreamfusion.stages.prompt_expansion, dreamfusion.stages.dmtet_finetune;"
        "sys.exit(1 if any(m == 'kfp' or m.startswith(('kfp.', 'components', 'pipelines'))"
        " for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# -- dreamfusion-kfp (pipelines/cli.py) ---------------------------------------------------------------------


def test_cli_unreachable_host_is_one_line(tmp_path):
    """A KFP endpoint that refuses connections: one error line, non-zero exit (no network needed)."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    host = f"http://127.0.0.1:{port}"
    module = [sys.executable, "-m", "pipelines.cli"]
    script = [str(Path(sys.executable).parent / "dreamfusion-kfp")]  # the installed console script
    for cmd, args in ((module, ["submit", "text_to_3d", "-p", "seed=3", "--wait"]),
                      (module, ["wait", "some-run-id"]),
                      (script, ["schedule", "catalog", "--cron", "0 0 2 * * *"])):
        r = subprocess.run([*cmd, *args, "--host", host], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: cannot reach Kubeflow Pipelines at {host}")
        assert "Traceback" not in r.stderr and r.stdout == ""


def test_cli_black_holed_host_fails_within_the_connect_timeout():
    """An endpoint where connections hang (a listening socket whose backlog is full, so the
    kernel drops new handshakes): the probe gives up within its timeout with one line, instead
    of kfp.Client waiting for the system's connect timeout."""
    import socket
    import time

    from pipelines.cli import CliError, _probe

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        port = srv.getsockname()[1]
        fill = []
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fill.append(c)
        time.sleep(0.2)
        began = time.monotonic()
        with pytest.raises(CliError, match=rf"cannot reach Kubeflow Pipelines at http://127.0.0.1:{port} within 1 s"):
            _probe(f"http://127.0.0.1:{port}", timeout=1.0)
        assert time.monotonic() - began < 3
        for c in fill:
            c.close()
    with pytest.raises(CliError, match="is not an http"):
        _probe("http://:99999")


@pytest.mark.parametrize("cron", ["0 0 2 * * *", "0 */15 * * * ?", "30 0 2 1,15 jan-jun mon-fri", "0 0 2 * *  *",
                                  "@daily", "@every 1h30m"])
def test_cli_cron_accepted(cron):
    """KFP's scheduler (robfig/cron v1) reads six fields, seconds first."""
    from pipelines.cli import check_cron

    assert check_cron(cron) == " ".join(cron.split())


@pytest.mark.parametrize("cron, words", [
    ("0 0 25 * * *", "hour '25' is not in 0-23"),
    ("0 2 * * *", "has 5 fields, which KFP reads seconds first; for the crontab meaning write six: '0 0 2 * * *'"),
    ("0 0 2 * * * *", "has 7 fields"),
    ("", "has 0 fields"),
    ("0 0 2 0 * *", "day of month '0' is not in 1-31"),
    ("0 0 2 * foo *", "month 'foo' is not in 1-12"),
    ("0 */0 * * * *", "step '0' must be a positive number"),
    ("0 0 5-2 * * *", "range '5-2' runs backwards"),
    ("@sometimes", "unknown descriptor"),
])
def test_cli_bad_cron_is_one_line(cron, words, capsys, monkeypatch):
    import pipelines.cli as cli

    monkeypatch.setattr(cli, "_client", lambda args: pytest.fail("a bad cron must fail before any client"))
    rc = cli.main(["schedule", "catalog", "--host", "http://127.0.0.1:1", "--cron", cron])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: cron {cron!r}") and words in err and err.count("\n") == 1


class _FakeClient:
    """kfp.Client's surface the CLI uses; runs end in ``final`` after one RUNNING poll."""

    def __init__(self, final):
        self.final, self.polls, self.calls = final, 0, []

    def create_run_from_pipeline_package(self, package, **kw):
        self.calls.append(("run", package, kw))
        return type("Run", (), {"run_id": "run-1"})()

    def get_run(self, run_id):
        self.polls += 1
        return type("R", (), {"state": "RUNNING" if self.polls == 1 or self.final is None else self.final})()

    def create_experiment(self, name, namespace=None):
        return type("E", (), {"experiment_id": "exp-1"})()

    def create_recurring_run(self, **kw):
        self.calls.append(("schedule", kw))
        return type("J", (), {"recurring_run_id": "job-1"})()


@pytest.mark.parametrize("final, rc", [("SUCCEEDED", 0), ("FAILED", 1), ("CANCELED", 1), ("SKIPPED", 1)])
def test_cli_submit_wait_exit_code(final, rc, monkeypatch, capsys):
    import pipelines.cli as cli

    fake = _FakeClient(final)
    monkeypatch.setattr(cli, "_client", lambda args: fake)
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    argv = ["submit", "text_to_3d", "--host", "h", "--experiment", "e", "--run-name", "r", "-p", "seed=3",
            "-p", "prompt=a red cube", "--wait"]
    assert cli.main(argv) == rc
    (_, package, kw), = fake.calls
    assert package.endswith("text_to_3d.yaml")
    assert kw["arguments"] == {"seed": 3, "prompt": "a red cube"} and kw["experiment_name"] == "e"
    assert kw["run_name"] == "r"
    assert f"run run-1: {final}" in capsys.readouterr().out


def test_cli_wait_timeout_and_schedule(monkeypatch, capsys):
    import pipelines.cli as cli

    fake = _FakeClient(None)  # never ends
    monkeypatch.setattr(cli, "_client", lambda args: fake)
    assert cli.main(["wait", "run-1", "--host", "h", "--timeout", "0"]) == 1
    assert "error: run run-1 did not finish within 0 s" in capsys.readouterr().err

    assert cli.main(["schedule", "catalog", "--host", "h", "--cron", "0 0 2 * * *", "--max-concurrency", "3",
                     "-p", 'templates=["a {red|blue} {car|chair}"]']) == 0
    (_, kw), = fake.calls
    assert kw["cron_expression"] == "0 0 2 * * *" and kw["max_concurrency"] == 3
    assert kw["params"] == {"templates": ["a {red|blue} {car|chair}"]} and kw["experiment_id"] == "exp-1"
    assert cli.main(["schedule", "catalog", "--host", "h", "--cron", "0 0 2 * * *", "--max-concurrency", "11"]) == 2
    assert capsys.readouterr().err.startswith("error: --max-concurrency 11: KFP accepts 1-10")


def test_preset_overrides_never_outvote_parameters():
    """The presets a pipeline passes as ``overrides`` come last on the stages' command lines: with
    parameter values no preset holds, the composed configs still have the parameters' values."""
    from dreamfusion.config import compose, to_dict
    from dreamfusion.stages.dmtet_finetune import compose_dmtet
    from dreamfusion.stages.settings import dmtet_overrides, nerf_overrides
    from pipelines.regression import DMTET_SHAPES_OVERRIDES, SHAPES_OVERRIDES
    from pipelines.stages import dmtet_presets, nerf_presets

    for presets in (SHAPES_OVERRIDES, nerf_presets("cpu", "shapes")):
        cfg = compose(nerf_overrides(guidance="shapes", seed=5, iterations=17, guidance_scale=7.25, resolution=40,
                                     overrides=presets))
        m = cfg.model
        assert (cfg.trainer.seed, cfg.trainer.max_steps, m.guidance_scale) == (5, 17, 7.25)
        assert (m.data.train_dataset.width, m.data.train_dataset.height) == (40, 40)
    nerf = to_dict(compose(["guidance=shapes"]))
    for presets in (DMTET_SHAPES_OVERRIDES, dmtet_presets("cpu", "shapes")):
        d = compose_dmtet(nerf, "x/last.pt", dmtet_overrides(iterations=13, resolution=24, grid=64, overrides=presets))
        assert (d.trainer.max_steps, d.model.renderer.grid_resolution) == (13, 64)
        assert (d.model.data.train_dataset.width, d.model.data.train_dataset.height) == (24, 24)
    # the presets as they are would outvote them: the rule has something to remove
    from dreamfusion.config.presets import expand

    raw = compose(nerf_overrides(guidance="shapes", seed=5, iterations=17, guidance_scale=7.25, resolution=40,
                                 overrides=expand(["shapes"])))
    assert (raw.model.guidance_scale, raw.model.data.train_dataset.width) != (7.25, 40)
