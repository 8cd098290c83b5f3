"""Outputs are written to a temporary name and renamed into place (dreamfusion.files): a failure or
a SIGKILL leaves at each final path the previous file or the new one, never a part; a set (a mesh
and its stats) has its marker removed first and written last, so stats never stand beside a mix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dreamfusion import files
from dreamfusion.export.video import Mp4Writer


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp*"))


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    path = files.write_text(tmp_path / "a.json", "old")
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as tmp:
            tmp.write_text("half of the ne")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and _leftovers(tmp_path) == []
    files.write_json(path, {"new": 1})
    assert json.loads(path.read_text()) == {"new": 1} and _leftovers(tmp_path) == []


def test_mp4_is_renamed_into_place_only_when_finished(tmp_path):
    path = tmp_path / "turntable.mp4"
    frame = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(RuntimeError):
        with Mp4Writer(path, 16, 16, 10) as w:
            w.write(frame)
            assert not path.exists()  # frames go to the temporary name
            raise RuntimeError("killed")
    assert not path.exists() and _leftovers(tmp_path) == []
    with Mp4Writer(path, 16, 16, 10) as w:
        w.write(frame)
    assert path.stat().st_size > 0 and _leftovers(tmp_path) == []


def _complete(folder: Path) -> list[str]:
    """What is wrong with the files at their final paths (each must be whole, whatever the set)."""
    import trimesh
    from PIL import Image

    bad = []
    if (folder / "mesh.glb").exists():
        data = (folder / "mesh.glb").read_bytes()
        if data[:4] != b"glTF" or int.from_bytes(data[8:12], "little") != len(data):
            bad.append("mesh.glb truncated")
    if (folder / "mesh.png").exists():
        try:
            Image.open(folder / "mesh.png").load()
        except OSError:
            bad.append("mesh.png truncated")
    if (folder / "mesh.obj").exists():
        try:
            trimesh.load(folder / "mesh.obj", force="mesh", process=False)
        except Exception:  # noqa: BLE001 - any parse failure is the finding
            bad.append("mesh.obj unreadable")
        if not (folder / "mesh.obj").read_text().rstrip().splitlines()[-1].startswith("f "):
            bad.append("mesh.obj cut short")
    if (folder / "mesh_stats.json").exists():
        stats = json.loads((folder / "mesh_stats.json").read_text())
        for name in stats["files"].values():
            if not (folder / name).exists():
                bad.append(f"stats name a missing {name}")
    return bad


def test_export_failing_mid_file_keeps_the_old_file_and_drops_the_stats(tmp_path, monkeypatch):
    """A failure while the OBJ is half written (what a kill at that moment does): the previous
    export's OBJ is still whole at its path, the new GLB is whole, and no stats stand beside the
    mix; the next export completes the set."""
    from dreamfusion.export import writers
    from dreamfusion.export.fields import ConstantColor, VolumeSource
    from dreamfusion.export.pipeline import ExportOptions, export
    from dreamfusion.export.synthetic import SphereDensity

    src = VolumeSource(SphereDensity(radius=0.5, peak=50.0, softness=0.02), ConstantColor(), 1.0)
    opts = ExportOptions(resolution=32, texture=64, faces=400, progress=False)
    out = tmp_path / "out"
    first = export(src, out, opts)
    old_obj = (out / "mesh.obj").read_bytes()
    assert _complete(out) == []

    real = np.savetxt
    calls = []

    def dies_on_faces(fh, rows, fmt):
        calls.append(fmt)
        if fmt.startswith("f "):
            fh.write("f 1/1/1 2/")  # part of a line, then the process is gone
            raise KeyboardInterrupt("killed while writing faces")
        return real(fh, rows, fmt=fmt)

    monkeypatch.setattr(writers.np, "savetxt", dies_on_faces)
    with pytest.raises(KeyboardInterrupt):
        export(src, out, ExportOptions(resolution=24, texture=64, faces=300, progress=False))
    assert calls and (out / "mesh.obj").read_bytes() == old_obj
    assert not (out / "mesh_stats.json").exists() and _complete(out) == [] and _leftovers(out) == []
    monkeypatch.setattr(writers.np, "savetxt", real)
    second = export(src, out, ExportOptions(resolution=24, texture=64, faces=300, progress=False))
    assert second.stats["faces"] != first.stats["faces"]
    assert json.loads((out / "mesh_stats.json").read_text())["faces"] == _faces_in_glb(out) == second.stats["faces"]


def _faces_in_glb(folder: Path) -> int:
    import trimesh

    return len(trimesh.load(folder / "mesh.glb", force="mesh", process=False).faces)


def test_sigkilled_export_leaves_whole_files(tmp_path):
    """mesh-export SIGKILLed late in its run, into a folder holding a finished export of another
    mesh: every file at a final path is whole, and stats, when present, describe the GLB beside them."""
    from dreamfusion.export.synthetic import SMALL_BLOB, blob_checkpoint

    ckpt = blob_checkpoint(tmp_path / "ckpt" / "last.pt", SMALL_BLOB)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dreamfusion.stages.mesh_export", "--checkpoint", str(ckpt), "--output", str(out),
           "--resolution", "48", "--texture", "1024", "--quiet"]
    began = time.time()
    assert subprocess.run(cmd + ["--faces", "400"], capture_output=True).returncode == 0
    whole = time.time() - began
    p = subprocess.Popen(cmd + ["--faces", "200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(whole * 0.8)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert _complete(out) == []
    if (out / "mesh_stats.json").exists():
        assert json.loads((out / "mesh_stats.json").read_text())["faces"] == _faces_in_glb(out)


def test_temporary_names_are_hidden_and_per_process(tmp_path):
    t = files.temporary_name(tmp_path / "mesh.glb")
    assert t.parent == tmp_path and t.name == f".mesh.{os.getpid()}.tmp.glb"


def test_a_killed_process_temporaries_are_removed_when_a_stage_starts(tmp_path):
    """A SIGKILL skips atomic_path's clean-up; the next stage into that folder removes what the dead
    process left (also in subfolders), and leaves a live process's temporary and every other file."""
    from dreamfusion.stages.cli import output_folder

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "checkpoints").mkdir()
        stale = [tmp_path / "checkpoints" / f".last.{dead.pid}.tmp.pt", tmp_path / f".mesh.{dead.pid}.tmp.glb",
                 tmp_path / f".stats.{os.getpid()}.tmp.json"]
        kept = [tmp_path / "checkpoints" / f".last.{live.pid}.tmp.pt", tmp_path / "checkpoints" / "last.pt",
                tmp_path / ".notes.tmp", tmp_path / "mesh.glb"]
        for p in stale + kept:
            p.write_bytes(b"x")
        assert output_folder(tmp_path) == tmp_path
        assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in kept)
    finally:
        live.kill()
        live.wait()
