"""Stable Diffusion 2.1-base's architecture built from its configs, with random weights (no download).

The component configs are the public ones of ``stabilityai/stable-diffusion-2-1-base`` written out
by hand: an OpenCLIP ViT-H text tower as a ``CLIPTextModel`` (hidden 1024, 23 layers, 16 heads,
MLP 4096, GELU, 77 positions, vocabulary 49408), the 865M-parameter UNet (320/640/1280/1280,
linear-projection attention, cross-attention width 1024, 64x64x4 latents), the 4-level VAE
(factor 8) and the scaled-linear epsilon scheduler. The tokenizer is a byte-level BPE of the real
vocabulary size whose merges are made up: sizes and memory match, the token ids do not.

    build_sd21_base(folder, parts=("tokenizer", "text_encoder", "scheduler"))

writes a diffusers folder with the named parts' weights; the other parts get their config.json
only (so anything that tried to load them would fail).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = 49408
MAX_LENGTH = 77

TEXT_ENCODER = dict(
    vocab_size=VOCAB,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=MAX_LENGTH,
    hidden_act="gelu",
    projection_dim=512,  # unused by CLIPTextModel (no projection head)
    layer_norm_eps=1e-5,
    bos_token_id=VOCAB - 2,
    eos_token_id=VOCAB - 1,
    pad_token_id=VOCAB - 1,
)
UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    norm_num_groups=32,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    sample_size=512,
)
SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    steps_offset=1,
)


def _bpe() -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary of CLIP's size: the 512 byte symbols (plain and word-final),
    48,894 made-up two-symbol merges and the two special tokens."""
    from dreamfusion.guidance.tiny import _byte_level_vocab

    symbols = [s for s in _byte_level_vocab() if not s.endswith("</w>") and not s.startswith("<|")]
    letters = sorted(symbols, key=lambda s: (not s.isalpha(), s))  # letters merge first
    vocab = symbols + [s + "</w>" for s in symbols]
    merges = []
    need = VOCAB - 2 - len(vocab)
    for a in letters:
        for b in letters + [s + "</w>" for s in letters]:
            if len(merges) == need:
                break
            merges.append(f"{a} {b}")
            vocab.append(a + b)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def build_sd21_base(folder: str | Path, parts=("tokenizer", "text_encoder", "scheduler"), seed: int = 0) -> Path:
    """Write SD 2.1-base's layout to ``folder``: the listed parts complete (random weights), the
    others as their config.json alone. Returns ``folder``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    tok = folder / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    vocab, merges = _bpe()
    assert len(vocab) == VOCAB, len(vocab)
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    CLIPTokenizer(str(tok / "vocab.json"), str(tok / "merges.txt"), model_max_length=MAX_LENGTH).save_pretrained(tok)

    DDPMScheduler(**SCHEDULER).save_pretrained(folder / "scheduler")
    text_cfg = CLIPTextConfig(**TEXT_ENCODER)
    if "text_encoder" in parts:
        CLIPTextModel(text_cfg).save_pretrained(folder / "text_encoder")
    else:
        text_cfg.save_pretrained(folder / "text_encoder")
    for name, cls, cfg in (("unet", UNet2DConditionModel, UNET), ("vae", AutoencoderKL, VAE)):
        if name in parts:
            cls(**cfg).save_pretrained(folder / name)
        else:
            (folder / name).mkdir(parents=True, exist_ok=True)
            (folder / name / "config.json").write_text(json.dumps({"_class_name": cls.__name__, **cfg}))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder
