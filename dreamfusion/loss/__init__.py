"""Losses (``loss`` group): SDS plus the DreamFusion regularisers (NeRF) or the mesh regularisers (DMTet)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dreamfusion.config import checks
from dreamfusion.config.node import Node
from dreamfusion.registry import register


@dataclass
class DreamFusionLossConfig(Node):
    lambda_sds: float = 1.0
    lambda_opacity: float = 0.0
    lambda_entropy: float = 1e-3
    lambda_orientation: float = 1e-2
    lambda_normal_smoothness: float = 0.0
    """(added) Weight of the disagreement between the normals at each visible sample and at a point
    one finite-difference step away (the references' 3-D normal smoothness)."""
    opacity_form: str = "pixel"
    """(added) ``pixel``: the mean of opacity^2 over pixels (the references' form); ``coverage``:
    the square of each view's mean opacity, averaged over views (a size term that holds no pixel
    at partial opacity); ``contrast``: the mean over pixels of what the albedo adds over the
    background, ``sum_i w_i |albedo_i - bg|`` (the renderer's ``contrast``; opacity where a render
    has no colour). Against a background, a dark translucent shell and an opaque object of the
    object's own colour make the same picture; ``pixel`` charges the opaque one more, so for a
    colour close to the background it wins; ``contrast`` charges both the same. Linear, so that
    its pull on a pixel's opacity, like SDS's push (d image / d opacity = albedo - bg), scales
    with the object's contrast: a pale object is held back no more than it is grown. ``image``: the
    same with the rendered (shaded) colour instead of the albedo, each pixel's opacity times what
    it adds to the picture per unit opacity, ``|image - background| / opacity`` (held fixed: the
    penalty moves densities only, not colours or normals). Shading makes a white object stand out
    from a white background and lets SDS grow it, and ``contrast`` charges it nothing for that."""
    contrast_floor: float = 0.0
    """(added) With ``opacity_form=contrast``: each pixel pays at least this times its opacity, so
    density whose albedo matches the background (white fog on a white background, invisible and
    free under the contrast alone) is charged; objects that stand out by more are unaffected."""
    opacity_warmup: float = 0.0
    """(added) Fraction of the iterations over which the opacity weight ramps from 0 to
    ``lambda_opacity`` (0: full weight from the first step)."""
    opacity_cooldown: float = 0.0
    """(added) Fraction of the iterations, at the end, over which the opacity weight falls linearly
    from ``lambda_opacity`` to 0 (0: full weight to the last step)."""

    def check(self) -> None:
        checks.non_negative(
            self, "lambda_sds", "lambda_opacity", "lambda_entropy", "lambda_orientation", "lambda_normal_smoothness"
        )
        checks.within(self, "opacity_warmup", 0.0, 1.0)
        checks.within(self, "opacity_cooldown", 0.0, 1.0)
        checks.within(self, "contrast_floor", 0.0, 1.0)
        checks.one_of(self, "opacity_form", ["pixel", "coverage", "contrast", "image"])


def ramp(step: int, length: float) -> float:
    """A weight's linear warm-up: ``step / length`` up to 1 (1 throughout when ``length`` is 0)."""
    return 1.0 if length <= 0 else min(1.0, step / length)


@register("loss", "dreamfusion")
class DreamFusionLoss:
    """Weighted sum of SDS, opacity (mean opacity^2), entropy of opacity (weight ramped by
    ``min(1, 2 step / iters)``) and orientation (``sum_i w_i max(n_i . d, 0)^2`` per ray, averaged)."""

    Config = DreamFusionLossConfig

    def __init__(self, cfg: DreamFusionLossConfig):
        self.cfg = cfg
        self.needs_normal_smoothness = cfg.lambda_normal_smoothness > 0
        self.needs_normals = cfg.lambda_orientation > 0 or self.needs_normal_smoothness
        self.form = cfg.opacity_form
        self.contrast_floor = cfg.contrast_floor

    def __call__(
        self, sds: torch.Tensor, render: dict[str, torch.Tensor], step: int, iters: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        opacity = render["opacity"]
        parts = {"sds": sds}
        if c.lambda_opacity > 0:
            if self.form == "coverage":
                parts["opacity"] = (opacity.flatten(1).mean(1) ** 2).mean()
            elif self.form == "image" and "background_image" in render:
                with torch.no_grad():  # what each pixel adds to the picture, per unit of its opacity
                    gap = (render["image"] - render["background_image"]).abs().mean(-1)
                    per_opacity = (gap / opacity.clamp_min(1e-3)).clamp(max=1.0)
                parts["opacity"] = (per_opacity * opacity).mean()
            elif self.form == "contrast" and "contrast" in render:
                parts["opacity"] = torch.maximum(render["contrast"], self.contrast_floor * opacity).mean()
            else:
                parts["opacity"] = (opacity**2).mean()
        if c.lambda_entropy > 0:
            a = opacity.clamp(1e-5, 1 - 1e-5)
            parts["entropy"] = (-(a * torch.log2(a) + (1 - a) * torch.log2(1 - a))).mean()
        if c.lambda_orientation > 0 and "orientation" in render:
            parts["orientation"] = render["orientation"].mean()
        if c.lambda_normal_smoothness > 0 and "normal_smoothness" in render:
            parts["normal_smoothness"] = render["normal_smoothness"].mean()
        weights = {
            "sds": c.lambda_sds,
            # the cool-down is the warm-up counted back from the end
            "opacity": c.lambda_opacity * ramp(step, c.opacity_warmup * iters)
            * ramp(iters - step, c.opacity_cooldown * iters),
            "entropy": c.lambda_entropy * ramp(step, 0.5 * iters),
            "orientation": c.lambda_orientation,
            "normal_smoothness": c.lambda_normal_smoothness,
        }
        total = sum(weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}


@dataclass
class DMTetLossConfig(Node):
    lambda_sds: float = 1.0
    lambda_normal_consistency: float = 0.5
    lambda_laplacian_smoothness: float = 0.5
    lambda_opacity: float = 0.0
    """(added) The NeRF loss's ``contrast`` opacity penalty on the rasterized surface: the mean over
    pixels of what its albedo adds over the background (antialiased coverage at the outline).
    Where SDS alone grows an object, it holds the size the NeRF stage held with the same term."""
    normal_consistency_max_angle: float = 180.0
    """(added) Bends between adjacent faces sharper than this many degrees are left alone by normal
    consistency (a cube's edges, a cone's apex and rim); 180: every bend is smoothed, as the seed's."""
    lambda_silhouette: float = 0.0
    """(added) Mean squared difference between the surface's antialiased coverage and the coverage of
    the NeRF's solid (its surface at mesh-export's iso-level on the 128-cell lattice, cavities filled)
    at the same cameras: the outline stays the NeRF's while the normal terms flatten the faces."""
    lambda_surface_distance: float = 0.0
    """(added) Mean squared distance, in tet cells, from the surface to the NeRF's solid (the same
    surface the silhouette term draws) along its nearest point's normal, over the surface's area (at
    each face's centroid, weighted by its area): holds in 3D what the silhouette holds only at the
    outline (a cone's apex, a few pixels of a 32x32 render)."""

    def check(self) -> None:
        checks.non_negative(
            self, "lambda_sds", "lambda_normal_consistency", "lambda_laplacian_smoothness", "lambda_opacity",
            "lambda_silhouette", "lambda_surface_distance",
        )
        if not 0 < self.normal_consistency_max_angle <= 180:
            checks.fail(self, "normal_consistency_max_angle", "must lie in (0, 180] degrees")


def _edge_keys(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The three edges of every face as (3F,) integer keys ``min * V + max`` (one per undirected
    edge; a 1-D ``torch.unique`` on them is far faster than on rows) and (3F, 2) vertex pairs."""
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    lo, hi = e.min(1).values, e.max(1).values
    return lo * (int(faces.max()) + 1) + hi, torch.stack([lo, hi], 1)


def edge_faces(faces: torch.Tensor) -> torch.Tensor:
    """(E, 2) the pairs of faces that share an edge (edges with exactly two faces)."""
    n = faces.shape[0]
    key, _ = _edge_keys(faces)
    owner = torch.arange(n, device=faces.device).repeat(3)
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    keep = counts[inverse[order]] == 2
    return owner[order][keep].reshape(-1, 2)


def normal_consistency(verts: torch.Tensor, faces: torch.Tensor, max_angle: float = 180.0) -> torch.Tensor:
    """Mean of ``1 - cos`` of the angle between the normals of faces sharing an edge (0: flat).
    ``max_angle`` (degrees): bends sharper than it count as that angle, with no gradient (creases kept)."""
    fn = torch.nn.functional.normalize(
        torch.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]], dim=-1),
        dim=-1,
        eps=1e-12,
    )
    pairs = edge_faces(faces)
    if pairs.shape[0] == 0:
        return verts.new_zeros(())
    bend = 1 - (fn[pairs[:, 0]] * fn[pairs[:, 1]]).sum(-1)
    if max_angle < 180:
        bend = bend.clamp(max=1 - math.cos(math.radians(max_angle)))
    return bend.mean()


def _first_of_each(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unique values of ``key`` and the index of one occurrence of each."""
    unique, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((unique.shape[0],), key.shape[0], dtype=torch.long, device=key.device)
    first = first.scatter_reduce(0, inverse, torch.arange(key.shape[0], device=key.device), "amin")
    return unique, first


def laplacian_smoothness(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean distance from each vertex to the mean of its neighbours (uniform Laplacian; 0 on a
    regular flat grid), in world units."""
    key, pairs = _edge_keys(faces)
    _, first = _first_of_each(key)
    e = pairs[first]
    e = torch.cat([e, e.flip(1)])  # each undirected edge in both directions
    total = torch.zeros_like(verts).index_add(0, e[:, 0], verts[e[:, 1]])
    degree = torch.zeros(verts.shape[0], device=verts.device).index_add(
        0, e[:, 0], torch.ones(e.shape[0], device=verts.device)
    )
    used = degree > 0
    lap = verts[used] - total[used] / degree[used, None]
    return lap.norm(dim=-1).mean() if used.any() else verts.new_zeros(())


@register("loss", "dmtet")
class DMTetLoss:
    """SDS + normal consistency + Laplacian smoothing of the extracted surface (Magic3D's
    refinement losses) + the contrast opacity penalty (added), each weighted by its ``lambda_*``
    and reported on its own."""

    Config = DMTetLossConfig
    needs_normals = True

    def __init__(self, cfg: DMTetLossConfig):
        self.cfg = cfg

    def __call__(
        self, sds: torch.Tensor, render: dict[str, torch.Tensor], step: int, iters: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        if "faces" not in render:
            raise ValueError("loss=dmtet needs a mesh renderer (renderer=torch_raster or nvdiffrast)")
        verts, faces = render["vertices"], render["faces"]
        parts = {"sds": sds}
        weights = {"sds": c.lambda_sds}
        if c.lambda_normal_consistency > 0:
            parts["normal_consistency"] = normal_consistency(verts, faces, c.normal_consistency_max_angle)
            weights["normal_consistency"] = c.lambda_normal_consistency
        if c.lambda_laplacian_smoothness > 0:
            parts["laplacian_smoothness"] = laplacian_smoothness(verts, faces)
            weights["laplacian_smoothness"] = c.lambda_laplacian_smoothness
        if c.lambda_opacity > 0:
            if "contrast" not in render:
                raise ValueError("loss=dmtet's lambda_opacity needs a shaded render (its contrast)")
            parts["opacity"] = render["contrast"].mean()
            weights["opacity"] = c.lambda_opacity
        if c.lambda_silhouette > 0:
            if "silhouette_target" not in render:
                raise ValueError("loss=dmtet's lambda_silhouette needs the NeRF's outline (a DMTet from a NeRF)")
            parts["silhouette"] = (render["opacity"] - render["silhouette_target"]).pow(2).mean()
            weights["silhouette"] = c.lambda_silhouette
        if c.lambda_surface_distance > 0:
            if "surface_offset" not in render:
                raise ValueError("loss=dmtet's lambda_surface_distance needs the NeRF's solid (a DMTet from a NeRF)")
            offset, area = render["surface_offset"], render["surface_area"]
            parts["surface_distance"] = (area * offset.pow(2)).sum() / area.sum().clamp_min(1e-30)
            weights["surface_distance"] = c.lambda_surface_distance
        total = sum(weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}
