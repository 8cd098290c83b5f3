"""regression-check: compare a regression run's metrics with the baseline in the store;
fail the run on a regression; the first run (no baseline yet) records it."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Output

from components.platform import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def regression_check(
    prompt_sets: Input[List[Artifact]],
    renders: Input[List[Artifact]],
    meshes: Input[List[Artifact]],
    report: Output[Artifact],
    summary: Output[Metrics],
    suite: str,
    store_endpoint: str,
    store_bucket: str,
    store_secure: bool = False,
    update_baseline: bool = False,
    tolerance: float = 0.25,
) -> str:
    """Per prompt: nerf-sds loss (lower is better), seconds per step (at most 2x slower),
    occupied fraction and mesh face count (within ``2 * tolerance`` relative change: neither
    collapse nor overgrowth). Returns "recorded", "passed"; raises on a regression."""
    import json
    import os

    from dreamfusion.store import Store

    rules = {  # metric: (kind, relative tolerance, absolute slack)
        "loss": ("lower", tolerance, 0.05),
        "seconds_per_step": ("lower", 1.0, 0.05),
        "occupied_fraction": ("within", 2 * tolerance, 0.01),
        "faces": ("within", 2 * tolerance, 50),
    }
    current = {}
    for ps, rd, mesh in zip(prompt_sets, renders, meshes):
        prompt = json.load(open(os.path.join(ps.path, "prompts.json")))["prompt"]
        m = json.load(open(os.path.join(rd.path, "metrics.json")))
        stats_path = os.path.join(mesh.path, "mesh_stats.json")
        stats = json.load(open(stats_path)) if os.path.exists(stats_path) else {}
        row = {k: m.get(k) for k in ("loss", "seconds_per_step", "occupied_fraction", "steps")}
        row["faces"] = stats.get("faces")
        current[prompt] = {k: v for k, v in row.items() if isinstance(v, (int, float))}

    store = Store(store_endpoint, store_bucket, store_secure, create_bucket=True)
    key = f"regression/{suite}/baseline.json"
    failures, status = [], "passed"
    if update_baseline or not store.exists(key):
        store.put_bytes(key, json.dumps(current, indent=2, sort_keys=True).encode(), "application/json")
        status = "recorded"
        baseline = current
    else:
        baseline = json.loads(store.get_bytes(key))
        for prompt, base in baseline.items():
            now = current.get(prompt)
            if now is None:
                failures.append(f"{prompt!r}: no result in this run")
                continue
            for metric, (kind, rel, slack) in rules.items():
                if metric not in base or metric not in now:
                    continue
                b, c = float(base[metric]), float(now[metric])
                allowed = abs(b) * rel + slack
                if (kind == "lower" and c > b + allowed) or (kind == "within" and abs(c - b) > allowed):
                    failures.append(f"{prompt!r}: {metric} {c:.4g} vs baseline {b:.4g} (allowed +-{allowed:.4g})")
    for i, (prompt, row) in enumerate(sorted(current.items())):
        for k, v in row.items():
            summary.log_metric(f"{i}_{k}", float(v))
    summary.log_metric("regressions", float(len(failures)))
    with open(report.path, "w") as f:
        json.dump({"suite": suite, "status": "failed" if failures else status, "baseline_key": key,
                   "current": current, "baseline": baseline, "regressions": failures}, f, indent=2)
    if failures:
        raise RuntimeError(f"{len(failures)} regression(s) against {store_bucket}/{key}: " + "; ".join(failures))
    print(f"regression-check: {status} ({len(current)} prompts, {store_bucket}/{key})")
    return status
