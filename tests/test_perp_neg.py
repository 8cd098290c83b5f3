"""Perp-Neg against its formula: the perpendicular part, the combined noise estimate, the
azimuth-dependent weights of the paper's 3D recipe, and the guidance's SDS gradient with it."""

import math

import pytest
import torch

from dreamfusion.guidance import perp_neg


def test_perpendicular_part_is_orthogonal_and_leaves_the_rest():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    p = perp_neg.perpendicular(x, y)
    for i in range(3):
        assert abs(float((p[i] * y[i]).sum())) < 1e-4 * float(x[i].norm() * y[i].norm())
        coef = float((x[i] * y[i]).sum() / (y[i] * y[i]).sum())  # x = p + coef y, per sample
        assert torch.allclose(x[i], p[i] + coef * y[i], atol=1e-5)
    assert torch.equal(perp_neg.perpendicular(x, torch.zeros_like(y)), x)  # nothing to remove


def test_combined_estimate_matches_the_formula_by_hand():
    g = torch.Generator().manual_seed(1)
    e_u, e_p = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    e_n = torch.randn(2, 2, 4, 3, 3, generator=g)  # K = 2 negatives
    w = torch.tensor([[-0.5, -2.0], [0.0, -1.0]])
    got = perp_neg.combine(e_u, e_p, e_n, w, 7.5)
    for b in range(2):
        d_p = (e_p[b] - e_u[b]).flatten().double()
        total = d_p.clone()
        for k in range(2):
            d_k = (e_n[k, b] - e_u[b]).flatten().double()
            total += float(w[b, k]) * (d_k - d_k.dot(d_p) / d_p.dot(d_p) * d_p)
        want = e_u[b].flatten().double() + 7.5 * total
        assert torch.allclose(got[b].flatten().double(), want, atol=1e-5)
    # Zero weights: classifier-free guidance exactly.
    cfg = perp_neg.combine(e_u, e_p, e_n, torch.zeros(2, 2), 7.5)
    assert torch.allclose(cfg, e_u + 7.5 * (e_p - e_u), atol=1e-6)


@pytest.mark.parametrize(
    ("azimuth", "r", "pos", "negs", "weights"),
    [
        (0.0, 1.0, ("front", "side"), ("front", "side"), (0.0, -2.0)),  # front: only "side" pushed away
        (45.0, 0.5, ("front", "side"), ("front", "side"), (-2 * math.exp(-0.5 * 2), -2 * math.exp(-0.5 * 10))),
        (-80.0, 1 - 80 / 90, ("front", "side"), ("front", "side"), (-2 * math.exp(-(1 - 80 / 90) * 2), 0.0)),
        (135.0, 0.5, ("side", "back"), ("side", "front"), (-2 * math.exp(-0.5 * 10) / 2, -2.0)),
        (180.0, 0.0, ("side", "back"), ("side", "front"), (-2 * math.exp(0.0) / 2, -2.0)),
    ],
)
def test_view_weights_follow_the_papers_recipe(azimuth, r, pos, negs, weights):
    emb = {v: torch.full((1, 2, 3), float(i)) for i, v in enumerate(("front", "side", "back"))}
    p, n, w = perp_neg.view_embeddings(azimuth, emb, -2.0, 2.0, 10.0)
    assert torch.allclose(p, r * emb[pos[0]] + (1 - r) * emb[pos[1]])
    assert torch.equal(n, torch.cat([emb[negs[0]], emb[negs[1]]]))
    assert torch.allclose(w, torch.tensor(weights, dtype=torch.float32), atol=1e-6)


def test_guidance_sds_with_negatives_equals_unet_calls_by_hand(tiny_model):
    from dreamfusion.guidance.stable_diffusion import GuidanceConfig, StableDiffusionGuidance

    g = StableDiffusionGuidance(GuidanceConfig(precision="32", model_key=str(tiny_model)))
    emb = g.encode_text(["a red cube, side view", "a red cube, front view", "a red cube, back view", ""])
    cond, negs, uncond = emb[:1], emb[1:3][None], emb[3:]
    w = torch.tensor([[-1.2, -2.0]])
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(3), requires_grad=True)
    loss, info = g.sds(z, cond, uncond, 20.0, generator=torch.Generator().manual_seed(5), negatives=negs, weights=w)
    loss.backward()
    t, noise = info["t"], info["noise"]
    abar = g.scheduler.alphas_cumprod[t].view(1, 1, 1, 1)
    x_t = abar.sqrt() * z.detach() + (1 - abar).sqrt() * noise
    with torch.no_grad():
        e = [g.unet(x_t, t, encoder_hidden_states=c).sample for c in (uncond, cond, negs[:, 0], negs[:, 1])]
    d_p = e[1] - e[0]
    guided = d_p.clone()
    for k, e_k in enumerate(e[2:]):
        d_k = e_k - e[0]
        guided += w[0, k] * (d_k - (d_k * d_p).sum() / (d_p * d_p).sum() * d_p)
    want = (1 - abar) * (e[0] + 20.0 * guided - noise)
    assert (z.grad - want).abs().max() < 1e-4 * want.abs().max()


def test_training_with_perp_neg_sends_each_camera_its_own_texts(tmp_path, tiny_overrides, monkeypatch):
    from dreamfusion.config import compose
    from dreamfusion.train.trainer import Trainer

    t = Trainer(compose(tiny_overrides + ["model.perp_neg=true", "trainer.max_steps=3",
                                          "trainer.val_check_interval=0", "model.data.train_dataset.batch_size=2"]),
                tmp_path, progress=False)
    calls = []
    real = t.guidance.sds

    def spy(z, cond, uncond, scale, generator=None, negatives=None, weights=None, **kw):
        calls.append((cond.shape, negatives.shape, weights))
        return real(z, cond, uncond, scale, generator, negatives, weights, **kw)

    monkeypatch.setattr(t.guidance, "sds", spy)
    metrics = t.fit()
    assert len(calls) == 3 and metrics["nonfinite_steps"] == 0
    for cond, negs, w in calls:
        assert cond[0] == 2 and negs[:2] == (2, 2) and w.shape == (2, 2) and bool((w <= 0).all())


def test_a_positive_perp_neg_weight_is_refused():
    from dreamfusion.config import compose
    from dreamfusion.errors import ConfigError

    with pytest.raises(ConfigError, match="perp_neg_weight=2.0: must be a finite number <= 0"):
        compose(["model.perp_neg_weight=2"])
