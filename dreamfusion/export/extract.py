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

The automatic iso-level ("silhouette" method) gives the surface the outline that renders of the
field have: along parallel rays from 8 oblique directions (:data:`SILHOUETTE_VIEWS`), a ray is
inside the rendered silhouette when its optical depth ``integral sigma ds`` reaches ln 2 (opacity
1/2, the score's coverage threshold), and inside the surface's silhouette when its peak density
exceeds the level; the level is the one where the two silhouettes agree best (IoU over all rays).
Rays along the axes would graze an axis-aligned face for its whole length. A level read off the density
where each line becomes opaque instead lies too deep in a soft field: a ray grazing the edge
crosses a long chord of thin density and turns opaque where an axis line through the middle does
not, so that surface came out smaller than the render (a sphere's mesh 9% narrower, silhouette
IoU 0.89 against its own NeRF). The level follows the field's own scale, ignores thin fog that
never becomes opaque, and lies inside the range of densities present, so it never produces an
empty mesh for a field that renders opaque. An automatic level is estimated on the coarse
lattice, then again on the refined grid. When fewer than ``MIN_OPAQUE_LINES`` lines
become opaque (a nearly transparent field) it falls back to Otsu's threshold on log density
("otsu" method).

No single level follows a soft edge everywhere: where rays graze a long chord of thin density (the
outside of a ring seen from the side) renders turn opaque at a lower density than where they cross
a short one, so a NeRF's mesh at the silhouette level lies inside its renders there (a torus's
mesh 0.94 IoU against its own NeRF's renders, against 0.98-0.99 for a sphere). The surface is
therefore carved ("carved" method): the level is lowered to ``CARVE_LEVEL`` of the silhouette
level, which takes in the soft edge, and each lattice point is capped by the field's own rays (its
value at most ``level * D / ln 2``, ``D`` the least optical depth, over the views, of the parallel
ray through it), which cuts away what no render shows. From those views the surface's outline is
the renders' (IoU 0.99 on a soft torus, 0.97 at the silhouette level); from views far from them
(from above) it is the visual hull of 8 views, a little fuller than the renders. Carving only runs
where no single level does well (the silhouette level's outline IoU against the renders' below
``CARVE_BELOW_IOU``): on an edge sharp at the lattice's scale a lower level only pushes the surface
outwards (up to a fifth of a cell). That IoU is taken twice, over the rays the level is picked on
(1.7 lattice spacings apart at 128 cells) and over rays at most one spacing apart
(:func:`outline_iou`), and the lower one counts: on the coarser rays alone a NeRF cylinder whose
mesh lay inside its renders all round (0.950 IoU against them at the score's cameras) read 0.993
and was not carved; on the finer ones it reads 0.982 (carved: 0.987 against its renders). Analytic
fields on the finer rays: a sharp sphere 1.000, a soft one 0.996, a Gaussian blob 0.993 (not
carved), a soft torus 0.971 (carved). Not carved either: a given ``--iso`` and the Otsu fallback.
The rays are marched only across the box around the grid's non-zero values (the rest see 0).
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
CARVE_LEVEL = 0.6  # the carved surface's level, as a fraction of the silhouette level
CARVE_BELOW_IOU = 0.99  # carve when the silhouette level's outline is further than this from the renders'


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
    method: str  # "given", "silhouette", "carved" or "otsu"
    opaque_lines: int = 0
    outline_iou: float = 1.0
    """The silhouette level's surface outline against the renders': IoU over the views' rays, the
    lower of two ray spacings (``_checked``); a "carved" level keeps the figure of the level it was
    lowered from."""


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
            "outline_iou": self.iso.outline_iou,
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
        level = _checked(coarse.numpy(), 2 * bound / coarse_cells, level)
        return _carved(DensityVolume(coarse.numpy(), bound, level, stats))

    c = coarse[None, None]
    cmax = F.max_pool3d(c, 2, stride=1)[0, 0]
    cmin = -F.max_pool3d(-c, 2, stride=1)[0, 0]
    occ = _occupied_points(source.occupancy, resolution, bound)
    grid = F.interpolate(c, size=(resolution + 1,) * 3, mode="trilinear", align_corners=True)[0, 0]
    done = torch.zeros(grid.shape, dtype=torch.bool)

    def refine(t: float) -> None:
        """Sample the band around the surface ``density = t`` at full resolution."""
        nonlocal n_eval
        todo = _band_points(t, cmin, cmax, source.density_grid, k) & ~done
        done.logical_or_(todo)
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

    # An automatic level is re-estimated on the refined grid (the coarse lattice blurs sharp
    # edges); if it moves, the band follows it. Two rounds settle it in practice.
    for _ in range(3):
        refine(level.value)
        if iso is not None:
            break
        fine = auto_iso(
            grid.numpy(), 2 * bound / resolution, grid_stats(grid, resolution, n_eval, source.mean_density)
        )
        moved = abs(fine.value - level.value) > 0.01 * level.value
        level = fine
        if not moved:
            break
    level = _checked(grid.numpy(), 2 * bound / resolution, level)
    if _carves(level):
        refine(CARVE_LEVEL * level.value)  # the carved surface's band
    stats = grid_stats(grid, resolution, n_eval, source.mean_density)
    log.info(
        "density grid %d^3: %d points evaluated (%.1f%% of the lattice)",
        resolution + 1,
        stats.evaluated_points,
        100 * stats.evaluated_points / (resolution + 1) ** 3,
    )
    return _carved(DensityVolume(grid.numpy(), bound, level, stats))


def _carves(level: IsoLevel) -> bool:
    return level.method == "silhouette" and level.outline_iou < CARVE_BELOW_IOU


def _carved(volume: DensityVolume) -> DensityVolume:
    """A "silhouette" level's volume as its carved surface: the level lowered to ``CARVE_LEVEL``
    of it and the grid passed through :func:`carve`, so that the surface takes in the field's soft edge where
    renders show it, and nothing that they do not show. Other levels stay as they are."""
    if not _carves(volume.iso):
        return volume
    lower = CARVE_LEVEL * volume.iso.value
    grid = carve(volume.grid, lower, volume.spacing)
    if not (grid >= lower).any():  # nothing inside every view's outline: keep the plain level
        log.warning("the carved surface at %.4g is empty; the surface stays at %.4g", lower, volume.iso.value)
        return volume
    level = IsoLevel(lower, "carved", volume.iso.opaque_lines, volume.iso.outline_iou)
    return DensityVolume(grid, volume.bound, level, volume.stats)


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
# Directions the silhouettes are compared from: a ring of views 20 degrees above and below the
# equator, between the axes (a line along an axis grazes an axis-aligned face for its whole length).
SILHOUETTE_VIEWS = [(az + 22.5 + (45.0 if el < 0 else 0.0), el) for el in (20.0, -20.0) for az in range(0, 360, 90)]


def _view_axes(az: float, el: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A view's direction ``d`` and the two axes ``u``, ``v`` across it (unit vectors, x, y, z)."""
    a, e = math.radians(az), math.radians(el)
    d = torch.tensor([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    u = F.normalize(torch.linalg.cross(d, torch.tensor([0.0, 1.0, 0.0])), dim=0)
    return d, u, torch.linalg.cross(u, d)


HULL_RAYS = 160  # rays across the box per view for the carved surface's outline
RAY_REACH = math.sqrt(3.0)  # the box [-1, 1]^3 (grid coordinates) fits in a ball of this radius


def _support(g: torch.Tensor) -> torch.Tensor | None:
    """(8, 3) grid coordinates (x, y, z) of the corners of the box holding every non-zero value of
    ``g`` (X, Y, Z), one lattice spacing wider each way (trilinear samples outside it, even beyond
    the grid's faces, are exactly 0); None for an all-zero grid."""
    nz = g.nonzero()
    if nz.shape[0] == 0:
        return None
    n = g.shape[0]
    lo = ((nz.min(0).values - 1).double() / (n - 1) * 2 - 1).tolist()  # past the box's faces too: samples
    hi = ((nz.max(0).values + 1).double() / (n - 1) * 2 - 1).tolist()  # there fade to the zero padding
    return torch.tensor([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])],
                        dtype=torch.float64)


def _within(values: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Indices of ``values`` inside the range of ``ends`` (a few projections)."""
    return ((values >= ends.min()) & (values <= ends.max())).nonzero().squeeze(1)


def march_views(grid: np.ndarray, spacing: float, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view of :data:`SILHOUETTE_VIEWS`, ``side`` x ``side`` parallel rays across the box (ray
    ``(i, j)`` through ``across[i] * u + across[j] * v`` in grid coordinates, ``across`` spanning
    ``[-RAY_REACH, RAY_REACH]``), samples half a lattice spacing apart, trilinear: the peak density
    and the optical depth ``integral sigma ds``, each (views, side, side). Only the rays and samples
    that meet the box around the grid's non-zero values are taken (the rest are 0)."""
    g32 = torch.as_tensor(np.asarray(grid, dtype=np.float32))
    g = g32[None, None]  # (1, 1, X, Y, Z)
    n = grid.shape[0]
    across = torch.linspace(-RAY_REACH, RAY_REACH, side)
    along = torch.linspace(-RAY_REACH, RAY_REACH, int(math.ceil(2 * RAY_REACH * (n - 1))))
    step = float(along[1] - along[0]) * 0.5 * (n - 1) * spacing  # world units per sample
    shape = (len(SILHOUETTE_VIEWS), side, side)
    peaks, depths = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    corners = _support(g32)
    if corners is None:
        return peaks, depths
    for view, (az, el) in enumerate(SILHOUETTE_VIEWS):
        d, u, v = _view_axes(az, el)
        iu, jv = _within(across, corners @ u.double()), _within(across, corners @ v.double())
        ks = along[_within(along, corners @ d.double())]
        if not (iu.numel() and jv.numel() and ks.numel()):
            continue
        origins = (across[iu, None, None] * u + across[None, jv, None] * v).reshape(-1, 3)
        peak, depth = [], []
        for chunk in origins.split(max(1, (1 << 21) // ks.numel())):  # ~2M samples at a time
            pts = chunk[:, None, :] + ks[None, :, None] * d  # (rays, samples, 3) as (x, y, z)
            sigma = F.grid_sample(g, pts.flip(-1)[None, None], align_corners=True)[0, 0, 0]  # (rays, samples)
            peak.append(sigma.max(1).values)
            depth.append(sigma.sum(1, dtype=torch.float64) * step)
        rows = (iu[:, None], jv[None, :])
        peaks[view][rows] = torch.cat(peak).double().reshape(iu.numel(), jv.numel())
        depths[view][rows] = torch.cat(depth).reshape(iu.numel(), jv.numel())
    return peaks, depths


def ray_peaks_and_depths(grid: np.ndarray, spacing: float, side: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """:func:`march_views`' peaks and optical depths, flat over all rays."""
    peaks, depths = march_views(grid, spacing, side)
    return peaks.reshape(-1).numpy(), depths.reshape(-1).numpy()


def least_ray_depth(grid: np.ndarray, spacing: float, idx: torch.Tensor, side: int = HULL_RAYS) -> torch.Tensor:
    """(M,) for the lattice points ``idx`` (M, 3) of ``grid``: the least optical depth, over the
    views of :data:`SILHOUETTE_VIEWS`, of the parallel ray through the point (bilinear between the
    ``side`` x ``side`` rays of :func:`march_views`)."""
    _, depths = march_views(grid, spacing, side)
    q = idx.float() / (grid.shape[0] - 1) * 2 - 1  # grid coordinates, x, y, z
    least = torch.full((idx.shape[0],), math.inf, dtype=torch.float64)
    for (az, el), image in zip(SILHOUETTE_VIEWS, depths):
        _, u, v = _view_axes(az, el)
        at = torch.stack([q @ v, q @ u], -1) / RAY_REACH  # image (i: along u, j: along v) as (x=j, y=i)
        seen = F.grid_sample(image[None, None], at[None, None].double(), align_corners=True)[0, 0, 0]
        least = torch.minimum(least, seen)
    return least


def carve(grid: np.ndarray, level: float, spacing: float) -> np.ndarray:
    """``grid`` with its surface at ``level`` kept inside the field's own rendered silhouettes: each
    lattice point's value capped at ``level * D / ln 2``, ``D`` its :func:`least_ray_depth`. So a
    point is inside (at or above ``level``) where its density reaches ``level`` and every view's
    ray through it renders opacity 1/2 or more, and between lattice points the surface meets the
    outline where ``D`` crosses ln 2."""
    g = torch.as_tensor(np.asarray(grid, dtype=np.float32)).clone()
    idx = (g >= level).nonzero()
    if idx.shape[0]:
        cap = (level * least_ray_depth(grid, spacing, idx) / LN2).float()
        at = (idx[:, 0], idx[:, 1], idx[:, 2])
        g[at] = torch.minimum(g[at], cap)
    return g.numpy()


def silhouette_iso(grid: np.ndarray, spacing: float) -> tuple[float, int, float]:
    """The level whose iso-surface has the silhouettes that renders of the field have, seen from
    :data:`SILHOUETTE_VIEWS`: a ray is in the field's silhouette when its optical depth reaches
    ln 2 (rendered opacity 1/2), and in the surface's when its peak density exceeds the level.
    Returns (level, opaque rays, silhouette IoU at that level)."""
    peak, depth = ray_peaks_and_depths(grid, spacing)
    want = depth >= LN2
    total = int(want.sum())
    if total == 0:
        return 0.0, 0, 0.0
    order = np.argsort(-peak, kind="stable")
    p, w = peak[order], want[order]
    # A level just below p[k] puts the first k + 1 rays in the surface's silhouette; only the last
    # ray of a run of equal peaks can end such a set.
    k = np.arange(p.size)
    inter = np.cumsum(w)
    iou = inter / (k + 1 + total - inter)
    ends = np.append(p[1:] < p[:-1], True)
    iou[~ends] = -1.0
    best = int(np.argmax(iou))
    below = p[best + 1] if best + 1 < p.size else 0.0
    # Every level in (below, p[best]) gives these silhouettes. A sharp edge leaves a wide range: take
    # half the body's density (half the median peak of the opaque rays), where linear interpolation
    # on the lattice puts a step's surface half-way; a soft edge leaves a narrow one: its middle.
    half = 0.5 * float(np.median(peak[want]))
    level = half if below < half < p[best] else 0.5 * (p[best] + below)
    return float(level), total, float(iou[best])


def outline_iou(grid: np.ndarray, spacing: float, level: float) -> float:
    """IoU of the surface ``density = level``'s outline against the field's rendered one (optical
    depth ln 2) over the rays of :data:`SILHOUETTE_VIEWS`, the rays at most one lattice spacing apart
    (:func:`silhouette_iso` picks its level on coarser rays: at 1.7 spacings a NeRF cylinder whose
    mesh lay inside its renders all round read 0.993 there, 0.982 here)."""
    side = int(math.ceil(RAY_REACH * (grid.shape[0] - 1))) + 1
    peak, depth = march_views(grid, spacing, side)
    want, have = depth >= LN2, peak > level
    union = int((want | have).sum())
    return float((want & have).sum()) / union if union else 1.0


def _checked(grid: np.ndarray, spacing: float, level: IsoLevel) -> IsoLevel:
    """A "silhouette" level whose outline figure (what decides the carving) is the lower of its own
    (:func:`silhouette_iso`'s coarser rays) and :func:`outline_iou`'s: a mismatch seen at either ray
    spacing carves. Other levels as they are."""
    if level.method != "silhouette":
        return level
    fine = outline_iou(grid, spacing, level.value)
    return IsoLevel(level.value, level.method, level.opaque_lines, min(level.outline_iou, fine))


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
    iso, opaque, iou = silhouette_iso(grid, spacing)
    if opaque >= MIN_OPAQUE_LINES and 0 < iso < stats.max:
        return IsoLevel(iso, "silhouette", opaque, iou)
    iso = otsu_log_threshold(grid)
    if not 0 < iso < stats.max:
        raise UserError(
            f"no iso-level separates matter from empty space ({stats.describe()}); pass one with --iso"
        )
    log.warning(
        "the field never becomes opaque (%d opaque lines); iso-level %.4g from Otsu's threshold",
        opaque,
        iso,
    )
    return IsoLevel(iso, "otsu", opaque)


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
