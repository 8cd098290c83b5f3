"""regression-check: compare a regression run's metrics with the baseline in the store;
fail the run on a regression; the first run (no baseline yet) records it."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Output

from components.platform import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def regression_check(
    prompt_sets: Input[list[Artifact]],
    renders: Input[list[Artifact]],
    meshes: Input[list[Artifact]],
    videos: Input[list[Artifact]],
    report: Output[Artifact],
    summary: Output[Metrics],
    suite: str,
    store_endpoint: str,
    store_bucket: str,
    store_secure: bool = False,
    update_baseline: bool = False,
    tolerance: float = 0.25,
    clip_model: str = "",
) -> str:
    """Per prompt (the mean over its seeds): the exported mesh's quality from dreamfusion.prior.score
    for shapes-world prompts (silhouette IoU may not fall; shape and colour verdicts may not turn
    wrong), occupied fraction and mesh face count (neither collapse nor overgrowth); each may move
    by 3 standard deviations of the baseline's seeds, at least by the floor ``tolerance`` sets (IoU
    0.2x it, the others 2x it relative). Loss and seconds per step are reported only. Rules in
    dreamfusion.store.regression. Returns "recorded" or "passed"; a regression fails the task with
    one line naming each metric."""
    import json

    from dreamfusion.errors import UserError
    from dreamfusion.store import Store
    from dreamfusion.store.regression import RegressionError, check_regression, collect_metrics, summarise

    try:
        from dreamfusion.store.models import fetch_model_url, is_model_url

        clip = clip_model.strip()
        if is_model_url(clip):
            clip = str(fetch_model_url(clip, store_endpoint, store_secure))
        current = collect_metrics([a.path for a in prompt_sets], [a.path for a in renders], [a.path for a in meshes],
                                  [a.path for a in videos], clip or None)
        store = Store(store_endpoint, store_bucket, store_secure, create_bucket=True)
        try:
            result = check_regression(store, suite, current, tolerance=tolerance, update_baseline=update_baseline)
            failure = ""
        except RegressionError as e:
            result, failure = e.result, str(e)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    for i, (_prompt, rows) in enumerate(sorted(result.current.items())):  # each prompt's mean over its seeds
        for k, v in summarise(rows)["mean"].items():
            summary.log_metric(f"{i}_{k}", float(v))
    summary.log_metric("regressions", float(len(result.regressions)))
    with open(report.path, "w") as f:
        json.dump(result.report(), f, indent=2)
    report.metadata.update({"status": result.status, "baseline": f"{store_bucket}/{result.key}"})
    for note in result.notes:
        print(f"regression-check: {note}")
    if failure:
        raise SystemExit(f"error: {failure}")
    new = f"; not in the baseline (update_baseline records them): {result.new_prompts}" if result.new_prompts else ""
    print(f"regression-check: {result.status} ({len(current)} prompts, {store_bucket}/{result.key}){new}")
    return result.status


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def regression_runs(prompts: list, seeds: list) -> list:
    """Every (prompt, seed) pair of a regression run, as the items of its ParallelFor: [{"prompt",
    "seed"}, ...]. A malformed list fails here, in seconds, with one line (not retried)."""
    from dreamfusion.errors import UserError
    from dreamfusion.store.regression import run_matrix

    try:
        return run_matrix(prompts, seeds)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
