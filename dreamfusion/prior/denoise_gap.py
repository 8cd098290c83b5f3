"""How far a prior's clean-image estimate is from the ideal one, per primitive and noise level.

    python -m dreamfusion.prior.denoise_gap [--prior DIR] [--colours red white] [--shapes cube sphere]
                                            [--t 200 300 400 500 600]

The ideal is exact: at each of ``n`` training cameras a bank of renders of the primitive (16 yaws over a
quarter turn x 6 ambients in [0.1, 1] x 3 light directions, the world's own draws) stands for
everything the camera does not fix; a clean image is drawn from the bank, noised to ``x_t``, and the
posterior mean over the bank given ``x_t`` (:func:`posterior_mean`) is the best estimate any denoiser
that knows the camera could give. The prior (which does not know the camera) is scored on the same
``x_t``. Both errors are mean squares over 32x32 pixels in [-1, 1]. A cube is the world's one primitive
with a yaw; its gap over a sphere's is what the prior misses of the yaw (the model card's section on
the cube's yaw).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from dreamfusion.data.cameras import Cameras, sample_train
from dreamfusion.prior.evaluate import turned

YAWS, AMBIENTS, LIGHTS = 16, 6, 3
TIMESTEPS = (200, 300, 400, 500, 600)


def posterior_mean(x_t: torch.Tensor, bank: torch.Tensor, abar: float) -> torch.Tensor:
    """The exact E[x_0 | x_t] when x_0 is one of ``bank`` (n, m, ...) with equal odds, per row
    (``x_t``: (n, ...)), under ``x_t = sqrt(abar) x_0 + sqrt(1 - abar) noise``."""
    a = torch.as_tensor(abar, dtype=torch.float64)
    d = (x_t[:, None].double() - a.sqrt() * bank.double()).flatten(2).pow(2).sum(-1)
    w = (-d / (2 * (1 - a))).softmax(1)
    return (w.view(*w.shape, *([1] * (bank.dim() - 2))) * bank.double()).sum(1).to(bank.dtype)


def render_bank(cams: Cameras, shape: str, colour: str, generator: torch.Generator, size: int = 32) -> torch.Tensor:
    """(n, YAWS * AMBIENTS * LIGHTS, 3, size, size) renders in [-1, 1] of the primitive at each camera."""
    from dreamfusion.prior import data

    jitter = torch.randn(LIGHTS, len(cams), 3, generator=generator)
    out = []
    for k in range(YAWS):
        c = turned(cams, 90.0 * k / YAWS)  # the primitive seen turned the other way
        for ambient in torch.linspace(0.1, 1.0, AMBIENTS).tolist():
            for j in jitter:
                rgb, _ = data.render(c, shape, colour, light_dir=F.normalize(c.position + j, dim=-1), ambient=ambient)
                out.append(F.interpolate(rgb.permute(0, 3, 1, 2), size=(size, size), mode="area") * 2 - 1)
    return torch.stack(out, 1)


def gap(prior, colour: str, shape: str, timesteps=TIMESTEPS, n: int = 32, draws: int = 2,
        seed: int = 3) -> list[tuple[int, float, float]]:
    """(t, ideal error, prior error) per timestep for "a <colour> <shape>"."""
    from dreamfusion.prior import data
    from dreamfusion.prior import model as M

    g = torch.Generator().manual_seed(seed)
    cams = sample_train(data.world_cameras(64), n, g)
    bank = render_bank(cams, shape, colour, g, prior.sample_size)
    emb = M.encode(prior, [data.caption(colour, shape)] * n)
    abar = prior.scheduler.alphas_cumprod.float()
    rows = []
    for t in timesteps:
        a = float(abar[t])
        ideal = mine = 0.0
        for _ in range(draws):
            x0 = bank[torch.arange(n), torch.randint(bank.shape[1], (n,), generator=g)]
            x_t = a**0.5 * x0 + (1 - a) ** 0.5 * torch.randn(x0.shape, generator=g)
            with torch.no_grad():
                eps = prior.unet(x_t, torch.full((n,), t), encoder_hidden_states=emb).sample
            est = ((x_t - (1 - a) ** 0.5 * eps) / a**0.5).clamp(-1, 1)
            ideal += float((posterior_mean(x_t, bank, a) - x0).pow(2).mean()) / draws
            mine += float((est - x0).pow(2).mean()) / draws
        rows.append((t, ideal, mine))
    return rows


def main(argv=None) -> int:
    from dreamfusion.prior import data
    from dreamfusion.prior import model as M

    p = argparse.ArgumentParser(prog="python -m dreamfusion.prior.denoise_gap", description=__doc__.split("\n")[0])
    p.add_argument("--prior", default=str(M.SHAPES_DIR), help="a saved prior folder (default: the shipped one)")
    p.add_argument("--colours", nargs="+", default=["red", "white"])
    p.add_argument("--shapes", nargs="+", default=["cube", "sphere"])
    p.add_argument("--t", type=int, nargs="+", default=list(TIMESTEPS))
    p.add_argument("--cameras", type=int, default=32, help="training cameras (each with its bank of renders)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    bad = [c for c in args.colours if c not in data.COLOURS] + [s for s in args.shapes if s not in data.SHAPES]
    if bad:
        p.error(f"unknown colour or shape {bad}; colours {list(data.COLOURS)}, shapes {list(data.SHAPES)}")
    if not all(1 <= t < 1000 for t in args.t) or not 1 <= args.cameras <= 256:
        p.error("--t: timesteps in [1, 999]; --cameras: 1 to 256")
    torch.set_num_threads(args.threads)
    try:
        prior = M.load(args.prior)
    except (OSError, ValueError) as e:
        print(f"error: cannot load a prior from {args.prior}: {e}", file=sys.stderr)
        return 2
    print("| prompt | " + " | ".join(f"t {t}: ideal / prior" for t in args.t) + " |")
    print("| --- |" + " --- |" * len(args.t))
    for colour in args.colours:
        for shape in args.shapes:
            rows = gap(prior, colour, shape, args.t, args.cameras)
            cells = " | ".join(f"{i:.4f} / {m:.4f}" for _, i, m in rows)
            print(f"| a {colour} {shape} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
