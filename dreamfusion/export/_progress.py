"""Progress bars for the export stages: live on a terminal, a line every 15 s in a pod's log."""

from __future__ import annotations

import sys

from tqdm import tqdm


def bar(total: int, desc: str, enabled: bool = True, **kw) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        disable=not enabled,
        mininterval=0.5 if sys.stderr.isatty() else 15,
        dynamic_ncols=True,
        **kw,
    )
