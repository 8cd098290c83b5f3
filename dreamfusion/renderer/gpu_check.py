"""nvdiffrast against the torch rasterizer on one scene, on a CUDA device.

    python -m dreamfusion.renderer.gpu_check [--size 512] [--grid 64]

The scene: the surface marching tetrahedra extract from a sphere's signed distance (off centre,
so no symmetry hides a flipped axis), seen by four cameras of the validation circle. Both
rasterizers draw it; coverage must be identical except at pixels whose centre lies within
1/16 pixel of a triangle edge: nvdiffrast snaps vertices to a 1/16-pixel grid before its coverage
test (``CR_SUBPIXEL_LOG2 = 4``), which moves an edge by up to about 0.044 pixel, and
the interpolated attributes (world position, normals) must agree within 1e-4 wherever both see
the same face. Each side's own error against the exact answer (the torch rasterizer in double
precision) is reported beside it: both work in float32, whose error grows on the near-degenerate
triangles marching tetrahedra make. Prints the figures and exits 1 when they disagree. Also
times one rasterization of each. Needs nvdiffrast (the GPU image) and a CUDA device; on anything else it says so.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from dreamfusion.errors import UserError

EDGE_TOLERANCE = 1 / 16
"""Pixels: how far from an edge a pixel centre may be and still be covered differently."""


def scene(grid: int, device: torch.device):
    from dreamfusion.geometry.tets import marching_tets, tet_grid

    verts, tets = tet_grid(grid)
    verts, tets = verts.to(device) * 0.6, tets.to(device)
    center = torch.tensor([0.08, -0.05, 0.03], device=device)
    v, f = marching_tets(verts, 0.42 - (verts - center).norm(dim=-1), tets)
    return v, f


def compare(size: int = 512, grid: int = 64, device: str = "cuda", candidate: str | type = "nvdiffrast") -> dict:
    """The figures of the module doc for the ``candidate`` rasterizer (a name, or a rasterizer
    class taking a ``RasterizerConfig``) against the torch one."""
    from dreamfusion.config.schema import EvalDatasetConfig
    from dreamfusion.data.cameras import circle
    from dreamfusion.renderer.mesh_scene import vertex_normals
    from dreamfusion.renderer.raster import project
    from dreamfusion.renderer.rasterizer import (
        NvdiffrastRasterizer,
        RasterizerConfig,
        TorchRasterizer,
        interpolate,
    )

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("no CUDA device: the comparison needs one (nvdiffrast is CUDA only)")
    dev = torch.device(device)
    v, f = scene(grid, dev)
    cams = circle(EvalDatasetConfig(width=size, height=size, n_views=4)).to(dev)
    cfg = RasterizerConfig(antialias=False)
    kinds = {"torch": TorchRasterizer, "nvdiffrast": NvdiffrastRasterizer}
    make = kinds[candidate] if isinstance(candidate, str) else candidate
    rasterizers = {"torch": TorchRasterizer(cfg), "candidate": make(cfg)}
    out, seconds = {}, {}
    for name, r in rasterizers.items():
        r(v, f, cams)  # warm-up (nvdiffrast builds its context)
        _sync(dev)
        t = time.perf_counter()
        out[name] = r(v, f, cams)
        _sync(dev)
        seconds[name] = time.perf_counter() - t
    a, b = out["torch"], out["candidate"]
    # pixels whose centre is within EDGE_TOLERANCE of an edge may go either way; the same for
    # pixels that see different faces (the edge between two faces)
    diff = (a.mask != b.mask) | (a.mask & b.mask & (a.face != b.face))
    distance = torch.full(diff.shape, float("inf"), device=dev)
    for i in range(len(cams)):
        xy, _ = project(v, cams.c2w[i], float(cams.fovy[i]), size, size)
        distance[i] = _edge_distance(xy, f, diff[i])
    near_edge = diff & (distance <= EDGE_TOLERANCE)
    differ = diff & ~near_edge
    both = a.mask & b.mask & (a.face == b.face)
    normals = vertex_normals(v, f)
    attr = torch.cat([v, normals], -1)
    ia, ib = interpolate(attr, f, a), interpolate(attr, f, b)
    err = (ia - ib).abs().amax(-1)[both]
    # the exact answer: the torch rasterizer's differentiable path in double precision
    exact = rasterizers["torch"](v.double().requires_grad_(), f, cams)
    same = both & (exact.face == a.face)
    ie = interpolate(attr.double(), f, exact).detach()
    err_torch = (ia.double() - ie).abs().amax(-1)[same]
    err_candidate = (ib.double() - ie).abs().amax(-1)[same]
    return {
        "size": size,
        "faces": int(f.shape[0]),
        "candidate": candidate if isinstance(candidate, str) else candidate.__name__,
        "covered_torch": int(a.mask.sum()),
        "covered_candidate": int(b.mask.sum()),
        "coverage_differs_off_edges": int(differ.sum()),
        "coverage_differs_on_edges": int(near_edge.sum()),
        "differing_max_edge_distance_px": float(distance[diff].max()) if diff.any() else 0.0,
        "same_face_pixels": int(both.sum()),
        "attribute_max_error": float(err.max()) if err.numel() else float("nan"),
        "torch_error_vs_float64": float(err_torch.max()) if err_torch.numel() else float("nan"),
        "candidate_error_vs_float64": float(err_candidate.max()) if err_candidate.numel() else float("nan"),
        "seconds_torch": seconds["torch"],
        "seconds_candidate": seconds["candidate"],
    }


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _edge_distance(xy: torch.Tensor, faces: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(H, W): for pixels of ``region``, the distance in pixels from the centre to the nearest
    edge of a face (inf elsewhere)."""
    ys, xs = region.nonzero(as_tuple=True)
    p = torch.stack([xs, ys], -1).to(xy) + 0.5
    out = torch.full(region.shape, float("inf"), device=xy.device)
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    a, b = xy[edges[:, 0]], xy[edges[:, 1]]
    d = b - a
    for i in range(0, len(p), 64):
        q = p[i : i + 64, None, :]
        t = (((q - a) * d).sum(-1) / (d * d).sum(-1).clamp(min=1e-12)).clamp(0, 1)
        out[ys[i : i + 64], xs[i : i + 64]] = (q - (a + t[..., None] * d)).norm(dim=-1).amin(1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dreamfusion.renderer.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--grid", type=int, default=64)
    args = p.parse_args(argv)
    try:
        r = compare(args.size, args.grid)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for k, val in r.items():
        print(f"{k}: {val}")
    ok = r["coverage_differs_off_edges"] == 0 and r["attribute_max_error"] <= 1e-4
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
