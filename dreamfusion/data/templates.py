"""Prompt templates for catalogs: ``"a {red|blue} {car|chair}"`` -> every combination."""

from __future__ import annotations

import itertools
import math
import re

from dreamfusion.errors import UserError

_GROUP = re.compile(r"\{([^{}]*)\}")
MAX_PROMPTS = 500  # one template's combinations (a catalog trains each one)


def expand_template(template: str) -> list[str]:
    """All prompts a template names, in order; a template without braces is itself."""
    if template.count("{") != template.count("}") or "{}" in template:
        raise UserError(f"template {template!r} has unbalanced or empty braces")
    parts = _GROUP.split(template)  # text, group, text, group, ...
    choices = [[p] if i % 2 == 0 else [c.strip() for c in p.split("|")] for i, p in enumerate(parts)]
    if any(c == "" for i, group in enumerate(choices) if i % 2 for c in group):
        raise UserError(f"template {template!r} has an empty choice")
    count = math.prod(len(group) for group in choices)  # counted before anything is expanded
    if count > MAX_PROMPTS:
        raise UserError(f"template {template!r:.120} names {count:,} prompts; at most {MAX_PROMPTS} a template")
    out = [" ".join("".join(combo).split()) for combo in itertools.product(*choices)]
    return list(dict.fromkeys(out))
