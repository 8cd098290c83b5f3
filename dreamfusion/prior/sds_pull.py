"""Where the SDS gradient moves a render of the true primitive, by noise level.

    python -m dreamfusion.prior.sds_pull [--guidance 3] [--prompts "a white cube" ...] [--t 20 300 500 700 980]
        [--grow] [--size 1.18] [--ambient LO HI] [--fovy LO HI] [--radius LO HI] [--model FOLDER]

For each prompt: the true primitive rendered as the prior was trained (the NeRF stage's training
cameras, or those held to ``--fovy`` / ``--radius``; light from the camera perturbed by N(0, I),
ambient in [0.1, 1]; 32x32 area-averaged from 64x64), at its size, 1.18 times larger and smaller
(``--size``; the field of view narrowed or widened). The SDS gradient of the shipped prior (or
``--model``'s) at the ``shapes`` preset's settings is drawn in each band of timesteps, and its
descent step projected on a unit direction per pixel:

- ``core``: over the object's own pixels, towards the background: > 0 fades the object into it;
- ``ring``: over the pixels the larger render adds, towards the background: > 0 shrinks a
  too-large object;
- ``grow`` (``--grow``): over the pixels the true render covers more than half and the smaller one
  less than half (as the ring is the pixels the larger one adds), towards the true render's colour
  of each: > 0 grows a too-small object.

A right-sized object of the right colour is a fixed point of SDS only where the core is <= 0 and the
ring and grow > 0. Prints a table, one row per prompt, one ``core / ring`` pair (``core / ring /
grow`` with ``--grow``) per band.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import torch
import torch.nn.functional as F

from dreamfusion.errors import UserError

BANDS = (20, 100, 300, 500, 700, 980)
PROMPTS = ("a white cylinder", "a white cube", "a white cone", "a red cube", "a blue sphere")
LARGER = 1.18


def towards_background(z: torch.Tensor, grad: torch.Tensor, background: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) model inputs and their SDS gradient -> (B, H, W): the descent step ``-grad``
    projected on the unit vector from each pixel's value to the background's (0 where they meet)."""
    from dreamfusion.guidance.stable_diffusion import step_towards

    return step_towards(z, grad, torch.full_like(z, background))[0][:, 0]


def measure(guidance, prompt: str, scale: float, bands=BANDS, n: int = 128, draws: int = 2, seed: int = 1,
            grow: bool = False, ambient: tuple[float, float] = (0.1, 1.0), size: float = LARGER,
            cameras=None) -> list[tuple[float, ...]]:
    """(core, ring), or (core, ring, grow) with ``grow``, per band of timesteps [bands[i], bands[i+1])
    for ``prompt``; the off-size renders ``size`` times larger and smaller; the cameras drawn from
    ``cameras`` (a TrainDatasetConfig; default the world's). A ring or left-out set with no pixel (a
    size too close to 1) gives nan."""
    from dreamfusion.data.cameras import sample_train
    from dreamfusion.guidance.stable_diffusion import step_towards
    from dreamfusion.prior import data
    from dreamfusion.prior.evaluate import parse_prompt

    colour, shape = parse_prompt(prompt)
    gen = torch.Generator().manual_seed(seed)
    cams = sample_train(cameras or data.world_cameras(64), n, gen)
    light = F.normalize(cams.position + torch.randn(n, 3, generator=gen), dim=-1)
    ambient = ambient[0] + (ambient[1] - ambient[0]) * torch.rand(n, generator=gen)
    larger = dataclasses.replace(cams, fovy=2 * torch.atan(torch.tan(cams.fovy / 2) / size))
    smaller = dataclasses.replace(cams, fovy=2 * torch.atan(torch.tan(cams.fovy / 2) * size))

    def render(c):
        rgb, mask = data.render(c, shape, colour, light_dir=light, ambient=ambient, supersample=2)
        size = guidance.image_size
        rgb = F.interpolate(rgb.permute(0, 3, 1, 2), size=(size, size), mode="area")
        mask = F.interpolate(mask[:, None], size=(size, size), mode="area")[:, 0]
        return rgb * 2 - 1, mask

    z, mask = render(cams)
    zl, mask_l = render(larger)
    core, ring = mask > 0.99, (mask_l > 0.5) & (mask < 0.5)
    if grow:
        zs, mask_s = render(smaller)
        left_out = (mask > 0.5) & (mask_s < 0.5)
    cond, uncond = guidance.encode_text([prompt]), guidance.encode_text([""])
    out = []
    background = torch.ones_like(z)  # the world's white, in the model's [-1, 1]
    cases = [(z, core, cams, background), (zl, ring, larger, background)]
    cases += [(zs, left_out, smaller, z)] if grow else []
    saved = guidance.min_step, guidance.max_step, guidance.final_max_step
    try:
        for lo, hi in zip(bands[:-1], bands[1:]):
            guidance.min_step, guidance.max_step = lo, hi - 1
            guidance.final_max_step = hi - 1
            sums = [0.0] * len(cases)
            for d in range(draws):
                g = torch.Generator().manual_seed(d)
                for k, (x, sel, c, target) in enumerate(cases):
                    _, info = guidance.sds(
                        x, cond.expand(n, -1, -1), uncond.expand(n, -1, -1), scale, generator=g, cameras=c
                    )
                    pull = step_towards(x, info["grad"], target)[0][:, 0][sel]
                    sums[k] += (float(pull.mean()) if pull.numel() else math.nan) / draws
            out.append(tuple(sums))
    finally:
        guidance.min_step, guidance.max_step, guidance.final_max_step = saved
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dreamfusion.prior.sds_pull", description=__doc__.split("\n")[0])
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the shapes preset's)")
    p.add_argument("--prompts", nargs="+", default=list(PROMPTS))
    p.add_argument("--grow", action="store_true", help="also the pull on the smaller render's left-out pixels")
    p.add_argument("--size", type=float, default=LARGER,
                   help="how many times larger and smaller the off-size renders are (default %(default)g)")
    p.add_argument("--ambient", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="the renders' ambient range (default: the prior's training range, 0.1-1)")
    p.add_argument("--t", nargs="+", type=int, default=list(BANDS), help="band edges, timesteps (0-1000)")
    p.add_argument("--fovy", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="the cameras' field of view, degrees (default: the world's)")
    p.add_argument("--radius", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                   help="the cameras' distance (default: the world's)")
    p.add_argument("--model", default=None, help="a prior's folder (default: the shipped one)")
    args = p.parse_args(argv)
    from dreamfusion.config import compose
    from dreamfusion.config.presets import SHAPES_GUIDANCE_SCALE, expand
    from dreamfusion.guidance.stable_diffusion import ShapesGuidance
    from dreamfusion.prior import data
    from dreamfusion.prior.evaluate import parse_prompt
    from dreamfusion.stages.cli import quiet_libraries

    scale = SHAPES_GUIDANCE_SCALE if args.guidance is None else args.guidance
    try:
        for prompt in args.prompts:
            parse_prompt(prompt)
        if len(args.t) < 2 or any(b <= a for a, b in zip(args.t, args.t[1:])) or args.t[0] < 0 or args.t[-1] > 1000:
            raise UserError("--t: at least two increasing timesteps in [0, 1000]")
        lo, hi = args.ambient or (0.1, 1.0)
        if not 0 <= lo <= hi <= 1:
            raise UserError(f"--ambient {lo:g} {hi:g}: must satisfy 0 <= LO <= HI <= 1")
        if not 1 < args.size <= 2:
            raise UserError(f"--size {args.size:g}: must lie in (1, 2]")
        if not 0 < scale < 1000:
            raise UserError(f"--guidance {scale}: must lie in (0, 1000)")
        world = data.world_cameras(64)  # --fovy / --radius by the training cameras' own rule
        cameras = dataclasses.replace(world, fovy_range=list(args.fovy or world.fovy_range),
                                      radius_range=list(args.radius or world.radius_range))
        cameras.check()
        quiet_libraries()
        # the prior's own step, without the preset's fade guard (what the guard is measured against)
        overrides = ["model.guidance.fade_guard_t=null"]
        overrides += [f"model.guidance.model_key={args.model}"] if args.model else []
        guidance = ShapesGuidance(compose(expand(["shapes"]) + overrides).model.guidance)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bands = [f"{a}-{b}" for a, b in zip(args.t, args.t[1:])]
    what = "core / ring / grow" if args.grow else "core / ring"
    cams = (f", fovy {args.fovy[0]:g}-{args.fovy[1]:g}" if args.fovy else "") + (
        f", radius {args.radius[0]:g}-{args.radius[1]:g}" if args.radius else "")
    print(f"SDS pull at guidance {scale:g}, ambient {lo:g}-{hi:g}, off-size renders x{args.size:g}{cams}"
          + (f", prior {args.model}" if args.model else "")
          + f" ({what} per band of t; core > 0 fades, ring > 0 shrinks, grow > 0 grows)")
    print(f"| prompt | {' | '.join(bands)} |")
    print(f"| --- |{' --- |' * len(bands)}")
    for prompt in args.prompts:
        row = measure(guidance, prompt, scale, args.t, grow=args.grow, ambient=(lo, hi), size=args.size,
                      cameras=cameras)
        print(f"| {prompt} | " + " | ".join(" / ".join(f"{v:+.3f}" for v in cell) for cell in row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
