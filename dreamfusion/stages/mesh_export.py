"""mesh-export stage: a NeRF (or DMTet) checkpoint -> textured mesh files.

    python -m dreamfusion.stages.mesh_export --checkpoint RUN/checkpoints/last.pt --output DIR
        [--resolution 256] [--iso auto] [--faces 50000] [--texture 2048]

Marching cubes on the density grid (iso-level chosen from the density unless given), floating
components dropped, decimated to the face count, unwrapped with xatlas, albedo baked from the
colour field. Writes DIR/mesh.glb (embedded PNG texture, +Y up, metres), DIR/mesh.obj +
mesh.mtl + mesh.png and DIR/mesh_stats.json. Exit code 2 with one line for bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dreamfusion.export.pipeline import iso_level
from dreamfusion.names import check_name
from dreamfusion.stages import cli


def parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m dreamfusion.stages.mesh_export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", required=True, type=Path, help="nerf-sds checkpoint (RUN/checkpoints/last.pt)"
    )
    p.add_argument("--output", required=True, type=Path, help="folder for the mesh files")
    p.add_argument("--resolution", type=int, default=256, help="marching-cubes cells per axis (default 256)")
    p.add_argument(
        "--iso",
        type=iso_level,
        default=None,
        metavar="auto|SIGMA",
        help="density iso-level (default auto: where rays become half opaque)",
    )
    p.add_argument("--faces", type=int, default=50_000, help="target face count (default 50000)")
    p.add_argument("--texture", type=int, default=2048, help="texture size in texels (default 2048)")
    p.add_argument(
        "--min-component",
        type=float,
        default=0.02,
        help="drop components smaller than this fraction of the largest (default 0.02)",
    )
    p.add_argument("--name", default="mesh", help="file name stem (default mesh)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    cli.output_folder(args.output)
    from dreamfusion.export.pipeline import ExportOptions, export
    from dreamfusion.export.sources import load_source, pick_device

    opts = ExportOptions(
        resolution=args.resolution,
        iso=args.iso,
        faces=args.faces,
        texture=args.texture,
        min_component=args.min_component,
        progress=not args.quiet,
        name=args.name,
    )
    opts.check()  # impossible sizes fail before the checkpoint is read
    check_name(args.name, "--name")
    device = pick_device(args.device)
    source = load_source(args.checkpoint, device)
    result = export(source, args.output, opts, device=device)
    s = result.stats
    iso = f"iso {s['iso']:.4g} ({s['iso_method']}), " if s.get("iso") is not None else ""
    print(
        f"mesh-export: {s['faces']} faces, {s['vertices']} vertices, {iso}watertight {s['watertight']}, "
        f"texture {s['texture_size']}^2 -> {result.files['glb']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
