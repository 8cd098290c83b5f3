"""The quality score of a shapes-world result: one function, used by the 3D evaluations, the tests
and the regression gate.

``score(prompt, nerf=nerf_views(scene), mesh=path_or_mesh)`` judges what a run made for a prompt of
the shapes world ("a red cube", any view suffix) at the 3D evaluation's cameras (24 azimuths of the
validation circle, 64x64):

* on the NeRF's renders (albedo and opacity at those cameras) and on the exported mesh (its albedo
  texture and coverage, rasterized at the same cameras), each: silhouette IoU against the true
  primitive, the shape verdict (the best-matching of the five primitives) and the colour verdict
  (the hue of the covered pixels); the cube, whose yaw no prompt names, at the yaw that matches best
  (``evaluate.best_yaw``), which the mesh's Chamfer distance and face noise then use too;
* on the mesh also: silhouette IoU against the NeRF's own renders (export must not change the
  object), Chamfer distance to the primitive, non-manifold and boundary edges, and for cubes the
  normal noise of the flat faces (``dreamfusion.prior.mesh_quality``).

``passed`` is true when every part given holds: IoU >= ``MIN_IOU``, right shape, right colour, and
for the mesh IoU against the NeRF >= ``MIN_IOU_VS_NERF`` and no non-manifold or boundary edge.
``failures`` names each criterion that did not hold.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dreamfusion.data.cameras import Cameras
from dreamfusion.prior.evaluate import analyse_renders, eval_cameras, parse_prompt, silhouette_iou

MIN_IOU = 0.80
MIN_IOU_VS_NERF = 0.90
VERSION = 2
"""The scoring rule's version, raised whenever a figure for the same run would change (cameras, yaw,
thresholds): stored regression baselines record it, and one scored by another version is not compared.
2: 24 azimuths and the cube at its best yaw (1: 8 azimuths, the cube axis-aligned)."""


def cameras(size: int = 64) -> Cameras:
    """The cameras every score is taken at."""
    return eval_cameras(size=size)


def mesh_views(mesh, cams: Cameras, supersample: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A textured mesh (``RenderMesh``) at ``cams``: albedo (B, H, W, 3) and coverage (B, H, W) in
    [0, 1] (the fraction of ``supersample``^2 samples covered, as the true silhouettes are made).
    No back-face culling: a mesh of either winding shows its whole silhouette."""
    from dreamfusion.renderer.raster import rasterize, sample_texture

    s, h, w = supersample, cams.height, cams.width
    rgbs, covs = [], []
    for i in range(len(cams)):
        frags = rasterize(mesh.positions, mesh.faces, cams.c2w[i], float(cams.fovy[i]), w * s, h * s)
        face = frags.face.reshape(-1)
        pix = face.ge(0).nonzero().squeeze(1)
        vid = mesh.faces[face[pix]]
        bary = frags.bary.reshape(-1, 3)[pix]

        if mesh.texture is not None and mesh.uv is not None:
            albedo = sample_texture(mesh.texture, torch.einsum("mkc,mk->mc", mesh.uv[vid], bary))
        elif mesh.colors is not None:
            albedo = torch.einsum("mkc,mk->mc", mesh.colors[vid], bary)
        else:
            albedo = torch.ones(pix.shape[0], 3)
        albedo = albedo * torch.tensor(mesh.base_color)
        rgb = torch.zeros(h * s * w * s, 3)
        cov = torch.zeros(h * s * w * s)
        rgb[pix], cov[pix] = albedo, 1.0
        # average the supersamples: colour over covered samples only
        cov_hw = cov.reshape(h, s, w, s).mean((1, 3))
        rgb_sum = (rgb * cov[:, None]).reshape(h, s, w, s, 3).sum((1, 3))
        rgbs.append(rgb_sum / (cov_hw[..., None] * s * s).clamp_min(1e-8))
        covs.append(cov_hw)
    return torch.stack(rgbs).clamp(0, 1), torch.stack(covs)


def nerf_views(scene, cams: Cameras | None = None, supersample: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A NeRF ``scene`` at ``cams`` (default ``cameras()``): albedo (B, H, W, 3) and opacity (B, H, W),
    each the mean of ``supersample``^2 rays per pixel, as the true silhouettes and ``mesh_views`` are
    made (one ray at each pixel's centre would count a pixel the others count only when most of it
    is covered)."""
    import dataclasses

    cams = cams or cameras()
    s, h, w = supersample, cams.height, cams.width
    with torch.no_grad():
        out = scene.render_views(dataclasses.replace(cams, width=w * s, height=h * s), "albedo")
    b = len(cams)
    rgb = out["image"].float().cpu().reshape(b, h, s, w, s, 3).mean((2, 4))
    opacity = out["opacity"].float().cpu().reshape(b, h, s, w, s).mean((2, 4))
    return rgb, opacity


def _judged(rgb: torch.Tensor, opacity: torch.Tensor, cams: Cameras, colour: str, shape: str) -> dict:
    a = analyse_renders(rgb, opacity, cams, shape)
    return {
        "iou": a.ious[shape],
        "yaw": a.yaw,
        "best_shape": a.best_shape,
        "colour": a.colour,
        "hue": a.hue,
        "ious": a.ious,
        "iou_ok": a.ious[shape] >= MIN_IOU,
        "shape_ok": a.best_shape == shape,
        "colour_ok": a.colour == colour,
    }


def score(prompt: str, nerf: tuple[torch.Tensor, torch.Tensor] | None = None, mesh=None,
          cams: Cameras | None = None) -> dict:
    """The score of a run for ``prompt``: see the module doc. ``nerf``: (rgb (B,H,W,3) albedo,
    opacity (B,H,W)) rendered at ``cams`` (default ``cameras()``); ``mesh``: a mesh file or a
    ``RenderMesh``. A ValueError for a prompt outside the shapes world."""
    from dreamfusion.export.turntable import RenderMesh, load_mesh
    from dreamfusion.prior import mesh_quality

    colour, shape = parse_prompt(prompt)
    cams = cams or cameras()
    out: dict = {"prompt": prompt, "colour": colour, "shape": shape}
    failures = []
    if nerf is not None:
        rgb, opacity = (t.detach().float().cpu() for t in nerf)
        out["nerf"] = _judged(rgb, opacity, cams, colour, shape)
        failures += [f"nerf {k[:-3]}" for k in ("iou_ok", "shape_ok", "colour_ok") if not out["nerf"][k]]
    if mesh is not None:
        path = mesh if isinstance(mesh, (str, Path)) else None
        render_mesh = load_mesh(mesh) if path is not None else mesh
        if not isinstance(render_mesh, RenderMesh):
            raise TypeError(f"mesh: a file or a RenderMesh, not {type(mesh).__name__}")
        rgb, cov = mesh_views(render_mesh, cams)
        m = _judged(rgb, cov, cams, colour, shape)
        tri = mesh_quality.welded(render_mesh.positions.numpy(), render_mesh.faces.numpy())
        facts = mesh_quality.facts(tri, shape, m["yaw"])
        m.update(facts)
        if nerf is not None:
            m["iou_vs_nerf"] = silhouette_iou(cov, nerf[1].detach().float().cpu())
            m["iou_vs_nerf_ok"] = m["iou_vs_nerf"] >= MIN_IOU_VS_NERF
        m["manifold_ok"] = facts["non_manifold_edges"] == 0 and facts["boundary_edges"] == 0
        out["mesh"] = m
        failures += [f"mesh {k[:-3]}" for k in ("iou_ok", "shape_ok", "colour_ok", "iou_vs_nerf_ok", "manifold_ok")
                     if k in m and not m[k]]
    out["failures"] = failures
    out["passed"] = not failures and (nerf is not None or mesh is not None)
    return out


def headline(s: dict) -> str:
    """One line for a score: IoUs, verdicts, what failed."""
    parts = [s["prompt"]]
    for name in ("nerf", "mesh"):
        if name in s:
            p = s[name]
            parts.append(f"{name} IoU {p['iou']:.3f} {p['best_shape']} {p['colour']}")
    if "mesh" in s and "iou_vs_nerf" in s["mesh"]:
        parts.append(f"mesh/nerf {s['mesh']['iou_vs_nerf']:.3f}")
    parts.append("PASS" if s["passed"] else "FAIL: " + ", ".join(s["failures"]))
    return "  ".join(parts)

