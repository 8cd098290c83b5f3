"""CLIP score of images against a prompt: 100 x the cosine similarity of CLIP's image and text
embeddings, floored at 0, averaged over the images (Hessel et al. 2021; torchmetrics' CLIPScore
computes the same). The quality measure of regression runs whose prompts are outside the shapes
world: the turntable frames of a Stable Diffusion run against its prompt.

The model is read from a local folder in transformers' ``CLIPModel`` layout with its tokenizer and
image processor (``save_pretrained``), or from the object store's mirror of one
(``s3://<bucket>/models/<id>``, fetched and verified by ``dreamfusion.store.models``); never from a
model hub.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dreamfusion.errors import UserError

MAX_FRAMES = 64  # frames scored per video (evenly spaced); bounds the memory of one batch


class CLIPScorer:
    def __init__(self, folder: str | Path):
        from transformers import CLIPModel, CLIPProcessor

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise UserError(f"CLIP model {folder}: no such model folder (config.json missing)")
        try:
            self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
            self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"CLIP model {folder} cannot be loaded ({type(e).__name__}: {e})") from None
        self.folder = folder

    @torch.no_grad()
    def score(self, images: np.ndarray, prompt: str) -> float:
        """``images`` (N, H, W, 3) uint8 -> the mean CLIP score against ``prompt``."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
            raise UserError(f"CLIP score: expected (N, H, W, 3) images, got {images.shape}")
        inputs = self.processor(text=[prompt], images=list(images), return_tensors="pt", padding=True,
                                truncation=True)
        out = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         pixel_values=inputs["pixel_values"])
        img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)  # projected embeddings
        txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
        cos = (img @ txt.T).squeeze(-1)
        value = float((100 * cos).clamp(min=0).mean())
        if not np.isfinite(value):
            raise UserError(f"CLIP model {self.folder} gives a non-finite score")
        return value


def video_frames(path: str | Path, limit: int = MAX_FRAMES) -> np.ndarray:
    """Up to ``limit`` evenly spaced frames of an MP4 -> (N, H, W, 3) uint8."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        w, h = meta["size"]
        frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in reader]
    except (RuntimeError, OSError, StopIteration, ValueError) as e:
        raise UserError(f"{path} is not a readable video ({type(e).__name__}: {e})") from None
    if not frames:
        raise UserError(f"{path} holds no frames")
    keep = np.unique(np.linspace(0, len(frames) - 1, min(limit, len(frames))).round().astype(int))
    return np.stack([frames[i] for i in keep])
