"""video-render: MP4s checked by ffmpeg/ffprobe (not by our writer), the HTML preview opened in
headless Chromium with no network, rasterizer against volume rendering, CLI errors.

Small on purpose: a tiny real NeRF checkpoint, 32-96 pixel frames, a handful of frames.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamfusion.export.pipeline import ExportOptions, export
from dreamfusion.export.sources import load_source
from dreamfusion.export.synthetic import BLOB_BIAS, SMALL_BLOB, blob_checkpoint, blob_sphere_radius
from dreamfusion.export.turntable import RenderMesh, TurntableOptions, cameras, nerf_frames, shade_mesh
from dreamfusion.export.turntable_video import VideoOptions, load_mesh_file, render_turntable
from dreamfusion.stages import cli, video_render

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "tests" / "js"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def run_stage(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.run(video_render.main, argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return blob_checkpoint(tmp_path_factory.mktemp("run") / "checkpoints" / "last.pt", SMALL_BLOB, bias=BLOB_BIAS)


@pytest.fixture(scope="module")
def glb(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mesh")
    res = export(load_source(checkpoint), out, ExportOptions(resolution=48, faces=3000, texture=256, progress=False))
    return res.files["glb"]


@pytest.fixture(scope="module")
def mesh_run(glb, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video")
    rc = cli.run(
        video_render.main,
        [
            "--mesh",
            str(glb),
            "--output",
            str(out),
            "--frames",
            "12",
            "--fps",
            "24",
            "--size",
            "96",
            "--passes",
            "rgb,normal,depth",
            "--quiet",
        ],
    )
    assert rc == 0
    return out


# -- probes independent of the writer -------------------------------------------------------------
def ffmpeg_probe(path: Path) -> dict:
    """``ffmpeg -i`` of imageio-ffmpeg's binary: codec, pixel format, size, fps; frames by decoding."""
    import imageio_ffmpeg

    proc = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(ln for ln in proc.stderr.splitlines() if "Video:" in ln)
    m = re.search(r"Video: (\w+).*?, (\w+)(?:\([^)]*\))?, (\d+)x(\d+).*?, ([\d.]+) fps", line)
    assert m, line
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return {
        "codec": m[1],
        "pix_fmt": m[2],
        "width": int(m[3]),
        "height": int(m[4]),
        "fps": float(m[5]),
        "frames": frames,
    }


def ffprobe(path: Path) -> dict | None:
    """Debian's ffprobe, where installed (apt-get install ffmpeg): counts decoded frames."""
    exe = shutil.which("ffprobe")
    if exe is None:
        return None
    proc = subprocess.run(
        [
            exe,
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name,profile,pix_fmt,width,height,r_frame_rate,nb_read_frames",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(proc.stdout)["streams"][0]


def top_level_atoms(path: Path) -> list[str]:
    data, atoms, i = path.read_bytes(), [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        if size == 1:
            size = struct.unpack(">Q", data[i + 8 : i + 16])[0]
        atoms.append(kind.decode("latin-1"))
        if size < 8:
            break
        i += size
    return atoms


def test_mesh_turntable_is_h264_yuv420p_faststart(mesh_run):
    video = mesh_run / "turntable.mp4"
    p = ffmpeg_probe(video)
    assert p == {"codec": "h264", "pix_fmt": "yuv420p", "width": 288, "height": 96, "fps": 24.0, "frames": 12}
    atoms = top_level_atoms(video)
    assert atoms.index("moov") < atoms.index("mdat"), atoms  # faststart: the index comes first
    fp = ffprobe(video)
    if fp is not None:
        assert fp["codec_name"] == "h264" and fp["pix_fmt"] == "yuv420p"
        assert fp["r_frame_rate"] == "24/1" and int(fp["nb_read_frames"]) == 12
    info = json.loads((mesh_run / "video.json").read_text())
    assert info["frames"] == 12 and info["renderer"] == "rasterization"
    poster = Image.open(mesh_run / "poster.png")
    assert poster.size == (96, 96)
    px = np.asarray(poster, dtype=np.float64)
    assert (np.abs(px - 255).sum(-1) > 30).mean() > 0.05  # the object is on it, not just background


def test_nerf_turntable_and_quick_viewer_mesh(checkpoint, tmp_path, capsys):
    out = tmp_path / "v"
    rc, stdout, err = run_stage(
        [
            "--checkpoint",
            str(checkpoint),
            "--output",
            str(out),
            "--frames",
            "3",
            "--fps",
            "30",
            "--size",
            "32",
            "--passes",
            "rgb,depth",
            "--viewer-resolution",
            "32",
            "--viewer-texture",
            "64",
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0, err
    assert "volume rendering" in stdout
    p = ffmpeg_probe(out / "turntable.mp4")
    assert (p["codec"], p["pix_fmt"], p["width"], p["height"], p["fps"], p["frames"]) == (
        "h264",
        "yuv420p",
        64,
        32,
        30.0,
        3,
    )
    assert (out / "preview.glb").read_bytes()[:4] == b"glTF"
    html = (out / "preview.html").read_text()
    assert "Content-Security-Policy" in html and "data:video/mp4;base64," in html and "DreamfusionViewer" in html
    assert not re.search(r"""(src|href)=["']https?:""", html)


def patch_nerf_with(monkeypatch, density, color) -> None:
    """Make the engine's NeRF class an analytic field, on every path the renderer uses."""
    from dreamfusion.geometry.nerf import NeRF

    monkeypatch.setattr(NeRF, "density", lambda self, x: density.density(x))
    monkeypatch.setattr(NeRF, "forward", lambda self, x: (density.density(x), color.albedo(x)))
    monkeypatch.setattr(NeRF, "encode", lambda self, x: x)
    monkeypatch.setattr(NeRF, "sigma_from", lambda self, x, enc: density.density(x))
    monkeypatch.setattr(NeRF, "albedo_from", lambda self, enc: color.albedo(enc))


def test_rasterized_mesh_lines_up_with_the_volume_render(tmp_path, monkeypatch):
    """Same cameras, same object (an off-centre sphere with a sharp edge, so every render agrees
    on its surface): the exported mesh's silhouette matches the NeRF's opacity at every azimuth."""
    from dreamfusion.export.synthetic import GradientColor, SphereDensity
    from dreamfusion.export.turntable import _index, load_mesh

    patch_nerf_with(monkeypatch, SphereDensity(0.35, 80.0, 0.005, center=(0.3, 0.2, 0.0)), GradientColor())
    ckpt = blob_checkpoint(tmp_path / "last.pt", SMALL_BLOB)
    source = load_source(ckpt)
    res = export(source, tmp_path / "mesh", ExportOptions(resolution=64, faces=4000, texture=128, progress=False))
    mesh = load_mesh(res.files["glb"])
    opts = TurntableOptions(frames=4, size=40, elevation=30.0, progress=False)
    cams = cameras(opts)
    for i in range(4):
        op = source.meta["scene"].render_views(_index(cams, i), "lambertian")["opacity"][0] > 0.5
        img = shade_mesh(mesh, cams.c2w[i], float(cams.fovy[i]), 40, ("normal",), (0.0, 0.0, 0.0), 3.2, supersample=1)
        sil = img.sum(-1) > 0
        iou = float((sil & op).sum() / (sil | op).sum())
        assert iou > 0.9, (i, iou)


def test_rasterizer_depth_of_a_sphere_is_exact():
    import trimesh

    ico = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    mesh = RenderMesh.from_arrays(ico.vertices, ico.faces)
    opts = TurntableOptions(frames=1, size=64, elevation=0.0)
    c2w = cameras(opts).c2w[0]
    from dreamfusion.renderer.raster import rasterize

    frags = rasterize(mesh.positions, mesh.faces, c2w, float(np.radians(20)), 64, 64)
    assert int(frags.face[32, 32]) >= 0 and int(frags.face[0, 0]) == -1
    centre = frags.depth[31:33, 31:33].mean()
    assert abs(float(centre) - (3.2 - 0.5)) < 0.01
    # The silhouette radius in pixels matches the pinhole model of dreamfusion.data.cameras.rays.
    focal = 32 / np.tan(np.radians(10))
    r_px = focal * 0.5 / np.sqrt(3.2**2 - 0.25)
    area = float(frags.mask.float().sum())
    assert abs(area - np.pi * r_px**2) / (np.pi * r_px**2) < 0.05


def test_nerf_frames_show_the_blob_at_the_right_size(checkpoint):
    source = load_source(checkpoint)
    opts = TurntableOptions(frames=1, size=32, passes=("rgb",), background=(0.0, 0.0, 0.0), progress=False)
    frame = nerf_frames(source.meta["scene"], opts)[0].astype(np.float64)
    assert frame.shape == (32, 32, 3)
    lit = frame.sum(-1) > 30
    focal = 16 / np.tan(np.radians(10))
    r = blob_sphere_radius(5.0, 12.0, 0.4, BLOB_BIAS)  # roughly where the blob becomes opaque
    r_px = focal * r / 3.2
    assert 0.5 * np.pi * r_px**2 < lit.sum() < 2.0 * np.pi * r_px**2


# -- the library call: one per source ------------------------------------------------------------
def small_video(**kw) -> VideoOptions:
    return VideoOptions(TurntableOptions(frames=2, size=32, progress=False), **{"fps": 10.0, **kw})


def test_render_turntable_of_a_mesh_file(glb, tmp_path):
    res = render_turntable(load_mesh_file(glb), tmp_path / "v", small_video())
    assert res.renderer == "rasterization" and sorted(res.files) == ["poster", "preview", "video"]
    assert (res.info["frames"], res.info["width"], res.info["elevation"]) == (2, 32, 10.0)
    assert ffmpeg_probe(res.files["video"])["frames"] == 2
    assert Image.open(res.files["poster"]).size == (32, 32)
    assert "DreamfusionViewer" in res.files["preview"].read_text()
    res = render_turntable(load_mesh_file(glb), tmp_path / "w", small_video(viewer=False))
    assert "DreamfusionViewer" not in res.files["preview"].read_text()


def test_render_turntable_of_a_checkpoint(checkpoint, glb, tmp_path):
    source = load_source(checkpoint)
    td = source.meta["config"].model.data.test_dataset
    res = render_turntable(source, tmp_path / "v", small_video(viewer_resolution=32, viewer_texture=64))
    assert res.renderer == "volume rendering"
    assert res.files["glb"] == tmp_path / "v" / "preview.glb" and res.files["glb"].read_bytes()[:4] == b"glTF"
    assert (res.info["elevation"], res.info["radius"]) == (90.0 - td.theta, td.radius)  # its test circle
    html = res.files["preview"].read_text()
    assert "DreamfusionViewer" in html and f"<td>{checkpoint.name}</td>" in html
    res = render_turntable(source, tmp_path / "r", small_video(renderer="raster", glb=glb, elevation=20.0))
    assert res.renderer == "rasterization" and "glb" not in res.files  # --glb is the mesh: no quick export
    assert res.info["elevation"] == 20.0 and ffmpeg_probe(res.files["video"])["frames"] == 2


def test_render_turntable_of_a_mesh_source_rasterizes_its_quick_export(tmp_path):
    """A MeshSource (what a DMTet checkpoint loads as) is rasterized through its quick export."""
    import trimesh

    from dreamfusion.export.fields import MeshSource
    from dreamfusion.export.synthetic import GradientColor

    ico = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    source = MeshSource(np.asarray(ico.vertices), np.asarray(ico.faces), GradientColor(), kind="test-mesh")
    res = render_turntable(source, tmp_path / "v", small_video(viewer_texture=64))
    assert res.renderer == "rasterization" and (tmp_path / "v" / "preview.glb").is_file()
    assert ffmpeg_probe(res.files["video"])["frames"] == 2


def test_video_options_fail_before_anything_is_loaded(tmp_path):
    from dreamfusion.errors import UserError

    for opts, message in [
        (small_video(fps=0), "--fps 0 is impossible"),
        (small_video(elevation=95.0), "elevation 95.0 is impossible"),
        (small_video(renderer="path-tracing"), "renderer 'path-tracing'"),
        (small_video(glb=tmp_path / "none.glb"), "does not exist"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            opts.check()


# -- the HTML preview in a real browser -----------------------------------------------------------
def test_preview_opens_offline_in_headless_chromium(mesh_run, glb, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    if shutil.which("node") is None or not (JS / "node_modules" / "playwright-core").is_dir():
        pytest.skip("node or playwright-core is missing (apt-get install nodejs npm; cd tests/js && npm ci)")
    cmd = [
        "node",
        str(JS / "preview_check.mjs"),
        str(mesh_run / "preview.html"),
        str(tmp_path / "chk"),
        CHROMIUM,
    ]
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        cmd = ["unshare", "-n", *cmd]  # no network at all (Chromium calls home whatever its flags)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "chk" / "report.json").read_text())

    errors = [m for m in report["console"] if m["type"] == "error"]
    assert not errors and not report["pageErrors"], (errors, report["pageErrors"])
    leaving = [u for u in report["requests"] if not u.startswith(("file:", "data:", "blob:"))]
    assert not leaving and not report["failedRequests"], (leaving, report["failedRequests"])

    import trimesh

    faces = len(trimesh.load(str(glb), force="mesh", process=False).faces)
    assert report["viewer"] == {
        "ready": True,
        "error": None,
        "triangles": faces,
        "vertices": report["viewer"]["vertices"],
    }
    v = report.get("video") or {}
    assert v.get("error") is None and v.get("readyState", 0) >= 2 and (v["width"], v["height"]) == (288, 96), report
    assert abs(v["duration"] - 12 / 24) < 0.05
    assert report["playback"]["decodedFrames"] > 0 and not report["playback"]["paused"], report["playback"]

    shot = np.asarray(Image.open(tmp_path / "chk" / "viewer.png").convert("RGB"), dtype=np.float64)
    background = np.array([0xF4, 0xF4, 0xF4], dtype=np.float64)
    covered = (np.abs(shot - background).sum(-1) > 40).mean()
    assert 0.05 < covered < 0.9, covered  # the mesh is drawn, and it is not a blank or solid canvas
    assert shot.std() > 10


# -- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "33"], "frame size 33 is impossible"),
        (["--size", "8"], "frame size 8 is impossible"),
        (["--frames", "0"], "frame count 0 is impossible"),
        (["--fps", "0"], "--fps 0.0 is impossible"),
        (["--passes", "rgb,albedo"], "choose among rgb,normal,depth"),
        (["--background", "pink"], "--background 'pink'"),
        (["--elevation", "95"], "elevation 95.0 is impossible"),
    ],
)
def test_impossible_settings_exit_2_with_one_line(glb, tmp_path, capsys, args, message):
    rc, _, err = run_stage(["--mesh", str(glb), "--output", str(tmp_path / "o"), *args], capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "o").exists()


def test_wrong_inputs_exit_2_with_one_line(checkpoint, glb, tmp_path, capsys):
    junk = tmp_path / "junk.glb"
    junk.write_bytes(b"not a mesh at all")
    cases = [
        (["--mesh", str(tmp_path / "none.glb")], "does not exist"),
        (["--mesh", str(checkpoint)], "is a checkpoint, not a mesh"),
        (["--checkpoint", str(glb)], "is a mesh file, not a checkpoint"),
        (["--mesh", str(junk)], "is not a mesh file that can be read"),
        (["--mesh", str(glb), "--checkpoint", str(checkpoint)], "not allowed with argument"),
        (["--mesh", str(glb), "--glb", str(checkpoint)], "is not a binary glTF"),
        ([], "one of the arguments --checkpoint --mesh is required"),
    ]
    for args, message in cases:
        rc, _, err = run_stage([*args, "--output", str(tmp_path / "o"), "--quiet"], capsys)
        assert rc == 2 and err.count("\n") == 1 and message in err, (args, err)


def test_checkpoint_rasterized_through_its_mesh(checkpoint, glb, tmp_path, capsys):
    """--renderer raster: the fast CPU path for a NeRF checkpoint (here with mesh-export's GLB)."""
    out = tmp_path / "v"
    rc, stdout, err = run_stage(
        [
            "--checkpoint",
            str(checkpoint),
            "--output",
            str(out),
            "--renderer",
            "raster",
            "--glb",
            str(glb),
            "--frames",
            "4",
            "--size",
            "48",
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0, err
    assert "rasterization" in stdout and not (out / "preview.glb").exists()
    assert ffmpeg_probe(out / "turntable.mp4")["frames"] == 4
    rc, _, err = run_stage(
        [
            "--mesh",
            str(glb),
            "--output",
            str(tmp_path / "w"),
            "--frames",
            "2",
            "--size",
            "32",
            "--no-viewer",
            "--quiet",
        ],
        capsys,
    )
    assert rc == 0, err
    assert "DreamfusionViewer" not in (tmp_path / "w" / "preview.html").read_text()
