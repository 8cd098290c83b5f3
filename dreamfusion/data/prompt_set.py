"""The prompt-expansion stage's output: view prompts and their text embeddings, computed once.

A prompt set is a folder with ``prompts.json`` (the texts, the guidance model they were encoded
with, token counts) and ``embeddings.safetensors`` (one (1, L, D) float32 tensor per view and
``negative``). Training reads it so that a GPU stage needs no text encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dreamfusion import files
from dreamfusion.errors import UserError

VIEWS = ("front", "side", "back", "overhead")


@dataclass
class PromptSet:
    prompt: str
    negative_prompt: str
    views: dict[str, str]
    model_key: str
    embeddings: dict[str, torch.Tensor]  # view or "negative" -> (1, L, D)

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prompts.json").unlink(missing_ok=True)  # the set's marker: written last
        with files.atomic_path(folder / "embeddings.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.embeddings.items()}, str(tmp))
        meta = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "views": self.views,
            "model_key": self.model_key,
        }
        files.write_json(folder / "prompts.json", meta)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PromptSet:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            meta = json.loads((folder / "prompts.json").read_text())
            emb = load_file(str(folder / "embeddings.safetensors"))
            missing = [k for k in (*VIEWS, "negative") if k not in emb]
            if missing:
                raise ValueError(f"embeddings for {missing} are missing")
            return cls(meta["prompt"], meta["negative_prompt"], meta["views"], meta["model_key"], emb)
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, SafetensorError) as e:
            first = (str(e).splitlines() or ["no detail"])[0][:200]
            raise UserError(f"prompt set {folder} is missing or corrupt ({type(e).__name__}: {first})") from None
