"""video-render stage: a turntable video, a poster and a self-contained HTML preview.

    python -m dreamfusion.stages.video_render --checkpoint RUN/checkpoints/last.pt --output DIR
    python -m dreamfusion.stages.video_render --mesh DIR/mesh.glb --output DIR
        [--frames 120] [--fps 30] [--size 512] [--elevation 10] [--passes rgb,normal,depth]
        [--glb MESH.glb] [--background white|black|scene|R,G,B]

A NeRF checkpoint is volume-rendered (or, with --renderer raster, its exported mesh is
rasterized: the fast choice on a CPU) and a mesh is rasterized. Writes DIR/turntable.mp4
(H.264, yuv420p, faststart; the passes side by side), DIR/poster.png (the first frame),
DIR/preview.html (the video and an interactive 3D viewer of the GLB, working offline) and
DIR/video.json. The viewer shows --glb, or the --mesh itself, or for a checkpoint a quick
export (DIR/preview.glb, --viewer-resolution/--viewer-faces/--viewer-texture); --no-viewer
leaves it out. Exit code 2 with one line for bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dreamfusion import files
from dreamfusion.errors import UserError
from dreamfusion.export.pipeline import iso_level
from dreamfusion.stages import cli

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "grey": (0.5, 0.5, 0.5), "scene": None}


def background(text: str):
    key = text.strip().lower()
    if key in BACKGROUNDS:
        return BACKGROUNDS[key]
    try:
        rgb = tuple(float(c) for c in key.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 1 for c in rgb):
        raise UserError(f"--background {text!r}: use white, black, grey, scene or R,G,B in [0, 1]")
    return rgb


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m dreamfusion.stages.video_render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="nerf-sds checkpoint (volume rendering)")
    src.add_argument("--mesh", type=Path, help="mesh file, e.g. mesh-export's mesh.glb (rasterization)")
    p.add_argument(
        "--output", required=True, type=Path, help="folder for turntable.mp4, poster.png, preview.html"
    )
    p.add_argument("--frames", type=int, default=120, help="frames in one turn (default 120)")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second (default 30)")
    p.add_argument(
        "--size", type=int, default=512, help="frame height and width of each pass, even (default 512)"
    )
    p.add_argument(
        "--elevation",
        type=float,
        default=None,
        help="camera elevation in degrees (default: the checkpoint's test circle, else 10)",
    )
    p.add_argument(
        "--radius", type=float, default=None, help="camera distance (default 3.2 or the checkpoint's)"
    )
    p.add_argument("--fovy", type=float, default=None, help="vertical field of view, degrees (default 20)")
    p.add_argument("--passes", default="rgb", help="comma list of rgb, normal, depth (default rgb)")
    p.add_argument("--background", type=str, default="white", help="white, black, grey, scene or R,G,B")
    p.add_argument("--supersample", type=int, default=2, help="mesh renders: antialiasing factor (default 2)")
    p.add_argument(
        "--renderer",
        choices=["volume", "raster"],
        default="volume",
        help="checkpoints: volume-render the NeRF (default; minutes a frame on a CPU at 512x512) or "
        "rasterize its mesh (--glb or a quick export; about a second a frame on a CPU)",
    )
    p.add_argument("--glb", type=Path, help="GLB for the 3D viewer (default: --mesh, or a quick export)")
    p.add_argument("--no-viewer", action="store_true", help="preview without the 3D viewer")
    p.add_argument("--viewer-resolution", type=int, default=128, help="quick export: marching-cubes cells")
    p.add_argument("--viewer-faces", type=int, default=20_000, help="quick export: face count")
    p.add_argument("--viewer-texture", type=int, default=1024, help="quick export: texture size")
    p.add_argument(
        "--iso", type=iso_level, default=None, metavar="auto|SIGMA", help="quick export: iso-level"
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="checkpoint config override, e.g. model.renderer.max_steps=256 (repeatable)",
    )
    p.add_argument("--title", default=None, help="preview title (default: the prompt or the file name)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    cli.output_folder(args.output)
    from dreamfusion.export.sources import load_source, pick_device
    from dreamfusion.export.turntable import TurntableOptions
    from dreamfusion.export.turntable_video import VideoOptions, load_mesh_file, render_turntable

    passes = tuple(p.strip() for p in args.passes.split(",") if p.strip())
    opts = VideoOptions(
        turntable=TurntableOptions(
            frames=args.frames,
            size=args.size,
            passes=passes,
            background=background(args.background),
            supersample=args.supersample,
            progress=not args.quiet,
        ),
        elevation=args.elevation,
        radius=args.radius,
        fovy=args.fovy,
        fps=args.fps,
        renderer=args.renderer,
        glb=args.glb,
        viewer=not args.no_viewer,
        viewer_resolution=args.viewer_resolution,
        viewer_faces=args.viewer_faces,
        viewer_texture=args.viewer_texture,
        iso=args.iso,
        title=args.title,
    )
    opts.check()  # impossible settings fail before anything is loaded
    dev = pick_device(args.device)
    began = time.perf_counter()
    if args.mesh is not None:
        source = load_mesh_file(args.mesh)
    else:
        source = load_source(args.checkpoint, dev, tuple(args.override))
    (args.output / "video.json").unlink(missing_ok=True)  # the set's marker: gone while its files are replaced
    result = render_turntable(source, args.output, opts, device=dev)

    info = {
        **result.info,
        "seconds": round(time.perf_counter() - began, 3),
        "files": {k: result.files[k].name for k in ("video", "poster", "preview")},
    }
    files.write_json(args.output / "video.json", info)  # the set's marker, last
    print(
        f"video-render: {info['frames']} frames {info['width']}x{info['height']} ({result.renderer}, "
        f"{info['seconds_per_frame']:.3f} s/frame) -> {result.files['video']}, {result.files['preview']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
