"""Compile every pipeline to pipelines/<name>.yaml: ``python -m pipelines.compile [--output DIR]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def pipelines() -> dict:
    from pipelines.catalog import catalog
    from pipelines.regression import regression
    from pipelines.text_to_3d import text_to_3d

    return {"text_to_3d": text_to_3d, "catalog": catalog, "regression": regression}


def compile_all(output: Path = HERE) -> list[Path]:
    from kfp import compiler

    output.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fn in pipelines().items():
        path = output / f"{name}.yaml"
        compiler.Compiler().compile(fn, str(path))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__)
    p.add_argument("--output", type=Path, default=HERE)
    args = p.parse_args(argv)
    for path in compile_all(args.output):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
