"""``dreamfusion-kfp``: compile, submit, schedule and wait for the pipelines over kfp.Client.

    dreamfusion-kfp compile [--output DIR] [--parallelism N]
    dreamfusion-kfp submit text_to_3d --host URL [--namespace NS] [--experiment E] [--run-name R]
                           [-p prompt="a hamburger" -p seed=3 ...] [--wait] [--timeout S]
    dreamfusion-kfp schedule catalog --cron "0 0 2 * * *" [--max-concurrency 1] [-p ...]
    dreamfusion-kfp wait RUN_ID --host URL [--timeout S]

``-p name=value`` values are JSON when they parse as JSON (numbers, lists, dicts), else strings.
``submit --wait`` and ``wait`` exit 0 only when the run succeeded (1 when it failed, was canceled
or did not finish in time). Bad input (a cron expression KFP would refuse, a max concurrency outside
1-10, an unknown parameter form) and an unreachable or refusing KFP API end with one ``error:`` line
and exit code 2. Credentials for the object store are never parameters: the tasks read them from a
Kubernetes Secret.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path

from dreamfusion.errors import UserError
from dreamfusion.stages.cli import output_folder
from pipelines.compile import HERE, compile_all, compile_pipeline

NAMES = ("text_to_3d", "catalog", "regression")
TERMINAL = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "ERROR")  # KFP v2beta1 run states that end a run
MAX_CONCURRENCY = (1, 10)  # what the KFP API server accepts for a recurring run


class CliError(Exception):
    """Bad input or an unusable KFP endpoint: one line on stderr, exit code 2."""


# KFP's scheduler parses cron with robfig/cron v1: six fields, seconds first, or a descriptor. It
# also takes five (day of week left out), which reads a crontab line one field off: refused here.
# Checked before anything reaches the server.
_CRON_FIELDS = (("second", 0, 59, None), ("minute", 0, 59, None), ("hour", 0, 23, None),
                ("day of month", 1, 31, None),
                ("month", 1, 12, "jan feb mar apr may jun jul aug sep oct nov dec"),
                ("day of week", 0, 6, "sun mon tue wed thu fri sat"))
_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")


def check_cron(expr: str) -> str:
    """``expr`` if KFP's scheduler accepts it, else :class:`CliError` naming what is wrong."""
    text = " ".join(expr.split())
    if text.startswith("@"):
        if text in _DESCRIPTORS or (text.startswith("@every ") and _DURATION.fullmatch(text[7:])):
            return text
        raise CliError(f"cron {expr!r}: unknown descriptor; use one of {', '.join(_DESCRIPTORS)} or '@every 1h30m'")
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        # KFP would take it (seconds first, no day of week): '0 2 * * *' would run hourly, not at 02:00.
        raise CliError(f"cron {expr!r} has 5 fields, which KFP reads seconds first; for the crontab meaning "
                       f"write six: '0 {text}'")
    if len(fields) != 6:
        raise CliError(f"cron {expr!r} has {len(fields)} fields; KFP's have six, seconds first: '0 0 2 * * *'")
    for value, (name, low, high, names) in zip(fields, _CRON_FIELDS):
        for part in value.split(","):
            _check_cron_range(expr, name, part, low, high, names.split() if names else [])
    return text


def _check_cron_range(expr: str, name: str, part: str, low: int, high: int, names: list[str]) -> None:
    def number(v: str) -> int:
        if v.lower() in names:
            return names.index(v.lower()) + low
        if not v.isdigit() or not low <= int(v) <= high:
            raise CliError(f"cron {expr!r}: {name} {v!r} is not in {low}-{high}")
        return int(v)

    rng, _, step = part.partition("/")
    if step and (not step.isdigit() or int(step) == 0):
        raise CliError(f"cron {expr!r}: {name} step {step!r} must be a positive number")
    if rng in ("*", "?"):
        return
    first, dash, last = rng.partition("-")
    if number(first) > (number(last) if dash else number(first)):
        raise CliError(f"cron {expr!r}: {name} range {rng!r} runs backwards")


_KINDS = {"NUMBER_INTEGER": "a whole number", "NUMBER_DOUBLE": "a finite number", "BOOLEAN": "true or false",
          "LIST": "a JSON list", "STRUCT": "a JSON object", "STRING": "text"}


def _declared(package: str) -> dict[str, str]:
    """The compiled pipeline's parameters: {name: KFP parameter type}."""
    import yaml

    with open(package) as f:
        spec = next(yaml.safe_load_all(f))
    params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return {name: d.get("parameterType", "STRING") for name, d in params.items()}


def _params(items: list[str], declared: dict[str, str] | None = None) -> dict:
    """``-p name=value`` items as the pipeline's arguments: with ``declared`` (the compiled
    pipeline's parameters), each name must be one of them and each value of its type (text for a
    string parameter, JSON otherwise); checked before any endpoint is contacted."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CliError(f"-p takes name=value, not {item!r}")
        k, v = item.split("=", 1)
        kind = (declared or {}).get(k)
        if declared is not None and kind is None:
            raise CliError(f"-p {k}: the pipeline has no such parameter; it has {', '.join(sorted(declared))}")
        if kind == "STRING":
            out[k] = v
            continue
        try:
            value = json.loads(v)
        except json.JSONDecodeError:
            value = v
        ok = {"NUMBER_INTEGER": isinstance(value, int) and not isinstance(value, bool),
              "NUMBER_DOUBLE": isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value),
              "BOOLEAN": isinstance(value, bool), "LIST": isinstance(value, list),
              "STRUCT": isinstance(value, dict)}.get(kind, True)
        if not ok:
            raise CliError(f"-p {k}={v[:80]}: {k} takes {_KINDS.get(kind, kind)}")
        out[k] = value
    return out


def _package(name: str, parallelism: int | None) -> str:
    """The compiled YAML to upload: the committed one, or a fresh compile for a parallelism."""
    if name not in NAMES:
        raise CliError(f"unknown pipeline {name!r}; one of {', '.join(NAMES)}")
    if name == "catalog" and parallelism is not None:
        from pipelines.catalog import build_catalog

        return str(compile_pipeline(build_catalog(parallelism), Path(tempfile.mkdtemp()) / "catalog.yaml"))
    return str(HERE / f"{name}.yaml")


CONNECT_TIMEOUT = 10.0  # seconds to open a connection to the KFP API
READ_TIMEOUT = 120.0  # seconds for one API answer


def _probe(host: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """A TCP connection to ``host`` within ``timeout``, else one-line CliError (kfp.Client itself
    waits for the operating system's connect timeout, minutes for a black-holed address)."""
    from urllib.parse import urlsplit

    parts = urlsplit(host if "://" in host else f"http://{host}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise CliError(f"--host {host!r} is not an http(s)://HOST[:PORT] address") from None
    if not parts.hostname:
        raise CliError(f"--host {host!r} is not an http(s)://HOST[:PORT] address")
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise CliError(f"cannot reach Kubeflow Pipelines at {host} within {timeout:g} s: {why}") from None


def _client(args):
    import kfp
    import urllib3

    if args.host:
        _probe(args.host)
    # kfp.Client's own default namespace ("kubeflow") names the in-cluster API service: pass ours only if given.
    kw = {"namespace": args.namespace} if args.namespace else {}
    if os.environ.get("KFP_TOKEN"):  # a bearer token for the endpoint, from the environment only
        kw["existing_token"] = os.environ["KFP_TOKEN"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "This client only works with KFP v2.0.0-beta.2 and later"
        client = kfp.Client(host=args.host, **kw)
    # every later API call: bounded connect and read times (kfp_server_api's urllib3 pool)
    for api in (getattr(client, "_run_api", None), getattr(client, "_experiment_api", None)):
        pool = getattr(getattr(getattr(api, "api_client", None), "rest_client", None), "pool_manager", None)
        if pool is not None:
            pool.connection_pool_kw["timeout"] = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)
    return client


def _wait(client, run_id: str, timeout: float, poll: float = 10.0) -> int:
    """Poll until the run ends (Client.wait_for_run_completion never ends on a canceled run)."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        state = str(getattr(client.get_run(run_id), "state", "") or "").upper()
        if state != last:
            print(f"run {run_id}: {state or 'PENDING'}", flush=True)
            last = state
        if state in TERMINAL:
            return 0 if state == "SUCCEEDED" else 1
        if time.monotonic() >= deadline:
            print(f"error: run {run_id} did not finish within {timeout:g} s (last state {state or 'PENDING'})",
                  file=sys.stderr)
            return 1
        time.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))


def _api_error(e, host: str | None) -> str:
    """One line for an exception from kfp.Client, or '' when it is not an API or transport error."""
    import urllib3.exceptions
    from kfp_server_api.exceptions import ApiException

    where = host or "the default KFP endpoint (in-cluster service or kube config)"
    if isinstance(e, ApiException):
        detail = ""
        try:
            body = json.loads(e.body)
            detail = body.get("message") or body.get("error") or ""
        except (TypeError, ValueError, AttributeError):
            detail = (e.body.decode(errors="replace") if isinstance(e.body, bytes) else str(e.body or ""))
        detail = " ".join(str(detail).split())[:300]
        return f"Kubeflow Pipelines at {where} answered {e.status} {e.reason}" + (f": {detail}" if detail else "")
    if isinstance(e, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, socket.gaierror)):
        reason = getattr(e, "reason", None) or e
        text = " ".join(str(reason).split())
        text = re.sub(r"^<[^>]*>: ", "", text)  # urllib3 prefixes the connection object's repr
        return f"cannot reach Kubeflow Pipelines at {where}: {text[:300]}"
    return ""


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one ``error:`` line and exit code 2, no usage dump."""

    def error(self, message: str):
        raise CliError(f"{message} (see {self.prog} --help)")


MAX_PARALLELISM = 64


def _parallelism(text: str) -> int:
    """``--parallelism``: prompts of a catalog in flight at once, 1 to ``MAX_PARALLELISM``."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= MAX_PARALLELISM:
        raise argparse.ArgumentTypeError(f"{n} is outside 1-{MAX_PARALLELISM}")
    return n


def main(argv: list[str] | None = None) -> int:
    p = _Parser(
        prog="dreamfusion-kfp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show kfp's own log lines and tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("compile", help="compile every pipeline to YAML")
    c.add_argument("--output", type=Path, default=HERE)
    c.add_argument("--parallelism", type=_parallelism, help="catalog ParallelFor parallelism (default 4)")

    def client_opts(sp):
        sp.add_argument("--host", help="KFP API endpoint (default: in-cluster / kube config)")
        sp.add_argument("--namespace", default=None)

    s = sub.add_parser("submit", help="start a run")
    s.add_argument("pipeline", choices=NAMES)
    client_opts(s)
    s.add_argument("--experiment", default="dreamfusion")
    s.add_argument("--run-name")
    s.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    s.add_argument("--parallelism", type=_parallelism, help="catalog only: compile with this parallelism")
    s.add_argument("--no-cache", action="store_true")
    s.add_argument("--wait", action="store_true", help="wait; exit non-zero unless the run succeeded")
    s.add_argument("--timeout", type=int, default=24 * 3600)

    r = sub.add_parser("schedule", help="create a recurring run from a cron expression")
    r.add_argument("pipeline", choices=NAMES)
    client_opts(r)
    r.add_argument("--experiment", default="dreamfusion")
    r.add_argument("--job-name")
    r.add_argument("--cron", required=True, help='six fields, seconds first: "0 0 2 * * *" = 02:00 daily')
    r.add_argument("--max-concurrency", type=int, default=1, help="runs of this schedule at once, 1-10")
    r.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE")
    r.add_argument("--parallelism", type=_parallelism)

    w = sub.add_parser("wait", help="wait for a run; exit non-zero unless it succeeded")
    w.add_argument("run_id")
    client_opts(w)
    w.add_argument("--timeout", type=int, default=24 * 3600)

    try:
        args = p.parse_args(argv)
        if args.cmd == "compile":
            output_folder(args.output)
    except (CliError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.verbose:
        logging.disable(logging.ERROR)  # kfp logs each failed attempt with a traceback: one error line instead
    try:
        return _run(args)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        line = _api_error(e, args.host) if args.cmd != "compile" else ""
        if not line or args.verbose:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    finally:
        logging.disable(logging.NOTSET)


def _run(args) -> int:
    if args.cmd == "compile":
        if args.parallelism is not None:
            from pipelines.catalog import build_catalog

            paths = [p for p in compile_all(args.output) if p.name != "catalog.yaml"]
            paths.append(compile_pipeline(build_catalog(args.parallelism), args.output / "catalog.yaml"))
        else:
            paths = compile_all(args.output)
        for path in paths:
            print(path)
        return 0
    if args.cmd == "schedule":  # everything a server would refuse, before reaching one
        cron = check_cron(args.cron)
        low, high = MAX_CONCURRENCY
        if not low <= args.max_concurrency <= high:
            raise CliError(f"--max-concurrency {args.max_concurrency}: KFP accepts {low}-{high}")
    package = _package(args.pipeline, args.parallelism) if args.cmd in ("submit", "schedule") else None
    params = _params(getattr(args, "param", []), _declared(package) if package else None)
    client = _client(args)
    if args.cmd == "submit":
        run = client.create_run_from_pipeline_package(
            package, arguments=params, run_name=args.run_name, experiment_name=args.experiment,
            namespace=args.namespace, enable_caching=False if args.no_cache else None,
        )
        print(f"run {run.run_id} submitted")
        return _wait(client, run.run_id, args.timeout) if args.wait else 0
    if args.cmd == "schedule":
        exp = client.create_experiment(args.experiment, namespace=args.namespace)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=args.job_name or f"{args.pipeline}-{cron}",
            cron_expression=cron, max_concurrency=args.max_concurrency,
            pipeline_package_path=package, params=params,
        )
        print(f"recurring run {job.recurring_run_id} created ({cron}, max concurrency {args.max_concurrency})")
        return 0
    return _wait(client, args.run_id, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
