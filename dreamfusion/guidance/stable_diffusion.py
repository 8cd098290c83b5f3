"""SDS guidance over a diffusers text-to-image model (the seed's ``sd_huggingface``).

The model is read with ``from_pretrained`` from a hub id or a local diffusers folder with
subfolders ``tokenizer``, ``text_encoder``, ``unet``, ``scheduler`` and, for latent models,
``vae``. Without a ``vae`` the model is a pixel-space one: the render itself, in [-1, 1] at the
UNet's sample size, is the "latent".

SDS (DreamFusion, with the seed's defaults): ``t ~ U{t_min..t_max}`` per sample,
``x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps``, ``eps_hat = eps_u + s (eps_c - eps_u)``,
``grad = w(t) (eps_hat - eps)`` with ``w(t) = 1 - abar_t`` and NaNs zeroed, injected as
``0.5 * ||z - sg(z - grad)||^2 / B`` so that d loss / d z = grad / B.

The UNet's output is read as its scheduler's ``prediction_type`` says: ``epsilon`` is the noise
estimate itself; ``v_prediction`` (SD 2.x 768 models) is converted with
``eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t``; any other type is refused when the model loads.
A UNet conditioned on the camera as well (diffusers' ``class_embed_type="projection"`` over
:func:`~dreamfusion.data.cameras.camera_embedding`, as the shipped shapes prior is) is given the
renders' cameras with both the conditional and the unconditional text; ``sds`` refuses to run it
without them. Any other class conditioning is refused when the model loads.
Half precision runs on a GPU only: on a CPU, ``precision=16`` runs in float32, with one warning.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import II

from dreamfusion.config import checks
from dreamfusion.config.node import Node
from dreamfusion.data.cameras import CAMERA_FEATURES, Cameras, camera_embedding
from dreamfusion.errors import ConfigError, UserError
from dreamfusion.guidance import perp_neg
from dreamfusion.registry import register

DTYPES = {"16": torch.float16, "bf16": torch.bfloat16, "32": torch.float32}
PREDICTION_TYPES = ("epsilon", "v_prediction")
log = logging.getLogger(__name__)


def model_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype the frozen model runs in: ``precision``'s, except float16 on a CPU (slow or
    unsupported there), which runs in float32 with one warning."""
    dtype = DTYPES[precision]
    if dtype == torch.float16 and device.type == "cpu":
        log.warning("precision=16 on a CPU: the guidance model runs in float32")
        return torch.float32
    return dtype


def noise_estimate(out: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The noise estimate from a UNet's output ``out`` at ``x_t``, ``abar`` (B, 1, 1, 1) = abar_t
    (``out`` may hold several outputs for the same ``x_t`` along a leading dimension)."""
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return abar.sqrt() * out + (1 - abar).sqrt() * x_t
    raise ValueError(f"prediction_type {prediction_type!r}")


@dataclass
class GuidanceConfig(Node):
    precision: str = II("trainer.precision")
    model_key: str = "stabilityai/stable-diffusion-2-1-base"
    """A hub id or a local diffusers folder."""
    t_range: list[float] = field(default_factory=lambda: [0.02, 0.98])
    t_max_final: float | None = None
    """(added) When set, the upper end of ``t_range`` falls linearly from ``t_range[1]`` at the first
    step to this at the last (the references' time annealing); None: the seed's fixed range."""
    local_files_only: bool = False
    """(added) Never reach a model hub: read the folder or the local cache only."""
    fade_guard_t: float | None = None
    """(added) At timesteps above this fraction, the SDS step may not move a pixel towards the
    background behind it: that component of the step is dropped, the rest kept. At high noise the
    prior cannot tell a pale object from none (``dreamfusion.prior.sds_pull``): on the shapes
    world's white background its step faded white objects. None: off (the seed)."""
    fade_guard_axis: str = "background"
    """(added) The direction ``fade_guard_t`` guards. ``background``: towards the background behind
    each pixel. ``light``: brighter along the pixel's own colour (away from black), what a brighter
    light or ambient would do. At high noise the prior cannot tell the render's ambient, so its step
    moves every render towards the brightness it saw on average: a dark render of a white object
    is pulled lighter, which on a white background is the way to the background, while a coloured
    object keeps the steps that carve it (towards the background, but not along its colour). Needs
    a guidance model that scores RGB images in [-1, 1] (``guidance=shapes``), not latents."""

    def check(self) -> None:
        checks.one_of(self, "precision", list(DTYPES))
        if not self.model_key.strip():
            checks.fail(self, "model_key", "must name a hub model or a local folder")
        checks.interval(self, "t_range", 0.0, 1.0, strict=True)
        if self.fade_guard_t is not None and not 0.0 <= self.fade_guard_t < 1.0:
            checks.fail(self, "fade_guard_t", "must lie in [0, 1) or be null")
        checks.one_of(self, "fade_guard_axis", ["background", "light"])
        if self.t_max_final is not None and not self.t_range[0] < self.t_max_final <= self.t_range[1]:
            checks.fail(self, "t_max_final", f"must lie in ({self.t_range[0]}, {self.t_range[1]}] (t_range)")


_LOCAL_COPIES: dict[str, Path] = {}  # model keys this process reads from a verified local copy


def use_local_copy(model_key: str, folder: str | Path) -> None:
    """Load ``model_key`` (e.g. an ``s3://`` mirror, fetched and verified by the stage) from
    ``folder`` in this process. The key itself stays what configs, prompt sets and checkpoints
    record; only loading reads the folder."""
    _LOCAL_COPIES[model_key] = Path(folder)


def resolve_model_key(model_key: str) -> str:
    """Keys with a local copy and built-in names map to folders (the latter shipped in the
    package); anything else passes through."""
    builtin = {"dreamfusion-shapes": Path(__file__).resolve().parents[1] / "prior" / "shapes"}
    folder = _LOCAL_COPIES.get(model_key) or builtin.get(model_key)
    return str(folder) if folder is not None else model_key


@contextmanager
def _loading(cfg: GuidanceConfig):
    """Where ``cfg.model_key`` is read from: yields (key, hub, from_pretrained keywords), ``hub``
    True for a hub id (not a local folder). A component that cannot be read inside the block is a
    UserError naming the key."""
    key = resolve_model_key(cfg.model_key)
    local = os.path.isdir(key)
    if cfg.local_files_only and not local and not _cached(key):
        raise UserError(f"guidance.model_key={cfg.model_key!r}: no such folder, and local_files_only is set")
    try:
        yield key, not local, dict(local_files_only=cfg.local_files_only or local)
    except (OSError, ValueError) as e:
        raise UserError(f"guidance.model_key={cfg.model_key!r} could not be loaded: {str(e).splitlines()[0]}") from None


def from_pretrained(cls, key: str, subfolder: str, dtype: torch.dtype, hub: bool, **kw):
    """``cls.from_pretrained`` of one weighted component (UNet, VAE, text encoder) in ``dtype``.
    Half precision from a hub id asks for the hub's ``fp16`` variant first (half the download,
    no float32 copy to cast); a model without one is read from its plain weights and cast."""
    if hub and dtype == torch.float16:
        try:
            return cls.from_pretrained(key, subfolder=subfolder, torch_dtype=dtype, variant="fp16", **kw)
        except (OSError, ValueError) as e:
            log.info("%s/%s: no fp16 variant (%s); reading the plain weights", key, subfolder, str(e).splitlines()[0])
    return cls.from_pretrained(key, subfolder=subfolder, torch_dtype=dtype, **kw)


class TextEncoder:
    """A diffusers model's tokenizer and text encoder alone, no UNet and no VAE: what
    prompt-expansion loads (a CPU pod) and the guidance loads when it encodes its own prompts."""

    def __init__(self, cfg: GuidanceConfig, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
        """``dtype``: what the encoder runs in (default: ``model_dtype`` of ``cfg.precision``)."""
        from transformers import AutoTokenizer, CLIPTextModel

        self.device = torch.device(device)
        self.dtype = model_dtype(cfg.precision, self.device) if dtype is None else dtype
        with _loading(cfg) as (key, hub, kw):
            self.tokenizer = AutoTokenizer.from_pretrained(key, subfolder="tokenizer", **kw)
            self.model = from_pretrained(CLIPTextModel, key, "text_encoder", self.dtype, hub, **kw)
        self.model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (P, L, D) float32 embeddings, padded to the tokenizer's ``model_max_length``."""
        tok = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.model(tok.input_ids.to(self.device))[0].float()


@register("guidance", "sd_huggingface")
class StableDiffusionGuidance:
    """A frozen diffusion model that scores renders. All modules in eval mode, no gradients."""

    Config = GuidanceConfig

    def __init__(self, cfg: GuidanceConfig, device: torch.device | str = "cpu", text_encoder: bool = True):
        """``text_encoder=False`` loads no tokenizer and no text encoder (prompts come pre-encoded:
        ``encode_text`` is then unavailable)."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        self.device = torch.device(device)
        self.dtype = model_dtype(cfg.precision, self.device)
        self.text = TextEncoder(cfg, self.device, self.dtype) if text_encoder else None
        self.tokenizer = self.text.tokenizer if self.text is not None else None
        with _loading(cfg) as (key, hub, kw):
            self.unet = from_pretrained(UNet2DConditionModel, key, "unet", self.dtype, hub, **kw)
            self.scheduler = DDPMScheduler.from_pretrained(key, subfolder="scheduler", **kw)
            has_vae = hub or os.path.isdir(os.path.join(key, "vae"))
            self.vae = from_pretrained(AutoencoderKL, key, "vae", self.dtype, hub, **kw) if has_vae else None
        self.camera_conditioned = camera_input(self.unet, cfg.model_key)
        """Whether the UNet takes the renders' cameras (``sds(cameras=...)``)."""
        self.prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise UserError(
                f"guidance.model_key={cfg.model_key!r}: its scheduler's prediction_type is "
                f"{self.prediction_type!r}; SDS supports {' and '.join(PREDICTION_TYPES)}"
            )
        for m in (self.unet, self.vae):
            if m is not None:
                m.to(self.device).eval().requires_grad_(False)
        n = self.scheduler.config.num_train_timesteps
        self.min_step, self.max_step = int(n * cfg.t_range[0]), int(n * cfg.t_range[1])
        self.final_max_step = self.max_step if cfg.t_max_final is None else int(n * cfg.t_max_final)
        guard = None if cfg.fade_guard_t is None else int(n * cfg.fade_guard_t)
        self.fade_guard_step = guard if guard is not None and guard < self.max_step else None  # else never fires
        self.fade_guard_axis = cfg.fade_guard_axis
        self.needs_background = self.fade_guard_step is not None and cfg.fade_guard_axis == "background"
        """Whether ``sds`` must be given the renders' background."""
        if self.fade_guard_step is not None and cfg.fade_guard_axis == "light" and self.vae is not None:
            raise ConfigError(
                f"guidance.fade_guard_axis=light: {cfg.model_key!r} scores latents, not colours; "
                "use fade_guard_axis=background"
            )
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        self.latent_channels = self.unet.config.in_channels

    @staticmethod
    def load_text_encoder(cfg: GuidanceConfig, device: torch.device | str = "cpu") -> TextEncoder:
        """The model's tokenizer and text encoder alone, no UNet and no VAE (prompt-expansion)."""
        return TextEncoder(cfg, device)

    @property
    def image_size(self) -> int:
        """Side of the image the model scores (512 for SD 2.1-base)."""
        return self.unet.config.sample_size * self.vae_scale

    @property
    def supports_latent_input(self) -> bool:
        """Whether normals + opacity can stand in for latents (the latent warm-up): 4-channel latent models."""
        return self.vae is not None and self.latent_channels == 4

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> (P, L, D) float32 embeddings (needs the text encoder: ``text_encoder=True``)."""
        if self.text is None:
            raise RuntimeError("this guidance was loaded without its text encoder (text_encoder=False)")
        return self.text.encode_text(prompts)

    def encode_images(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> model input z (B, C, h, w), with gradient."""
        x = F.interpolate(rgb, (self.image_size, self.image_size), mode="bilinear", align_corners=False) * 2 - 1
        if self.vae is None:
            return x
        z = self.vae.encode(x.to(self.dtype)).latent_dist.sample() * self.vae.config.scaling_factor
        return z.float()

    def t_max(self, progress: float) -> int:
        """The largest timestep drawn at ``progress`` (fraction of training done, clamped to [0, 1])."""
        p = min(max(float(progress), 0.0), 1.0)
        return round(self.max_step + p * (self.final_max_step - self.max_step))

    def sds(
        self,
        z: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        guidance_scale: float,
        generator: torch.Generator | None = None,
        negatives: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        progress: float = 0.0,
        background: torch.Tensor | None = None,
        cameras: Cameras | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """SDS loss on model inputs ``z`` (B, C, h, w); cond, uncond (B, L, D). With ``negatives``
        (B, K, L, D) and their ``weights`` (B, K), the guidance is Perp-Neg's (``perp_neg.combine``).
        ``progress``: the fraction of training done, in [0, 1] (moves the largest t under
        ``t_max_final``). ``background``: what the renders show behind the object, as model inputs
        like ``z`` (needed by ``fade_guard_t`` on its ``background`` axis). ``cameras``: the B renders'
        cameras (needed by a camera-conditioned UNet, ignored by a text-only one).

        Returns the loss (its gradient w.r.t. z is grad / B) and the draws: t, noise, grad.
        """
        b = z.shape[0]
        labels = None
        if self.camera_conditioned:
            if cameras is None or len(cameras) != b:
                got = "none" if cameras is None else len(cameras)
                raise ValueError(f"this guidance's UNet is camera-conditioned: sds() needs the {b} renders' cameras, "
                                 f"got {got}")
            labels = camera_embedding(cameras.theta, cameras.phi).to(self.device)
        t = torch.randint(self.min_step, self.t_max(progress) + 1, (b,), generator=generator, device="cpu")
        t = t.to(self.device)
        noise = torch.randn(z.shape, generator=generator, device="cpu").to(self.device)
        with torch.no_grad():
            x_t = self.scheduler.add_noise(z.detach(), noise, t)
            k = 0 if negatives is None else negatives.shape[1]
            texts = [uncond, cond] + [negatives[:, i] for i in range(k)]
            n = 2 + k
            eps = self.unet(
                torch.cat([x_t] * n).to(self.dtype),
                torch.cat([t] * n),
                encoder_hidden_states=torch.cat(texts).to(self.dtype),
                class_labels=None if labels is None else torch.cat([labels] * n).to(self.dtype),
            ).sample.float()
            abar = self.alphas_cumprod[t].view(b, 1, 1, 1)
            eps = noise_estimate(eps.view(n, *x_t.shape), x_t, abar, self.prediction_type)  # (n, B, C, h, w)
            eps_u, eps_c, *eps_neg = eps.unbind(0)
            if k:
                eps_hat = perp_neg.combine(eps_u, eps_c, torch.stack(eps_neg), weights, guidance_scale)
            else:
                eps_hat = eps_u + guidance_scale * (eps_c - eps_u)
            w = 1 - abar
            grad = torch.nan_to_num(w * (eps_hat - noise))
            if self.fade_guard_step is not None:
                if self.fade_guard_axis == "light":  # away from black (-1) along the pixel's colour
                    towards = 2 * z.detach() + 1
                elif background is None:
                    raise ValueError("guidance.fade_guard_t needs the renders' background (sds(background=...))")
                else:
                    towards = background
                grad = fade_guard(z.detach(), grad, towards, t > self.fade_guard_step)
        target = (z - grad).detach()
        loss = 0.5 * F.mse_loss(z.float(), target, reduction="sum") / b
        return loss, {"t": t, "noise": noise, "grad": grad}


def camera_input(unet, model_key: str) -> bool:
    """Whether ``unet`` takes camera features as ``class_labels``; a UNet with any other class
    conditioning is refused (SDS has no class to give it)."""
    kind = unet.config.get("class_embed_type")
    if kind is None:
        return False
    dim = unet.config.get("projection_class_embeddings_input_dim")
    if kind != "projection" or dim != CAMERA_FEATURES:
        raise UserError(
            f"guidance.model_key={model_key!r}: its UNet is class-conditioned ({kind}, input {dim}); SDS supports "
            f"text-only UNets and camera-conditioned ones (projection of {CAMERA_FEATURES} camera features)"
        )
    return True


def step_towards(z: torch.Tensor, grad: torch.Tensor, background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, h, w) model inputs, their SDS gradient and their background -> the descent step
    ``-grad`` projected on each pixel's unit direction towards its background (B, 1, h, w; 0 where
    they meet), and that direction (B, C, h, w)."""
    u = background - z
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return (-grad * u).sum(1, keepdim=True), u


def fade_guard(z: torch.Tensor, grad: torch.Tensor, background: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The SDS gradient without, in the samples ``where`` (B,) is true, the part of its descent step
    that moves a pixel of ``z`` (B, C, h, w) towards ``background`` (same shape; any point that
    gives the guarded direction, e.g. ``2 z + 1`` for "brighter along its colour"); the other
    components, and every pixel already at that point, are kept."""
    along, u = step_towards(z, grad, background)
    drop = where.view(-1, 1, 1, 1) & (along > 0)
    return torch.where(drop, grad + along * u, grad)


def _cached(key: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(key, "model_index.json"), str)
    except Exception:
        return False


@dataclass
class ShapesGuidanceConfig(GuidanceConfig):
    precision: str = "32"
    model_key: str = "dreamfusion-shapes"
    """The offline shapes prior shipped in the package (dreamfusion/prior/shapes)."""
    local_files_only: bool = True


@register("guidance", "shapes")
class ShapesGuidance(StableDiffusionGuidance):
    """The same SDS over the project's own small prior: no download, fast on a CPU."""

    Config = ShapesGuidanceConfig
