"""Volume rendering against closed forms."""

import math

import pytest
import torch

from dreamfusion.config import compose
from dreamfusion.renderer.raymarching import VolumeRenderer, aabb_intersect


class ConstantMedium(torch.nn.Module):
    """Density ``sigma`` everywhere in the box, albedo constant."""

    def __init__(self, sigma: float, albedo: float = 0.25):
        super().__init__()
        self.sigma, self.value = sigma, albedo

    def encode(self, x):
        return x

    def sigma_from(self, x, enc):
        return torch.full((x.shape[0],), self.sigma)

    def albedo_from(self, enc):
        return torch.full((enc.shape[0], 3), self.value)

    def density(self, x):
        return self.sigma_from(x, x)

    def normal(self, x, sigma=None):
        return torch.nn.functional.normalize(x, dim=-1)


def random_rays(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.2
    target = (torch.rand(n, 3, generator=g) * 2 - 1) * 0.9
    return o, torch.nn.functional.normalize(target - o, dim=-1)


@pytest.mark.parametrize("max_steps, dt_gamma, perturb", [(1024, 0.0, False), (64, 0.0, True), (128, 0.05, False)])
@pytest.mark.parametrize("sigma", [0.3, 2.0])
def test_constant_medium_matches_closed_form_transmittance(max_steps, dt_gamma, perturb, sigma):
    cfg = compose(
        [
            f"model.renderer.max_steps={max_steps}",
            f"model.renderer.dt_gamma={dt_gamma}",
            "model.renderer.grid_resolution=8",
        ]
    ).model.renderer
    renderer = VolumeRenderer(cfg)
    o, d = random_rays(256)
    bg = torch.tensor([0.0, 1.0, 0.0]).expand(256, 3)
    out = renderer(ConstantMedium(sigma), lambda a, n, i: a, o, d, bg, perturb=perturb, need_normals=False)
    near, far = aabb_intersect(o, d, 1.0)
    length = (far - near).clamp(min=0)
    transmittance = torch.exp(-sigma * length)
    assert (1 - out["opacity"] - transmittance).abs().max() < 1e-4
    want = 0.25 * (1 - transmittance)[:, None] + bg * transmittance[:, None]
    # Colour skips samples of weight < 1e-4: a bias of at most their summed weight (small here).
    assert (out["image"] - want).abs().max() < 5e-3


def test_ray_box_intersection():
    o = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 3.0], [0.5, 0.5, 0.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    near, far = aabb_intersect(o, d, 1.0)
    assert torch.allclose(near[0], torch.tensor(2.0)) and torch.allclose(far[0], torch.tensor(4.0))
    assert far[1] <= near[1]  # misses
    assert near[2] == 0 and torch.allclose(far[2], torch.tensor(1.0))  # starts inside


def test_occupancy_grid_update_rule():
    cfg = compose(["model.renderer.grid_resolution=4", "model.renderer.density_thresh=10"]).model.renderer
    r = VolumeRenderer(cfg)
    assert r.occupancy().all()  # nothing known yet: march everywhere
    r.update_grid(lambda x: torch.where(x[:, 0] > 0, 8.0, 0.0))
    assert math.isclose(float(r.mean_density), 4.0)
    occ = r.occupancy()
    assert occ[2:].all() and not occ[:2].any()  # cells with x > 0 exceed min(mean, 10)
    r.update_grid(lambda x: torch.zeros(x.shape[0]))
    assert torch.allclose(r.density_grid[2:], torch.tensor(8.0 * 0.95))  # max(0.95 old, new)
    assert math.isclose(float(r.mean_density), 3.8, rel_tol=1e-6)


def test_contrast_is_what_the_albedo_adds_over_the_background():
    """A dark translucent medium and an opaque one of a colour near the white background can make
    the same picture; their ``contrast`` (sum w |albedo - bg|) is then the same, their opacity not."""
    cfg = compose(["model.renderer.max_steps=512", "model.renderer.grid_resolution=8"]).model.renderer
    renderer = VolumeRenderer(cfg)
    o, d = random_rays(256)
    near, far = aabb_intersect(o, d, 1.0)
    hit = far - near > 0.5
    o, d, length = o[hit], d[hit], (far - near)[hit]
    bg = torch.ones(len(o), 3)
    opaque = renderer(ConstantMedium(60.0, 0.8), lambda a, n, i: a, o, d, bg, need_normals=False)
    # alpha (1 - c) = 0.2 with alpha = 1 - exp(-sigma L): a translucent medium of darker albedo
    sigma = 0.4
    alpha = 1 - torch.exp(-sigma * length)
    c = 1 - 0.2 / alpha
    ok = c > 0
    shells = [renderer(ConstantMedium(sigma, float(ci)), lambda a, n, i: a, o[i : i + 1], d[i : i + 1], bg[:1],
                       need_normals=False) for i, ci in zip(ok.nonzero()[:, 0].tolist(), c[ok].tolist())]
    image = torch.cat([s["image"] for s in shells])
    contrast = torch.cat([s["contrast"] for s in shells])
    opacity = torch.cat([s["opacity"] for s in shells])
    assert (opaque["image"][ok] - image).abs().max() < 5e-3  # the same picture
    assert (opaque["contrast"][ok] - 0.2).abs().max() < 5e-3  # 1 * |0.8 - 1|
    assert (contrast - 0.2).abs().max() < 5e-3  # alpha * (1 - c) = 0.2
    assert (opaque["opacity"][ok] ** 2).mean() > 2 * (opacity**2).mean()  # what the pixel form charges


class RadialNormals(ConstantMedium):
    """A dense medium whose normals point away from the centre (a sphere's), or are independent
    random unit vectors at every point (``noise``); finite-difference step ``normal_epsilon``."""

    normal_epsilon = 0.01

    def __init__(self, noise: bool = False):
        super().__init__(sigma=200.0)
        self.noise = noise

    def normal(self, x, sigma=None):
        return torch.nn.functional.normalize(torch.randn_like(x) if self.noise else x, dim=-1)


def _smoothness(field):
    cfg = compose(["model.renderer.max_steps=1024", "model.renderer.grid_resolution=8"]).model.renderer
    o, d = random_rays(4096)
    torch.manual_seed(0)
    out = VolumeRenderer(cfg)(field, lambda a, n, i: a, o, d, torch.ones(4096, 3), smooth_normals=True)
    hit = out["opacity"] > 0.99
    return out, hit


def test_normal_smoothness_of_a_sphere_field_is_its_curvature_over_the_offset():
    # n = x / |x|: an offset e ~ N(0, eps^2 I) turns n by |e_tangential| / |x|, so
    # E |n(x) - n(x + e)|^2 / 4 = 2 eps^2 / (4 |x|^2) to first order, |x| that of the visible samples:
    # the ray's entry into the box, where this dense medium is opaque within a step
    out, hit = _smoothness(RadialNormals())
    assert hit.sum() > 1000
    o, d = random_rays(4096)
    near, _ = aabb_intersect(o, d, 1.0)
    r2 = (o + near[:, None] * d).pow(2).sum(-1)
    want = 2 * RadialNormals.normal_epsilon**2 / (4 * r2[hit])
    assert float(out["normal_smoothness"][hit].mean() / want.mean()) == pytest.approx(1.0, abs=0.1)


def test_normal_smoothness_of_independent_random_normals_is_one_half():
    # two independent unit vectors: E |a - b|^2 / 4 = (2 - 2 E[a.b]) / 4 = 1/2
    out, hit = _smoothness(RadialNormals(noise=True))
    assert float(out["normal_smoothness"][hit].mean()) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("activation", ["exp", "softplus"])
def test_density_bias_shifts_the_density_before_its_activation(activation):
    """With the MLP's output zeroed, the density is the activation of blob + bias, analytically."""
    from dreamfusion.export.synthetic import SMALL_NERF, blob_scene

    x = torch.tensor([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.9, 0.3, -0.2]])
    d = x.norm(dim=-1)
    base = SMALL_NERF + [f"model.nerf.density_activation={activation}", "model.nerf.blob_radius=0.3",
                         "model.nerf.blob_density=5.0"]
    for bias in (0.0, -3.0):
        scene, _ = blob_scene(base + [f"model.nerf.density_bias={bias}"])
        with torch.no_grad():
            sigma = scene.nerf.density(x)
        if activation == "exp":
            want = torch.exp(5.0 * torch.exp(-d**2 / (2 * 0.3**2)) + bias)
        else:
            want = torch.nn.functional.softplus(5.0 * (1 - d / 0.3) + bias)
        assert torch.allclose(sigma, want, rtol=1e-5), (activation, bias)
    far = blob_scene(base + ["model.nerf.density_bias=-3"])[0].nerf.density(x[2:]).item()
    assert far < (0.06 if activation == "exp" else 0.001)  # empty space starts (nearly) empty
