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
import json
import logging
import sys
import time
from pathlib import Path

from dreamfusion.errors import UserError
from dreamfusion.stages import cli
from dreamfusion.stages.mesh_export import device, iso_level

log = logging.getLogger("dreamfusion.video_render")

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
    from dreamfusion.export.turntable import TurntableOptions

    passes = tuple(p.strip() for p in args.passes.split(",") if p.strip())
    opts = TurntableOptions(
        frames=args.frames,
        size=args.size,
        passes=passes,
        background=background(args.background),
        supersample=args.supersample,
        progress=not args.quiet,
    )
    if not args.fps > 0 or args.fps > 240:
        raise UserError(f"--fps {args.fps} is impossible: use more than 0 and at most 240")
    for name in ("elevation", "radius", "fovy"):
        if getattr(args, name) is not None:
            setattr(opts, name, getattr(args, name))
    opts.check()  # impossible sizes fail before anything is loaded
    if args.glb is not None and not args.glb.is_file():
        raise UserError(f"--glb {args.glb} does not exist")
    if args.glb is not None and args.glb.read_bytes()[:4] != b"glTF":
        raise UserError(f"--glb {args.glb} is not a binary glTF (GLB) file")
    dev = device(args.device)
    out = args.output
    began = time.perf_counter()
    title = args.title
    facts: dict = {}
    glb: bytes | None = None
    if args.glb is not None:
        glb = args.glb.read_bytes()

    if args.mesh is not None:
        from dreamfusion.export.turntable import load_mesh, mesh_frames

        mesh = load_mesh(args.mesh)
        out.mkdir(parents=True, exist_ok=True)
        if glb is None and not args.no_viewer:
            glb = _mesh_glb(args.mesh)
        title = title or args.mesh.stem
        facts.update(
            {
                "source": args.mesh.name,
                "faces": int(mesh.faces.shape[0]),
                "vertices": int(mesh.positions.shape[0]),
            }
        )
        render = lambda sink: mesh_frames(mesh, opts, sink)  # noqa: E731
        renderer = "rasterization"
    else:
        from dreamfusion.export.fields import MeshSource
        from dreamfusion.export.sources import load_source

        source = load_source(args.checkpoint, dev, tuple(args.override))
        out.mkdir(parents=True, exist_ok=True)
        cfg = source.meta.get("config")
        if cfg is not None:
            td = cfg.model.data.test_dataset
            opts.elevation = args.elevation if args.elevation is not None else 90.0 - td.theta
            opts.radius = args.radius if args.radius is not None else td.radius
            opts.fovy = args.fovy if args.fovy is not None else td.fovy
            opts.check()
            title = title or cfg.model.prompt
        title = title or args.checkpoint.parent.parent.name
        facts.update({"source": args.checkpoint.name, "kind": source.kind, "step": source.meta.get("step")})
        # A mesh source (DMTet) is always rasterized; a NeRF is volume-rendered unless --renderer
        # raster asks for its exported mesh (the --glb, else the quick export) instead.
        need_mesh = isinstance(source, MeshSource) or args.renderer == "raster"
        quick = None
        if (glb is None and not args.no_viewer) or (
            need_mesh and (args.glb is None or isinstance(source, MeshSource))
        ):
            from dreamfusion.export.pipeline import ExportOptions, export

            viewer_opts = ExportOptions(
                resolution=args.viewer_resolution,
                iso=args.iso,
                faces=args.viewer_faces,
                texture=args.viewer_texture,
                progress=not args.quiet,
                name="preview",
                obj=False,
            )
            quick = export(source, out, viewer_opts, device=dev)
            if glb is None and not args.no_viewer:
                glb = quick.files["glb"].read_bytes()
            facts.update({k: quick.stats.get(k) for k in ("faces", "iso", "watertight")})
        if need_mesh:
            from dreamfusion.export.turntable import RenderMesh, load_mesh, mesh_frames

            if quick is not None:
                m = quick.mesh
                mesh = RenderMesh.from_arrays(m.positions, m.faces, m.uv, m.texture)
            else:
                mesh = load_mesh(args.glb)
            render = lambda sink: mesh_frames(mesh, opts, sink)  # noqa: E731
            renderer = "rasterization"
        else:
            from dreamfusion.export.turntable import nerf_frames

            scene = source.meta["scene"]
            render = lambda sink: nerf_frames(scene, opts, sink)  # noqa: E731
            renderer = "volume rendering"

    from PIL import Image

    from dreamfusion.export.preview import write_preview
    from dreamfusion.export.video import Mp4Writer

    video_path, poster_path = out / "turntable.mp4", out / "poster.png"
    width = opts.size * len(opts.passes)
    t = time.perf_counter()
    with Mp4Writer(video_path, width, opts.size, args.fps) as writer:

        def sink(frame):
            if writer.frames == 0:
                Image.fromarray(frame[:, : opts.size]).save(poster_path)
            writer.write(frame)

        render(sink)
    render_s = time.perf_counter() - t
    info = {
        "frames": opts.frames,
        "fps": args.fps,
        "width": width,
        "height": opts.size,
        "passes": list(opts.passes),
        "elevation": opts.elevation,
        "radius": opts.radius,
        "fovy": opts.fovy,
        "renderer": renderer,
        "codec": "h264",
        "pix_fmt": "yuv420p",
        "seconds_render_and_encode": round(render_s, 3),
        "seconds_per_frame": round(render_s / opts.frames, 4),
    }
    facts.update(
        {
            "frames": f"{opts.frames} at {args.fps:g} fps",
            "size": f"{width}x{opts.size}",
            "passes": ",".join(opts.passes),
            "renderer": renderer,
        }
    )
    caption = f"{opts.frames} frames, elevation {opts.elevation:g} deg, {renderer}"
    preview = write_preview(
        out / "preview.html", title, video_path, poster_path, None if args.no_viewer else glb, facts, caption
    )
    info["seconds"] = round(time.perf_counter() - began, 3)
    info["files"] = {"video": video_path.name, "poster": poster_path.name, "preview": preview.name}
    (out / "video.json").write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"video-render: {opts.frames} frames {width}x{opts.size} ({renderer}, "
        f"{info['seconds_per_frame']:.3f} s/frame) -> {video_path}, {preview}"
    )
    return 0


def _mesh_glb(path: Path) -> bytes | None:
    """The viewer's GLB for a mesh file: the file itself, or a conversion through trimesh."""
    data = path.read_bytes()
    if data[:4] == b"glTF":
        return data
    from dreamfusion.export._deps import require

    trimesh = require("trimesh")
    try:
        return trimesh.load(str(path), force="mesh").export(file_type="glb")
    except Exception as e:  # the video still renders; only the viewer is missing
        log.warning("no 3D viewer: %s could not be converted to GLB (%s)", path, e)
        return None


if __name__ == "__main__":
    sys.exit(cli.run(main))
