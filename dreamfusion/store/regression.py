"""Regression baselines in the object store: a regression run's metrics per prompt, compared with
``<bucket>/regression/<suite>/baseline.json``.

    current = collect_metrics(prompt_set_dirs, render_dirs, mesh_dirs)   # {prompt: {metric: value}}
    result = check_regression(store, "default", current, tolerance=0.25)  # RegressionError if worse

Quality gates the run, not the loss: for prompts of the offline prior's world each exported mesh
is scored by ``dreamfusion.prior.score`` (the one scoring function: silhouette IoU against the true
primitive, shape and colour verdicts), and the IoU may not fall, nor a verdict turn false, against
the baseline. The mesh's size (faces) and the NeRF's occupied fraction must stay near the
baseline's. The SDS loss (noise: its spread across seeds exceeds most real regressions) and the
seconds per step are reported as information only. Prompts outside the shapes world have no
quality score here (a CLIP score for Stable Diffusion runs is not built yet): their report says so.

No baseline yet (or ``update_baseline``): this run is recorded as the baseline and passes. Otherwise
every baseline prompt must be in this run and each of its metrics within the rules below; a run that
is worse raises :class:`RegressionError`, whose text is one line naming every regressed metric.
Prompts new to the suite are reported, not compared, and not recorded (``update_baseline`` does).
This module imports the model only to score meshes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from dreamfusion.errors import UserError
from dreamfusion.store import Store

_SUITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
METRICS = ("iou", "shape_ok", "colour_ok", "loss", "seconds_per_step", "occupied_fraction", "steps", "faces")
INFORMATION = ("loss", "seconds_per_step", "steps")  # reported, never gated


def rules(tolerance: float) -> dict[str, tuple[str, float, float]]:
    """metric: (kind, relative tolerance, absolute slack). ``higher``: may fall by at most
    ``|baseline| * rel + slack``; ``within``: may move either way by at most that much; ``verdict``
    (1 right, 0 wrong): may not turn from right to wrong."""
    return {
        "iou": ("higher", 0.0, 0.2 * tolerance),  # 0.05 at the default tolerance 0.25
        "shape_ok": ("verdict", 0.0, 0.0),
        "colour_ok": ("verdict", 0.0, 0.0),
        "occupied_fraction": ("within", 2 * tolerance, 0.01),  # neither collapse nor overgrowth
        "faces": ("within", 2 * tolerance, 50),
    }


def quality(prompt: str, mesh_dir: Path) -> dict[str, float]:
    """The exported mesh's score for a prompt of the shapes world ({} for any other prompt, or
    when the folder has no mesh.glb)."""
    from dreamfusion.prior.evaluate import parse_prompt

    glb = Path(mesh_dir) / "mesh.glb"
    try:
        parse_prompt(prompt)
    except ValueError:
        return {}
    if not glb.is_file():
        return {}
    from dreamfusion.prior import score

    m = score.score(prompt, mesh=glb)["mesh"]
    return {"iou": float(m["iou"]), "shape_ok": float(m["shape_ok"]), "colour_ok": float(m["colour_ok"])}


class RegressionError(UserError):
    """This run is worse than the stored baseline; ``result`` holds every number."""

    def __init__(self, message: str, result: RegressionResult):
        super().__init__(message)
        self.result = result


@dataclass
class RegressionResult:
    suite: str
    key: str  # <bucket>/<key> is where the baseline lives
    status: str  # "recorded" | "passed" | "failed"
    current: dict[str, dict[str, float]]
    baseline: dict[str, dict[str, float]]
    regressions: list[str] = field(default_factory=list)
    new_prompts: list[str] = field(default_factory=list)

    def report(self) -> dict:
        return {"suite": self.suite, "status": self.status, "baseline_key": self.key, "current": self.current,
                "baseline": self.baseline, "regressions": self.regressions, "new_prompts": self.new_prompts}


def baseline_key(suite: str) -> str:
    if not _SUITE.fullmatch(suite or ""):
        raise UserError(f"regression suite {suite!r}: use 1-63 letters, digits, '.', '_' or '-'")
    return f"regression/{suite}/baseline.json"


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}: {e})") from None


def collect_metrics(prompt_sets, renders, meshes) -> dict[str, dict[str, float]]:
    """{prompt: {metric: value}} from each prompt's prompt-expansion folder (prompts.json), nerf-sds
    renders folder (metrics.json) and mesh-export folder (mesh_stats.json, optional)."""
    prompt_sets, renders, meshes = list(prompt_sets), list(renders), list(meshes)
    if not (len(prompt_sets) == len(renders) == len(meshes)):
        raise UserError(f"mismatched results: {len(prompt_sets)} prompt sets, {len(renders)} renders, "
                        f"{len(meshes)} meshes")
    current: dict[str, dict[str, float]] = {}
    for ps, rd, mesh in zip(prompt_sets, renders, meshes):
        prompt = _load(Path(ps) / "prompts.json").get("prompt")
        if not isinstance(prompt, str):
            raise UserError(f"{Path(ps) / 'prompts.json'} names no prompt")
        if prompt in current:
            raise UserError(f"prompt {prompt!r} appears twice in the regression suite")
        row = dict(_load(Path(rd) / "metrics.json"))
        stats = Path(mesh) / "mesh_stats.json"
        row["faces"] = _load(stats).get("faces") if stats.exists() else None
        row.update(quality(prompt, Path(mesh)))
        current[prompt] = {k: float(row[k]) for k in METRICS
                           if isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)}
    return current


def compare(baseline: dict, current: dict, tolerance: float) -> list[str]:
    """One short phrase per regressed metric (empty: no regression)."""
    failures = []
    for prompt, base in sorted(baseline.items()):
        now = current.get(prompt)
        if now is None:
            failures.append(f"{prompt!r} has no result in this run")
            continue
        for metric, (kind, rel, slack) in rules(tolerance).items():
            if metric not in base or metric not in now:
                continue
            b, c = float(base[metric]), float(now[metric])
            allowed = abs(b) * rel + slack
            if kind == "higher" and c < b - allowed:
                failures.append(f"{prompt!r} {metric} {c:.4g} < baseline {b:.4g} - {allowed:.4g}")
            elif kind == "verdict" and b >= 0.5 > c:
                failures.append(f"{prompt!r} {metric.removesuffix('_ok')} wrong (right in the baseline)")
            elif kind == "within" and abs(c - b) > allowed:
                failures.append(f"{prompt!r} {metric} {c:.4g} outside baseline {b:.4g} +- {allowed:.4g}")
    return failures


def check_regression(
    store: Store, suite: str, current: dict, *, tolerance: float = 0.25, update_baseline: bool = False
) -> RegressionResult:
    """Record the baseline (first run, or ``update_baseline``) or compare with it; raises
    :class:`RegressionError` (one line) when this run is worse."""
    key = baseline_key(suite)
    if not current:
        raise UserError(f"regression suite {suite!r}: this run has no results to check")
    if not tolerance >= 0:
        raise UserError(f"regression tolerance must be >= 0, not {tolerance}")
    if update_baseline or not store.exists(key):
        store.put_bytes(key, json.dumps(current, indent=2, sort_keys=True).encode(), "application/json")
        return RegressionResult(suite, key, "recorded", current, current)
    try:
        baseline = json.loads(store.get_bytes(key))
        if not isinstance(baseline, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise UserError(f"baseline {store.bucket}/{key} is corrupt ({e}): rerun with update_baseline") from None
    new = sorted(p for p in current if p not in baseline)
    failures = compare(baseline, current, tolerance)
    result = RegressionResult(suite, key, "failed" if failures else "passed", current, baseline, failures, new)
    if failures:
        raise RegressionError(
            f"{len(failures)} regression(s) against {store.bucket}/{key}: " + "; ".join(failures), result
        )
    return result
