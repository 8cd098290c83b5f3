"""Train the shipped "shapes world" prior from a seed: ``python -m dreamfusion.prior.train`` (``make prior``).

Every batch is rendered on the fly by :mod:`dreamfusion.prior.data` (shaded primitives at the NeRF
stage's training cameras, static white background) and the UNet learns to predict the noise (DDPM, 1000
steps, 10% of captions dropped to ""), jointly with a tiny CLIP text encoder. The exponential moving
average of the weights is what gets saved. Defaults reproduce the shipped folder
``dreamfusion/prior/shapes/`` (about 60 minutes on 2 CPU cores); the run resumes from its last checkpoint
in ``--work-dir`` if interrupted.

``--camera`` / ``--init-from FOLDER`` make a camera-conditioned UNet (``class_labels`` = the camera's
:func:`~dreamfusion.data.cameras.camera_embedding`; from a saved text-only folder, a projection that
starts at zero); ``--only-camera``, ``--t-range`` and ``--x0-loss`` focus its fine-tune. The model card
reports what that experiment measured (the shipped prior is text-only).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from dreamfusion.errors import UserError
from dreamfusion.prior import model as M
from dreamfusion.prior.data import BACKGROUND, COLOURS, SHAPES, random_batch, world_cameras


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dreamfusion.prior.train", description=__doc__.split("\n")[0])
    p.add_argument("--output", type=Path, default=M.SHAPES_DIR, help="folder to write (default: the shipped one)")
    p.add_argument("--work-dir", type=Path, default=Path("outputs/prior_train"), help="checkpoints for resuming")
    p.add_argument("--steps", type=int, default=3000, help="length of the learning-rate schedule")
    p.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="stop after this many steps of the --steps schedule (default: run it all)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument(
        "--min-snr-gamma",
        type=float,
        default=5.0,
        help="Min-SNR loss weighting min(SNR, gamma) / SNR (0: plain MSE on the noise)",
    )
    p.add_argument(
        "--min-snr-from",
        type=int,
        default=1000,
        help="first step with Min-SNR weighting (the shipped run used plain MSE before it)",
    )
    p.add_argument("--p-empty", type=float, default=0.1, help="caption dropout to the empty prompt")
    p.add_argument("--p-view", type=float, default=0.5, help="probability a caption carries its view suffix")
    p.add_argument(
        "--camera",
        action="store_true",
        help="a UNet conditioned on the camera too (class_labels = camera_embedding); the shipped one is text-only",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="fine-tune a saved text-only prior (this folder) into a camera-conditioned one (implies --camera)",
    )
    p.add_argument(
        "--channels",
        type=int,
        nargs=3,
        default=M.CHANNELS,
        metavar=("C32", "C16", "C8"),
        help="a new UNet's channels at 32, 16 and 8 pixels, multiples of 16 (default: the shipped 32 64 64)",
    )
    p.add_argument(
        "--layers-per-block", type=int, default=M.LAYERS_PER_BLOCK, help="a new UNet's layers per block (default 1)"
    )
    p.add_argument("--p-no-camera", type=float, default=0.1, help="camera features dropped to 'unknown'")
    p.add_argument("--camera-lr", type=float, default=None, help="the camera projection's lr (default: --lr)")
    p.add_argument(
        "--only-camera",
        action="store_true",
        help="train the camera projection alone (the text-only weights stay as they are)",
    )
    p.add_argument(
        "--t-range",
        type=int,
        nargs=2,
        default=(0, 1000),
        metavar=("LO", "HI"),
        help="timesteps drawn from [LO, HI) (default: all 1000)",
    )
    p.add_argument(
        "--x0-loss",
        action="store_true",
        help="MSE on the predicted clean image (noise MSE divided by SNR) instead of on the noise",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads; use 1 on a CPU shared with another busy process (2 threads then stall)",
    )
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument(
        "--card-only",
        action="store_true",
        help="rewrite the model card of --output from its training_log.json (no training)",
    )
    args = p.parse_args(argv)
    if not 0 <= args.t_range[0] < args.t_range[1] <= 1000:
        p.error(f"--t-range {args.t_range[0]} {args.t_range[1]}: need 0 <= LO < HI <= 1000")
    try:
        M.unet_config(channels=tuple(args.channels), layers_per_block=args.layers_per_block)
    except ValueError as e:
        p.error(f"--channels / --layers-per-block: {e}")
    sized = tuple(args.channels) != M.CHANNELS or args.layers_per_block != M.LAYERS_PER_BLOCK
    if args.init_from is not None and sized:
        p.error("--channels and --layers-per-block size a new UNet; --init-from keeps its own")
    if args.only_camera and not (args.camera or args.init_from):
        p.error("--only-camera needs a camera-conditioned UNet (--init-from or --camera)")
    return args


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, live: torch.nn.Module, decay: float) -> None:
    for pe, pl in zip(ema.parameters(), live.parameters()):
        pe.lerp_(pl, 1 - decay)
    for be, bl in zip(ema.buffers(), live.buffers()):
        be.copy_(bl)


def _save_ckpt(path: Path, step, prior, ema_unet, ema_te, opt, gen, losses, seconds) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "step": step,
            "seconds": seconds,
            "unet": prior.unet.state_dict(),
            "text_encoder": prior.text_encoder.state_dict(),
            "ema_unet": ema_unet.state_dict(),
            "ema_text_encoder": ema_te.state_dict(),
            "opt": opt.state_dict(),
            "gen": gen.get_state(),
            "losses": losses,
        },
        tmp,
    )
    tmp.replace(path)


def train(args) -> dict:
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    last = args.steps if args.stop_at is None else min(args.stop_at, args.steps)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.init_from is not None:
        prior = M.add_camera(M.load(args.init_from))
        prior.unet.requires_grad_(True)
        prior.text_encoder.requires_grad_(True)
    else:
        prior = M.build_new(args.work_dir / "tokenizer", camera=args.camera, channels=tuple(args.channels),
                            layers_per_block=args.layers_per_block)
    camera = M.camera_conditioned(prior.unet)
    ema_unet = copy.deepcopy(prior.unet).requires_grad_(False)
    ema_te = copy.deepcopy(prior.text_encoder).requires_grad_(False)
    if args.only_camera:
        prior.unet.requires_grad_(False)
        prior.text_encoder.requires_grad_(False)
        prior.unet.class_embedding.requires_grad_(True)
    params = [p for p in list(prior.unet.parameters()) + list(prior.text_encoder.parameters()) if p.requires_grad]
    cam_ids = {id(q) for q in prior.unet.class_embedding.parameters()} if camera else set()
    scale = (args.camera_lr or args.lr) / args.lr
    groups = [
        {"params": [q for q in params if id(q) in cam_ids], "scale": scale},
        {"params": [q for q in params if id(q) not in cam_ids], "scale": 1.0},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    losses: list[float] = []
    start, before = 0, 0.0
    ckpt = args.work_dir / "checkpoint.pt"
    if ckpt.exists() and not args.no_resume:
        state = torch.load(ckpt, weights_only=False)
        if len(state["losses"]) <= last:
            try:
                prior.unet.load_state_dict(state["unet"])
            except RuntimeError:
                raise UserError(f"{ckpt} holds another UNet than --channels {' '.join(map(str, args.channels))} "
                                f"--layers-per-block {args.layers_per_block}; give those it was started with, "
                                "another --work-dir or --no-resume") from None
            prior.text_encoder.load_state_dict(state["text_encoder"])
            ema_unet.load_state_dict(state["ema_unet"])
            ema_te.load_state_dict(state["ema_text_encoder"])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            losses, start, before = state["losses"], state["step"], state.get("seconds", 0.0)
            print(f"resuming from step {start} ({ckpt})", file=sys.stderr)
    abar = prior.scheduler.alphas_cumprod.float()
    prior.unet.train()
    prior.text_encoder.train()
    t0 = time.time()
    bar = tqdm(
        range(start, last),
        initial=start,
        total=last,
        desc="prior",
        unit="step",
        dynamic_ncols=True,
        mininterval=2.0,
    )
    for step in bar:
        batch = random_batch(
            args.batch_size,
            gen,
            size=M.SAMPLE_SIZE,
            p_view_suffix=args.p_view,
            p_empty=args.p_empty,
            p_no_camera=args.p_no_camera if camera else 0.0,
        )
        t = torch.randint(args.t_range[0], args.t_range[1], (args.batch_size,), generator=gen)
        noise = torch.randn(batch.images.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * batch.images + (1 - a).sqrt() * noise
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args) * g["scale"]
        emb = M.encode(prior, batch.captions)
        labels = batch.cameras if camera else None
        pred = prior.unet(x_t, t, encoder_hidden_states=emb, class_labels=labels).sample
        per_sample = (pred - noise).pow(2).mean((1, 2, 3))
        if args.x0_loss:
            loss = (per_sample * (1 - abar[t]) / abar[t]).mean()
        elif args.min_snr_gamma > 0 and step >= args.min_snr_from:
            snr = abar[t] / (1 - abar[t])
            loss = (per_sample * snr.clamp(max=args.min_snr_gamma) / snr).mean()
        else:
            loss = per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        ema_update(ema_unet, prior.unet, decay)
        ema_update(ema_te, prior.text_encoder, decay)
        losses.append(per_sample.mean().item())  # plain MSE on the noise, whatever the weighting
        if step % 10 == 0:
            recent = losses[-100:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", lr=f"{lr_at(step, args):.1e}")
        if (step + 1) % args.checkpoint_every == 0 and step + 1 < last:
            _save_ckpt(ckpt, step + 1, prior, ema_unet, ema_te, opt, gen, losses, before + time.time() - t0)
    bar.close()
    seconds = before + time.time() - t0
    _save_ckpt(ckpt, last, prior, ema_unet, ema_te, opt, gen, losses, seconds)
    final = M.Prior(ema_unet.eval(), ema_te.eval(), prior.tokenizer, prior.scheduler)
    return {"prior": final, "losses": losses, "seconds": seconds, "resumed_from": start}


# ----------------------------------------------------------------------------------------------------
# Model card artefacts


def smooth(xs: list[float], k: int = 50) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= k:
            acc -= xs[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_loss(losses: list[float], path: Path, size=(640, 360)) -> None:
    """A log-scale loss curve (raw in grey, 50-step mean in blue) drawn with PIL."""
    from PIL import Image, ImageDraw

    w, h = size
    ml, mr, mt, mb = 60, 15, 25, 35
    img = Image.new("RGB", size, "white")
    dr = ImageDraw.Draw(img)
    lo = math.log10(max(min(losses), 1e-4))
    hi = math.log10(max(losses))
    lo, hi = math.floor(lo * 2) / 2, math.ceil(hi * 2) / 2

    def xy(i, v):
        x = ml + (w - ml - mr) * i / max(1, len(losses) - 1)
        y = mt + (h - mt - mb) * (hi - math.log10(max(v, 1e-4))) / max(hi - lo, 1e-6)
        return x, y

    dr.rectangle([ml, mt, w - mr, h - mb], outline="black")
    e = lo
    while e <= hi + 1e-9:
        _, y = xy(0, 10**e)
        dr.line([ml, y, w - mr, y], fill=(225, 225, 225))
        dr.text((5, y - 6), f"{10**e:.3g}", fill="black")
        e += 0.5
    for frac in (0, 0.25, 0.5, 0.75, 1):
        i = int(frac * (len(losses) - 1))
        x, _ = xy(i, 1)
        dr.text((x - 10, h - mb + 5), str(i + 1), fill="black")
    step = max(1, len(losses) // 2000)
    dr.line([xy(i, losses[i]) for i in range(0, len(losses), step)], fill=(190, 190, 190))
    sm = smooth(losses)
    dr.line([xy(i, sm[i]) for i in range(0, len(sm), step)], fill=(30, 80, 200), width=2)
    dr.text((ml, 5), "training loss (MSE on the noise), log scale; blue: 50-step mean", fill="black")
    dr.text((w // 2 - 15, h - 15), "step", fill="black")
    img.save(path)


def sample_grid(
    prior: M.Prior,
    path: Path,
    per_prompt: int = 4,
    seed: int = 0,
    steps: int = 50,
    guidance_scale: float = 3.0,
    scale: int = 2,
) -> None:
    """Rows: colour x shape prompts (30), columns: ``per_prompt`` samples each; the evaluation's sampler
    (ancestral DDPM sampling on 50 steps, guidance 3)."""
    from PIL import Image

    prompts = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    g = torch.Generator().manual_seed(seed)
    imgs = M.sample(
        prior,
        [p for p in prompts for _ in range(per_prompt)],
        g,
        steps=steps,
        guidance_scale=guidance_scale,
    )
    s = imgs.shape[-1]
    # 6 colour rows x (5 shapes * per_prompt) columns
    grid = imgs.reshape(len(COLOURS), len(SHAPES) * per_prompt, 3, s, s).permute(0, 3, 1, 4, 2)
    grid = grid.reshape(len(COLOURS) * s, len(SHAPES) * per_prompt * s, 3)
    arr = (grid.numpy() * 255).round().astype("uint8")
    im = Image.fromarray(arr)
    im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)


CARD = """---
library_name: diffusers
tags: [text-to-image, pixel-space, synthetic, dreamfusion, offline]
---
# Shapes-world prior (offline text-to-image model for CPU text-to-3D)

A tiny text-conditioned diffusion model that the project trains itself and ships inside the package, so
that DreamFusion's Score Distillation Sampling runs on a CPU with no download. It knows one small world:
{n_shapes} primitives ({shapes}) in {n_colours} colours ({colours}), centred at the origin, seen from the
NeRF stage's training cameras on a **static white background**.

## Parts (diffusers/transformers format, no VAE)
| folder | class | parameters |
| --- | --- | --- |
| `unet/` | `diffusers.UNet2DConditionModel`, epsilon, pixels {s}x{s} RGB in [-1, 1] | {unet_params:,} |
| `text_encoder/` | `transformers.CLIPTextModel` (2 layers, width 64) | {te_params:,} |
| `tokenizer/` | `transformers.CLIPTokenizer`, word-level, {vocab} tokens, max length {maxlen} | |
| `scheduler/` | `diffusers.DDPMScheduler`, 1000 training steps, linear betas | |

UNet: channels (32, 64, 64), one ResNet layer per block, cross-attention only at 8x8 and in the middle
block. Load with `from_pretrained(folder, subfolder=..., local_files_only=True)`; encode prompts padded to
`model_max_length`, `text_encoder(ids)[0]`; unconditional prompt `""`.

## Data
Rendered on the fly by `dreamfusion/prior/data.py` (analytic ray casting, 64x64 area-averaged to {s}x{s}):
cameras from `dreamfusion.data.cameras.sample_train` with the NeRF stage's training cameras under the
`shapes` preset ({cameras}, +Y up); primitives centred at the origin in
a fixed pose, h = 0.3 world units: cube of half-size h, sphere of radius h, cylinder (axis +Y) of radius
0.7h and height 2h, cone (axis +Y, apex up) of base radius h and height 2h, flat torus (axis +Y) of
radii 0.65h and 0.35h; lambertian shading `albedo * (a + (1 - a) max(n.l, 0))`, ambient a ~ U[0.1, 1],
light from the camera plus N(0, I); albedo jitter +-0.04; background {bg}. Captions `"a red cube"`, with the
camera's view suffix (`", front view"`, `", side view"`, `", back view"`) half of the time; {p_empty:.0%}
dropped to `""` for classifier-free guidance.

**The NeRF stage must render the same background:** `background=static`, colour `[1, 1, 1]`.

## Training
`python -m dreamfusion.prior.train` (`make prior`), seed {seed}: {steps} steps of a {schedule_steps}-step
schedule, batch {batch}
({images:,} images seen), AdamW lr {lr} (warm-up {warmup}, cosine to 10%), gradient clip 1, loss: MSE on
the noise for the first {min_snr_from} steps, then Min-SNR weighted (gamma {min_snr_gamma}), EMA {ema}
(saved weights are the EMA). Wall time {minutes:.0f} minutes on {threads} CPU threads. Final loss
(mean of the last 200 steps): {final_loss:.4f}.

![loss curve](loss_curve.png)
{camera_section}
## Samples
Rows: {colours}; columns: 4 samples each of {shapes}. Ancestral sampling (the DDPM posterior, eta 1)
on 50 steps from t = 999, classifier-free guidance 3, seed 0 (the evaluation's sampler):

![samples](samples.png)

## Evaluation
{evaluation}

## Limits
Knows only these words and objects; anything else is a letter-by-letter prompt it has never seen.
32x32 pixels. Sample it with noise (DDPM, eta 1): deterministic DDIM (eta 0) on 50 steps drifts, with
tinted, blotchy backgrounds and shapes lost in them (see the DDIM rows above). Without guidance
the prompt's colour and shape come through less often; SDS uses strong guidance anyway, as with
Stable Diffusion.
A torus's hole is out of sight: the world's cameras (polar 45-105 degrees, elevation -15 to 45)
never see background through it (a line through a hole of radius 0.09 under a ring 0.21 tall needs
49 degrees or more), so the prior cannot tell a torus from a disc with a dip, and the tori its NeRFs
make are solid. On the penalty-37.5 run's meshes a vertical line down the axis meets the surface at
y -0.08 to -0.12 and +0.07 to +0.12 (the true torus: nothing inside radius 0.09), as thick as the
ring or thicker. The score's cameras (elevation 10) do not see the hole either, and call them tori.
"""

CAMERA_SECTION = """
### Camera input (second stage)
The view words span 90 degrees of azimuth each, a cube's whole period, so "a red cube, front view" shows
the cube at every apparent yaw and SDS from all azimuths adds up to a round drum. The UNet therefore
also takes the camera: `class_labels` = `dreamfusion.data.cameras.camera_embedding` (1, cos and sin of
the polar angle, sin and cos of 1-4 times the azimuth; 11 numbers, all zero for "camera unknown"),
projected by diffusers' `class_embed_type="projection"` and added to the timestep embedding. The SDS
guidance passes every render's camera to it, with the conditional and the unconditional text.
Stage 2 (`python -m dreamfusion.prior.train --init-from <stage 1 folder>`): the stage-1 weights plus the
camera projection with its output layer at zero (the same predictions at step 0), fine-tuned
{steps} steps, batch {batch}, AdamW lr {lr} (warm-up {warmup}, cosine to 10%), Min-SNR gamma
{min_snr_gamma}, EMA {ema}, camera dropped to "unknown" {p_no_camera:.0%} of the time; {minutes:.0f}
minutes on {threads} threads; final loss {final_loss:.4f} (mean of the last 200 steps).

![camera fine-tune loss](loss_curve_camera.png)
"""

EVAL_PLACEHOLDER = "Run `python -m dreamfusion.prior.evaluate --write-card` to fill this section."


def _span(lo: float, hi: float, sep: str = "-") -> str:
    return f"{lo:g}" if lo == hi else f"{lo:g}{sep}{hi:g}"


def describe_cameras() -> str:
    c = world_cameras(64)
    return (
        f"radius {_span(*c.radius_range)}, polar angle {_span(*c.theta_range)} degrees, "
        f"azimuth {_span(*c.phi_range, sep='..')}, fovy {_span(*c.fovy_range)} degrees"
    )


def write_card(out: Path, info: dict, evaluation: str = EVAL_PLACEHOLDER) -> None:
    stage2 = info.get("camera_finetune")
    section = CAMERA_SECTION.format(**stage2) if stage2 else ""
    info = {"cameras": describe_cameras(), **info, "camera_section": section}
    (out / "README.md").write_text(CARD.format(evaluation=evaluation, **info))


def log_final(losses: list[float]) -> float:
    """The final loss the card reports: the mean of the last 200 steps."""
    return sum(losses[-200:]) / len(losses[-200:])


def card_only(args) -> int:
    out: Path = args.output
    info = json.loads((out / "training_log.json").read_text())
    info.pop("loss_every_10_steps", None)
    if "camera_finetune" in info:
        info["camera_finetune"].pop("loss_every_10_steps", None)
    info.setdefault("min_snr_gamma", args.min_snr_gamma)
    info.setdefault("min_snr_from", args.min_snr_from)
    info.setdefault("schedule_steps", args.steps)
    evaluation = EVAL_PLACEHOLDER
    card = out / "README.md"
    if card.exists() and "## Evaluation\n" in card.read_text():
        rest = card.read_text().split("## Evaluation\n", 1)[1]
        evaluation = rest.split("\n## ", 1)[0].strip() or EVAL_PLACEHOLDER
    write_card(out, info, evaluation)
    print(f"wrote {card}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.card_only:
        return card_only(args)
    try:
        res = train(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prior, losses = res["prior"], res["losses"]
    out: Path = args.output
    if out.exists():
        for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
            shutil.rmtree(out / sub, ignore_errors=True)
    M.save(prior, out)
    plot_loss(losses, out / ("loss_curve.png" if args.init_from is None else "loss_curve_camera.png"))
    torch.manual_seed(args.seed)
    sample_grid(prior, out / "samples.png")
    log_path = out / "training_log.json"
    info = dict(
        n_shapes=len(SHAPES),
        shapes=", ".join(SHAPES),
        n_colours=len(COLOURS),
        colours=", ".join(COLOURS),
        s=M.SAMPLE_SIZE,
        unet_params=M.param_count(prior.unet),
        te_params=M.param_count(prior.text_encoder),
        vocab=len(prior.tokenizer.get_vocab()),
        maxlen=prior.tokenizer.model_max_length,
        bg=f"static {list(BACKGROUND)}",
        p_empty=args.p_empty,
        seed=args.seed,
        steps=len(losses),
        schedule_steps=args.steps,
        batch=args.batch_size,
        images=len(losses) * args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        ema=args.ema,
        min_snr_gamma=args.min_snr_gamma,
        min_snr_from=args.min_snr_from,
        minutes=res["seconds"] / 60,
        resumed_from=res["resumed_from"],
        threads=args.threads,
        final_loss=log_final(losses),
    )
    every_10 = [round(sum(losses[i : i + 10]) / len(losses[i : i + 10]), 5) for i in range(0, len(losses), 10)]
    log = {**info, "loss_every_10_steps": every_10}
    if args.init_from is not None:  # stage 2: stage 1's record, with this fine-tune beside it
        base = json.loads((args.init_from / "training_log.json").read_text())
        curve = args.init_from / "loss_curve.png"  # stage 1's
        if curve.exists() and args.init_from.resolve() != out.resolve():
            shutil.copyfile(curve, out / curve.name)
        keys = ("steps", "batch", "lr", "warmup", "min_snr_gamma", "ema", "minutes", "threads", "final_loss",
                "schedule_steps", "unet_params")
        stage2 = {**{k: info[k] for k in keys}, "p_no_camera": args.p_no_camera}
        stage2_log = {**stage2, "loss_every_10_steps": every_10}
        log = {**base, "unet_params": info["unet_params"], "camera_finetune": stage2_log}
        info = {k: v for k, v in log.items() if k != "loss_every_10_steps"}
        info["camera_finetune"] = stage2
    log_path.write_text(json.dumps(log, indent=1) + "\n")
    write_card(out, info)
    print(f"wrote {out} ({len(losses)} steps, final loss {log_final(losses):.4f}, {res['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
