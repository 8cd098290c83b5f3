"""The mesh export, in order: surface -> clean-up -> decimation -> UV atlas -> baked albedo -> files.

``export(source, output)`` takes a ``VolumeSource`` (marching cubes on its density grid) or a
``MeshSource`` (its triangles as they are) and writes ``mesh.glb``, ``mesh.obj`` + ``mesh.mtl``
+ ``mesh.png`` and ``mesh_stats.json`` into ``output``. Each file goes to a temporary name first
and is renamed into place (``dreamfusion.files``); the stats, the set's marker, are removed before
the others are replaced and written last, so a killed export never leaves stats beside a mix.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from dreamfusion.errors import UserError
from dreamfusion.export import mesh_ops
from dreamfusion.export.extract import marching_cubes, sample_density
from dreamfusion.export.fields import ColorField, MeshSource, VolumeSource
from dreamfusion.export.texture import bake, unwrap
from dreamfusion.export.writers import TexturedMesh, png_bytes, write_glb, write_json, write_obj

log = logging.getLogger(__name__)

MIN_FACES = 4
MIN_RESOLUTION = 32


def iso_level(text: str) -> float | None:
    """``ExportOptions.iso`` as typed on a command line (an argparse ``type``): ``auto`` is None,
    else a positive density."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'auto' nor a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive density")
    return value


@dataclass
class ExportOptions:
    resolution: int = 256
    """Marching-cubes cells per axis over [-bound, bound]^3."""
    iso: float | None = None
    """Density iso-level; None chooses it automatically (see ``extract``)."""
    faces: int = 50_000
    """Target face count after decimation."""
    texture: int = 2048
    """Texture width and height in texels."""
    min_component: float = 0.02
    """Components with fewer faces than this fraction of the largest one are dropped."""
    progress: bool = True
    name: str = "mesh"
    """File name stem."""
    obj: bool = True
    """Also write OBJ + MTL + PNG (the GLB and the stats are always written)."""

    def check(self) -> None:
        if not 8 <= self.resolution <= 1024:
            raise UserError(f"resolution {self.resolution} is impossible: use 8 to 1024 cells per axis")
        if self.iso is not None and not (np.isfinite(self.iso) and self.iso > 0):
            raise UserError(f"iso-level {self.iso} is impossible: use a positive density or 'auto'")
        if self.faces < 100:
            raise UserError(f"face count {self.faces} is impossible: use at least 100")
        if not 16 <= self.texture <= 8192:
            raise UserError(f"texture size {self.texture} is impossible: use 16 to 8192 texels")
        if not 0 <= self.min_component < 1:
            raise UserError(f"min_component {self.min_component} must lie in [0, 1)")


@dataclass
class ExportResult:
    mesh: TexturedMesh
    stats: dict
    files: dict[str, Path] = field(default_factory=dict)


def surface(
    source: VolumeSource | MeshSource, opts: ExportOptions, times: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The raw surface of a source -> vertices, faces, facts for the stats."""
    if isinstance(source, MeshSource):
        v, f = np.asarray(source.vertices, dtype=np.float32), np.asarray(source.faces, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
            raise UserError(
                f"the {source.kind} mesh is empty or malformed (vertices {v.shape}, faces {f.shape})"
            )
        if f.min() < 0 or f.max() >= len(v):
            raise UserError(f"the {source.kind} mesh has face indices outside its {len(v)} vertices")
        return v, f, {"source": source.kind}
    t = time.perf_counter()
    volume = sample_density(source, opts.resolution, opts.iso, progress=opts.progress)
    times["density_grid"] = time.perf_counter() - t
    t = time.perf_counter()
    v, f = marching_cubes(volume)
    times["marching_cubes"] = time.perf_counter() - t
    log.info(
        "marching cubes at iso %.4g (%s): %d vertices, %d faces",
        volume.iso.value,
        volume.iso.method,
        len(v),
        len(f),
    )
    return v, f, {"source": source.kind, "resolution": opts.resolution, **volume.summary()}


def keep_closed(
    v: np.ndarray, f: np.ndarray, dv: np.ndarray, df: np.ndarray, target: int
) -> tuple[np.ndarray, np.ndarray]:
    """A mesh source's decimation that stays closed: when decimating a closed surface to ``target``
    faces pinched it into a non-manifold one, the target doubles until the result is closed again,
    up to the undecimated surface (there is no grid to run again on, as for a volume)."""
    if len(df) == len(f) or mesh_ops.is_watertight(dv, df) or not mesh_ops.is_watertight(v, f):
        return dv, df
    while True:
        target *= 2
        if target >= len(f):
            log.warning("decimation breaks the closed %d-face mesh at every face budget: keeping it whole", len(f))
            return v, f
        log.warning("decimating the closed mesh made it non-manifold; trying %d faces", target)
        dv, df = mesh_ops.decimate(v, f, target)
        if mesh_ops.is_watertight(dv, df):
            return dv, df


def clean_surface(
    source: VolumeSource | MeshSource, opts: ExportOptions, times: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The surface of a source, cleaned (floaters dropped) and decimated to ``opts.faces``.

    Quadric edge collapse can pinch the many tiny handles of a noisy surface into edges with four
    faces. When decimation would turn a closed surface into a non-manifold one, marching cubes runs
    again, at the same iso-level, on a coarser grid whose surface needs less decimation; at
    ``MIN_RESOLUTION`` cells the closed surface is kept undecimated, over the face budget.
    ``resolution_used`` in the stats says which grid made the mesh."""
    resolution, iso, first = opts.resolution, opts.iso, None
    while True:
        v, f, facts = surface(source, replace(opts, resolution=resolution, iso=iso), times)
        first = first or facts
        t = time.perf_counter()
        v, f = mesh_ops.compact(v, f)
        v, f, comp = mesh_ops.drop_small_components(v, f, opts.min_component) if len(f) else (v, f, {})
        times["cleanup"] = times.get("cleanup", 0.0) + time.perf_counter() - t
        raw_faces = len(f)
        t = time.perf_counter()
        dv, df = mesh_ops.decimate(v, f, opts.faces)
        if isinstance(source, MeshSource):
            dv, df = keep_closed(v, f, dv, df, opts.faces)
        times["decimation"] = times.get("decimation", 0.0) + time.perf_counter() - t
        if (
            isinstance(source, MeshSource)
            or len(df) == len(f)
            or mesh_ops.is_watertight(dv, df)
            or not mesh_ops.is_watertight(v, f)
        ):
            break
        if resolution <= MIN_RESOLUTION:
            log.warning("decimation breaks the closed surface even at %d cells: keeping its %d faces",
                        resolution, len(f))
            dv, df = v, f
            break
        coarser = max(MIN_RESOLUTION, min(int(resolution * math.sqrt(opts.faces / raw_faces)), resolution * 3 // 4))
        log.warning(
            "decimating %d faces to %d made the closed surface non-manifold; marching cubes again at %d cells",
            raw_faces, opts.faces, coarser,
        )
        resolution, iso = coarser, facts.get("iso", iso)
    if "resolution" in facts:  # what was asked for, and the grid that made the mesh
        facts.update(resolution=opts.resolution, iso_method=first["iso_method"], resolution_used=resolution)
    return dv, df, {**facts, **comp, "faces_before_decimation": int(raw_faces)}


def textured_mesh(
    verts: np.ndarray,
    faces: np.ndarray,
    color: ColorField,
    opts: ExportOptions,
    times: dict[str, float],
    device: torch.device | str = "cpu",
) -> tuple[TexturedMesh, dict]:
    """Unwrap and bake a cleaned surface."""
    v, f = verts, faces
    if len(f) < MIN_FACES:
        raise UserError(f"the surface is degenerate: {len(f)} faces after clean-up")
    watertight = mesh_ops.is_watertight(v, f)
    t = time.perf_counter()
    uvm = unwrap(v, f, opts.texture)
    times["uv_unwrap"] = time.perf_counter() - t
    t = time.perf_counter()
    baked = bake(uvm, color, opts.texture, device=device, progress=opts.progress)
    times["bake"] = time.perf_counter() - t
    normals = mesh_ops.vertex_normals(v, f, welded=True)[uvm.source_vertex]  # one normal per point, seams or not
    mesh = TexturedMesh(uvm.positions, normals, uvm.uv, uvm.faces, baked.image)
    lo, hi = v.min(0), v.max(0)
    facts = {
        "faces": int(len(f)),
        "vertices": int(len(v)),
        "vertices_with_uv_seams": int(len(uvm.positions)),
        "watertight": bool(watertight),
        "bounds": {"min": lo.round(6).tolist(), "max": hi.round(6).tolist()},
        "extent_m": (hi - lo).round(6).tolist(),
        "surface_area_m2": float(0.5 * np.linalg.norm(mesh_ops.face_normals(v, f, unit=False), axis=1).sum()),
        "texture_size": int(opts.texture),
        "texture_fill": float(baked.used.mean()),
    }
    return mesh, facts


def export(
    source: VolumeSource | MeshSource,
    output: str | Path,
    opts: ExportOptions | None = None,
    device: torch.device | str = "cpu",
) -> ExportResult:
    opts = opts or ExportOptions()
    opts.check()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    began = time.perf_counter()
    v, f, facts = clean_surface(source, opts, times)
    mesh, mesh_facts = textured_mesh(v, f, source.color, opts, times, device)
    t = time.perf_counter()
    png = png_bytes(mesh.texture)
    # The stats mark a complete set: gone while its members are replaced, written last.
    (output / f"{opts.name}_stats.json").unlink(missing_ok=True)
    files = {"glb": write_glb(mesh, output / f"{opts.name}.glb", png)}
    if opts.obj:
        files["obj"], files["mtl"], files["texture"] = write_obj(mesh, output / f"{opts.name}.obj", png)
    times["write"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - began
    stats = {
        **facts,
        **mesh_facts,
        "units": "metres",
        "up_axis": "+Y",
        "options": {k: v for k, v in asdict(opts).items() if k not in ("progress", "name", "obj")},
        "seconds": {k: round(s, 3) for k, s in times.items()},
        "files": {k: p.name for k, p in files.items()},
    }
    stats.setdefault("iso", None)
    files["stats"] = write_json(stats, output / f"{opts.name}_stats.json")
    return ExportResult(mesh, stats, files)
