"""The process pool of the prior's evaluations: spawned workers that end with the evaluation."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


def _die_with_parent(parent: int) -> None:
    """A worker's initializer: end the worker when the evaluation that started it (pid ``parent``)
    is gone (killed, interrupted), instead of training on as an orphan; also when it went while the
    worker was still starting."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` spawned worker processes (a fresh interpreter each: no forked torch threads) that
    end when this process does."""
    return ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_die_with_parent,
                               initargs=(os.getpid(),))
