"""The CI workflow that runs regression: valid for GitHub Actions (GitHub's own workflow parser,
tests/js/workflow_check.mjs), submitting the committed pipeline with parameters that it has."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
CHECK = ROOT / "tests" / "js" / "workflow_check.mjs"
PARSER = ROOT / "tests" / "js" / "node_modules" / "@actions" / "workflow-parser"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not PARSER.is_dir(), reason="needs node and tests/js's packages (.ci/run)"
)


def _check(*files: Path) -> tuple[int, list[dict]]:
    r = subprocess.run(["node", str(CHECK), *map(str, files)], capture_output=True, text=True, timeout=120)
    return r.returncode, [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def test_workflows_parse_with_githubs_parser(tmp_path):
    assert [w.name for w in WORKFLOWS] == ["regression.yml"]
    rc, reports = _check(*WORKFLOWS)
    assert rc == 0 and all(r["errors"] == [] for r in reports), reports
    assert reports[0]["jobs"] == [{"id": "regression", "steps": 4}]
    # The parser does find mistakes: a misspelt key and a job without runs-on.
    text = WORKFLOWS[0].read_text()
    bad = tmp_path / "bad.yml"
    bad.write_text(text.replace("    steps:\n", "    stepz:\n", 1))
    rc, reports = _check(bad)
    assert rc == 1 and any("stepz" in e for e in reports[0]["errors"]), reports
    bad.write_text(text.replace("    runs-on: ubuntu-latest\n", "", 1))
    rc, reports = _check(bad)
    assert rc == 1 and reports[0]["errors"], reports


def test_the_workflow_submits_regression_with_its_own_parameters():
    wf = yaml.safe_load(WORKFLOWS[0].read_text())
    steps = wf["jobs"]["regression"]["steps"]
    submit = next(s for s in steps if "dreamfusion-kfp submit" in s.get("run", ""))
    cmd = submit["run"]
    assert "submit regression" in cmd and "--wait" in cmd
    compiled = next(yaml.safe_load_all((ROOT / "pipelines" / "regression.yaml").read_text()))
    params = set(compiled["root"]["inputDefinitions"]["parameters"])
    given = re.findall(r"-p (\w+)=", cmd)
    assert given and set(given) <= params, set(given) - params
    # Secrets reach the command through its environment only, never spelt into the script.
    assert "secrets." not in cmd and "${{" not in cmd
    assert submit["env"]["KFP_HOST"] == "${{ secrets.KFP_HOST }}"


def test_kfp_token_comes_from_the_environment(monkeypatch):
    pytest.importorskip("kfp")
    import kfp

    from pipelines import cli

    seen = {}
    monkeypatch.setattr(kfp, "Client", lambda **kw: seen.update(kw) or object())
    monkeypatch.setattr(cli, "_probe", lambda host: None)  # no endpoint here; the probe has its own test
    args = type("A", (), {"namespace": None, "host": "http://kfp.example:8888"})()
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    cli._client(args)
    assert "existing_token" not in seen
    monkeypatch.setenv("KFP_TOKEN", "token-from-env")
    cli._client(args)
    assert seen["existing_token"] == "token-from-env" and seen["host"] == "http://kfp.example:8888"
