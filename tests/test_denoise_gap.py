"""The ideal denoiser of dreamfusion.prior.denoise_gap against the Gaussian likelihood written out, and
the shipped prior measured against it."""

import math

import pytest
import torch

from dreamfusion.prior import denoise_gap


def test_posterior_mean_is_bayes_over_the_bank():
    g = torch.Generator().manual_seed(0)
    first = torch.rand(3, 1, 3, 4, 4, generator=g) * 2 - 1
    bank = torch.cat([first, first + 0.5 * torch.randn(3, 1, 3, 4, 4, generator=g)], 1)  # three rows of two
    abar = 0.05
    x_t = math.sqrt(abar) * bank[:, 0] + math.sqrt(1 - abar) * torch.randn(3, 3, 4, 4, generator=g)
    got = denoise_gap.posterior_mean(x_t, bank, abar)
    normal = torch.distributions.Normal(math.sqrt(abar) * bank.double(), math.sqrt(1 - abar))
    logp = normal.log_prob(x_t[:, None].double()).flatten(2).sum(-1)  # (3, 2)
    w = torch.exp(logp - logp.logsumexp(1, keepdim=True))
    want = w[:, 0, None, None, None] * bank[:, 0].double() + w[:, 1, None, None, None] * bank[:, 1].double()
    assert torch.allclose(got.double(), want, atol=1e-6)
    assert ((w[:, 0] > 0.05) & (w[:, 0] < 0.95)).any()  # not a trivial case
    # nearly noiseless: the image the noise was added to
    clean = math.sqrt(0.9999) * bank[:, 1] + math.sqrt(1e-4) * torch.randn(3, 3, 4, 4, generator=g)
    assert torch.allclose(denoise_gap.posterior_mean(clean, bank, 0.9999), bank[:, 1], atol=1e-5)


def test_the_shipped_prior_is_measured_against_the_ideal():
    from dreamfusion.prior import model as M

    torch.set_num_threads(1)
    rows = denoise_gap.gap(M.load(), "red", "cube", timesteps=(300,), n=2, draws=1)
    (t, ideal, prior), = rows
    assert t == 300 and 0 <= ideal < prior < 0.1


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        denoise_gap.main(["--colours", "orange"])
    assert "unknown colour or shape" in capsys.readouterr().err
    assert denoise_gap.main(["--prior", "/nonexistent/prior", "--t", "300"]) == 2
    assert capsys.readouterr().err.startswith("error: cannot load a prior")
