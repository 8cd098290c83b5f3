"""DMTet's parts against analytic answers: the tet grid, marching tetrahedra, the torch rasterizer,
the mesh losses."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from dreamfusion.data.cameras import Cameras
from dreamfusion.geometry.tets import build_tet_grid, marching_tets, tet_grid
from dreamfusion.loss import DMTetLoss, DMTetLossConfig, laplacian_smoothness, normal_consistency
from dreamfusion.renderer.rasterizer import RasterizerConfig, TorchRasterizer, interpolate


# -- the tet grid -------------------------------------------------------------------------------
def test_tet_grid_is_conforming_positive_and_fills_the_cube():
    verts, tets = build_tet_grid(3)
    v = verts[tets].astype(np.float64)  # (T, 4, 3)
    vol = np.linalg.det(v[:, 1:] - v[:, :1]) / 6
    assert (vol > 0).all()  # positively oriented
    assert vol.sum() == pytest.approx(8.0, rel=1e-9)  # the tets tile [-1, 1]^3 exactly
    faces = Counter(
        tuple(sorted(f))
        for t in tets
        for f in ((t[0], t[1], t[2]), (t[0], t[1], t[3]), (t[0], t[2], t[3]), (t[1], t[2], t[3]))
    )
    boundary = [f for f, n in faces.items() if n == 1]
    assert set(faces.values()) <= {1, 2}  # every inner triangle is shared by exactly two tets
    # boundary triangles lie on the cube's faces and cover them: 6 faces x 3^2 squares x 2 triangles
    assert len(boundary) == 6 * 9 * 2
    assert all((np.abs(verts[list(f)]) == 1).all(0).any() for f in boundary)


def test_tet_grid_is_cached_on_disk(tmp_path):
    v1, t1 = tet_grid(4, cache=tmp_path)
    assert (tmp_path / "kuhn-4.npz").is_file()
    (tmp_path / "kuhn-4.npz").write_bytes(b"truncated")  # a damaged cache file is rebuilt
    v2, t2 = tet_grid(4, cache=tmp_path)
    assert torch.equal(v1, v2) and torch.equal(t1, t2)
    assert t1.shape == (6 * 4**3, 4) and t1.dtype == torch.long


# -- marching tetrahedra ----------------------------------------------------------------------------
def test_marching_tets_on_a_sphere_sdf(tmp_path):
    """Must show 1: every vertex within 1% of the radius, watertight, normals outward."""
    r = 0.6
    verts, tets = tet_grid(32, cache=tmp_path)
    sdf = r - verts.norm(dim=-1)  # positive inside
    p, f = marching_tets(verts, sdf, tets)
    radius = p.norm(dim=-1)
    assert (radius / r - 1).abs().max() < 0.01
    # watertight and consistently wound: every directed edge once, and its reverse once
    directed = Counter(map(tuple, torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).tolist()))
    assert set(directed.values()) == {1}
    assert all((b, a) in directed for a, b in directed)
    assert len(p) - len(directed) // 2 + len(f) == 2  # Euler characteristic of a sphere
    # outward: every face normal points away from the centre
    n = torch.cross(p[f[:, 1]] - p[f[:, 0]], p[f[:, 2]] - p[f[:, 0]], dim=-1)
    assert ((n * p[f].mean(1)).sum(-1) > 0).all()
    volume = float((p[f[:, 0]] * torch.cross(p[f[:, 1]], p[f[:, 2]], dim=-1)).sum() / 6)
    assert volume == pytest.approx(4 / 3 * math.pi * r**3, rel=0.02)


def test_marching_tets_is_differentiable_in_sdf_and_positions(tmp_path):
    verts, tets = tet_grid(8, cache=tmp_path)
    verts = verts.double().requires_grad_()
    sdf = (0.5 - verts.detach().norm(dim=-1)).requires_grad_()
    p, f = marching_tets(verts, sdf, tets)
    p.norm(dim=-1).sum().backward()
    # raising the SDF everywhere grows the surface: d(sum of radii)/d(sdf) > 0 where it acts
    assert sdf.grad.sum() > 0 and torch.isfinite(sdf.grad).all()
    assert verts.grad.abs().sum() > 0
    # the vertex sits at the zero of the linear interpolation along its edge
    s0 = 0.5 - verts.detach().norm(dim=-1)
    with torch.no_grad():
        p2, _ = marching_tets(verts.detach(), s0, tets)
    assert torch.allclose(p.detach(), p2)


def test_marching_tets_of_an_empty_sdf_is_empty(tmp_path):
    verts, tets = tet_grid(4, cache=tmp_path)
    p, f = marching_tets(verts, -torch.ones(len(verts)), tets)
    assert p.shape == (0, 3) and f.shape == (0, 3)


# -- the torch rasterizer ------------------------------------------------------------------------------
W, H, FOVY, EYE = 80, 60, math.radians(40.0), 3.0


def _camera(dtype=torch.float32) -> Cameras:
    c2w = torch.eye(4, dtype=dtype)
    c2w[2, 3] = EYE  # at (0, 0, 3), looking down -Z, +Y up
    one = torch.ones(1)
    return Cameras(c2w[None], one * FOVY, one * 90, one * 0, one * EYE, W, H)


def _project(p: np.ndarray) -> np.ndarray:
    """The pinhole model written out: (N, 3) world -> (N, 2) pixel coordinates (x right, y down)."""
    f = 0.5 * H / math.tan(0.5 * FOVY)
    z = EYE - p[:, 2]
    return np.stack([0.5 * W + f * p[:, 0] / z, 0.5 * H - f * p[:, 1] / z], -1)


# A tilted triangle, counter-clockwise seen from the camera (so its depth varies across it)
TRI = np.array([[-0.55, -0.4, 0.3], [0.6, -0.3, -0.2], [0.05, 0.5, 0.1]])


def _inside(tri2: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    a, b, c = tri2

    def edge(p, q):
        return (q[0] - p[0]) * (y - p[1]) - (q[1] - p[1]) * (x - p[0])

    e = np.stack([edge(a, b), edge(b, c), edge(c, a)])
    return (e >= 0).all(0) | (e <= 0).all(0)


def _coverage_fraction(tri2: np.ndarray, n: int = 16) -> np.ndarray:
    """(H, W) fraction of each pixel's area inside the projected triangle (n x n samples)."""
    s = (np.arange(n) + 0.5) / n
    ys, xs = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    x = xs[..., None, None] + s[None, None, None, :]
    y = ys[..., None, None] + s[None, None, :, None]
    return _inside(tri2, x, y).mean((-1, -2))


def _render(verts: torch.Tensor, attr: torch.Tensor | None = None):
    faces = torch.tensor([[0, 1, 2]])
    raster = TorchRasterizer(RasterizerConfig())(verts, faces, _camera(verts.dtype))
    return raster, (interpolate(attr, faces, raster) if attr is not None else None)


def test_torch_rasterizer_coverage_is_the_exact_projection_but_for_the_border():
    """Must show 2a: pixels entirely inside the projected triangle are covered, pixels entirely
    outside are not; only pixels the border crosses may go either way."""
    raster, _ = _render(torch.tensor(TRI, dtype=torch.float32))
    frac = _coverage_fraction(_project(TRI))
    covered = raster.mask[0].numpy()
    assert (frac == 1).sum() > 300  # a sizeable triangle
    assert covered[frac == 1].all()
    assert not covered[frac == 0].any()
    border = (frac > 0) & (frac < 1)
    assert abs(int(covered.sum()) - (frac.sum())) < border.sum()  # the area agrees up to the border


def test_torch_rasterizer_depth_and_attributes_are_exact_inside():
    """Must show 2b: the depth of each covered pixel equals the ray-plane intersection, and the
    interpolated world position is that intersection (perspective-correct)."""
    verts = torch.tensor(TRI, dtype=torch.float64)
    raster, pos = _render(verts, verts)
    n = np.cross(TRI[1] - TRI[0], TRI[2] - TRI[0])
    f = 0.5 * H / math.tan(0.5 * FOVY)
    ys, xs = np.nonzero(raster.mask[0].numpy())
    d = np.stack([(xs + 0.5 - 0.5 * W) / f, -(ys + 0.5 - 0.5 * H) / f, -np.ones_like(xs, dtype=float)], -1)
    eye = np.array([0.0, 0.0, EYE])
    t = ((TRI[0] - eye) @ n) / (d @ n)  # the view-axis depth, since d_z = -1
    hit = eye + t[:, None] * d
    assert np.abs(raster.depth[0].numpy()[ys, xs] - t).max() < 1e-4
    assert np.abs(pos[0].detach().numpy()[ys, xs] - hit).max() < 1e-4
    assert np.isinf(raster.depth[0].numpy()[~raster.mask[0].numpy()]).all()


def test_torch_rasterizer_barycentrics_of_a_sliver_are_exact():
    """A sliver (3.4 x 0.01 pixels, the kind marching tetrahedra make) around pixel (300, 400) of
    a 512x512 view, its corners at different depths: the perspective-correct barycentrics of the
    three pixel centres it covers equal the pinhole model's, computed here in float64 with numpy. With positions
    projected in float32 they were off by 2.5e-4 (a pixel coordinate near 400 carries an
    error of 3e-5 pixel, a third of a percent of the sliver's height)."""
    from dreamfusion.renderer.raster import rasterize

    c2w = torch.eye(4)
    c2w[2, 3] = 3.0  # at z = 3 looking down -Z
    fovy, size = 2 * math.atan(0.5), 512  # focal length 512 pixels
    depth = np.array([3.1, 2.9, 3.0])
    sx = np.array([398.8, 402.2, 400.5])
    sy = np.array([300.497, 300.497, 300.507])  # the pixel centre (400.5, 300.5) inside
    world = np.stack([(sx - 256) * depth / 512, -(sy - 256) * depth / 512, 3.0 - depth], 1)
    verts = torch.tensor(world, dtype=torch.float32)
    frags = rasterize(verts, torch.tensor([[0, 1, 2]]), c2w, fovy, size, size)
    assert frags.mask.nonzero().tolist() == [[300, 399], [300, 400], [300, 401]]
    v = verts.double().numpy()  # the float32 corners, exactly
    z = 3.0 - v[:, 2]
    (ax, bx, cx), (ay, by, cy) = 256 + 512 * v[:, 0] / z, 256 - 512 * v[:, 1] / z
    for col in (399, 400, 401):
        px, py = col + 0.5, 300.5
        area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        wa = ((bx - px) * (cy - py) - (by - py) * (cx - px)) / area
        wb = ((cx - px) * (ay - py) - (cy - py) * (ax - px)) / area
        w = np.array([wa, wb, 1 - wa - wb]) / z
        got = frags.bary[300, col].double().numpy()
        assert np.abs(got - w / w.sum()).max() < 1e-6, (col, got, w / w.sum())


def test_torch_rasterizer_gradients_match_finite_differences():
    """Must show 2c: gradients reach the vertex positions and the attributes."""
    tri2 = _project(TRI)
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    a, b, c = tri2
    dist = []
    for p, q in ((a, b), (b, c), (c, a)):  # no pixel centre near an edge: coverage is constant
        e = q - p
        dist.append(np.abs(e[0] * (ys - p[1]) - e[1] * (xs - p[0])) / np.linalg.norm(e))
    assert np.min(dist) > 1e-3
    weights = torch.rand(1, H, W, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def f(verts, attr):
        raster, out = _render(verts, attr)
        depth = torch.where(raster.mask, raster.depth, torch.zeros_like(raster.depth))
        return (out * weights).sum() + (depth * weights[..., 0]).sum()

    verts = torch.tensor(TRI, dtype=torch.float64, requires_grad=True)
    attr = torch.tensor([[1.0, 0.0], [0.2, 0.5], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (verts, attr), eps=1e-6, atol=1e-6, rtol=1e-4)
    f(verts, attr).backward()
    assert verts.grad.abs().min() > 0 and attr.grad.abs().min() > 0


def test_torch_rasterizer_z_buffer_keeps_the_nearest_surface():
    near = TRI.copy()
    far = TRI.copy() * [1.5, 1.5, 1.0] - [0, 0, 0.8]  # larger, further away, behind the first
    verts = torch.tensor(np.concatenate([far, near]), dtype=torch.float32)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    raster = TorchRasterizer(RasterizerConfig())(verts, faces, _camera())
    inner = _coverage_fraction(_project(near)) == 1
    assert (raster.face[0].numpy()[inner] == 1).all()
    assert (raster.face[0].numpy()[~inner & raster.mask[0].numpy()] >= 0).all()


# -- the mesh losses ---------------------------------------------------------------------------------------
def _box():
    import trimesh

    m = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    return torch.tensor(m.vertices, dtype=torch.float64), torch.tensor(m.faces)


def test_normal_consistency_of_a_box_is_two_thirds():
    # 18 edges: 6 face diagonals between coplanar triangles (1 - cos 0 = 0), 12 cube edges between
    # perpendicular ones (1 - cos 90 = 1)
    v, f = _box()
    assert float(normal_consistency(v, f)) == pytest.approx(12 / 18)


def test_normal_consistency_leaves_creases_sharper_than_max_angle():
    # the box's 12 edges bend 90 degrees: above a 40-degree limit each counts 1 - cos 40, with no
    # gradient; a box whose top is tilted a little (coplanar pairs bend by a few degrees) is still smoothed
    v, f = _box()
    kept = 1 - math.cos(math.radians(40))
    assert float(normal_consistency(v, f, max_angle=40)) == pytest.approx(12 * kept / 18)
    v = v.clone().requires_grad_(True)
    normal_consistency(v, f, max_angle=40).backward()
    assert float(v.grad.abs().max()) == 0.0
    bent = v.detach().clone()
    bent[(bent[:, 0] > 0) & (bent[:, 1] > 0) & (bent[:, 2] > 0), 1] += 0.05  # one top corner raised
    bent.requires_grad_(True)
    normal_consistency(bent, f, max_angle=40).backward()
    assert float(bent.grad.abs().max()) > 0.0


def test_laplacian_of_an_octahedron_is_its_radius():
    # each vertex's four neighbours average to the centre, so |v - mean| = radius
    s = 0.7
    v = torch.tensor(
        [[s, 0, 0], [-s, 0, 0], [0, s, 0], [0, -s, 0], [0, 0, s], [0, 0, -s]], dtype=torch.float64
    )
    f = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    assert float(laplacian_smoothness(v, f)) == pytest.approx(s)


def test_dmtet_loss_applies_and_reports_every_term():
    v, f = _box()
    v = (v + 0.05 * torch.randn_like(v)).requires_grad_()
    loss = DMTetLoss(
        DMTetLossConfig(lambda_sds=0.0, lambda_normal_consistency=0.0, lambda_laplacian_smoothness=2.0)
    )
    total, parts = loss(torch.zeros(()), {"vertices": v, "faces": f, "opacity": torch.zeros(1)}, 0, 10)
    assert set(parts) == {"sds", "laplacian_smoothness"}
    assert float(total.detach()) == pytest.approx(2.0 * parts["laplacian_smoothness"])
    total.backward()
    assert v.grad.abs().sum() > 0  # the Laplacian term is applied, not just logged


def _screen_area(verts: torch.Tensor) -> torch.Tensor:
    """The projected triangle's area in pixels, from the pinhole model written out (torch, for autograd)."""
    f = 0.5 * H / math.tan(0.5 * FOVY)
    z = EYE - verts[:, 2]
    x, y = 0.5 * W + f * verts[:, 0] / z, 0.5 * H - f * verts[:, 1] / z
    return 0.5 * ((x[1] - x[0]) * (y[2] - y[0]) - (y[1] - y[0]) * (x[2] - x[0])).abs()


def test_antialiased_coverage_follows_the_exact_area_and_its_gradient():
    """Silhouette antialiasing: the image sum of the coverage is the triangle's exact projected
    area (far closer than the count of covered pixels), and its gradient with respect to the
    vertices is the area's, so SDS can move an outline."""
    verts = torch.tensor(TRI, dtype=torch.float64, requires_grad=True)
    faces = torch.tensor([[0, 1, 2]])
    cams = _camera(torch.float64)
    r = TorchRasterizer(RasterizerConfig())
    raster = r(verts, faces, cams)
    cov = r.antialias(raster.mask[..., None].double(), raster, verts, faces, cams)
    area = _screen_area(verts)
    total, exact = float(cov.detach().sum()), float(area.detach())
    assert abs(total - exact) < 0.01 * exact
    assert abs(total - exact) < abs(float(raster.mask.sum()) - exact) / 3
    (g,) = torch.autograd.grad(cov.sum(), verts)
    (ga,) = torch.autograd.grad(area, verts)
    assert torch.allclose(g, ga, rtol=0.1, atol=0.03 * float(ga.abs().max())), (g, ga)
    off = TorchRasterizer(RasterizerConfig(antialias=False))
    assert off.antialias(raster.mask[..., None].double(), raster, verts, faces, cams).sum() == raster.mask.sum()


def test_mesh_scene_renders_a_sphere_with_its_true_normals(tmp_path, monkeypatch):
    """The DMTet scene's rasterized normals (normalised per pixel, over the vector's own axis)
    equal the analytic sphere's at every covered pixel, and the outline is the sphere's."""
    from dreamfusion.config import compose
    from dreamfusion.data.cameras import rays
    from dreamfusion.prior.evaluate import eval_cameras
    from dreamfusion.renderer.mesh_scene import MeshScene

    monkeypatch.setenv("DREAMFUSION_CACHE", str(tmp_path))
    cfg = compose(["renderer=torch_raster", "loss=dmtet", "model.renderer.grid_resolution=32",
                   "model.nerf.encoder_cfg.num_levels=4", "model.nerf.encoder_cfg.log2_hashmap_size=12"])
    scene = MeshScene(cfg)
    r = 0.4
    with torch.no_grad():
        scene.dmtet.fit_box(torch.full((3,), -0.5), torch.full((3,), 0.5), 0.0, 1.0)
        scene.dmtet.sdf.copy_(r - scene.dmtet.vertices().norm(dim=-1))
    cams = eval_cameras(n=2, size=64)
    out = scene.render_views(cams, "normal")
    o, d = rays(cams)
    b = (o * d).sum(-1)
    disc = b**2 - ((o * o).sum(-1) - r * r)
    hit = disc > 0
    t = -b - disc.clamp(min=0).sqrt()
    true_n = torch.nn.functional.normalize(o + t[..., None] * d, dim=-1)
    mask = out["opacity"] > 0.5
    inner = mask & hit & (disc > 0.05 * r * r)  # away from the outline, where the mesh's facets decide
    n = out["normal_image"] * 2 - 1
    cos = (torch.nn.functional.normalize(n, dim=-1) * true_n).sum(-1)[inner]
    assert inner.sum() > 500 and cos.min() > math.cos(math.radians(8)) and cos.mean() > math.cos(math.radians(2))
    assert float((mask ^ hit).float().sum()) < 0.05 * float(hit.sum())  # the outline is the sphere's
    # the contrast the opacity penalty charges: what the albedo adds over the background, per pixel
    with torch.no_grad():
        out = scene.render(cams, "albedo")
        bg = scene.background(d.reshape(len(cams), -1, 3)).reshape(out["image"].shape)
    added = (out["image"] - bg).abs().mean(-1)
    assert float(out["contrast"].sum()) > 0.05 * float(mask.sum())
    torch.testing.assert_close(out["contrast"][inner], added[inner], atol=1e-5, rtol=1e-4)
    assert float(out["contrast"][~(mask | hit)].abs().max()) == 0.0
    assert abs(float(out["contrast"].sum() - added.sum())) < 0.01 * float(added.sum())


def test_dmtet_opacity_penalty_is_the_mean_contrast_and_moves_the_surface():
    v, f = _box()
    v = v.clone().requires_grad_()
    contrast = (v[:, 0].mean() + 1.0) * torch.full((2, 4, 4), 0.25)  # a stand-in that depends on the surface
    loss = DMTetLoss(DMTetLossConfig(lambda_normal_consistency=0.0, lambda_laplacian_smoothness=0.0,
                                     lambda_opacity=3.0))
    render = {"vertices": v, "faces": f, "opacity": torch.zeros(1), "contrast": contrast}
    total, parts = loss(torch.zeros(()), render, 0, 10)
    assert set(parts) == {"sds", "opacity"} and parts["opacity"] == pytest.approx(float(contrast.mean()))
    assert float(total.detach()) == pytest.approx(3.0 * parts["opacity"])
    total.backward()
    assert v.grad[:, 0].abs().sum() > 0
    with pytest.raises(ValueError, match="contrast"):
        loss(torch.zeros(()), {"vertices": v, "faces": f, "opacity": torch.zeros(1)}, 0, 10)


def test_rasterizer_comparison_finds_no_difference_between_equals():
    """The GPU check's harness, run here with the torch rasterizer on both sides: no coverage
    difference, no attribute error (what nvdiffrast must also show on a CUDA device)."""
    from dreamfusion.renderer.gpu_check import compare

    r = compare(size=64, grid=16, device="cpu", candidate="torch")
    assert r["faces"] > 500
    assert r["coverage_differs_off_edges"] == 0 and r["attribute_max_error"] == 0.0, r
    assert r["same_face_pixels"] == r["covered_torch"] > 500, r


def test_rasterizer_comparison_tolerates_only_edge_pixels_of_a_snapped_rasterizer(monkeypatch):
    """The GPU check's harness against a candidate that does what nvdiffrast does: the torch
    rasterizer with projected vertices rounded to 1/16 pixel. Rounding moves a vertex by at most
    1/32 pixel per axis, so an edge by at most sqrt(2)/32 = 0.0442 pixel: every pixel covered
    differently lies that close to an edge, and there are some (the harness is not blind)."""
    import dreamfusion.renderer.raster as raster
    from dreamfusion.renderer.gpu_check import compare

    exact = raster.project

    class Snapped(TorchRasterizer):
        def forward(self, verts, faces, cams):
            def snapped(*args, **kw):
                xy, z = exact(*args, **kw)
                return torch.round(xy * 16) / 16, z

            with monkeypatch.context() as m:
                m.setattr(raster, "project", snapped)
                return super().forward(verts, faces, cams)

    r = compare(size=128, grid=16, device="cpu", candidate=Snapped)
    assert r["coverage_differs_off_edges"] == 0, r
    assert r["coverage_differs_on_edges"] > 10, r
    assert r["differing_max_edge_distance_px"] <= math.sqrt(2) / 32 + 1e-6, r


@pytest.mark.gpu
def test_nvdiffrast_agrees_with_the_torch_rasterizer():
    """Must show 6 (a CUDA device with nvdiffrast): coverage identical but for pixels on an edge,
    attributes within 1e-4."""
    pytest.importorskip("nvdiffrast.torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from dreamfusion.renderer.gpu_check import compare

    r = compare(size=256, grid=32)
    assert r["coverage_differs_off_edges"] == 0, r
    assert r["attribute_max_error"] <= 1e-4, r


def test_init_fills_invisible_cavities_and_drops_floaters(tmp_path):
    """A NeRF-like density: a ball of radius 0.6 with a closed cavity of radius 0.3 inside and a
    floater beside it. Initialised as a solid, the surface is the outer sphere alone (one body,
    watertight, every vertex within 1% of 0.6); from the density alone it has all three bodies."""
    import trimesh

    from dreamfusion.geometry.dmtet import DMTet, solid_body

    floater = torch.tensor([0.85, 0.0, 0.0])

    def log_density(x: torch.Tensor) -> torch.Tensor:
        r = x.norm(dim=-1)
        shell = torch.minimum(0.6 - r, r - 0.3)
        return 10 * torch.maximum(shell, 0.08 - (x - floater).norm(dim=-1))

    def bodies(solid):
        dmtet = DMTet(32)
        dmtet.grid, dmtet.tets = tet_grid(32, cache=tmp_path)
        changed = dmtet.init_sdf(lambda x: log_density(x).exp(), 1.0, solid=solid)
        with torch.no_grad():
            v, f = dmtet.mesh()
        return changed, v, trimesh.Trimesh(v.numpy(), f.numpy(), process=False).split(only_watertight=False)

    assert len(bodies(False)[2]) == 3
    changed, v, parts = bodies(True)
    assert not solid_body(np.zeros((4, 4, 4), bool)).any()
    assert len(parts) == 1 and parts[0].is_watertight
    assert (v.norm(dim=-1) / 0.6 - 1).abs().max() < 0.01
    spacing = 2 / 32  # the lattice's vertices in the cavity and the floater, counted analytically
    g = torch.arange(33) * spacing - 1
    lattice = torch.stack(torch.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    assert changed == {"cavity_vertices_filled": int((lattice.norm(dim=-1) < 0.3).sum()),
                       "floater_vertices_dropped": int(((lattice - floater).norm(dim=-1) < 0.08).sum())}
    assert changed["floater_vertices_dropped"] > 0


def test_fit_surface_puts_the_start_on_the_surface_where_the_log_density_misplaces_it(tmp_path):
    """A NeRF-like shell: density softplus(60 (0.6 - r)), steep inside and exponential outside, so its
    logarithm bends across the iso-surface and marching tets on a 32^3 grid misplaces the sphere by
    up to 3% of its radius. Measured against the sphere's own mesh (what mesh-export gives),
    every vertex lands within 0.5%, the signs (inside / outside) stay, and only the vertices of
    the crossed tets are measured."""
    import trimesh

    from dreamfusion.geometry.dmtet import DMTet

    iso = 5.0
    radius = 0.6 - math.log(math.expm1(iso)) / 60  # where the density equals iso
    dmtet = DMTet(32)
    dmtet.grid, dmtet.tets = tet_grid(32, cache=tmp_path)
    dmtet.init_sdf(lambda x: torch.nn.functional.softplus(60 * (0.6 - x.norm(dim=-1))), iso, solid=True)
    signs = dmtet.sdf > 0
    with torch.no_grad():
        v, _ = dmtet.mesh()
    assert (v.norm(dim=-1) / radius - 1).abs().max() > 0.02
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    measured = dmtet.fit_surface(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    assert torch.equal(dmtet.sdf > 0, signs)
    with torch.no_grad():
        v, f = dmtet.mesh()
    assert (v.norm(dim=-1) / radius - 1).abs().max() < 0.005
    assert trimesh.Trimesh(v.numpy(), f.numpy()).is_watertight
    cell = 2 / 32  # crossed tets' vertices: those within a tet's diameter of the sphere, and no others
    far = (dmtet.grid.norm(dim=-1) - radius).abs() > math.sqrt(3) * cell
    assert 0 < measured < len(dmtet.sdf) and (dmtet.sdf.abs()[far] == 2).all()
    nowhere = torch.zeros_like(signs)  # no vertex inside: nothing to measure, an empty surface
    mesh = torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces)
    assert dmtet.fit_surface(*mesh, nowhere) == 0
    assert (dmtet.sdf == -2).all() and dmtet.mesh()[1].shape[0] == 0


def test_the_output_surface_is_the_solid_of_whatever_training_left(tmp_path):
    """Training can close a dent into a cavity or grow a floater, which the start had not: the
    surface the stage outputs (``mesh(solid=True)``, used by evaluation renders, checkpoint stats
    and the export source) is the largest body's outside, every vertex within 1% of the radius;
    vertices whose sign stays keep their SDF values."""
    import trimesh

    from dreamfusion.geometry.dmtet import DMTet

    dmtet = DMTet(32)
    dmtet.grid, dmtet.tets = tet_grid(32, cache=tmp_path)
    with torch.no_grad():  # as if trained: a shell 0.3-0.6 and a floater, no init
        x = dmtet.vertices()
        r = x.norm(dim=-1)
        floater = 0.08 - (x - torch.tensor([0.85, 0.0, 0.0])).norm(dim=-1)
        dmtet.sdf.copy_(torch.maximum(torch.minimum(0.6 - r, r - 0.3), floater))
        trained = dmtet.signed_distance()
        solid, changed = dmtet.solid_signs(trained)
        v, f = dmtet.mesh(solid=True)
    parts = trimesh.Trimesh(v.numpy(), f.numpy(), process=False).split(only_watertight=False)
    with torch.no_grad():
        as_trained = trimesh.Trimesh(*[t.numpy() for t in dmtet.mesh()], process=False)
    assert len(as_trained.split(only_watertight=False)) == 3
    assert len(parts) == 1 and parts[0].is_watertight
    assert (v.norm(dim=-1) / 0.6 - 1).abs().max() < 0.01
    kept = (solid > 0) == (trained > 0)
    assert torch.equal(solid[kept], trained[kept])
    assert int((~kept).sum()) == changed["cavity_vertices_filled"] + changed["floater_vertices_dropped"]
    assert changed["cavity_vertices_filled"] > 0 and changed["floater_vertices_dropped"] > 0


def test_bodies_are_connected_through_the_grid_edges_not_every_lattice_neighbour(tmp_path):
    """A vertex that touches a body only across a diagonal that no grid edge follows ((-1, 1, 0):
    the Kuhn grid has (1, 1, 0) and (-1, -1, 0)) is a surface of its own. Joined to the body as a
    26-neighbour it would stay a second piece of the output; through the grid's 14 edge neighbours
    it is a floater, and the output is one closed surface."""
    import trimesh

    from dreamfusion.geometry.dmtet import DMTet, solid_body
    from dreamfusion.geometry.tets import edge_neighbours

    assert edge_neighbours().sum() == 14 and not edge_neighbours()[0, 2, 1]  # offset (-1, 1, 0)
    dmtet = DMTet(32)
    dmtet.grid, dmtet.tets = tet_grid(32, cache=tmp_path)
    inside = np.zeros((33, 33, 33), bool)
    inside[10:21, 10:21, 10:21] = True
    inside[21, 9, 15] = True  # (-1, 1, 0) from the body's edge vertex (20, 10, 15)
    with torch.no_grad():
        dmtet.sdf.copy_(torch.from_numpy(np.where(inside, 0.5, -0.5).reshape(-1)).float())

    def pieces(signs):
        v, f = marching_tets(dmtet.vertices(), signs, dmtet.tets)
        m = trimesh.Trimesh(v.numpy(), f.numpy(), process=False)
        return [p.is_watertight for p in m.split(only_watertight=False)]

    with torch.no_grad():
        s = dmtet.signed_distance()
        as_lattice = torch.from_numpy(solid_body(inside).reshape(-1))
        assert pieces(torch.where(as_lattice, s.abs(), -s.abs())) == [True, True]
        assert pieces(dmtet.solid_signs(s)[0]) == [True]
        assert dmtet.solid_signs(s)[1] == {"cavity_vertices_filled": 0, "floater_vertices_dropped": 1}
