"""The shapes-world renderer against analytic answers."""

import dataclasses
import math

import pytest
import torch

from dreamfusion.config import compose
from dreamfusion.config.presets import expand
from dreamfusion.config.schema import EvalDatasetConfig, TrainDatasetConfig
from dreamfusion.data.cameras import circle, look_at, sample_train, view_labels
from dreamfusion.prior.data import (
    BACKGROUND,
    COLOURS,
    CYLINDER_RADIUS,
    HALF,
    INTERSECT,
    SHAPES,
    TORUS_MAJOR,
    TORUS_MINOR,
    projected_sphere_area,
    random_batch,
    render,
    silhouette,
    world_cameras,
)


def _cams(theta=90.0, size=256, n=1, fovy=20.0, radius=3.2):
    return circle(EvalDatasetConfig(width=size, height=size, n_views=n, radius=radius, fovy=fovy), n, theta=theta)


def test_sphere_silhouette_area_matches_projection():
    cams = _cams(theta=70.0, n=3)
    area = silhouette(cams, "sphere").sum((1, 2))
    expect = projected_sphere_area(HALF, 3.2, math.radians(20.0), 256)
    assert torch.allclose(area, torch.full_like(area, expect), rtol=0.01)


def test_cube_front_silhouette_is_the_front_face_square():
    cams = _cams(theta=90.0)  # camera on +Z, level: only the front face is seen
    f = 0.5 * 256 / math.tan(math.radians(10.0))
    side = 2 * HALF / (3.2 - HALF) * f
    area = float(silhouette(cams, "cube").sum())
    assert area == pytest.approx(side * side, rel=0.02)
    # and it is a square: as tall as it is wide
    m = silhouette(cams, "cube")[0] > 0
    rows, cols = m.any(1).sum(), m.any(0).sum()
    assert int(rows) == int(cols)


def test_cube_diagonal_view_is_wider():
    front = silhouette(_cams(theta=90.0), "cube")[0] > 0
    cams = circle(EvalDatasetConfig(width=256, height=256, n_views=8, radius=3.2, fovy=20.0), 8, theta=90.0)
    diag = silhouette(cams, "cube")[1] > 0  # azimuth 45: the side edges at x = +-h sqrt(2), depth 3.2
    f = 0.5 * 256 / math.tan(math.radians(10.0))
    assert int(front.any(0).sum()) == pytest.approx(2 * HALF / (3.2 - HALF) * f, abs=1.0)
    assert int(diag.any(0).sum()) == pytest.approx(2 * HALF * math.sqrt(2) / 3.2 * f, abs=1.0)


def _ray(o, d):
    return torch.tensor([o], dtype=torch.float32), torch.nn.functional.normalize(
        torch.tensor([d], dtype=torch.float32), dim=-1
    )


@pytest.mark.parametrize(
    "shape,depth",
    [
        ("sphere", HALF),
        ("cube", HALF),
        ("cylinder", CYLINDER_RADIUS),
        ("cone", HALF / 2),
        ("torus", TORUS_MAJOR + TORUS_MINOR),
    ],
)
def test_hit_distance_along_the_axis(shape, depth):
    o, d = _ray([0.0, 0.0, 3.0], [0.0, 0.0, -1.0])
    t, n = INTERSECT[shape](o, d)
    assert float(t) == pytest.approx(3.0 - depth, abs=1e-3)
    normal = [0.0, 0.5 * 0.5 * HALF, HALF / 2] if shape == "cone" else [0.0, 0.0, 1.0]  # cone: (x, k^2 (h-y), z)
    assert torch.allclose(n, torch.nn.functional.normalize(torch.tensor([normal]), dim=-1), atol=1e-2)


def test_hits_from_above():
    o, d = _ray([0.0, 3.0, 0.0], [0.0, -1.0, 0.0])
    assert float(INTERSECT["cylinder"](o, d)[0]) == pytest.approx(3.0 - HALF, abs=1e-5)
    assert float(INTERSECT["cone"](o, d)[0]) == pytest.approx(3.0 - HALF, abs=1e-4)  # the apex
    assert math.isinf(float(INTERSECT["torus"](o, d)[0]))  # through the hole
    # cone side: radius at height y is h (h - y) / (2h); at x = 0.1 the side is at y = h - 0.2
    o, d = _ray([0.1, 3.0, 0.0], [0.0, -1.0, 0.0])
    t, n = INTERSECT["cone"](o, d)
    assert float(t) == pytest.approx(3.0 - (HALF - 0.2), abs=1e-4)
    assert n[0, 1] > 0 and n[0, 0] > 0
    # torus tube top at rho = R: y = r
    o, d = _ray([TORUS_MAJOR, 3.0, 0.0], [0.0, -1.0, 0.0])
    assert float(INTERSECT["torus"](o, d)[0]) == pytest.approx(3.0 - TORUS_MINOR, abs=1e-3)


def test_misses_and_inside_extent():
    o, d = _ray([0.0, 0.0, 3.0], [0.3, 0.0, -1.0])  # passes ~0.9 off the origin
    for shape in SHAPES:
        assert math.isinf(float(INTERSECT[shape](o, d)[0])), shape


def test_normals_are_unit_and_outward():
    cams = sample_train(TrainDatasetConfig(width=32, height=32), 4, torch.Generator().manual_seed(0))
    from dreamfusion.data.cameras import rays

    o, d = rays(cams)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    for shape in SHAPES:
        t, n = INTERSECT[shape](o, d)
        hit = torch.isfinite(t)
        assert hit.sum() > 50, shape
        assert torch.allclose(n[hit].norm(dim=-1), torch.ones(int(hit.sum())), atol=1e-4), shape
        assert ((n[hit] * d[hit]).sum(-1) < 1e-4).all(), shape  # facing the camera
        p = o[hit] + t[hit, None] * d[hit]
        assert (p.abs() <= HALF + 1e-3).all(), shape


def test_render_background_shading_and_mask():
    cams = _cams(theta=80.0, size=64, n=4)
    rgb, mask = render(cams, "sphere", "red", ambient=0.3)
    assert rgb.shape == (4, 64, 64, 3) and mask.shape == (4, 64, 64)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(rgb[mask == 0], torch.tensor(BACKGROUND).expand(int((mask == 0).sum()), 3))
    fg = rgb[mask == 1]
    red = torch.tensor(COLOURS["red"])
    # lambertian: between ambient * albedo and albedo, brightest near the light (the camera)
    assert (fg <= red + 1e-5).all() and (fg >= 0.3 * red - 1e-5).all()
    assert float(fg[:, 0].max()) == pytest.approx(COLOURS["red"][0], rel=0.02)
    # a light from behind leaves only the ambient term
    rgb2, _ = render(
        cams, "sphere", "red", ambient=0.3, light_dir=-torch.nn.functional.normalize(cams.position, dim=-1)
    )
    assert torch.allclose(rgb2[mask == 1], 0.3 * red.expand(int(mask.sum()), 3), atol=1e-5)


def test_supersampled_coverage_is_soft_and_consistent():
    cams = _cams(theta=80.0, size=32, n=2)
    soft = silhouette(cams, "cone", supersample=4)
    hard = silhouette(_cams(theta=80.0, size=128, n=2), "cone")
    assert ((soft > 0) & (soft < 1)).any()
    assert float(soft.sum() * 16) == pytest.approx(float(hard.sum()), rel=1e-4)


def test_random_batch_captions_and_range():
    g = torch.Generator().manual_seed(0)
    b = random_batch(200, g, p_empty=0.1, p_view_suffix=0.5)
    assert b.images.shape == (200, 3, 32, 32)
    assert b.images.min() >= -1 and b.images.max() <= 1
    empty = sum(c == "" for c in b.captions)
    assert 5 <= empty <= 40
    with_view = [c for c in b.captions if "view" in c]
    assert 60 <= len(with_view) <= 140
    for c, s, col, v in zip(b.captions, b.shapes, b.colours, b.views):
        if c:
            assert c.startswith(f"a {col} {s}")
            if "view" in c:
                assert c == f"a {col} {s}, {v} view"
    # the border is mostly background (white), the object is centred
    assert (b.images[:, :, 0, 0] > 0.9).float().mean() > 0.85
    assert set(b.views) <= {"front", "side", "back"}


def test_training_cameras_are_the_nerf_stage_distribution():
    stage = compose(expand(["cpu", "shapes"])).model.data.train_dataset
    world = world_cameras(64)
    assert dataclasses.replace(stage, width=64, height=64, batch_size=1) == world
    g = torch.Generator().manual_seed(1)
    cams = sample_train(world, 500, g)
    assert cams.radius.min() >= 3.0 and cams.radius.max() <= 3.5
    fov = torch.rad2deg(cams.fovy)
    assert fov.min() >= world.fovy_range[0] - 1e-4 and fov.max() <= world.fovy_range[1] + 1e-4
    labels = view_labels(cams.theta, cams.phi, world.angle_front, world.angle_overhead)
    assert {"front", "side", "back"} == set(labels)


def _touches_border(cover: torch.Tensor) -> torch.Tensor:
    edge = torch.cat([cover[:, 0], cover[:, -1], cover[:, :, 0], cover[:, :, -1]], 1)
    return (edge > 0).any(1)


def test_objects_are_whole_in_every_training_view():
    # The world's cameras never crop an object, so a frame filled with colour is never "a cube".
    g = torch.Generator().manual_seed(2)
    cams = sample_train(world_cameras(64), 300, g)
    for shape in SHAPES:
        assert not _touches_border(silhouette(cams, shape)).any(), shape
    # The seed's narrowest cameras (fovy 10 at radius 3) crop the cube: the bound above is not vacuous.
    close = sample_train(
        TrainDatasetConfig(width=64, height=64, radius_range=[3.0, 3.0], fovy_range=[10.0, 10.0]), 50, g
    )
    assert _touches_border(silhouette(close, "cube")).float().mean() > 0.5


def test_look_at_centres_the_object():
    eye = torch.tensor([[1.0, 2.0, 2.5]])
    from dreamfusion.data.cameras import Cameras

    c2w = look_at(eye)
    cams = Cameras(
        c2w,
        torch.tensor([math.radians(30.0)]),
        torch.tensor([60.0]),
        torch.tensor([20.0]),
        eye.norm(dim=-1),
        33,
        33,
    )
    m = silhouette(cams, "sphere")[0]
    assert m[16, 16] == 1 and m[0, 0] == 0
    ys, xs = torch.nonzero(m, as_tuple=True)
    assert float(ys.float().mean()) == pytest.approx(16.0, abs=0.3)
    assert float(xs.float().mean()) == pytest.approx(16.0, abs=0.3)
