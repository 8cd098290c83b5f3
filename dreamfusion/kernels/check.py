"""Every Triton kernel against its PyTorch reference, on small inputs: values and gradients.

    python -m dreamfusion.kernels.check [--device cpu|cuda] [--only sampling|compositing|hashgrid]

On a CPU the kernels run in Triton's interpreter (this sets ``TRITON_INTERPRET=1`` before
triton is imported); on a CUDA device they are compiled. Prints one JSON line a case: its
largest absolute errors and whether they are within ``TOLERANCE``; exits 1 if any is not.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time

import torch

from dreamfusion.kernels import JOBS, compositing, hashgrid, sampling

TOLERANCE = {
    # Sampling does the reference's float32 arithmetic step by step (on a GPU, fused multiply-adds
    # may move a position by an ulp); its indices must agree exactly.
    "sampling": {"x": 1e-5, "t": 1e-5, "dt": 1e-5},
    # Compositing sums along rays in another order (a running sum, not cumsum minus self).
    "compositing": {"weights": 1e-5, "opacity": 1e-5, "depth": 1e-4, "grad_sigma": 1e-4},
    # The hash grid blends 8 corners in another order; gradients are summed with atomic adds.
    "hashgrid": {"features": 1e-6, "grad_tables": 1e-5},
}


def rays(n: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from a sphere of radius 3.2 at points in the box (some graze it, a few miss)."""
    g = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.2
    target = (torch.rand(n, 3, generator=g) * 2 - 1) * 1.3
    return o.to(device), torch.nn.functional.normalize(target - o, dim=-1).to(device)


def marching_cases(device: str):
    """(name, march_rays arguments) over fixed and growing steps, jitter, empty and full grids."""
    g = torch.Generator().manual_seed(1)
    grid = (torch.rand(16, 16, 16, generator=g) < 0.4).to(device)
    o, d = rays(96, 0, device)
    u = torch.rand(96, 1, generator=g).to(device)
    for max_steps, dt_gamma, jitter, occ, label in [
        (64, 0.0, False, grid, "fixed step, grid"),
        (128, 0.0, True, grid, "fixed step, jitter"),
        (96, 0.0, False, torch.ones_like(grid), "fixed step, every cell"),
        (128, 0.05, True, grid, "dt_gamma 0.05, jitter"),
        (256, 0.2, False, grid, "dt_gamma 0.2 (steps up to dt_max)"),
        (24, 0.01, False, grid, "dt_gamma 0.01, cut at max_steps"),
        (64, 0.0, False, torch.zeros_like(grid), "empty grid"),
    ]:
        dt_min, dt_max = 2 * math.sqrt(3) / max_steps, 2 * math.sqrt(3) / 16
        yield label, (o, d, occ, u if jitter else 0.5, 1.0, dt_min, dt_max, dt_gamma, max_steps)


def check_sampling(kernel, device: str) -> list[dict]:
    out = []
    for label, args in marching_cases(device):
        a, b = sampling.march_rays(*args), kernel.march_rays(*args)
        same = a.steps == b.steps and a.ray_index.shape == b.ray_index.shape
        same = same and torch.equal(a.ray_index, b.ray_index) and torch.equal(a.step_index, b.step_index)
        same = same and torch.equal(a.offsets, b.offsets)
        errors = {k: _err(getattr(a, k), getattr(b, k)) if same else math.inf for k in ("x", "t", "dt")}
        out.append(_case("sampling", label, errors, samples=int(a.ray_index.shape[0]), indices_equal=same))
    return out


def check_compositing(kernel, device: str) -> list[dict]:
    out = []
    for label, args in list(marching_cases(device))[:4]:
        s = sampling.march_rays(*args)
        g = torch.Generator().manual_seed(2)
        for scale in (1.0, 60.0):  # 60: most rays terminate early (T < 1e-4)
            sigma = (torch.rand(s.x.shape[0], generator=g) * scale).to(device)
            a_w = torch.randn(s.x.shape[0], generator=g).to(device)
            a_o, a_d = (torch.randn(s.n_rays, generator=g).to(device) for _ in range(2))
            results = []
            for composite in (compositing.composite, kernel.composite):
                x = sigma.clone().requires_grad_(True)
                w, opacity, depth = composite(x, s)
                ((w * a_w).sum() + (opacity * a_o).sum() + (depth * a_d).sum()).backward()
                results.append((w, opacity, depth, x.grad))
            (w0, o0, d0, g0), (w1, o1, d1, g1) = results
            errors = {"weights": _err(w0, w1), "opacity": _err(o0, o1), "depth": _err(d0, d1),
                      "grad_sigma": _err(g0, g1)}
            terminated = int(((o0 > 1 - 2e-4)).sum())
            out.append(_case("compositing", f"{label}, sigma x{scale:g}", errors, samples=int(s.x.shape[0]),
                             rays_terminated=terminated))
    return out


def check_hashgrid(kernel, device: str) -> list[dict]:
    out = []
    g = torch.Generator().manual_seed(3)
    u = torch.rand(300, 3, generator=g)
    u[:8] = torch.tensor([0.0, 1.0]).repeat(12)[:24].reshape(8, 3)  # corners of the box: clamped cells
    u = u.to(device)
    for levels, log2, base, finest, features, smooth in [
        (6, 10, 4, 96, 2, True),
        (6, 10, 4, 96, 2, False),
        (4, 12, 16, 256, 3, True),  # 3 features a level (not a power of two)
    ]:
        scale = 2.0 ** (math.log2(finest / base) / (levels - 1))
        res = [int(math.ceil(base * scale**level)) for level in range(levels)]
        sizes = [int(math.ceil(min(2**log2, (r + 1) ** 3) / 8) * 8) for r in res]
        hashed = [2**log2 < (r + 1) ** 3 for r in res]
        tables = [(torch.rand(n, features, generator=g) * 2 - 1).to(device) for n in sizes]
        a_out = None
        results = []
        for encode in (hashgrid.encode, kernel.encode):
            ts = [t.clone().requires_grad_(True) for t in tables]
            feats = encode(u, ts, res, hashed, smooth)
            if a_out is None:
                a_out = torch.randn(feats.shape, generator=g).to(device)
            (feats * a_out).sum().backward()
            results.append((feats, torch.cat([t.grad for t in ts])))
        (f0, g0), (f1, g1) = results
        label = f"{levels} levels ({sum(hashed)} hashed), T=2^{log2}, F={features}, " + (
            "smoothstep" if smooth else "linear")
        out.append(_case("hashgrid", label, {"features": _err(f0, f1), "grad_tables": _err(g0, g1)},
                         points=u.shape[0]))
    return out


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def _case(job: str, label: str, errors: dict[str, float], **facts) -> dict:
    ok = all(errors[k] <= TOLERANCE[job][k] for k in errors) and facts.get("indices_equal", True)
    return {"job": job, "case": label, "ok": ok, "max_abs_error": errors, **facts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dreamfusion.kernels.check", description=__doc__)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--only", choices=JOBS, action="append", help="check only these kernels")
    args = p.parse_args(argv)
    if args.device == "cpu":
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("triton was imported before TRITON_INTERPRET=1 could be set")
        os.environ["TRITON_INTERPRET"] = "1"
    checks = {"sampling": check_sampling, "compositing": check_compositing, "hashgrid": check_hashgrid}
    failed = False
    for job in args.only or JOBS:
        began = time.perf_counter()
        kernel = importlib.import_module(f"dreamfusion.kernels.{job}_triton")
        for case in checks[job](kernel, args.device):
            case["seconds"] = round(time.perf_counter() - began, 2)
            print(json.dumps(case), flush=True)
            failed |= not case["ok"]
            began = time.perf_counter()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
