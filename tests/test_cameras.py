import math

import torch

from dreamfusion.config import compose
from dreamfusion.config.schema import EvalDatasetConfig, TrainDatasetConfig
from dreamfusion.data.cameras import circle, rays, sample_train, view_labels
from dreamfusion.data.prompts import view_prompts


def test_training_cameras_follow_the_ranges_and_look_at_the_origin():
    cfg = TrainDatasetConfig(width=9, height=9)
    cams = sample_train(cfg, 256, torch.Generator().manual_seed(0))
    r = cams.position.norm(dim=-1)
    assert torch.allclose(r, cams.radius, atol=1e-5)
    assert r.min() >= 3.0 - 1e-5 and r.max() <= 3.5 + 1e-5
    elevation = torch.rad2deg(torch.asin(cams.position[:, 1] / r))
    assert torch.allclose(elevation, 90 - cams.theta, atol=1e-3)
    assert elevation.min() >= -15 - 1e-3 and elevation.max() <= 45 + 1e-3
    o, d = rays(cams)
    centre = d[:, 4, 4]  # the middle pixel of a 9x9 image points at the origin
    to_origin = torch.nn.functional.normalize(-o[:, 4, 4], dim=-1)
    assert torch.allclose(centre, to_origin, atol=1e-5)


def test_field_of_view_of_rays():
    cams = circle(EvalDatasetConfig(width=64, height=64, n_views=1, fovy=20))
    o, d = rays(cams)
    top, bottom = d[0, 0, 32], d[0, 63, 32]
    angle = math.degrees(math.acos(float((top * bottom).sum())))
    assert abs(angle - 20 * 63 / 64) < 0.05  # pixel centres span 63/64 of the field of view


def test_rays_through_a_point_of_their_pixel():
    cams = circle(EvalDatasetConfig(width=64, height=64, n_views=1, fovy=20))
    centre = torch.full((1, 64, 64, 2), 0.5)
    assert torch.equal(rays(cams, centre)[1], rays(cams)[1])
    edge = centre.clone()
    edge[0, 0, :, 1], edge[0, 63, :, 1] = 0.0, 1.0  # the top row's top edge, the bottom row's bottom edge
    _, d = rays(cams, edge)
    angle = math.degrees(math.acos(float((d[0, 0, 32] * d[0, 63, 32]).sum())))
    assert abs(angle - 20) < 0.01  # the pixels' outer edges span the whole field of view


def test_jittered_rays_cover_their_pixel_uniformly():
    """The fraction of a pixel's jittered rays that hit a ball is the fraction of the pixel that
    the ball covers (counted on a 32x32 grid of points within the pixel)."""
    cams = circle(EvalDatasetConfig(width=8, height=8, n_views=1, fovy=20, theta=90))

    def hits(within):
        o, d = rays(cams, within)
        b = (o * d).sum(-1)  # a ray o + t d meets the ball |x| <= 0.45 where b^2 - |o|^2 + r^2 >= 0
        return (b * b - (o * o).sum(-1) + 0.45**2 >= 0).float()

    g = (torch.arange(32) + 0.5) / 32
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 1, 1, 2)  # (1024, 1, 1, 2)
    covered = torch.stack([hits(p.expand(1, 8, 8, 2)) for p in grid]).mean(0)
    partial = (covered > 0.05) & (covered < 0.95)
    assert partial.sum() >= 8  # the ball's outline crosses pixels
    generator = torch.Generator().manual_seed(0)
    drawn = torch.stack([hits(torch.rand(1, 8, 8, 2, generator=generator)) for _ in range(4000)]).mean(0)
    assert (drawn - covered).abs().max() < 0.03  # binomial sd at most 0.008 over 4000 draws


def test_azimuth_zero_is_the_front_on_plus_z():
    cams = circle(EvalDatasetConfig(n_views=4, theta=90))
    assert torch.allclose(cams.position[0], torch.tensor([0.0, 0.0, 3.2]), atol=1e-5)
    assert torch.allclose(cams.position[1], torch.tensor([3.2, 0.0, 0.0]), atol=1e-5)


def test_view_prompts_by_azimuth_and_elevation():
    theta = torch.tensor([90.0, 90.0, 90.0, 90.0, 20.0])  # elevation 0 ... and 70
    phi = torch.tensor([0.0, 90.0, 180.0, -90.0, 0.0])
    assert view_labels(theta, phi) == ["front", "side", "back", "side", "overhead"]
    prompts = view_prompts(compose(["model.prompt=a red cube"]).model)
    assert [prompts[v] for v in view_labels(theta, phi)] == [
        "a red cube, front view",
        "a red cube, side view",
        "a red cube, back view",
        "a red cube, side view",
        "a red cube, overhead view",
    ]
