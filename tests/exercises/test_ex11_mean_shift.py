"""Exercise 11 (mean_shift): PDAE Eq. 5-7, the coefficient c_t with eps_hat = eps_theta - c_t G, and its sign."""
import torch

import pdae
from diffusion import Diffusion

EXERCISE = "mean_shift"


def closed_form(ab):
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    beta = 1 - ab / ab_prev
    sigma = beta * (1 - ab_prev) / (1 - ab)
    return (1 - beta).sqrt() * (1 - ab).sqrt() / beta * sigma


def test_mean_shift_coef_closed_form():
    d = Diffusion(1000)
    c = pdae.mean_shift_coef(d)
    assert c.dtype == torch.float64 and c.shape == (1000,), f"c_t must be float64 of shape (1000,), got {c.dtype} {tuple(c.shape)}"
    want = closed_form(d.alphas_cumprod)
    assert torch.allclose(c, want, rtol=1e-9, atol=1e-12), (
        f"c_t = sqrt(alpha_t) sqrt(1 - alphabar_t) / beta_t * Sigma_t; at t = 1, 500, 999 expected "
        f"{[round(float(want[i]), 6) for i in (1, 500, 999)]}, got {[round(float(c[i]), 6) for i in (1, 500, 999)]}")
    assert c[0] == 0 and bool((c[1:] > 0).all()), "c_0 = 0 (Sigma_0 = 0) and c_t > 0 after: callers subtract c_t G"


def test_mean_shift_coef_moves_the_mean_by_plus_sigma_G():
    """The sign, checked through the sampler's own arithmetic: the mean that DDPM takes from
    eps_theta - c_t G is mu_theta + Sigma_t G."""
    d = Diffusion(1000)
    c = pdae.mean_shift_coef(d)
    g = torch.Generator().manual_seed(0)
    x_t, eps, G = (torch.randn(3, 3, 4, 4, generator=g) for _ in range(3))
    for t0 in (1, 100, 500, 999):
        t = torch.full((3,), t0)
        mean = lambda e: d.posterior_mean(d.predict_x0(x_t, t, e), x_t, t)  # DDPM's mean from a noise prediction
        shifted = mean(eps - float(c[t0]) * G)
        want = mean(eps) + float(d.posterior_variance(t)[0]) * G
        assert torch.allclose(shifted, want, rtol=1e-3, atol=1e-5), (
            f"t = {t0}: with eps_hat = eps - c_t G the DDPM mean must be mu + Sigma_t G (PDAE Eq. 5); "
            f"it is off by {float((shifted - want).abs().max()):.2e}. A wrong sign gives mu - Sigma_t G.")


def test_mean_shift_coef_on_a_shorter_chain():
    """A 10-step DDPM walks its own chain, with its own beta and Sigma: c_t is computed on that chain."""
    d = Diffusion(1000)
    ts = d.respace(10, rule="even")
    c = pdae.mean_shift_coef(d, 10)
    assert torch.equal(c.nonzero().flatten(), ts[1:]), "c is non-zero exactly at the chain's timesteps after the first"
    assert torch.allclose(c[ts], closed_form(d.alphas_cumprod[ts]), rtol=1e-9), \
        "on a respaced chain use its own alphabar sequence: alpha = ab[i] / ab[i-1]"


def test_mean_shift_ddim_coef_is_eq6():
    d = Diffusion(1000, "cosine")
    got = pdae.ddim_shift_coef(d)
    assert got.shape == (1000,) and torch.allclose(got, (1 - d.alphas_cumprod).sqrt()), \
        "the DDIM coefficient of G is sqrt(1 - alphabar_t) (PDAE Eq. 6), for every t"
