"""Density field -> triangle mesh: a density grid, an automatic iso-level, marching cubes.

The grid has ``resolution`` cells per axis over ``[-bound, bound]^3`` (``resolution + 1``
lattice points). Two savings keep a 256^3 grid affordable on a CPU, and neither changes the
surface that a full evaluation would find:

* empty space: lattice points outside the renderer's occupancy grid (dilated by one cell)
  are not evaluated and count as density 0, exactly as the volume renderer treats them;
* band refinement (sources with the renderer's density grid, i.e. NeRFs): the field is first
  sampled on a lattice 4x coarser; only coarse cells that the iso-surface crosses (plus a
  one-cell margin, plus cells where the renderer's density grid saw density above the
  iso-level that the coarse lattice missed) are sampled at full resolution. Elsewhere the
  grid is the trilinear interpolation of the coarse lattice, which lies on one side of the
  iso-level, so marching cubes finds no surface there.

The automatic iso-level ("opacity" method) puts the surface where renders see it: along every
lattice line, in all six axis directions, it finds where the accumulated optical depth
``integral sigma ds`` reaches ln 2 (transmittance 1/2, the median depth of a ray) and reads the
density there, capped at half the line's peak density (a thick but faint body becomes opaque
only deep inside, where the density has long reached its plateau: its surface is the half-way
level of its edge). The iso-level is the median over all lines that become opaque. It follows
the field's own scale (a dim NeRF gets a low level, a dense one a high level), ignores thin fog
that never becomes opaque, and always lies inside the range of densities present, so it never
produces an empty mesh for a field that renders opaque. An automatic level is estimated on the
coarse lattice, then again on the refined grid. When fewer than ``MIN_OPAQUE_LINES`` lines
become opaque (a nearly transparent field) it falls back to Otsu's threshold on log density
("otsu" method).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dreamfusion.errors import UserError
from dreamfusion.export._deps import require
from dreamfusion.export._progress import bar as progress_bar
from dreamfusion.export.fields import DensityField, VolumeSource

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
MIN_OPAQUE_LINES = 8
MAX_INSIDE_FRACTION = 0.95
COARSE_FACTOR = 4


@dataclass
class GridStats:
    resolution: int
    evaluated_points: int
    min: float
    median: float
    p99: float
    max: float
    mean_density: float | None
    """The occupancy grid's mean density (the renderer's own statistic), when known."""

    def describe(self) -> str:
        s = (
            f"density on the {self.resolution}^3 grid: min {self.min:.4g}, median {self.median:.4g}, "
            f"99th percentile {self.p99:.4g}, max {self.max:.4g}"
        )
        if self.mean_density is not None:
            s += f"; occupancy-grid mean density {self.mean_density:.4g}"
        return s


@dataclass
class IsoLevel:
    value: float
    method: str  # "given", "opacity" or "otsu"
    opaque_lines: int = 0


@dataclass
class DensityVolume:
    grid: np.ndarray  # (R+1, R+1, R+1) float32, axis order x, y, z
    bound: float
    iso: IsoLevel
    stats: GridStats

    @property
    def resolution(self) -> int:
        return self.grid.shape[0] - 1

    @property
    def spacing(self) -> float:
        return 2 * self.bound / self.resolution

    def summary(self) -> dict:
        return {
            "iso": self.iso.value,
            "iso_method": self.iso.method,
            "opaque_lines": self.iso.opaque_lines,
            **{f"grid_{k}": v for k, v in asdict(self.stats).items()},
        }


# -- sampling ---------------------------------------------------------------------------------
def lattice(cells: int, bound: float) -> torch.Tensor:
    return torch.linspace(-bound, bound, cells + 1)


def _points(idx: torch.Tensor, cells: int, bound: float) -> torch.Tensor:
    """(M, 3) integer lattice indices -> (M, 3) world points."""
    return idx.float() * (2 * bound / cells) - bound


def _evaluate(
    field: DensityField, idx: torch.Tensor, cells: int, bound: float, chunk: int, bar: tqdm | None
) -> torch.Tensor:
    out = torch.empty(idx.shape[0])
    for i in range(0, idx.shape[0], chunk):
        sl = slice(i, i + chunk)
        out[sl] = field.density(_points(idx[sl], cells, bound)).float().cpu()
        if bar is not None:
            bar.update(min(chunk, idx.shape[0] - i))
    return torch.nan_to_num(out, nan=0.0, posinf=3.0e38).clamp(min=0.0)


def _occupied_points(occupancy: torch.Tensor | None, cells: int, bound: float) -> torch.Tensor | None:
    """(cells+1)^3 bool: lattice points near a possibly non-empty renderer cell (None: all)."""
    if occupancy is None:
        return None
    r = occupancy.shape[0]
    occ = F.max_pool3d(occupancy.float().cpu()[None, None], 3, stride=1, padding=1)[0, 0] > 0
    ix = ((lattice(cells, bound) + bound) / (2 * bound) * r).floor().long().clamp(0, r - 1)
    return occ[ix[:, None, None], ix[None, :, None], ix[None, None, :]]


def _sample_full(field, cells, bound, occupancy, chunk, bar_desc, progress) -> tuple[torch.Tensor, int]:
    mask = _occupied_points(occupancy, cells, bound)
    grid = torch.zeros((cells + 1,) * 3)
    idx = mask.nonzero() if mask is not None else _all_indices(cells)
    with progress_bar(idx.shape[0], bar_desc, progress, unit="pt", unit_scale=True) as bar:
        vals = _evaluate(field, idx, cells, bound, chunk, bar)
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = vals
    return grid, idx.shape[0]


def _all_indices(cells: int) -> torch.Tensor:
    r = torch.arange(cells + 1)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


def sample_density(
    source: VolumeSource,
    resolution: int = 256,
    iso: float | None = None,
    chunk: int = 1 << 16,
    progress: bool = True,
    refine: bool = True,
) -> DensityVolume:
    """The density grid of ``source`` at ``resolution`` cells per axis and its iso-level
    (``iso`` None: automatic)."""
    field, bound = source.density, float(source.bound)
    # Band refinement needs the renderer's density grid to catch what the coarse lattice misses.
    k = (
        COARSE_FACTOR
        if (
            refine
            and source.density_grid is not None
            and resolution % COARSE_FACTOR == 0
            and resolution >= 16 * COARSE_FACTOR
        )
        else 1
    )
    coarse_cells = resolution // k
    coarse, n_eval = _sample_full(
        field,
        coarse_cells,
        bound,
        source.occupancy,
        chunk,
        f"density {coarse_cells + 1}^3" if k > 1 else f"density {resolution + 1}^3",
        progress,
    )
    stats = grid_stats(coarse, resolution, n_eval, source.mean_density)
    level = (
        IsoLevel(float(iso), "given")
        if iso is not None
        else auto_iso(coarse.numpy(), 2 * bound / coarse_cells, stats)
    )
    if k == 1:
        return DensityVolume(coarse.numpy(), bound, level, stats)

    c = coarse[None, None]
    cmax = F.max_pool3d(c, 2, stride=1)[0, 0]
    cmin = -F.max_pool3d(-c, 2, stride=1)[0, 0]
    occ = _occupied_points(source.occupancy, resolution, bound)
    grid = F.interpolate(c, size=(resolution + 1,) * 3, mode="trilinear", align_corners=True)[0, 0]
    done = torch.zeros(grid.shape, dtype=torch.bool)
    # An automatic level is re-estimated on the refined grid (the coarse lattice blurs sharp
    # edges); if it moves, the band follows it. Two rounds settle it in practice.
    for _ in range(3):
        todo = _band_points(level.value, cmin, cmax, source.density_grid, k) & ~done
        done |= todo
        if occ is not None:
            grid[todo & ~occ] = 0.0
            todo &= occ
        idx = todo.nonzero()
        if idx.shape[0]:
            with progress_bar(
                idx.shape[0], f"density {resolution + 1}^3 band", progress, unit="pt", unit_scale=True
            ) as bar:
                vals = _evaluate(field, idx, resolution, bound, chunk, bar)
            grid[idx[:, 0], idx[:, 1], idx[:, 2]] = vals
            n_eval += idx.shape[0]
        if iso is not None:
            break
        fine = auto_iso(
            grid.numpy(), 2 * bound / resolution, grid_stats(grid, resolution, n_eval, source.mean_density)
        )
        moved = abs(fine.value - level.value) > 0.01 * level.value
        level = fine
        if not moved:
            break
    stats = grid_stats(grid, resolution, n_eval, source.mean_density)
    log.info(
        "density grid %d^3: %d points evaluated (%.1f%% of the lattice)",
        resolution + 1,
        stats.evaluated_points,
        100 * stats.evaluated_points / (resolution + 1) ** 3,
    )
    return DensityVolume(grid.numpy(), bound, level, stats)


def _band_points(
    t: float, cmin: torch.Tensor, cmax: torch.Tensor, density_grid: torch.Tensor | None, k: int
) -> torch.Tensor:
    """Fine lattice points of the coarse cells near the surface ``density = t``."""
    band = (cmax >= t) & (cmin < t)
    coarse_cells = band.shape[0]
    if density_grid is not None:
        # Cells where the renderer saw density above the level that the coarse lattice missed.
        dg = density_grid.float().cpu()
        r = dg.shape[0]
        ci = ((torch.arange(r) + 0.5) / r * coarse_cells).floor().long().clamp(0, coarse_cells - 1)
        hot = (dg >= t).nonzero()
        seen = torch.zeros_like(band)
        seen[ci[hot[:, 0]], ci[hot[:, 1]], ci[hot[:, 2]]] = True
        band |= seen & (cmin < t)
    band = F.max_pool3d(band.float()[None, None], 3, stride=1, padding=1)[0, 0] > 0
    fine_cells = band.repeat_interleave(k, 0).repeat_interleave(k, 1).repeat_interleave(k, 2)
    return F.max_pool3d(F.pad(fine_cells.float()[None, None], (1, 1, 1, 1, 1, 1)), 2, stride=1)[0, 0] > 0


def grid_stats(grid: torch.Tensor, resolution: int, evaluated: int, mean_density: float | None) -> GridStats:
    g = grid.reshape(-1)
    if g.numel() > 1 << 22:  # quantiles of a random subset: exact enough, and torch.quantile has a size limit
        g = g[torch.randint(g.numel(), (1 << 22,), generator=torch.Generator().manual_seed(0))]
    q = torch.quantile(g.double(), torch.tensor([0.5, 0.99], dtype=torch.float64))
    return GridStats(
        resolution,
        int(evaluated),
        float(grid.min()),
        float(q[0]),
        float(q[1]),
        float(grid.max()),
        None if mean_density is None else float(mean_density),
    )


# -- the iso-level ------------------------------------------------------------------------------
def opacity_crossings(grid: np.ndarray, spacing: float) -> np.ndarray:
    """Per opaque lattice line (6 directions): the density where its optical depth first reaches
    ln 2, capped at half the line's peak density (see ``auto_iso``)."""
    out = []
    g32 = np.asarray(grid, dtype=np.float32)
    n = g32.shape[0]
    for axis in range(3):
        lines = np.moveaxis(g32, axis, -1).reshape(-1, n)
        for flip in (False, True):
            g = lines[:, ::-1] if flip else lines
            seg = 0.5 * spacing * (g[:, :-1] + g[:, 1:])  # trapezoid optical depth per segment
            tau = np.cumsum(seg, axis=1, dtype=np.float64)
            opaque = tau[:, -1] >= LN2
            if not opaque.any():
                continue
            g_o, tau_o, seg_o = g[opaque].astype(np.float64), tau[opaque], seg[opaque]
            j = np.argmax(tau_o >= LN2, axis=1)
            rows = np.arange(len(j))
            a, b = g_o[rows, j], g_o[rows, j + 1]
            need = (LN2 - (tau_o[rows, j] - seg_o[rows, j])) / spacing  # still to accumulate, over spacing
            slope = b - a
            # sigma(t) = a + slope t on t in [0, 1]; integral_0^t = a t + slope t^2 / 2 = need
            disc = np.sqrt(np.maximum(a * a + 2 * slope * need, 0.0))
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(
                    np.abs(slope) > 1e-12 * np.maximum(np.abs(a), 1e-30),
                    (disc - a) / slope,
                    need / np.maximum(a, 1e-30),
                )
            t = np.clip(np.nan_to_num(t, nan=1.0), 0.0, 1.0)
            peak = g_o.max(axis=1)
            out.append(np.minimum(a + slope * t, 0.5 * peak))
    return np.concatenate(out) if out else np.zeros(0)


def otsu_log_threshold(grid: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold on log density, over the values above 1e-6 of the maximum (empty space,
    which is most of the box, would otherwise dominate the split)."""
    g = np.asarray(grid, dtype=np.float64).ravel()
    g = g[g > 1e-6 * g.max()]
    if g.size < 2:
        return 0.0
    v = np.log(g)
    hist, edges = np.histogram(v, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m / w0
        mu1 = (m[-1] - m) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    return float(np.exp(edges[int(np.argmax(between)) + 1]))


def auto_iso(grid: np.ndarray, spacing: float, stats: GridStats) -> IsoLevel:
    """The automatic iso-level of a density grid (see the module docstring)."""
    if not np.isfinite(stats.max) or stats.max <= 0:
        raise UserError(f"the density field is empty, nothing to extract ({stats.describe()})")
    crossings = opacity_crossings(grid, spacing)
    if crossings.size >= MIN_OPAQUE_LINES:
        iso = float(np.median(crossings))
        if 0 < iso < stats.max:
            return IsoLevel(iso, "opacity", int(crossings.size))
    iso = otsu_log_threshold(grid)
    if not 0 < iso < stats.max:
        raise UserError(
            f"no iso-level separates matter from empty space ({stats.describe()}); pass one with --iso"
        )
    log.warning(
        "the field never becomes opaque (%d opaque lines); iso-level %.4g from Otsu's threshold",
        crossings.size,
        iso,
    )
    return IsoLevel(iso, "otsu", int(crossings.size))


# -- marching cubes -----------------------------------------------------------------------------
APART = 1e-3


def apart_from_iso(grid: np.ndarray, iso: float, frac: float = APART) -> np.ndarray:
    """``grid`` with every value closer to ``iso`` than ``frac`` of its largest step to a lattice
    neighbour moved out to that distance, on its own side. Each marching-cubes vertex then lies at
    least ``frac`` of a cell from both ends of its edge, so no two vertices share a position (a
    crossing at a lattice point would give every edge from that point one and the same vertex), and
    welding the exported file by position is exact. The surface moves by at most ``frac`` cells."""
    g = np.array(grid, dtype=np.float32, copy=True)
    step = np.zeros_like(g)
    for axis in range(3):
        d = np.abs(np.diff(g, axis=axis))
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        np.maximum(step[tuple(lo)], d, out=step[tuple(lo)])
        np.maximum(step[tuple(hi)], d, out=step[tuple(hi)])
    margin = np.float32(frac) * step
    near = np.abs(g - np.float32(iso)) < margin
    g[near] = np.where(g[near] >= iso, iso + margin[near], iso - margin[near])
    return g


def marching_cubes(volume: DensityVolume) -> tuple[np.ndarray, np.ndarray]:
    """Triangles of ``grid == iso`` (closed at the box), outward-facing -> vertices (V, 3), faces (F, 3)."""
    mcubes = require("mcubes")
    iso, stats = volume.iso.value, volume.stats
    if not iso > 0:
        raise UserError(f"iso-level {iso:.4g} must be positive ({stats.describe()})")
    inside = float((volume.grid >= iso).mean())
    if inside >= MAX_INSIDE_FRACTION:
        raise UserError(
            f"the surface at iso-level {iso:.4g} ({volume.iso.method}) encloses {100 * inside:.1f}% "
            f"of the box: the field is not an object ({stats.describe()}); pass a higher --iso"
        )
    padded = apart_from_iso(np.pad(volume.grid, 1, mode="constant", constant_values=0.0), iso)
    verts, faces = mcubes.marching_cubes(padded, iso)
    if len(faces) == 0:
        raise UserError(
            f"marching cubes found no surface at iso-level {iso:.4g} ({volume.iso.method}); "
            f"{stats.describe()}; pass a lower --iso"
        )
    verts = ((verts - 1.0) * volume.spacing - volume.bound).astype(np.float32)
    faces = faces.astype(np.int64)
    if signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1].copy()
    return verts, faces


def signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    v = verts.astype(np.float64)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)
