"""``dreamfusion-kfp``: compile, submit, schedule and wait for the pipelines over kfp.Client.

    dreamfusion-kfp compile [--output DIR] [--parallelism N]
    dreamfusion-kfp submit text_to_3d --host URL [--namespace NS] [--experiment E] [--run-name R]
                           [-p prompt="a hamburger" -p seed=3 ...] [--wait] [--timeout S]
    dreamfusion-kfp schedule catalog --cron "0 0 2 * * *" [--max-concurrency 1] [-p ...]
    dreamfusion-kfp wait RUN_ID --host URL [--timeout S]

``-p name=value`` values are JSON when they parse as JSON (numbers, lists, dicts), else strings.
``submit --wait`` and ``wait`` exit 0 only when the run succeeded. Credentials for the object
store are never parameters: the tasks read them from a Kubernetes Secret.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from pipelines.compile import HERE, compile_all

NAMES = ("text_to_3d", "catalog", "regression")


def _params(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"error: -p takes name=value, not {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _package(name: str, parallelism: int | None) -> str:
    """The compiled YAML to upload: the committed one, or a fresh compile for a parallelism."""
    if name not in NAMES:
        raise SystemExit(f"error: unknown pipeline {name!r}; one of {', '.join(NAMES)}")
    if name == "catalog" and parallelism is not None:
        from kfp import compiler

        from pipelines.catalog import build_catalog

        path = Path(tempfile.mkdtemp()) / "catalog.yaml"
        compiler.Compiler().compile(build_catalog(parallelism), str(path))
        return str(path)
    return str(HERE / f"{name}.yaml")


def _client(args):
    import kfp

    return kfp.Client(host=args.host, namespace=args.namespace)


def _wait(client, run_id: str, timeout: int) -> int:
    run = client.wait_for_run_completion(run_id, timeout=timeout)
    state = str(getattr(run, "state", "")).upper()
    print(f"run {run_id}: {state}")
    return 0 if state.endswith("SUCCEEDED") else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dreamfusion-kfp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("compile", help="compile every pipeline to YAML")
    c.add_argument("--output", type=Path, default=HERE)
    c.add_argument("--parallelism", type=int, help="catalog ParallelFor parallelism (default 4)")

    def client_opts(sp):
        sp.add_argument("--host", help="KFP API endpoint (default: in-cluster / kube config)")
        sp.add_argument("--namespace", default=None)

    s = sub.add_parser("submit", help="start a run")
    s.add_argument("pipeline", choices=NAMES)
    client_opts(s)
    s.add_argument("--experiment", default="dreamfusion")
    s.add_argument("--run-name")
    s.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    s.add_argument("--parallelism", type=int, help="catalog only: compile with this parallelism")
    s.add_argument("--no-cache", action="store_true")
    s.add_argument("--wait", action="store_true", help="wait; exit non-zero unless the run succeeded")
    s.add_argument("--timeout", type=int, default=24 * 3600)

    r = sub.add_parser("schedule", help="create a recurring run from a cron expression")
    r.add_argument("pipeline", choices=NAMES)
    client_opts(r)
    r.add_argument("--experiment", default="dreamfusion")
    r.add_argument("--job-name")
    r.add_argument("--cron", required=True, help='six fields, seconds first: "0 0 2 * * *" = 02:00 daily')
    r.add_argument("--max-concurrency", type=int, default=1)
    r.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    r.add_argument("--parallelism", type=int)

    w = sub.add_parser("wait", help="wait for a run; exit non-zero unless it succeeded")
    w.add_argument("run_id")
    client_opts(w)
    w.add_argument("--timeout", type=int, default=24 * 3600)

    args = p.parse_args(argv)
    if args.cmd == "compile":
        if args.parallelism is not None:
            from kfp import compiler

            from pipelines.catalog import build_catalog

            args.output.mkdir(parents=True, exist_ok=True)
            paths = [p for p in compile_all(args.output) if p.name != "catalog.yaml"]
            compiler.Compiler().compile(build_catalog(args.parallelism), str(args.output / "catalog.yaml"))
            paths.append(args.output / "catalog.yaml")
        else:
            paths = compile_all(args.output)
        for path in paths:
            print(path)
        return 0
    client = _client(args)
    if args.cmd == "submit":
        run = client.create_run_from_pipeline_package(
            _package(args.pipeline, args.parallelism), arguments=_params(args.param), run_name=args.run_name,
            experiment_name=args.experiment, namespace=args.namespace, enable_caching=False if args.no_cache else None,
        )
        print(f"run {run.run_id} submitted")
        return _wait(client, run.run_id, args.timeout) if args.wait else 0
    if args.cmd == "schedule":
        exp = client.create_experiment(args.experiment, namespace=args.namespace)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=args.job_name or f"{args.pipeline}-{args.cron}",
            cron_expression=args.cron, max_concurrency=args.max_concurrency,
            pipeline_package_path=_package(args.pipeline, args.parallelism), params=_params(args.param),
        )
        print(f"recurring run {job.recurring_run_id} created ({args.cron}, max concurrency {args.max_concurrency})")
        return 0
    return _wait(client, args.run_id, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
