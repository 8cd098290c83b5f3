"""A turntable video of any source: which renderer and which mesh, then MP4, poster and preview.

``render_turntable(source, output, opts)`` takes what ``sources.load_source`` returns for a
checkpoint of any registered format, or a mesh file (``load_mesh_file``), and writes
``output/turntable.mp4`` (H.264, yuv420p, faststart; the passes side by side),
``output/poster.png`` (the first frame) and ``output/preview.html`` (the video and an
interactive 3D viewer of a GLB, working offline). Which renderer draws the frames:

* a ``MeshFile`` is rasterized as it is; the viewer shows ``opts.glb``, else the file itself;
* a ``MeshSource`` (e.g. DMTet) is rasterized through a quick export (``output/preview.glb``);
* a ``VolumeSource`` (a NeRF) is volume-rendered, or with ``opts.renderer == "raster"``
  rasterized through its mesh: ``opts.glb``, else the quick export.

For a checkpoint the viewer shows ``opts.glb``, else the quick export; ``opts.viewer = False``
leaves the viewer out. The camera circle is the checkpoint's test circle unless given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from dreamfusion.errors import UserError
from dreamfusion.export.fields import MeshSource, VolumeSource
from dreamfusion.export.turntable import RenderMesh, TurntableOptions, load_mesh

# The name the video-render stage's log lines have always carried.
log = logging.getLogger("dreamfusion.video_render")

RENDERERS = ("volume", "raster")
Sink = Callable[[np.ndarray], None]
"""Takes one frame (H, W * passes, 3) uint8."""


@dataclass
class VideoOptions:
    turntable: TurntableOptions = field(default_factory=TurntableOptions)
    """Frames, size, passes, background, antialiasing, progress; its camera unless set below."""
    elevation: float | None = None
    """Camera elevation in degrees; None: the checkpoint's test circle, else ``turntable``'s."""
    radius: float | None = None
    """Camera distance; None: the checkpoint's test circle, else ``turntable``'s."""
    fovy: float | None = None
    """Vertical field of view in degrees; None: the checkpoint's, else ``turntable``'s."""
    fps: float = 30.0
    renderer: str = "volume"
    """A ``VolumeSource``: ``volume`` (render the field) or ``raster`` (rasterize its mesh)."""
    glb: Path | None = None
    """GLB for the viewer, and the mesh a ``VolumeSource`` rasterizes; None: see the module doc."""
    viewer: bool = True
    """Embed the interactive 3D viewer in the preview."""
    viewer_resolution: int = 128
    """Quick export: marching-cubes cells per axis."""
    viewer_faces: int = 20_000
    """Quick export: target face count."""
    viewer_texture: int = 1024
    """Quick export: texture size in texels."""
    iso: float | None = None
    """Quick export: density iso-level (None: automatic)."""
    title: str | None = None
    """Preview title; None: the prompt, else the file or run name."""

    def camera(self, source: object = None) -> TurntableOptions:
        """``turntable`` with the camera set: given values, else the source's test circle."""
        cfg = getattr(source, "meta", {}).get("config")
        circle = {}
        if cfg is not None:
            td = cfg.model.data.test_dataset
            circle = {"elevation": 90.0 - td.theta, "radius": td.radius, "fovy": td.fovy}
        given = {k: getattr(self, k) for k in ("elevation", "radius", "fovy") if getattr(self, k) is not None}
        tt = replace(self.turntable, **{**circle, **given})
        tt.check()
        return tt

    def check(self) -> None:
        """Impossible settings fail here, before any source is loaded."""
        if not self.fps > 0 or self.fps > 240:
            raise UserError(f"--fps {self.fps} is impossible: use more than 0 and at most 240")
        if self.renderer not in RENDERERS:
            raise UserError(f"renderer {self.renderer!r}: choose among {', '.join(RENDERERS)}")
        self.camera()
        if self.glb is not None and not self.glb.is_file():
            raise UserError(f"--glb {self.glb} does not exist")
        if self.glb is not None and self.glb.read_bytes()[:4] != b"glTF":
            raise UserError(f"--glb {self.glb} is not a binary glTF (GLB) file")

    def quick_export(self):
        """The options of the quick export (``preview.glb``: GLB and stats only)."""
        from dreamfusion.export.pipeline import ExportOptions

        return ExportOptions(
            resolution=self.viewer_resolution,
            iso=self.iso,
            faces=self.viewer_faces,
            texture=self.viewer_texture,
            progress=self.turntable.progress,
            name="preview",
            obj=False,
        )


@dataclass
class MeshFile:
    """A mesh file (GLB, glTF, OBJ, PLY, ...) rasterized as it is: geometry, UVs, texture."""

    path: Path
    mesh: RenderMesh


def load_mesh_file(path: str | Path) -> MeshFile:
    """A mesh file as a turntable source (UserError if missing, unreadable or a checkpoint)."""
    return MeshFile(Path(path), load_mesh(path))


@dataclass
class VideoResult:
    info: dict
    """Frames, fps, size, passes, camera, renderer, codec and timings (``video.json``)."""
    files: dict[str, Path]
    """``video``, ``poster``, ``preview``, and ``glb`` when a quick export was written."""
    renderer: str
    """``rasterization`` or ``volume rendering``."""


@dataclass
class _Plan:
    render: Callable[[Sink], None]
    renderer: str
    title: str
    facts: dict
    glb: bytes | None
    files: dict[str, Path] = field(default_factory=dict)


def render_turntable(
    source: VolumeSource | MeshSource | MeshFile,
    output: str | Path,
    opts: VideoOptions | None = None,
    device: torch.device | str = "cpu",
) -> VideoResult:
    """Turntable video, poster and HTML preview of ``source`` in ``output`` (created).

    ``device``: where a quick export bakes its texture (a checkpoint's own renders run on the
    device it was loaded to).
    """
    opts = opts or VideoOptions()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    # 1. The camera circle and the renderer, the mesh and the viewer's GLB for this source.
    tt = opts.camera(source)
    glb = opts.glb.read_bytes() if opts.glb is not None else None
    if isinstance(source, MeshFile):
        plan = _mesh_file_plan(source, opts, tt, glb)
    elif isinstance(source, (VolumeSource, MeshSource)):
        plan = _checkpoint_plan(source, output, opts, tt, glb, device)
    else:
        raise TypeError(f"cannot render a turntable of a {type(source).__name__}")

    # 2. Frames -> MP4, the first one's first pass -> poster.
    from PIL import Image

    from dreamfusion.export.preview import write_preview
    from dreamfusion.export.video import Mp4Writer
    from dreamfusion.files import atomic_path

    video_path, poster_path = output / "turntable.mp4", output / "poster.png"
    width = tt.size * len(tt.passes)
    t = time.perf_counter()
    with Mp4Writer(video_path, width, tt.size, opts.fps) as writer:

        def sink(frame: np.ndarray) -> None:
            if writer.frames == 0:
                with atomic_path(poster_path) as tmp:
                    Image.fromarray(frame[:, : tt.size]).save(tmp, format="PNG")
            writer.write(frame)

        plan.render(sink)
    render_s = time.perf_counter() - t
    info = {
        "frames": tt.frames,
        "fps": opts.fps,
        "width": width,
        "height": tt.size,
        "passes": list(tt.passes),
        "elevation": tt.elevation,
        "radius": tt.radius,
        "fovy": tt.fovy,
        "renderer": plan.renderer,
        "codec": "h264",
        "pix_fmt": "yuv420p",
        "seconds_render_and_encode": round(render_s, 3),
        "seconds_per_frame": round(render_s / tt.frames, 4),
    }

    # 3. The preview: video, viewer, facts.
    facts = {
        **plan.facts,
        "frames": f"{tt.frames} at {opts.fps:g} fps",
        "size": f"{width}x{tt.size}",
        "passes": ",".join(tt.passes),
        "renderer": plan.renderer,
    }
    caption = f"{tt.frames} frames, elevation {tt.elevation:g} deg, {plan.renderer}"
    preview = write_preview(
        output / "preview.html",
        plan.title,
        video_path,
        poster_path,
        plan.glb if opts.viewer else None,
        facts,
        caption,
    )
    files = {"video": video_path, "poster": poster_path, "preview": preview, **plan.files}
    return VideoResult(info, files, plan.renderer)


def _mesh_file_plan(source: MeshFile, opts: VideoOptions, tt: TurntableOptions, glb: bytes | None) -> _Plan:
    from dreamfusion.export.turntable import mesh_frames

    mesh = source.mesh
    if glb is None and opts.viewer:
        glb = _mesh_glb(source.path)
    facts = {
        "source": source.path.name,
        "faces": int(mesh.faces.shape[0]),
        "vertices": int(mesh.positions.shape[0]),
    }
    return _Plan(
        lambda sink: mesh_frames(mesh, tt, sink), "rasterization", opts.title or source.path.stem, facts, glb
    )


def _checkpoint_plan(
    source: VolumeSource | MeshSource,
    output: Path,
    opts: VideoOptions,
    tt: TurntableOptions,
    glb: bytes | None,
    device: torch.device | str,
) -> _Plan:
    cfg = source.meta.get("config")
    checkpoint = source.meta.get("checkpoint")
    title = opts.title or (cfg.model.prompt if cfg is not None else None)
    title = title or (Path(checkpoint).parent.parent.name if checkpoint else source.kind)
    facts = {
        "source": Path(checkpoint).name if checkpoint else source.kind,
        "kind": source.kind,
        "step": source.meta.get("step"),
    }
    # A mesh source (DMTet) is always rasterized; a NeRF is volume-rendered unless the raster
    # renderer asks for its exported mesh instead. The mesh rasterized is the given GLB (the
    # source's own export), else a quick export.
    need_mesh = isinstance(source, MeshSource) or opts.renderer == "raster"
    quick, files = None, {}
    if (glb is None and opts.viewer) or (need_mesh and opts.glb is None):
        from dreamfusion.export.pipeline import export

        quick = export(source, output, opts.quick_export(), device=device)
        if glb is None and opts.viewer:
            glb = quick.files["glb"].read_bytes()
        facts.update({k: quick.stats.get(k) for k in ("faces", "iso", "watertight")})
        files["glb"] = quick.files["glb"]
    if need_mesh:
        from dreamfusion.export.turntable import mesh_frames

        if quick is not None:
            m = quick.mesh
            mesh = RenderMesh.from_arrays(m.positions, m.faces, m.uv, m.texture)
        else:
            mesh = load_mesh(opts.glb)
        return _Plan(lambda sink: mesh_frames(mesh, tt, sink), "rasterization", title, facts, glb, files)
    from dreamfusion.export.turntable import nerf_frames

    scene = source.meta["scene"]
    return _Plan(lambda sink: nerf_frames(scene, tt, sink), "volume rendering", title, facts, glb, files)


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
