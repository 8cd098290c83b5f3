"""Export and video timings on this machine: 256^3 extraction, decimation, UV unwrap, bake, video.

    python -m benchmarks.bench_export [--quick] [--json FILE]

The NeRF is the engine's default model (16-level hash grid, 2^19 entries a level, 3x64 MLPs),
so every density and colour query costs what a trained checkpoint's does; its weights are set
so that the density is a ball of radius about 0.54 (the blob of ``dreamfusion.export.synthetic``)
and its occupancy grid is filled from the same formula (no training needed). Steps, in order:
the 256^3 density grid (occupancy skip + band refinement) and marching cubes, decimation to
50k faces, the xatlas atlas, the 2048^2 albedo bake, then a 120-frame 512x512 turntable of the
exported mesh (rasterized, 2x supersampled, H.264 encoded). One volume-rendered NeRF frame
(128x128, 128 samples per ray) is timed for comparison. ``--quick`` shrinks every size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


def _blob_scene(quick: bool):
    from dreamfusion.export.synthetic import SMALL_NERF, blob_scene

    overrides = ["model.nerf.blob_density=12", "model.nerf.blob_radius=0.6", "model.renderer.max_steps=128"]
    if quick:
        overrides = SMALL_NERF + overrides
    # Zeroed MLP outputs: the density is exp(-8 + 12 exp(-|x|^2 / 0.72)), a ball of radius ~0.54.
    from dreamfusion.renderer.scene import Scene

    real_update = Scene.update_grid
    Scene.update_grid = lambda self: None  # filled analytically below: 2M NeRF queries are not what we time
    try:
        scene, cfg = blob_scene(overrides, albedo=(0.75, 0.45, 0.25), bias=-8.0)
    finally:
        Scene.update_grid = real_update
    r = scene.renderer
    n = r.res
    c = (torch.arange(n) + 0.5) / n * 2 * r.bound - r.bound
    x, y, z = torch.meshgrid(c, c, c, indexing="ij")
    d2 = x * x + y * y + z * z
    grid = torch.exp(-8.0 + 12.0 * torch.exp(-d2 / (2 * 0.6**2)))
    r.density_grid.copy_(grid)
    r.mean_density.copy_(grid.mean())
    r.grid_updates.fill_(1)
    return scene, cfg


class Timer:
    def __init__(self):
        self.rows: list[tuple[str, float, str]] = []

    def __call__(self, name: str, fn, note: str = ""):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        self.rows.append((name, dt, note(out, dt) if callable(note) else note))
        print(f"  {name:<38s} {dt:8.2f} s  {self.rows[-1][2]}", flush=True)
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the figures)")
    p.add_argument("--json", type=Path, help="also write the timings here")
    args = p.parse_args([] if argv is None else argv)  # `python -m benchmarks` calls main()

    from dreamfusion.export import mesh_ops
    from dreamfusion.export.extract import marching_cubes, sample_density
    from dreamfusion.export.fields import NerfFields, VolumeSource
    from dreamfusion.export.texture import bake, unwrap
    from dreamfusion.export.turntable import RenderMesh, TurntableOptions, _index, cameras, mesh_frames
    from dreamfusion.export.video import Mp4Writer
    from dreamfusion.export.writers import TexturedMesh, write_glb

    res, faces, tex, frames, size = (64, 5000, 256, 12, 128) if args.quick else (256, 50_000, 2048, 120, 512)
    print(
        f"bench_export: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
        f"{', quick sizes' if args.quick else ''}",
        flush=True,
    )
    timer = Timer()
    scene, _ = timer("build NeRF (default model)", lambda: _blob_scene(args.quick))
    fields = NerfFields(scene.nerf)
    r = scene.renderer
    source = VolumeSource(fields, fields, fields.bound, r.occupancy(), r.density_grid.clone(), float(r.mean_density))

    vol = timer(
        f"density grid {res}^3",
        lambda: sample_density(source, res, progress=False),
        lambda o, dt: f"{o.stats.evaluated_points:,} points evaluated, iso {o.iso.value:.3g}",
    )
    mc = timer(f"marching cubes {res}^3", lambda: marching_cubes(vol), lambda o, dt: f"{len(o[1]):,} faces")
    v, f = mc
    v, f, _ = timer("drop floating components", lambda: mesh_ops.drop_small_components(*mesh_ops.compact(v, f)))
    dec = timer(
        f"decimation to {faces:,} faces",
        lambda: mesh_ops.decimate(v, f, faces),
        lambda o, dt: f"{len(o[1]):,} faces",
    )
    uvm = timer("UV unwrap (xatlas)", lambda: unwrap(*dec, tex), lambda o, dt: f"{len(o.positions):,} vertices")
    baked = timer(
        f"bake {tex}x{tex} albedo",
        lambda: bake(uvm, fields, tex, progress=False),
        lambda o, dt: f"{int(o.used.sum()):,} texels queried",
    )
    mesh = TexturedMesh(
        uvm.positions, mesh_ops.vertex_normals(uvm.positions, uvm.faces), uvm.uv, uvm.faces, baked.image
    )
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        timer("write GLB", lambda: write_glb(mesh, Path(tmp) / "mesh.glb"))
        rm = RenderMesh.from_arrays(mesh.positions, mesh.faces, mesh.uv, mesh.texture)
        opts = TurntableOptions(frames=frames, size=size, passes=("rgb",), progress=False)

        def video():
            with Mp4Writer(Path(tmp) / "turntable.mp4", size, size, 30) as w:
                mesh_frames(rm, opts, w.write)

        timer(
            f"video {frames} frames {size}x{size} (raster+H.264)",
            video,
            lambda o, dt: f"{dt / frames:.3f} s/frame",
        )
        nerf_size = 64 if args.quick else 128
        nerf_opts = TurntableOptions(frames=1, size=nerf_size, progress=False)
        cam = _index(cameras(nerf_opts), 0)
        timer(
            f"NeRF volume render, 1 frame {nerf_size}x{nerf_size}",
            lambda: scene.render_views(cam, "lambertian"),
            f"{scene.renderer.max_steps} samples/ray; x{(512 / nerf_size) ** 2:.0f} for 512x512",
        )
    for name, dt, note in timer.rows:
        rows[name] = {"seconds": round(dt, 3), "note": note}
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
