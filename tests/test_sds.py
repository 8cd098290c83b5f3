"""The SDS gradient against a hand computation of w(t) (eps_hat - eps)."""

import torch

from dreamfusion.guidance.stable_diffusion import GuidanceConfig, StableDiffusionGuidance


def test_sds_gradient_equals_hand_computation(tiny_model):
    g = StableDiffusionGuidance(GuidanceConfig(precision="32", model_key=str(tiny_model), t_range=[0.02, 0.98]))
    emb = g.encode_text(["a red cube, front view", "a blue sphere, side view", ""])
    cond, uncond = emb[:2], emb[2:].expand(2, -1, -1)
    torch.manual_seed(0)
    z = torch.randn(2, 4, 32, 32, requires_grad=True)
    loss, info = g.sds(z, cond, uncond, guidance_scale=7.5, generator=torch.Generator().manual_seed(123))
    loss.backward()

    # By hand: the same draws from the same seed, the forward process written out, two UNet calls.
    gen = torch.Generator().manual_seed(123)
    t = torch.randint(20, 981, (2,), generator=gen)
    noise = torch.randn(2, 4, 32, 32, generator=gen)
    assert torch.equal(t, info["t"]) and torch.equal(noise, info["noise"])
    abar = g.scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
    x_t = abar.sqrt() * z.detach() + (1 - abar).sqrt() * noise
    with torch.no_grad():
        eps_u = g.unet(x_t, t, encoder_hidden_states=uncond).sample
        eps_c = g.unet(x_t, t, encoder_hidden_states=cond).sample
    want = (1 - abar) * (eps_u + 7.5 * (eps_c - eps_u) - noise) / 2  # / batch size
    assert (z.grad - want).abs().max() < 1e-5 * want.abs().max()
    assert torch.allclose(loss, 0.5 * (want * 2).pow(2).sum() / 2, rtol=1e-4)


def test_timesteps_stay_in_t_range(tiny_model):
    g = StableDiffusionGuidance(GuidanceConfig(precision="32", model_key=str(tiny_model), t_range=[0.3, 0.4]))
    emb = g.encode_text(["a", ""])
    z = torch.zeros(64, 4, 32, 32)
    _, info = g.sds(z, emb[:1].expand(64, -1, -1), emb[1:].expand(64, -1, -1), 100.0)
    assert info["t"].min() >= 300 and info["t"].max() <= 400


def test_t_max_final_anneals_the_largest_timestep_linearly(tiny_model):
    cfg = GuidanceConfig(precision="32", model_key=str(tiny_model), t_range=[0.02, 0.98], t_max_final=0.5)
    g = StableDiffusionGuidance(cfg)
    emb = g.encode_text(["a", ""])
    z = torch.zeros(256, 4, 8, 8)
    for progress, top in ((0.0, 980), (0.25, 860), (0.5, 740), (1.0, 500), (3.0, 500)):
        assert g.t_max(progress) == top  # 980 + progress * (500 - 980), 1000 training timesteps
        _, info = g.sds(z, emb[:1].expand(256, -1, -1), emb[1:].expand(256, -1, -1), 7.5, progress=progress,
                        generator=torch.Generator().manual_seed(1))
        # uniform over [20, top]: the largest of 256 draws is within 5% of the range of the top
        assert info["t"].min() >= 20 and top - 0.05 * (top - 20) <= info["t"].max() <= top
    # unset: the seed's fixed range whatever the progress, with the same draws as before
    fixed = StableDiffusionGuidance(GuidanceConfig(precision="32", model_key=str(tiny_model), t_range=[0.02, 0.98]))
    _, a = fixed.sds(z, emb[:1].expand(256, -1, -1), emb[1:].expand(256, -1, -1), 7.5, progress=1.0,
                     generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["t"], torch.randint(20, 981, (256,), generator=torch.Generator().manual_seed(1)))


def test_t_max_final_outside_t_range_is_a_config_error():
    import pytest

    from dreamfusion.errors import ConfigError

    for bad in (0.99, 0.02, 0.0):
        with pytest.raises(ConfigError, match="t_max_final"):
            GuidanceConfig(precision="32", t_range=[0.02, 0.98], t_max_final=bad).check()


def _v_model(tmp_path_factory, prediction_type):
    from dreamfusion.guidance.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp(f"tiny-{prediction_type}"), prediction_type=prediction_type)


def test_v_prediction_becomes_the_noise_estimate(tmp_path_factory):
    """A v-prediction model's output v = sqrt(abar) eps - sqrt(1 - abar) x0: by hand, x0 from v and x_t
    (x0 = sqrt(abar) x_t - sqrt(1 - abar) v), then the noise that x_t holds given that x0."""
    key = str(_v_model(tmp_path_factory, "v_prediction"))
    g = StableDiffusionGuidance(GuidanceConfig(precision="32", model_key=key))
    assert g.prediction_type == "v_prediction"
    emb = g.encode_text(["a red cube", ""])
    cond, uncond = emb[:1], emb[1:]
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss, info = g.sds(z, cond, uncond, guidance_scale=5.0, generator=torch.Generator().manual_seed(7))
    loss.backward()

    t, noise = info["t"], info["noise"]
    abar = g.scheduler.alphas_cumprod[t].view(1, 1, 1, 1)
    x_t = abar.sqrt() * z.detach() + (1 - abar).sqrt() * noise
    with torch.no_grad():
        eps = []
        for e in (uncond, cond):
            v = g.unet(x_t, t, encoder_hidden_states=e).sample
            x0 = abar.sqrt() * x_t - (1 - abar).sqrt() * v
            eps.append((x_t - abar.sqrt() * x0) / (1 - abar).sqrt())
    want = (1 - abar) * (eps[0] + 5.0 * (eps[1] - eps[0]) - noise)
    assert (z.grad - want).abs().max() < 1e-4 * want.abs().max()
    # Read as epsilon, the same UNet would give another gradient: the type matters here.
    with torch.no_grad():
        raw = [g.unet(x_t, t, encoder_hidden_states=e).sample for e in (uncond, cond)]
    wrong = (1 - abar) * (raw[0] + 5.0 * (raw[1] - raw[0]) - noise)
    assert (z.grad - wrong).abs().max() > 0.1 * want.abs().max()


def test_an_unsupported_prediction_type_is_refused_in_one_line(tmp_path_factory):
    from dreamfusion.errors import UserError

    key = str(_v_model(tmp_path_factory, "sample"))
    try:
        StableDiffusionGuidance(GuidanceConfig(precision="32", model_key=key))
    except UserError as e:
        assert "prediction_type is 'sample'" in str(e) and "\n" not in str(e)
    else:
        raise AssertionError("a 'sample' model was accepted")


def test_half_precision_on_a_cpu_runs_in_float32_with_one_warning(tiny_model, caplog):
    with caplog.at_level("WARNING", logger="dreamfusion.guidance.stable_diffusion"):
        g = StableDiffusionGuidance(GuidanceConfig(precision="16", model_key=str(tiny_model)), device="cpu")
    assert g.dtype == torch.float32 and g.unet.dtype == torch.float32
    assert [r.getMessage() for r in caplog.records] == ["precision=16 on a CPU: the guidance model runs in float32"]
    g16 = StableDiffusionGuidance(GuidanceConfig(precision="bf16", model_key=str(tiny_model)), device="cpu")
    assert g16.unet.dtype == torch.bfloat16  # bfloat16 is what a CPU runs in half width: kept


def test_fade_guard_drops_only_the_step_towards_the_background():
    from dreamfusion.guidance.stable_diffusion import fade_guard

    z = torch.zeros(2, 3, 1, 3)  # grey pixels against a white background (1)
    z[:, :, 0, 2] = 1.0  # the third pixel is background already
    bg = torch.ones(2, 3, 1, 3)
    grad = torch.zeros(2, 3, 1, 3)
    grad[:, :, 0, 0] = torch.tensor([-1.0, -2.0, -3.0])  # descent (1, 2, 3): towards white, and sideways
    grad[:, :, 0, 1] = torch.tensor([1.0, 1.0, 0.0])  # descent (-1, -1, 0): away from white
    grad[:, :, 0, 2] = -4.0
    out = fade_guard(z, grad, bg, torch.tensor([True, False]))
    step = -out[0, :, 0, 0]
    assert torch.allclose(step, torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)  # (1, 2, 3) minus its mean along (1, 1, 1)
    assert torch.equal(out[0, :, 0, 1:], grad[0, :, 0, 1:])  # away from the background; at the background
    assert torch.equal(out[1], grad[1])  # a sample not guarded


def test_fade_guard_in_sds_above_its_timestep(tiny_model):
    import pytest

    cfg = GuidanceConfig(precision="32", model_key=str(tiny_model), t_range=[0.6, 0.98], fade_guard_t=0.5)
    g = StableDiffusionGuidance(cfg)
    emb = g.encode_text(["a", ""])
    torch.manual_seed(0)
    z = torch.rand(8, 4, 32, 32) * 2 - 1
    bg = torch.ones_like(z)
    cond, uncond = emb[:1].expand(8, -1, -1), emb[1:].expand(8, -1, -1)
    _, guarded = g.sds(z, cond, uncond, 7.5, generator=torch.Generator().manual_seed(2), background=bg)
    plain = StableDiffusionGuidance(GuidanceConfig(precision="32", model_key=str(tiny_model), t_range=[0.6, 0.98]))
    _, free = plain.sds(z, cond, uncond, 7.5, generator=torch.Generator().manual_seed(2))
    u = (bg - z) / (bg - z).norm(dim=1, keepdim=True)
    towards = (-free["grad"] * u).sum(1)
    assert (towards > 0).float().mean() > 0.2  # unguarded, many pixels are pushed to the background
    assert (-guarded["grad"] * u).sum(1).max() < 1e-5  # guarded (every t > 500), none is
    with pytest.raises(ValueError, match="background"):
        g.sds(z, cond, uncond, 7.5)


def test_fade_guard_above_the_t_range_is_off(tiny_model):
    """DMTet's t range [0.02, 0.5] under a NeRF's guard at 0.5: it never fires, so nothing is asked of the caller."""
    cfg = GuidanceConfig(precision="32", model_key=str(tiny_model), t_range=[0.02, 0.5], fade_guard_t=0.5)
    g = StableDiffusionGuidance(cfg)
    assert g.fade_guard_step is None
    emb = g.encode_text(["a", ""])
    loss, _ = g.sds(torch.zeros(2, 4, 32, 32), emb[:1].expand(2, -1, -1), emb[1:].expand(2, -1, -1), 7.5)
    assert torch.isfinite(loss)


def test_fade_guard_light_axis_drops_only_brightening_along_the_colour():
    """``2 z + 1`` as the guarded point: the direction away from black along each pixel's colour."""
    from dreamfusion.guidance.stable_diffusion import fade_guard

    z = torch.tensor([[0.2, 0.2, 0.2], [0.0, -1.0, -1.0]]).T.reshape(1, 3, 1, 2)  # light grey; red (0.5, 0, 0)
    steps = {  # descent step -> what survives, per pixel
        "brighter": (torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])),
        "towards white": (torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 1.0])),
        "darker": (torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([-1.0, 0.0, 0.0])),
    }
    grey_keeps = {"brighter": torch.zeros(3), "towards white": torch.zeros(3), "darker": torch.full((3,), -1.0)}
    red_keeps = {"brighter": torch.zeros(3), "towards white": torch.tensor([0.0, 1.0, 1.0]),
                 "darker": torch.tensor([-1.0, 0.0, 0.0])}
    for name, (grey_step, red_step) in steps.items():
        grad = -torch.stack([grey_step, red_step], 1).reshape(1, 3, 1, 2)
        out = -fade_guard(z, grad, 2 * z + 1, torch.tensor([True]))
        assert torch.allclose(out[0, :, 0, 0], grey_keeps[name], atol=1e-6), name
        assert torch.allclose(out[0, :, 0, 1], red_keeps[name], atol=1e-6), name


def test_fade_guard_light_axis_in_sds(tmp_path):
    import pytest

    from dreamfusion.errors import ConfigError
    from dreamfusion.guidance.tiny import build_tiny_model

    pixels = build_tiny_model(tmp_path / "px", pixel_space=True)
    cfg = GuidanceConfig(precision="32", model_key=str(pixels), t_range=[0.6, 0.98], fade_guard_t=0.5,
                         fade_guard_axis="light")
    g = StableDiffusionGuidance(cfg)
    emb = g.encode_text(["a", ""])
    torch.manual_seed(0)
    c = g.latent_channels
    z = torch.rand(8, c, 32, 32) * 2 - 1
    cond, uncond = emb[:1].expand(8, -1, -1), emb[1:].expand(8, -1, -1)
    _, guarded = g.sds(z, cond, uncond, 7.5, generator=torch.Generator().manual_seed(2))  # no background needed
    u = (z + 1) / (z + 1).norm(dim=1, keepdim=True)
    assert (-guarded["grad"] * u).sum(1).max() < 1e-5  # nothing brightens along its colour
    _, free = StableDiffusionGuidance(GuidanceConfig(precision="32", model_key=str(pixels), t_range=[0.6, 0.98])).sds(
        z, cond, uncond, 7.5, generator=torch.Generator().manual_seed(2))
    assert ((-free["grad"] * u).sum(1) > 0).float().mean() > 0.2  # unguarded, many pixels do
    latents = GuidanceConfig(precision="32", model_key=str(build_tiny_model(tmp_path / "lat")), t_range=[0.6, 0.98],
                             fade_guard_t=0.5, fade_guard_axis="light")
    with pytest.raises(ConfigError, match="scores latents"):
        StableDiffusionGuidance(latents)
