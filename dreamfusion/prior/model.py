"""The offline prior's parts in diffusers/transformers format: tokenizer, text encoder, UNet, scheduler.

The shipped folder (:data:`SHAPES_DIR`) holds ``unet/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/`` and ``model_index.json`` and no ``vae/``: the model works in pixel space (RGB in [-1, 1]
at ``unet.config.sample_size``). The same calls load it as load Stable Diffusion's parts::

    UNet2DConditionModel.from_pretrained(d, subfolder="unet", local_files_only=True)
    CLIPTextModel.from_pretrained(d, subfolder="text_encoder")
    CLIPTokenizer.from_pretrained(d, subfolder="tokenizer")
    DDPMScheduler.from_pretrained(d, subfolder="scheduler")

This module also holds the text encoding used by training and evaluation (the same as the guidance
code's: pad to ``model_max_length``, ``text_encoder(ids)[0]``) and a plain DDIM/DDPM sampler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dreamfusion.data.cameras import CAMERA_FEATURES, Cameras, camera_embedding, unknown_camera
from dreamfusion.prior.data import COLOURS, SHAPES, VIEW_SUFFIX

SHAPES_DIR = Path(__file__).resolve().parent / "shapes"

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16
WORDS = ["a", ",", *COLOURS, *SHAPES, "front", "side", "back", "overhead", "view"]
SAMPLE_SIZE = 32


# ----------------------------------------------------------------------------------------------------
# Tokenizer: a word-level CLIP BPE vocabulary (every word of the shapes world is one token, anything
# else falls back to letters), written as vocab.json + merges.txt.


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one pre-token (the last symbol carries ``</w>``)."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
    return parts


def build_vocab(words: list[str] = WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A vocabulary and merge list under which each of ``words`` is a single token."""
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789,.!?'-") | {c for w in words for c in w})
    tokens = list(chars) + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for w in words:
        while len(parts := _bpe(w, ranks)) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in tokens:
                tokens.append(pair[0] + pair[1])
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def write_tokenizer(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab()
    (out / "vocab.json").write_text(json.dumps(vocab, indent=1))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    cfg = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))


# ----------------------------------------------------------------------------------------------------
# Models


def text_encoder_config(vocab_size: int, bos_id: int, eos_id: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=64,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


CHANNELS = (32, 64, 64)
"""The shipped UNet's channels at its three resolutions (32, 16 and 8 pixels)."""
LAYERS_PER_BLOCK = 1


def unet_config(camera: bool = False, channels: tuple[int, ...] = CHANNELS,
                layers_per_block: int = LAYERS_PER_BLOCK) -> dict:
    """The UNet's config; ``camera``: conditioned on the camera too (``class_labels``: rows of
    :func:`~dreamfusion.data.cameras.camera_embedding`, projected and added to the timestep embedding,
    diffusers' ``class_embed_type="projection"``). ``channels`` (three, multiples of 16 up to 1024: the group
    norm's groups) and ``layers_per_block`` size it (the shipped one: the defaults)."""
    if len(channels) != 3 or any(c <= 0 or c % 16 or c > 1024 for c in channels):
        raise ValueError(f"channels {tuple(channels)}: three multiples of 16 in [16, 1024]")
    if not 1 <= layers_per_block <= 4:
        raise ValueError(f"layers_per_block {layers_per_block}: 1 to 4")
    extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_FEATURES) if camera else {}
    return dict(
        sample_size=SAMPLE_SIZE,
        in_channels=3,
        out_channels=3,
        layers_per_block=layers_per_block,
        block_out_channels=tuple(channels),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
        **extra,
    )


def scheduler_config() -> dict:
    return dict(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.0001,
        beta_end=0.02,
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=1.0,
    )


@dataclass
class Prior:
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object

    @property
    def sample_size(self) -> int:
        return int(self.unet.config.sample_size)


def camera_conditioned(unet: torch.nn.Module) -> bool:
    return unet.config.get("class_embed_type") == "projection"


def camera_labels(unet: torch.nn.Module, cams: Cameras | None, n: int) -> torch.Tensor | None:
    """``class_labels`` for ``n`` images: None for a text-only UNet; for a camera-conditioned one the
    cameras' features, or "camera unknown" rows where ``cams`` is None."""
    if not camera_conditioned(unet):
        return None
    if cams is None:
        return unknown_camera(n)
    if len(cams) != n:
        raise ValueError(f"{len(cams)} cameras for {n} images")
    return camera_embedding(cams.theta, cams.phi)


def build_new(tokenizer_dir: Path, camera: bool = False, channels: tuple[int, ...] = CHANNELS,
              layers_per_block: int = LAYERS_PER_BLOCK) -> Prior:
    """Fresh, untrained parts (the tokenizer is written to and read from ``tokenizer_dir``); the UNet
    sized by ``channels`` and ``layers_per_block`` (:func:`unet_config`)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    write_tokenizer(tokenizer_dir)
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    vocab = tok.get_vocab()
    te = CLIPTextModel(text_encoder_config(len(vocab), vocab[BOS], vocab[EOS]))
    unet = UNet2DConditionModel(**unet_config(camera, channels, layers_per_block))
    return Prior(unet, te, tok, DDPMScheduler(**scheduler_config()))


def add_camera(prior: Prior) -> Prior:
    """A text-only prior turned camera-conditioned: the same weights plus a camera projection whose
    output layer starts at zero, so that the new model predicts exactly what the old one did until
    fine-tuning teaches it the camera."""
    from diffusers import UNet2DConditionModel

    if camera_conditioned(prior.unet):
        return prior
    cfg = {k: v for k, v in dict(prior.unet.config).items() if not k.startswith("_")}
    cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_FEATURES)
    unet = UNet2DConditionModel(**cfg)
    missing, unexpected = unet.load_state_dict(prior.unet.state_dict(), strict=False)
    if unexpected or any(not k.startswith("class_embedding.") for k in missing):
        raise ValueError(f"cannot add a camera input: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        unet.class_embedding.linear_2.weight.zero_()
        unet.class_embedding.linear_2.bias.zero_()
    return Prior(unet, prior.text_encoder, prior.tokenizer, prior.scheduler)


def load(path: str | Path = SHAPES_DIR) -> Prior:
    """Load the shipped (or any saved) prior with the standard from_pretrained calls."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = str(path)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
    te = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
    tok = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
    sch = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    unet.eval()
    te.eval()
    return Prior(unet, te, tok, sch)


def save(prior: Prior, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    prior.unet.save_pretrained(path / "unet", safe_serialization=True)
    prior.text_encoder.save_pretrained(path / "text_encoder", safe_serialization=True)
    prior.tokenizer.save_pretrained(path / "tokenizer")
    write_tokenizer(path / "tokenizer")  # also the plain vocab.json + merges.txt (same vocabulary)
    prior.scheduler.save_pretrained(path / "scheduler")
    index = {
        "_class_name": "ShapesWorldPrior",
        "_diffusers_version": _diffusers_version(),
        "_note": "pixel-space text-to-image prior of the shapes world; no vae (images in [-1, 1])",
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def encode(prior: Prior, prompts: list[str]) -> torch.Tensor:
    """Prompts -> (B, L, C) encoder hidden states, exactly as the guidance code encodes them."""
    tok = prior.tokenizer
    ids = tok(
        prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return prior.text_encoder(ids)[0]


# ----------------------------------------------------------------------------------------------------
# Sampling: a plain DDPM (eta = 1) / DDIM (eta = 0) loop written against the scheduler's alphas_cumprod.


@torch.no_grad()
def sample(
    prior: Prior,
    prompts: list[str],
    generator: torch.Generator | None = None,
    steps: int = 50,
    guidance_scale: float = 1.0,
    eta: float = 1.0,
    t_start: int | None = None,
    clip_x0: bool = True,
    cameras: Cameras | None = None,
) -> torch.Tensor:
    """One image per prompt, (B, 3, S, S) in [0, 1].

    ``eta = 1`` (default) is ancestral sampling with the DDPM posterior variance on this subsequence of
    timesteps, ``eta = 0`` is DDIM (which drifts on this prior: tinted backgrounds, lost shapes).
    ``guidance_scale`` 1 is the plain conditional model; above 1 classifier-free guidance with "".
    ``cameras``: one per prompt for a camera-conditioned prior (default: camera unknown).
    """
    s = prior.sample_size
    b = len(prompts)
    cond = encode(prior, prompts)
    uncond = encode(prior, [""] * b) if guidance_scale != 1.0 else None
    abar = prior.scheduler.alphas_cumprod.float()
    n_train = len(abar)
    ts = torch.linspace(n_train - 1 if t_start is None else t_start, 0, steps).round().long()
    labels = camera_labels(prior.unet, cameras, b)
    labels2 = None if labels is None else torch.cat([labels, labels])
    x = torch.randn(b, 3, s, s, generator=generator)
    for i, t in enumerate(ts):
        tt = t.expand(b)
        if uncond is None:
            eps = prior.unet(x, tt, encoder_hidden_states=cond, class_labels=labels).sample
        else:
            e = prior.unet(
                torch.cat([x, x]), torch.cat([tt, tt]), encoder_hidden_states=torch.cat([uncond, cond]),
                class_labels=labels2,
            ).sample
            eu, ec = e.chunk(2)
            eps = eu + guidance_scale * (ec - eu)
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp_min(0).sqrt()
        dir_xt = (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
        x = a_prev.sqrt() * x0 + dir_xt
        if eta > 0 and i + 1 < len(ts):
            x = x + sigma * torch.randn(x.shape, generator=generator)
    return ((x + 1) / 2).clamp(0, 1)


def param_count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def all_prompts(with_views: bool = False) -> list[str]:
    out = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    if with_views:
        out += [p + v for p in list(out) for v in VIEW_SUFFIX.values()]
    return out
