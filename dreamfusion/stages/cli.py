"""What every stage shares: logging set-up and the user-error contract (one line, exit code 2)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from dreamfusion.errors import UserError
from dreamfusion.files import remove_stale_temporaries


def quiet_libraries() -> None:
    """Keep third-party chatter (weight-loading bars, accelerate hints) out of stage logs."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are UserErrors: one ``error:`` line and exit code 2, no usage dump."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def run(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run a stage's main; a UserError becomes ``error: <message>`` on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def output_folder(path: Path | str, what: str = "--output") -> Path:
    """``path`` if a stage can make it (when missing) and write in it; else one-line UserError.
    Checked before any work: a path that is a file, lies under a file, or is in a folder this
    process may not write is refused without touching anything. Temporary files that a killed
    earlier run left in it are removed (``files.remove_stale_temporaries``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path} cannot be made: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} cannot be written: no permission to write in {existing}")
    remove_stale_temporaries(path)
    return path
