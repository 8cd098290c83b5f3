"""Evaluation of the shapes-world prior: ``python -m dreamfusion.prior.evaluate`` (``make eval-prior``).

The analysis is written against the *world*, not the model: colour is read from the mean hue of an
image's foreground, shape from the silhouette of the true primitives rendered by the analytic
ray-caster (:mod:`dreamfusion.prior.data`). Nothing here looks at the model's weights or training data.

2D (the prior alone): 8 samples for every colour x shape prompt, by ancestral sampling (the DDPM
posterior, ``eta`` 1, on 50 evenly spaced steps; ``--eta 0`` is DDIM); a sample's
camera is unknown, so its silhouette is compared with each primitive's silhouettes over a fixed bank of
cameras drawn from the same distribution as the training cameras, and the shape whose best match is
highest wins.

3D (the NeRF stage with this prior): renders (RGB + opacity) at known cameras are compared with the
true primitives rendered at the same cameras: silhouette IoU for each of the five shapes, the best
match, and the hue. :func:`analyse_renders` is the helper; the pass rule is
:func:`dreamfusion.prior.score.score`'s; :func:`evaluate_3d` is the hook that runs the NeRF stage
(``python -m dreamfusion.prior.evaluate_3d`` fills it in).
"""

from __future__ import annotations

import argparse
import colorsys
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from dreamfusion.config.schema import EvalDatasetConfig
from dreamfusion.data.cameras import Cameras, circle
from dreamfusion.prior.data import BACKGROUND, COLOURS, SHAPES, camera_bank, silhouette

# ----------------------------------------------------------------------------------------------------
# Colour


def _ref_hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*rgb)[0] * 360.0


CHROMATIC = {name: _ref_hue(rgb) for name, rgb in COLOURS.items() if name != "white"}


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) in [0, 1] -> (..., 3) hue in degrees [0, 360), saturation, value."""
    r, g, b = rgb.unbind(-1)
    mx, _ = rgb.max(-1)
    mn, _ = rgb.min(-1)
    delta = mx - mn
    safe = torch.where(delta > 1e-8, delta, torch.ones_like(delta))
    h = torch.where(mx == r, ((g - b) / safe) % 6, torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(delta > 1e-8, h * 60.0, torch.zeros_like(h)) % 360.0
    s = torch.where(mx > 1e-8, delta / torch.where(mx > 1e-8, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    return torch.stack([h, s, mx], -1)


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 360.0
    return min(d, 360.0 - d)


@dataclass
class ColourReading:
    colour: str  # the nearest named colour, or "none" without a foreground
    hue: float | None  # circular mean hue of the chromatic foreground pixels, degrees
    chromatic_fraction: float  # share of foreground pixels with a clear hue


def classify_colour(
    rgb: torch.Tensor,
    mask: torch.Tensor,
    min_saturation: float = 0.35,
    min_value: float = 0.12,
    min_chromatic: float = 0.3,
) -> ColourReading:
    """Colour of one image's foreground: (H, W, 3) in [0, 1], (H, W) bool.

    Pixels with saturation >= ``min_saturation`` and value >= ``min_value`` are chromatic; if fewer than
    ``min_chromatic`` of the foreground are, the object is "white" (grey shades); else the saturation-
    weighted circular mean hue picks the nearest of the named hues.
    """
    m = mask.bool()
    if int(m.sum()) == 0:
        return ColourReading("none", None, 0.0)
    hsv = rgb_to_hsv(rgb[m].float())
    chrom = (hsv[:, 1] >= min_saturation) & (hsv[:, 2] >= min_value)
    frac = float(chrom.float().mean())
    if int(chrom.sum()) == 0:
        return ColourReading("white", None, frac)
    h = torch.deg2rad(hsv[chrom, 0])
    w = hsv[chrom, 1]
    hue = math.degrees(math.atan2(float((w * h.sin()).sum()), float((w * h.cos()).sum()))) % 360.0
    if frac < min_chromatic:
        return ColourReading("white", hue, frac)
    name = min(CHROMATIC, key=lambda c: hue_distance(hue, CHROMATIC[c]))
    return ColourReading(name, hue, frac)


# ----------------------------------------------------------------------------------------------------
# Foreground and shape (2D: unknown camera)


def foreground_mask(
    img: torch.Tensor,
    threshold: float = 0.12,
    background: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, H, W, 3) in [0, 1] -> (B, H, W) bool: pixels farther than ``threshold`` (max over channels)
    from the background colour; the background is the median border pixel unless given."""
    if background is None:
        border = torch.cat([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], 1)  # (B, 2H+2W, 3)
        background = border.median(1).values
    bg = torch.as_tensor(background, dtype=img.dtype).reshape(-1, 3)
    return (img - bg[:, None, None, :]).abs().amax(-1) > threshold


def iou_matrix(masks: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    """IoU of every mask (N, H, W) with every reference (M, H, W) -> (N, M)."""
    a = masks.reshape(len(masks), -1).float()
    b = refs.reshape(len(refs), -1).float()
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1)[None] - inter
    return inter / union.clamp_min(1.0)


class ShapeMatcher:
    """Nearest primitive by silhouette over a fixed bank of cameras (for images whose camera is unknown)."""

    def __init__(self, size: int = 32, n_cameras: int = 512, seed: int = 1234, supersample: int = 2):
        self.size = size
        self.cams = camera_bank(n_cameras, size, seed)
        self.bank = torch.stack([silhouette(self.cams, s, supersample) > 0.5 for s in SHAPES])  # (5, N, H, W)

    def scores(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, H, W) bool -> (B, 5): best IoU of each primitive over the camera bank."""
        if masks.shape[-1] != self.size:
            masks = F.interpolate(masks[:, None].float(), size=(self.size, self.size), mode="area")[:, 0] > 0.5
        n = self.bank.shape[1]
        ious = iou_matrix(masks, self.bank.reshape(-1, self.size, self.size))
        return ious.reshape(len(masks), len(SHAPES), n).amax(-1)

    def classify(self, masks: torch.Tensor) -> list[str]:
        return [SHAPES[i] for i in self.scores(masks).argmax(1).tolist()]


# ----------------------------------------------------------------------------------------------------
# 3D: renders at known cameras against the true primitives at the same cameras


@dataclass
class Analysis3D:
    ious: dict[str, float]  # silhouette IoU (pooled over all views) against each primitive
    best_shape: str
    margin: float  # best IoU minus the second best
    colour: str
    hue: float | None
    chromatic_fraction: float
    per_view_iou: list[float] = field(default_factory=list)  # against ``shape`` if given, else best
    yaw: float = 0.0  # the turn (degrees about +Y) of that primitive the IoUs are taken at (:func:`best_yaw`)


CUBE_YAWS = tuple(2.5 * k for k in range(36))
"""The yaws (degrees, a quarter turn: the cube's period about +Y) a cube is scored at. The cube is the
world's one primitive that is not round about its vertical axis, and no prompt names its yaw (nor can a
prior without the camera tell it from a render at high noise: the model card's yaw section), so a
right cube at any yaw is right; against the axis-aligned cube alone, a true cube turned 45 degrees
scores IoU 0.77 at the evaluation cameras. The others are scored at yaw 0 (turning changes nothing)."""


def turned(cams: Cameras, yaw: float) -> Cameras:
    """The cameras turned by ``yaw`` degrees about +Y: what they see of a primitive is that primitive
    turned by ``-yaw``."""
    a = math.radians(yaw)
    c, s = math.cos(a), math.sin(a)
    rot = torch.tensor([[c, 0.0, s, 0.0], [0.0, 1.0, 0.0, 0.0], [-s, 0.0, c, 0.0], [0.0, 0.0, 0.0, 1.0]])
    phi = torch.remainder(cams.phi + yaw + 180.0, 360.0) - 180.0
    return dataclasses.replace(cams, c2w=rot.to(cams.c2w) @ cams.c2w, phi=phi)


_TRUTHS: dict[tuple, torch.Tensor] = {}  # (shape, yaw, supersample, cameras) -> silhouettes


def true_silhouette(cams: Cameras, shape: str, yaw: float = 0.0, supersample: int = 2) -> torch.Tensor:
    """Coverage (B, H, W) in [0, 1] of the true ``shape`` turned by ``yaw`` degrees about +Y, at the
    cameras (kept for cameras seen before: the scoring cameras are always the same)."""
    key = (shape, float(yaw), supersample, cams.width, cams.height, cams.c2w.cpu().numpy().tobytes(),
           cams.fovy.cpu().numpy().tobytes())
    if key not in _TRUTHS:
        if len(_TRUTHS) > 512:
            _TRUTHS.clear()
        _TRUTHS[key] = silhouette(turned(cams, -yaw) if yaw else cams, shape, supersample)
    return _TRUTHS[key]


def true_silhouettes(cams: Cameras, shapes=SHAPES, supersample: int = 2) -> dict[str, torch.Tensor]:
    """Coverage (B, H, W) in [0, 1] of each true primitive at the cameras (axis-aligned)."""
    return {s: true_silhouette(cams, s, 0.0, supersample) for s in shapes}


def best_yaw(opacity: torch.Tensor, cams: Cameras, shape: str, threshold: float = 0.5) -> tuple[float, float]:
    """(yaw in degrees, IoU): the turn of the true ``shape`` about +Y that the renders' silhouettes
    match best (:data:`CUBE_YAWS` for the cube, 0 for the primitives that are round about +Y)."""
    yaws = CUBE_YAWS if shape == "cube" else (0.0,)
    ious = [silhouette_iou(opacity, true_silhouette(cams, shape, y), threshold) for y in yaws]
    best = max(range(len(yaws)), key=ious.__getitem__)  # the first (smallest yaw) of equal ones
    return yaws[best], ious[best]


def silhouette_iou(pred: torch.Tensor, true: torch.Tensor, threshold: float = 0.5) -> float:
    """IoU of two (B, H, W) coverage/opacity stacks, thresholded, pooled over all views."""
    p, t = pred > threshold, true > threshold
    union = (p | t).sum()
    return float((p & t).sum()) / max(int(union), 1)


def analyse_renders(
    rgb: torch.Tensor, opacity: torch.Tensor, cams: Cameras, shape: str | None = None, threshold: float = 0.5
) -> Analysis3D:
    """Renders of a 3D object at ``cams``: ``rgb`` (B, H, W, 3) in [0, 1], ``opacity`` (B, H, W) in [0, 1].

    Returns the silhouette IoU against each of the five true primitives at the same cameras (opacity
    above ``threshold`` is the object), the best match and its margin over the runner-up, and the colour
    (hue of the pixels with opacity above ``threshold``, all views together).
    """
    if rgb.shape[:3] != opacity.shape or rgb.shape[0] != len(cams):
        raise ValueError(
            f"shapes disagree: rgb {tuple(rgb.shape)}, opacity {tuple(opacity.shape)}, {len(cams)} cameras"
        )
    if (cams.height, cams.width) != tuple(opacity.shape[1:]):
        raise ValueError(f"cameras are {cams.height}x{cams.width} but renders {tuple(opacity.shape[1:])}")
    yaws, ious = {}, {}
    for s in SHAPES:
        yaws[s], ious[s] = best_yaw(opacity, cams, s, threshold)
    ranked = sorted(ious, key=ious.get, reverse=True)
    named = shape or ranked[0]
    ref = true_silhouette(cams, named, yaws[named]) > threshold
    p = opacity > threshold
    per_view = ((p & ref).flatten(1).sum(1).float() / (p | ref).flatten(1).sum(1).clamp_min(1).float()).tolist()
    mask = opacity > threshold
    reading = classify_colour(rgb.reshape(-1, rgb.shape[-1])[None], mask.reshape(1, -1))
    return Analysis3D(
        ious,
        ranked[0],
        ious[ranked[0]] - ious[ranked[1]],
        reading.colour,
        reading.hue,
        reading.chromatic_fraction,
        per_view,
        yaws[named],
    )


def parse_prompt(prompt: str) -> tuple[str, str]:
    """``"a red cube"`` (any view suffix) -> ("red", "cube"); ValueError if not a shapes-world prompt."""
    words = prompt.lower().replace(",", " ").split()
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in words if w in SHAPES]
    if len(colours) != 1 or len(shapes) != 1:
        raise ValueError(
            f"not a shapes-world prompt (one colour of {list(COLOURS)} and one shape of {list(SHAPES)}): {prompt!r}"
        )
    return colours[0], shapes[0]


def prompt_error(prompts) -> str | None:
    """Why the first of ``prompts`` outside the shapes world is refused (:func:`parse_prompt`'s
    message), or None: the evaluations check every prompt with it before anything trains."""
    for prompt in prompts:
        try:
            parse_prompt(prompt)
        except ValueError as e:
            return str(e)
    return None


VIEWS_3D = 24
"""Azimuths the 3D evaluation looks from, 15 degrees apart. With 8 (45 apart) every view saw a cube at
one of two phases of its quarter-turn period, and a drum (round about +Y) matched the cube turned
22.5 degrees, which every view then sees between face and corner, better than the cube itself:
searching the cube's yaw (:data:`CUBE_YAWS`) would have flattered drums. 24 views see six phases."""


def eval_cameras(n: int = VIEWS_3D, size: int = 64, cfg: EvalDatasetConfig | None = None) -> Cameras:
    """The 3D evaluation's cameras: ``n`` azimuths on the validation circle (radius 3.2, polar 80,
    fovy 20 by default)."""
    cfg = cfg or EvalDatasetConfig(width=size, height=size, n_views=n)
    return circle(cfg, n)


RenderFn = Callable[[str, Cameras], tuple[torch.Tensor, torch.Tensor]]
PROMPTS_3D = ("a red cube", "a blue sphere", "a yellow cone")


def evaluate_3d(
    prompts=PROMPTS_3D,
    render_fn: RenderFn | None = None,
    n_views: int = VIEWS_3D,
    size: int = 64,
) -> list[dict]:
    """Hook for the 3D evaluation: ``render_fn(prompt, cams) -> (rgb (B,H,W,3), opacity (B,H,W))`` trains
    (or loads) the NeRF for ``prompt`` with this prior and renders it at ``cams``; each result is
    :func:`dreamfusion.prior.score.score` of those renders (its NeRF part, ``passed`` and ``failures``).
    The NeRF-stage side is supplied by the caller (``python -m dreamfusion.prior.evaluate_3d``); without
    it this raises NotImplementedError."""
    from dreamfusion.prior import score

    if render_fn is None:
        raise NotImplementedError("the 3D evaluation needs the nerf-sds stage: pass render_fn(prompt, cams)")
    cams = eval_cameras(n_views, size)
    out = []
    for prompt in prompts:
        t0 = time.time()
        s = score.score(prompt, nerf=render_fn(prompt, cams), cams=cams)
        out.append({"prompt": prompt, **s["nerf"], "passed": s["passed"], "failures": s["failures"],
                    "seconds": time.time() - t0})
    return out


# ----------------------------------------------------------------------------------------------------
# 2D evaluation of the prior


def evaluate_2d(
    prior=None,
    samples: int = 8,
    steps: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
    prompts: list[tuple[str, str]] | None = None,
    batch: int = 60,
    progress: bool = True,
    eta: float = 1.0,
    **sample_kw,
) -> dict:
    """Sample ``samples`` images per (colour, shape) prompt and judge them. Returns per-prompt and total
    figures plus the images (B, 3, S, S)."""
    from dreamfusion.prior import model as M

    prior = prior or M.load()
    pairs = prompts or [(c, s) for c in COLOURS for s in SHAPES]
    texts = [f"a {c} {s}" for c, s in pairs for _ in range(samples)]
    g = torch.Generator().manual_seed(seed)
    imgs = []
    it = range(0, len(texts), batch)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="sampling", unit="batch", dynamic_ncols=True)
    for i in it:
        imgs.append(
            M.sample(prior, texts[i : i + batch], g, steps=steps, guidance_scale=guidance_scale, eta=eta, **sample_kw)
        )
    imgs = torch.cat(imgs)
    hwc = imgs.permute(0, 2, 3, 1)
    masks = foreground_mask(hwc, background=torch.tensor(BACKGROUND))  # the world's (training) background
    matcher = ShapeMatcher(size=hwc.shape[1])
    shapes_pred = matcher.classify(masks)
    colours_pred = [classify_colour(hwc[i], masks[i]).colour for i in range(len(hwc))]
    per = []
    for k, (c, s) in enumerate(pairs):
        sl = slice(k * samples, (k + 1) * samples)
        cp, sp = colours_pred[sl], shapes_pred[sl]
        per.append(
            {
                "prompt": f"a {c} {s}",
                "colour_right": sum(x == c for x in cp),
                "shape_right": sum(x == s for x in sp),
                "both_right": sum(x == c and y == s for x, y in zip(cp, sp)),
                "n": samples,
                "colours": cp,
                "shapes": sp,
            }
        )
    n = len(texts)
    total = {
        "t_start": sample_kw.get("t_start") or 999,
        "colour": sum(p["colour_right"] for p in per) / n,
        "shape": sum(p["shape_right"] for p in per) / n,
        "both": sum(p["both_right"] for p in per) / n,
        "n": n,
        "steps": steps,
        "eta": eta,
        "guidance_scale": guidance_scale,
        "seed": seed,
    }
    return {"total": total, "per_prompt": per, "images": imgs}


def sampler_name(eta: float) -> str:
    return {0.0: "DDIM", 1.0: "DDPM"}.get(float(eta), f"eta {eta:g}")


def format_2d(res: dict) -> str:
    t = res["total"]
    lines = [
        f"{'prompt':<22} {'colour':>7} {'shape':>7}  shapes seen",
        *(
            f"{p['prompt']:<22} {p['colour_right']:>4}/{p['n']} {p['shape_right']:>4}/{p['n']}  "
            + ",".join(sorted(set(p["shapes"]) - {p["prompt"].split()[-1]}))
            for p in res["per_prompt"]
        ),
        f"TOTAL ({t['n']} samples, {sampler_name(t['eta'])} {t['steps']} steps from t={t['t_start']}, guidance "
        f"{t['guidance_scale']}): "
        f"right colour {100 * t['colour']:.1f}%, right shape {100 * t['shape']:.1f}%, "
        f"both {100 * t['both']:.1f}%",
    ]
    return "\n".join(lines)


def save_grid(images: torch.Tensor, path: Path, per_row: int, scale: int = 2) -> None:
    from PIL import Image

    n, _, s, _ = images.shape
    rows = math.ceil(n / per_row)
    pad = torch.ones(rows * per_row - n, 3, s, s)
    g = (
        torch.cat([images, pad])
        .reshape(rows, per_row, 3, s, s)
        .permute(0, 3, 1, 4, 2)
        .reshape(rows * s, per_row * s, 3)
    )
    im = Image.fromarray((g.numpy() * 255).round().astype("uint8"))
    im.resize((im.width * scale, im.height * scale), Image.NEAREST).save(path)


CARD_MARK = "## Evaluation\n"
CARD_3D_MARK = "\n### 3D"


def write_card_section(card: Path, results: list[dict]) -> None:
    """Replace the 2D part of the model card's Evaluation section with these results; a ``### 3D``
    subsection and any later section are kept."""
    text = card.read_text()
    head, _, rest = text.partition(CARD_MARK)
    ends = [i for i in (rest.find(CARD_3D_MARK), rest.find("\n## ")) if i >= 0]
    tail = rest[min(ends) :] if ends else "\n"
    body = [
        "### 2D",
        "",
        "2D, by `python -m dreamfusion.prior.evaluate` (analysis independent of the model: colour from the "
        "mean hue of the foreground, shape from the nearest true-primitive silhouette over 512 training-"
        "distribution cameras), 8 samples for each of the 30 colour x shape prompts:",
        "",
        "| sampler | steps | guidance | first t | right colour | right shape | both |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        t = r["total"]
        body.append(
            f"| {sampler_name(t['eta'])} | {t['steps']} | {t['guidance_scale']} | {t['t_start']} "
            f"| {100 * t['colour']:.1f}% "
            f"| {100 * t['shape']:.1f}% "
            f"| {100 * t['both']:.1f}% |"
        )
    body += [
        "",
        "Per prompt ({}, guidance {}, first t {}): ".format(
            sampler_name(results[0]["total"]["eta"]),
            results[0]["total"]["guidance_scale"],
            results[0]["total"]["t_start"],
        )
        + "; ".join(f"{p['prompt'][2:]} {p['colour_right']}/{p['shape_right']}" for p in results[0]["per_prompt"])
        + " (right colour / right shape of 8).",
        "",
    ]
    card.write_text(head + CARD_MARK + "\n".join(body) + tail)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dreamfusion.prior.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--prior", type=Path, default=None, help="prior folder (default: the shipped one)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument(
        "--eta",
        type=float,
        nargs="+",
        default=[1.0, 0.0],
        help="sampler noise: 1 is ancestral DDPM sampling, 0 is DDIM; the first configuration is the headline",
    )
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0, 1.0])
    p.add_argument(
        "--t-start",
        type=int,
        nargs="+",
        default=[999],
        help="first timestep(s) of the sampler; every guidance is run with every one",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--grid", type=Path, default=None, help="write the samples of the first configuration here")
    p.add_argument("--write-card", action="store_true", help="put the figures into the prior's model card")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from dreamfusion.prior import model as M

    folder = args.prior or M.SHAPES_DIR
    if not (folder / "unet").is_dir():
        print(f"error: no prior at {folder} (run `make prior` first)", file=sys.stderr)
        return 2
    prior = M.load(folder)
    results = []
    for eta, ts, gs in [(e, t, g) for e in args.eta for t in args.t_start for g in args.guidance]:
        r = evaluate_2d(prior, args.samples, args.steps, gs, args.seed, eta=eta, t_start=ts)
        print(format_2d(r), flush=True)
        if args.grid and not results:
            save_grid(r["images"], args.grid, per_row=args.samples * len(SHAPES))
        results.append(r)
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "images"} for r in results], indent=1))
    if args.write_card:
        write_card_section(folder / "README.md", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "CUBE_YAWS",
    "VIEWS_3D",
    "Analysis3D",
    "ColourReading",
    "ShapeMatcher",
    "analyse_renders",
    "best_yaw",
    "classify_colour",
    "eval_cameras",
    "evaluate_2d",
    "evaluate_3d",
    "foreground_mask",
    "iou_matrix",
    "parse_prompt",
    "prompt_error",
    "rgb_to_hsv",
    "silhouette_iou",
    "true_silhouette",
    "true_silhouettes",
    "turned",
]
