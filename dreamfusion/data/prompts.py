"""View-dependent prompts, and the one rule for what a prompt may be.

``check_text`` (called by ``ModelConfig.check``, so by every stage before any work): a prompt has at
most ``MAX_PROMPT_CHARS`` characters and no control characters. ``check_tokens`` (prompt-expansion,
and nerf-sds when it encodes its own prompts): each view prompt, as the guidance's tokenizer splits
it with its start and end tokens, fits the text encoder, or is cut with a note when asked to.
"""

from __future__ import annotations

import unicodedata

from dreamfusion.config.schema import ModelConfig
from dreamfusion.errors import UserError

MAX_PROMPT_CHARS = 1000


def view_prompts(m: ModelConfig) -> dict[str, str]:
    """{'front' | 'side' | 'back' | 'overhead': prompt + suffix}."""
    return {
        "front": m.prompt + m.front_prompt,
        "side": m.prompt + m.side_prompt,
        "back": m.prompt + m.back_prompt,
        "overhead": m.prompt + m.overhead_prompt,
    }


def check_text(text: str, what: str) -> str | None:
    """Why ``text`` cannot be a prompt (None when it can)."""
    if len(text) > MAX_PROMPT_CHARS:
        return f"{what} is {len(text)} characters; at most {MAX_PROMPT_CHARS}"
    bad = sorted({c for c in text if unicodedata.category(c) in ("Cc", "Cs")})
    if bad:
        return f"{what} holds control characters ({', '.join(repr(c) for c in bad[:5])})"
    return None


def check_tokens(tokenizer, texts: dict[str, str], truncate: bool = False) -> list[str]:
    """Each of ``texts`` ({name: prompt}) within the tokenizer's ``model_max_length`` (start and
    end tokens counted, as the encoder sees them): else a UserError, or with ``truncate`` a note
    per prompt saying what the encoder will drop. Returns the notes."""
    limit = tokenizer.model_max_length
    notes = []
    for view, text in texts.items():
        ids = tokenizer(text).input_ids
        n = len(ids)
        if n <= limit:
            continue
        if not truncate:
            raise UserError(f"the {view} prompt is {n} tokens; the text encoder takes at most {limit}: {text!r:.300}")
        # the encoder keeps the first limit - 1 tokens and the end token: the rest is dropped.
        dropped = tokenizer.decode(ids[limit - 1 : -1], skip_special_tokens=True).strip()
        notes.append(f"the {view} prompt is {n} tokens; cut to {limit}, dropping {dropped!r:.300}")
    return notes
