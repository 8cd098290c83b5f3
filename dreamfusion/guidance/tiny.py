"""A tiny diffusers text-to-image model built from configs (random weights, no download).

Same layout and loading path as Stable Diffusion, so tests and benchmarks exercise the real
guidance code: ``build_tiny_model(folder)`` then ``guidance.model_key=<folder>``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-to-unicode alphabet, each symbol also as a word end, plus the two specials."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    symbols = [chr(c) for c in cs]
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}


def build_tiny_model(
    folder: str | Path, seed: int = 0, pixel_space: bool = False, max_length: int = 32, prediction_type: str = "epsilon"
) -> Path:
    """Write a tiny model in diffusers layout to ``folder`` and return it.

    Latent variant: a 2-level VAE (factor 2) and a 32x32x4 UNet (attention at 16x16 and in the
    middle block), scoring 64x64 renders.
    Pixel variant: no VAE, a 32x32x3 UNet. ``prediction_type``: the scheduler's (what the UNet's
    output means: ``epsilon``, ``v_prediction``, ...).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    (folder / "tokenizer").mkdir(parents=True, exist_ok=True)
    vocab = _byte_level_vocab()
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(folder / "tokenizer" / "vocab.json"), str(folder / "tokenizer" / "merges.txt"), model_max_length=max_length
    )
    tokenizer.save_pretrained(folder / "tokenizer")
    text_cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    CLIPTextModel(text_cfg).save_pretrained(folder / "text_encoder")
    channels = 3 if pixel_space else 4
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    unet.save_pretrained(folder / "unet")
    if not pixel_space:
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            norm_num_groups=32,
            sample_size=64,
        ).save_pretrained(folder / "vae")
    DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
    ).save_pretrained(folder / "scheduler")
    return folder


def build_tiny_clip(folder: str | Path, seed: int = 0, max_length: int = 32) -> Path:
    """Write a tiny CLIP (text and vision towers, tokenizer, image processor; random weights) in
    transformers' layout to ``folder`` and return it: what the CLIP score loads in tests."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vocab = _byte_level_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=max_length,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                         pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
