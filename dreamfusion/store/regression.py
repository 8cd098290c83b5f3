"""Regression baselines in the object store: a regression run's metrics per prompt and seed, compared
with ``<bucket>/regression/<suite>/baseline.json``.

    current = collect_metrics(prompt_set_dirs, render_dirs, mesh_dirs)   # {prompt: [{metric: value}, ...]}
    result = check_regression(store, "default", current, tolerance=0.25)  # RegressionError if worse

Quality gates the run, not the loss: for prompts of the offline prior's world each exported mesh
is scored by ``dreamfusion.prior.score`` (the one scoring function: silhouette IoU against the true
primitive, shape and colour verdicts), and the IoU may not fall, nor a verdict turn false, against
the baseline. The mesh's size (faces) and the NeRF's occupied fraction must stay near the
baseline's. The SDS loss (noise: its spread across seeds exceeds most real regressions) and the
seconds per step are reported as information only. Given a CLIP model (a local folder or an
``s3://`` mirror), every run's turntable frames are also scored against its prompt
(``dreamfusion.guidance.clip_score``) and that score may not fall: the quality measure of Stable
Diffusion runs. A prompt with neither score is compared on size only, and the report says why.

Tolerances come from the baseline's seeds: a baseline recorded with several seeds per prompt keeps
every run, and a metric may move from the baseline's mean by ``SPREAD_K`` times its standard
deviation over those seeds, and never by less than the floor that ``tolerance`` sets (``rules``).
A run with several seeds is compared by its mean; a verdict right in every baseline seed must be
right in every seed of the run.

No baseline yet (or ``update_baseline``): this run is recorded as the baseline and passes. Otherwise
every baseline prompt must be in this run and each of its metrics within the rules below; a run that
is worse raises :class:`RegressionError`, whose text is one line naming every regressed metric.
Prompts new to the suite are reported, not compared, and not recorded (``update_baseline`` does).
This module imports the model only to score meshes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from dreamfusion.errors import UserError
from dreamfusion.names import check_name
from dreamfusion.store import Store

METRICS = ("iou", "shape_ok", "colour_ok", "clip", "loss", "seconds_per_step", "occupied_fraction", "steps", "faces")
INFORMATION = ("loss", "seconds_per_step", "steps")  # reported, never gated
FORMAT = "dreamfusion-regression/2"
SPREAD_K = 3.0  # a metric may move by this many standard deviations of the baseline's seeds
MAX_RUNS = 64  # prompts x seeds in one regression run


def rules(tolerance: float) -> dict[str, tuple[str, float, float]]:
    """metric: (kind, relative tolerance, absolute slack): the floor of what a metric may move,
    ``|baseline| * rel + slack``. ``higher``: may fall by at most the allowance; ``within``: may
    move either way by at most it; ``verdict`` (1 right, 0 wrong): may not turn from right to wrong."""
    return {
        "iou": ("higher", 0.0, 0.2 * tolerance),  # 0.05 at the default tolerance 0.25
        "shape_ok": ("verdict", 0.0, 0.0),
        "colour_ok": ("verdict", 0.0, 0.0),
        "clip": ("higher", 0.2 * tolerance, 0.0),  # 5% of the baseline's CLIP score at 0.25
        "occupied_fraction": ("within", 2 * tolerance, 0.01),  # neither collapse nor overgrowth
        "faces": ("within", 2 * tolerance, 50),
    }


def spread(values: list[float]) -> float:
    """The sample standard deviation over seeds (0 for one seed)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def summarise(runs: list[dict[str, float]]) -> dict:
    """A prompt's runs (one per seed) -> {"runs", "mean", "spread"} over the metrics every run has."""
    names = sorted(set.intersection(*(set(r) for r in runs)) - {"seed"}) if runs else []
    cols = {k: [float(r[k]) for r in runs] for k in names}
    return {"runs": runs, "mean": {k: sum(v) / len(v) for k, v in cols.items()},
            "spread": {k: spread(v) for k, v in cols.items()}}


def allowance(metric: str, base: dict, tolerance: float) -> float:
    """How far ``metric`` may move from the baseline's mean: ``SPREAD_K`` x its spread over the
    baseline's seeds, at least the floor of ``rules``."""
    _, rel, slack = rules(tolerance)[metric]
    return max(abs(base["mean"][metric]) * rel + slack, SPREAD_K * base["spread"].get(metric, 0.0))


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
    current: dict[str, list[dict[str, float]]]  # prompt: one row per seed
    baseline: dict  # as stored (``record``)
    regressions: list[str] = field(default_factory=list)
    new_prompts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def report(self) -> dict:
        current = {p: summarise(rows) for p, rows in sorted(self.current.items())}
        return {"suite": self.suite, "status": self.status, "baseline_key": self.key, "current": current,
                "baseline": self.baseline, "regressions": self.regressions, "new_prompts": self.new_prompts,
                "notes": self.notes}


def baseline_key(suite: str) -> str:
    check_name(suite, "regression suite")
    return f"regression/{suite}/baseline.json"


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}: {e})") from None


def collect_metrics(prompt_sets, renders, meshes, videos=None, clip_model=None) -> dict[str, list[dict[str, float]]]:
    """{prompt: [{metric: value}, ...]} (one row per seed, ``seed`` among its keys) from each
    run's prompt-expansion folder (prompts.json), nerf-sds renders folder (metrics.json),
    mesh-export folder (mesh_stats.json and mesh.glb, optional) and, with ``clip_model`` (a CLIP
    folder), video-render folder (turntable.mp4: its CLIP score)."""
    prompt_sets, renders, meshes = list(prompt_sets), list(renders), list(meshes)
    videos = list(videos) if videos is not None else None
    if not (len(prompt_sets) == len(renders) == len(meshes)) or (videos is not None and len(videos) != len(meshes)):
        raise UserError(f"mismatched results: {len(prompt_sets)} prompt sets, {len(renders)} renders, "
                        f"{len(meshes)} meshes" + (f", {len(videos)} videos" if videos is not None else ""))
    if clip_model and videos is None:
        raise UserError("a CLIP score needs the runs' videos")
    scorer = None
    if clip_model:
        from dreamfusion.guidance.clip_score import CLIPScorer

        scorer = CLIPScorer(clip_model)
    current: dict[str, list[dict[str, float]]] = {}
    for i, (ps, rd, mesh) in enumerate(zip(prompt_sets, renders, meshes)):
        prompt = _load(Path(ps) / "prompts.json").get("prompt")
        if not isinstance(prompt, str):
            raise UserError(f"{Path(ps) / 'prompts.json'} names no prompt")
        row = dict(_load(Path(rd) / "metrics.json"))
        stats = Path(mesh) / "mesh_stats.json"
        row["faces"] = _load(stats).get("faces") if stats.exists() else None
        row.update(quality(prompt, Path(mesh)))
        if scorer is not None:
            from dreamfusion.guidance.clip_score import video_frames

            row["clip"] = scorer.score(video_frames(Path(videos[i]) / "turntable.mp4"), prompt)
        values = {k: float(row[k]) for k in (*METRICS, "seed")
                  if isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)}
        runs = current.setdefault(prompt, [])
        if any(r.get("seed") == values.get("seed") for r in runs):
            raise UserError(f"prompt {prompt!r} appears twice in the regression suite with seed {values.get('seed')}")
        runs.append(values)
    return current


def notes(current: dict[str, list[dict[str, float]]]) -> list[str]:
    """Why a prompt's quality is not gated: it has neither the shapes world's score nor a CLIP score."""
    return [f"{prompt!r}: quality not measured (not a shapes-world prompt, and no clip_model to score its "
            f"turntable with); only its size is compared"
            for prompt, rows in sorted(current.items()) if not any("iou" in r or "clip" in r for r in rows)]


def run_matrix(prompts, seeds) -> list[dict]:
    """A regression run's (prompt, seed) pairs, prompt-major: [{"prompt", "seed"}, ...]. Prompts are
    distinct non-empty strings, seeds distinct integers in [0, 2^32), at most ``MAX_RUNS`` pairs."""
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise UserError(f"regression prompts must be a non-empty list of non-empty strings, not {prompts!r:.200}")
    if not isinstance(seeds, list) or not seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in seeds
    ):
        raise UserError(f"regression seeds must be a non-empty list of integers in [0, 2^32), not {seeds!r:.200}")
    for name, items in (("prompts", prompts), ("seeds", seeds)):
        if len(set(items)) != len(items):
            raise UserError(f"regression {name} repeat an item: {items!r:.200}")
    if len(prompts) * len(seeds) > MAX_RUNS:
        raise UserError(f"{len(prompts)} prompts x {len(seeds)} seeds is {len(prompts) * len(seeds)} runs; "
                        f"a regression run takes at most {MAX_RUNS}")
    return [{"prompt": p, "seed": s} for p in prompts for s in seeds]


def as_runs(results: dict) -> dict[str, list[dict[str, float]]]:
    """{prompt: [row, ...]} from this module's forms: rows per seed, one row per prompt (a
    single-seed run, or a baseline recorded before seeds were kept) or a recorded baseline."""
    if results.get("format") == FORMAT:
        return {p: list(v["runs"]) for p, v in results["prompts"].items()}
    out = {}
    for prompt, v in results.items():
        rows = v if isinstance(v, list) else [v]
        if not rows or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{prompt!r} holds no metrics")
        out[prompt] = [{k: float(x) for k, x in r.items()} for r in rows]
    return out


def record(runs: dict[str, list[dict[str, float]]], tolerance: float) -> dict:
    """The baseline as stored: every run, each prompt's mean and spread over its seeds, and what
    each gated metric may move by (at the tolerance it was recorded with)."""
    prompts = {}
    for prompt, rows in sorted(runs.items()):
        base = summarise(rows)
        base["allowed"] = {k: allowance(k, base, tolerance) for k, (kind, _, _) in rules(tolerance).items()
                           if kind != "verdict" and k in base["mean"]}
        prompts[prompt] = base
    return {"format": FORMAT, "tolerance": tolerance, "spread_k": SPREAD_K, "score_version": _score_version(),
            "prompts": prompts}


QUALITY = ("iou", "shape_ok", "colour_ok")  # the metrics dreamfusion.prior.score gives (``quality``)


def _score_version() -> int:
    from dreamfusion.prior.score import VERSION

    return VERSION


def scored_by_another_rule(baseline: dict) -> int | None:
    """The score version of a baseline that holds shapes-world quality metrics scored by another
    version of ``dreamfusion.prior.score`` than this one (baselines from before versions: 1), else None."""
    version = baseline.get("score_version", 1) if "prompts" in baseline else 1
    has_quality = any(k in r for rows in as_runs(baseline).values() for r in rows for k in QUALITY)
    return version if has_quality and version != _score_version() else None


def compare(baseline: dict, current: dict, tolerance: float) -> list[str]:
    """One short phrase per regressed metric (empty: no regression)."""
    failures = []
    base_runs, now_runs = as_runs(baseline), as_runs(current)
    for prompt, rows in sorted(base_runs.items()):
        if prompt not in now_runs:
            failures.append(f"{prompt!r} has no result in this run")
            continue
        base, now = summarise(rows), summarise(now_runs[prompt])
        for metric, (kind, _, _) in rules(tolerance).items():
            if metric not in base["mean"] or metric not in now["mean"]:
                continue
            b, c = base["mean"][metric], now["mean"][metric]
            if kind == "verdict":
                if min(r[metric] for r in rows) >= 0.5 and min(r[metric] for r in now["runs"]) < 0.5:
                    failures.append(f"{prompt!r} {metric.removesuffix('_ok')} wrong (right in the baseline)")
                continue
            allowed = allowance(metric, base, tolerance)
            if kind == "higher" and c < b - allowed:
                failures.append(f"{prompt!r} {metric} {c:.4g} < baseline {b:.4g} - {allowed:.4g}")
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
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise UserError(f"regression tolerance must be a finite number >= 0, not {tolerance}")
    try:
        runs = as_runs(current)
    except (ValueError, TypeError, AttributeError) as e:
        raise UserError(f"regression suite {suite!r}: malformed results ({e})") from None
    if update_baseline or not store.exists(key):
        baseline = record(runs, tolerance)
        store.put_bytes(key, json.dumps(baseline, indent=2, sort_keys=True).encode(), "application/json")
        return RegressionResult(suite, key, "recorded", runs, baseline, notes=notes(runs))
    try:
        baseline = json.loads(store.get_bytes(key))
        if not isinstance(baseline, dict):
            raise ValueError("not a JSON object")
        as_runs(baseline)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise UserError(f"baseline {store.bucket}/{key} is corrupt ({e}): rerun with update_baseline") from None
    old = scored_by_another_rule(baseline)
    if old is not None:
        raise UserError(
            f"baseline {store.bucket}/{key} was scored by version {old} of dreamfusion.prior.score and this run by "
            f"version {_score_version()}: its IoUs are not comparable; rerun with update_baseline"
        )
    base_prompts = as_runs(baseline)
    new = sorted(p for p in runs if p not in base_prompts)
    failures = compare(baseline, runs, tolerance)
    result = RegressionResult(suite, key, "failed" if failures else "passed", runs, baseline, failures, new,
                              notes(runs))
    if failures:
        raise RegressionError(
            f"{len(failures)} regression(s) against {store.bucket}/{key}: " + "; ".join(failures), result
        )
    return result
