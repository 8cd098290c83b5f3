"""View-dependent prompts: the base prompt plus the suffix of the camera's view."""

from __future__ import annotations

from dreamfusion.config.schema import ModelConfig


def view_prompts(m: ModelConfig) -> dict[str, str]:
    """{'front' | 'side' | 'back' | 'overhead': prompt + suffix}."""
    return {
        "front": m.prompt + m.front_prompt,
        "side": m.prompt + m.side_prompt,
        "back": m.prompt + m.back_prompt,
        "overhead": m.prompt + m.overhead_prompt,
    }
