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
