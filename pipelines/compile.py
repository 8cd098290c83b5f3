"""Compile every pipeline to pipelines/<name>.yaml: ``python -m pipelines.compile [--output DIR]``."""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def pipelines() -> dict:
    from pipelines.catalog import catalog
    from pipelines.regression import regression
    from pipelines.text_to_3d import text_to_3d

    return {"text_to_3d": text_to_3d, "catalog": catalog, "regression": regression}


_HEADER_DEFAULT = re.compile(r"^(#\s+\w+: \w+ \[Default: )(.*)(\])$")


def stable_header(text: str) -> str:
    """kfp's comment header prints dict defaults in the order protobuf's map gives them, which
    changes from process to process: print them with sorted keys, so a recompile is byte-stable."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break
        m = _HEADER_DEFAULT.match(line)
        if m and "{" in m.group(2):
            try:
                value = ast.literal_eval(m.group(2))
            except (ValueError, SyntaxError):
                continue
            lines[i] = f"{m.group(1)}{_sorted_repr(value)}{m.group(3)}"
    return "\n".join(lines)


def _sorted_repr(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_sorted_repr(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_sorted_repr(v) for v in value) + "]"
    return repr(value)


def compile_pipeline(fn, path: Path) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(fn, str(path))
    path.write_text(stable_header(path.read_text()))
    return path


def compile_all(output: Path = HERE) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    return [compile_pipeline(fn, output / f"{name}.yaml") for name, fn in pipelines().items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__)
    p.add_argument("--output", type=Path, default=HERE)
    args = p.parse_args(argv)
    for path in compile_all(args.output):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
