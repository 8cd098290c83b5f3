"""The regression check (dreamfusion.store.regression, what the regression-check component runs)
against a real S3 server: the first run records the baseline, an equal run passes, a worse run
fails with one line."""

from __future__ import annotations

import json

import pytest

from dreamfusion.errors import UserError
from dreamfusion.store import Store
from dreamfusion.store.regression import RegressionError, check_regression, collect_metrics

RUN = {
    "a red cube": {"loss": 0.50, "seconds_per_step": 0.20, "occupied_fraction": 0.10, "steps": 600, "faces": 5000},
    "a blue sphere": {"loss": 0.40, "seconds_per_step": 0.20, "occupied_fraction": 0.12, "steps": 600, "faces": 6000},
}


@pytest.fixture
def store(s3_env):
    s3 = s3_env
    return Store(s3.endpoint, "baselines", secure=False, create_bucket=True)


def _copy(run):
    return json.loads(json.dumps(run))


def test_record_pass_then_fail_on_regression(store):
    first = check_regression(store, "ci", _copy(RUN))
    assert first.status == "recorded"
    assert json.loads(store.get_bytes("regression/ci/baseline.json")) == RUN

    again = check_regression(store, "ci", _copy(RUN))
    assert again.status == "passed" and again.regressions == []

    worse = _copy(RUN)
    worse["a red cube"]["loss"] = 0.90  # allowed: 0.50 + 0.25 * 0.50 + 0.05 = 0.675
    worse["a blue sphere"]["faces"] = 100  # collapsed mesh
    with pytest.raises(RegressionError) as e:
        check_regression(store, "ci", worse)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("2 regression(s) against baselines/regression/ci/baseline.json")
    assert "'a red cube' loss 0.9 > baseline 0.5" in msg and "'a blue sphere' faces 100" in msg
    assert e.value.result.status == "failed" and len(e.value.result.report()["regressions"]) == 2
    # a failed run leaves the baseline alone
    assert json.loads(store.get_bytes("regression/ci/baseline.json")) == RUN


def test_missing_prompt_new_prompt_and_update(store):
    check_regression(store, "suite-b", _copy(RUN))
    fewer = {"a red cube": RUN["a red cube"]}
    with pytest.raises(RegressionError, match="'a blue sphere' has no result in this run"):
        check_regression(store, "suite-b", fewer)
    more = {**_copy(RUN), "a green cone": RUN["a red cube"]}
    r = check_regression(store, "suite-b", more)
    assert r.status == "passed" and r.new_prompts == ["a green cone"]
    slower = _copy(RUN)
    slower["a red cube"]["seconds_per_step"] = 0.44  # 2x + 50 ms allowed: 0.45
    assert check_regression(store, "suite-b", slower).status == "passed"
    assert check_regression(store, "suite-b", fewer, update_baseline=True).status == "recorded"
    assert check_regression(store, "suite-b", fewer).status == "passed"


def test_bad_input_is_one_line(store, tmp_path):
    with pytest.raises(UserError, match="regression suite 'a/b'"):
        check_regression(store, "a/b", _copy(RUN))
    with pytest.raises(UserError, match="no results"):
        check_regression(store, "ci-empty", {})
    store.put_bytes("regression/corrupt/baseline.json", b"{not json")
    with pytest.raises(UserError, match="is corrupt") as e:
        check_regression(store, "corrupt", _copy(RUN))
    assert "\n" not in str(e.value)


def test_collect_metrics_from_stage_folders(tmp_path):
    dirs = []
    for i, (prompt, m) in enumerate(RUN.items()):
        ps, rd, mesh = (tmp_path / f"{kind}{i}" for kind in ("ps", "rd", "mesh"))
        for d in (ps, rd, mesh):
            d.mkdir()
        (ps / "prompts.json").write_text(json.dumps({"prompt": prompt}))
        (rd / "metrics.json").write_text(json.dumps({**{k: v for k, v in m.items() if k != "faces"}, "history": []}))
        (mesh / "mesh_stats.json").write_text(json.dumps({"faces": m["faces"], "watertight": True}))
        dirs.append((ps, rd, mesh))
    current = collect_metrics(*zip(*dirs))
    assert current == {p: {k: float(v) for k, v in m.items()} for p, m in RUN.items()}
    with pytest.raises(UserError, match="appears twice"):
        collect_metrics(*zip(*(dirs + dirs[:1])))
    with pytest.raises(UserError, match="mismatched"):
        collect_metrics([dirs[0][0]], [], [])


def test_component_records_then_fails_with_one_line(store, s3, tmp_path):
    """The regression-check component's body (no pipeline): report and metrics, then one error line."""
    import sys
    from pathlib import Path

    pytest.importorskip("kfp")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kfp.dsl import Artifact, Metrics

    from components.regression_check import regression_check

    def run(metrics, name):
        folders = {}
        for kind, fname, data in (("ps", "prompts.json", {"prompt": "a red cube"}), ("rd", "metrics.json", metrics),
                                  ("mesh", "mesh_stats.json", {"faces": 5000})):
            d = tmp_path / name / kind
            d.mkdir(parents=True)
            (d / fname).write_text(json.dumps(data))
            folders[kind] = Artifact(uri=str(d))
            folders[kind].path = str(d)
        report = Artifact(uri=str(tmp_path / name / "report.json"))
        report.path = str(tmp_path / name / "report.json")
        summary = Metrics(uri=str(tmp_path / name / "summary"))
        status = regression_check.python_func(
            prompt_sets=[folders["ps"]], renders=[folders["rd"]], meshes=[folders["mesh"]], report=report,
            summary=summary, suite="component", store_endpoint=s3.endpoint, store_bucket="baselines",
        )
        return status, json.loads(Path(report.path).read_text()), summary.metadata

    status, report, summary = run({"loss": 0.5, "seconds_per_step": 0.2}, "first")
    assert status == "recorded" and report["status"] == "recorded" and summary["regressions"] == 0.0
    assert run({"loss": 0.5, "seconds_per_step": 0.2}, "second")[0] == "passed"
    with pytest.raises(SystemExit) as e:
        run({"loss": 2.0, "seconds_per_step": 0.2}, "worse")
    assert str(e.value).startswith("error: 1 regression(s) against baselines/regression/component/baseline.json")
    assert "\n" not in str(e.value)
    assert json.loads((tmp_path / "worse" / "report.json").read_text())["status"] == "failed"
