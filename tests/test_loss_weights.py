"""The NeRF loss's weights over a run: the seed's entropy ramp min(1, 2 step / iters) and the
opacity warm-up, checked against those formulas on a render whose terms are known."""

import math

import pytest
import torch

from dreamfusion.loss import DreamFusionLoss, DreamFusionLossConfig


def _total(cfg, step, iters=100):
    render = {"opacity": torch.full((1, 4, 4), 0.25)}
    total, parts = DreamFusionLoss(cfg)(torch.tensor(0.0), render, step, iters)
    return float(total), parts


@pytest.mark.parametrize("step", [0, 10, 25, 50, 99])
def test_entropy_weight_ramps_as_the_seed_says(step):
    cfg = DreamFusionLossConfig(lambda_opacity=0.0, lambda_entropy=2.0, lambda_orientation=0.0)
    total, parts = _total(cfg, step)
    h = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert parts["entropy"] == pytest.approx(h, rel=1e-5)
    assert total == pytest.approx(2.0 * min(1.0, 2 * step / 100) * h, rel=1e-5)


@pytest.mark.parametrize(("warmup", "step", "weight"), [(0.0, 0, 1.0), (0.5, 0, 0.0), (0.5, 25, 0.5), (0.5, 60, 1.0)])
def test_opacity_weight_warms_up_over_its_fraction_of_the_run(warmup, step, weight):
    cfg = DreamFusionLossConfig(lambda_opacity=8.0, lambda_entropy=0.0, lambda_orientation=0.0, opacity_warmup=warmup)
    total, parts = _total(cfg, step)
    assert parts["opacity"] == pytest.approx(0.0625)
    assert total == pytest.approx(8.0 * weight * 0.0625)


@pytest.mark.parametrize(
    ("cooldown", "step", "weight"), [(0.0, 99, 1.0), (0.3, 0, 1.0), (0.3, 70, 1.0), (0.3, 85, 0.5), (0.3, 100, 0.0)]
)
def test_opacity_weight_cools_down_over_its_fraction_at_the_end(cooldown, step, weight):
    """Full weight until the last ``cooldown`` of the run, then linearly to 0 at ``iters``."""
    cfg = DreamFusionLossConfig(lambda_opacity=8.0, lambda_entropy=0.0, lambda_orientation=0.0,
                                opacity_cooldown=cooldown)
    total, parts = _total(cfg, step)
    assert parts["opacity"] == pytest.approx(0.0625)
    assert total == pytest.approx(8.0 * weight * 0.0625)


@pytest.mark.parametrize("key", ["opacity_warmup", "opacity_cooldown"])
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_opacity_ramps_outside_0_1_are_refused(key, bad):
    from dreamfusion.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        DreamFusionLossConfig(**{key: bad}).check()


def test_coverage_form_squares_each_views_mean_opacity():
    op = torch.zeros(2, 4, 4)
    op[0, :2] = 1.0  # view 0: half covered, opaque
    op[1] = 0.5  # view 1: all covered, half opaque
    cfg = DreamFusionLossConfig(lambda_opacity=3.0, lambda_entropy=0.0, lambda_orientation=0.0, opacity_form="coverage")
    total, parts = DreamFusionLoss(cfg)(torch.tensor(0.0), {"opacity": op}, 0, 10)
    assert parts["opacity"] == pytest.approx((0.5**2 + 0.5**2) / 2)
    pixel = DreamFusionLoss(DreamFusionLossConfig(lambda_opacity=3.0, lambda_entropy=0.0, lambda_orientation=0.0))
    assert pixel(torch.tensor(0.0), {"opacity": op}, 0, 10)[1]["opacity"] == pytest.approx((0.5 + 0.25) / 2)
    # The same coverage pays the same at any opacity a pixel holds: no pull towards translucency.
    a = op.clone().requires_grad_()
    DreamFusionLoss(cfg)(torch.tensor(0.0), {"opacity": a}, 0, 10)[0].backward()
    assert torch.allclose(a.grad[0], a.grad[0, 0, 0].expand(4, 4))


def test_contrast_form_is_the_mean_of_what_the_albedo_adds():
    render = {"opacity": torch.ones(1, 2, 2), "contrast": torch.tensor([[[0.2, 0.4], [0.0, 0.6]]])}
    cfg = DreamFusionLossConfig(lambda_opacity=5.0, lambda_entropy=0.0, lambda_orientation=0.0, opacity_form="contrast")
    total, parts = DreamFusionLoss(cfg)(torch.tensor(0.0), render, 0, 10)
    assert parts["opacity"] == pytest.approx((0.2 + 0.4 + 0 + 0.6) / 4)
    assert total == pytest.approx(5.0 * 1.2 / 4)
    # A render without colour (the latent warm-up's) falls back to opacity
    assert DreamFusionLoss(cfg)(torch.tensor(0.0), {"opacity": torch.full((1, 2, 2), 0.5)}, 0, 10)[1][
        "opacity"
    ] == pytest.approx(0.25)  # the pixel form's mean of opacity^2


def test_image_form_charges_what_a_pixel_adds_to_the_picture_and_moves_only_opacity():
    """Over a white background: an opaque white pixel shaded to 0.8, a translucent dark shell (opacity
    0.2, colour 0) making the same picture, an opaque red pixel, an empty one. Each pays the picture's
    difference from the background (0.2, 0.2, 2/3, 0); the gradient reaches the opacity (by the
    pixel's difference per unit opacity) and not the image."""
    bg = torch.ones(1, 2, 2, 3)
    opacity = torch.tensor([[[1.0, 0.2], [1.0, 0.0]]], requires_grad=True)
    colour = torch.tensor([[[[0.8] * 3, [0.0] * 3], [[1.0, 0.0, 0.0], [1.0] * 3]]])  # shaded colours
    image = (opacity.detach()[..., None] * colour + (1 - opacity.detach()[..., None]) * bg).requires_grad_()
    render = {"opacity": opacity, "image": image, "background_image": bg}
    cfg = DreamFusionLossConfig(lambda_opacity=5.0, lambda_entropy=0.0, lambda_orientation=0.0, opacity_form="image")
    total, parts = DreamFusionLoss(cfg)(torch.tensor(0.0), render, 0, 10)
    assert parts["opacity"] == pytest.approx((0.2 + 0.2 + 2 / 3 + 0.0) / 4, rel=1e-6)
    total.backward()
    assert image.grad is None or not image.grad.any()
    assert opacity.grad.flatten().tolist() == pytest.approx([5 * 0.2 / 4, 5 * 1.0 / 4, 5 * (2 / 3) / 4, 0.0], rel=1e-6)
    # without colour (the latent warm-up's renders) it falls back to the pixel form, like ``contrast``
    no_colour = {"opacity": torch.full((1, 2, 2), 0.5)}
    assert DreamFusionLoss(cfg)(torch.tensor(0.0), no_colour, 0, 10)[1]["opacity"] == pytest.approx(0.25)


def test_contrast_floor_charges_density_the_albedo_hides():
    """Pixels whose contrast is below floor x opacity pay floor x opacity; the rest their contrast."""
    render = {"opacity": torch.tensor([[[1.0, 0.5], [0.5, 0.0]]]),
              "contrast": torch.tensor([[[0.3, 0.0], [0.02, 0.0]]])}
    cfg = DreamFusionLossConfig(lambda_opacity=5.0, lambda_entropy=0.0, lambda_orientation=0.0, opacity_form="contrast",
                                contrast_floor=0.1)
    paid = DreamFusionLoss(cfg)(torch.tensor(0.0), render, 0, 10)[1]["opacity"]
    assert paid == pytest.approx((0.3 + 0.05 + 0.05) / 4)
    cfg.contrast_floor = 0.0
    assert DreamFusionLoss(cfg)(torch.tensor(0.0), render, 0, 10)[1]["opacity"] == pytest.approx((0.3 + 0.02) / 4)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_contrast_floor_outside_0_1_is_refused(bad):
    from dreamfusion.errors import ConfigError

    with pytest.raises(ConfigError, match="contrast_floor"):
        DreamFusionLossConfig(contrast_floor=bad).check()


def test_normal_smoothness_is_weighted_and_asks_for_its_render():
    loss = DreamFusionLoss(DreamFusionLossConfig(lambda_opacity=0.0, lambda_entropy=0.0, lambda_orientation=0.0,
                                                 lambda_normal_smoothness=4.0))
    assert loss.needs_normal_smoothness and loss.needs_normals
    render = {"opacity": torch.zeros(1, 2, 2), "normal_smoothness": torch.tensor([0.1, 0.3, 0.0, 0.0])}
    total, parts = loss(torch.tensor(0.0), render, 0, 100)
    assert parts["normal_smoothness"] == pytest.approx(0.1)
    assert float(total) == pytest.approx(0.4)
    assert not DreamFusionLoss(DreamFusionLossConfig()).needs_normal_smoothness
