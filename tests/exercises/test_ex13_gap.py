"""Exercise 13 (gap): PDAE §3.1 and §4.2, the posterior mean gap, measured where the answer is known.

The data sets here are one or two images, whose perfect (Bayes) denoisers we can write down: no trained model.
"""
import math

import torch

import pdae
from diffusion import Diffusion
from exercise_helpers import exact_eps

EXERCISE = "gap"


def two_images(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 4, 4, generator=g) * 1.6 - 0.8  # the whole data set: x_a, x_b, equally likely


def bayes_eps(d, data):
    """The best possible unconditional noise predictor for a data set of a few images: E[eps | x_t]."""
    def eps(x, t):
        ab = d.alphas_cumprod[t.cpu()].view(-1, 1, 1, 1)
        xd = x.double()
        diff = xd[:, None] - ab.sqrt()[:, None] * data.double()[None]           # (B, K, C, H, W)
        logw = -diff.flatten(2).square().sum(2) / (2 * (1 - ab.flatten()[:, None]))  # (B, K)
        w = torch.softmax(logw, dim=1)
        mean_x0 = (w[:, :, None, None, None] * data.double()[None]).sum(1)       # E[x0 | x_t]
        return ((xd - ab.sqrt() * mean_x0) / (1 - ab).sqrt()).float()
    return eps


class PerfectPDAE:
    """A PDAE whose z is the image itself and whose G fills the gap exactly: eps - c_t G = the noise of x_t given x0."""

    def __init__(self, d, data):
        self.d, self.eps = d, bayes_eps(d, data)
        self.c = pdae.mean_shift_coef(d)

    def encode(self, x0):
        return x0

    def predict(self, x_t, t, z):
        eps = self.eps(x_t, t)
        c = self.c[t.cpu()].float().view(-1, 1, 1, 1)
        return eps, (eps - exact_eps(self.d, z)(x_t, t)) / c


def test_gap_posterior_mean_closed_form():
    d = Diffusion(1000)
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([1, 300, 999])
    ab, ab_prev, b = d.alphas_cumprod[t], d.alphas_cumprod[t - 1], d.betas[t]
    c0 = (ab_prev.sqrt() * b / (1 - ab)).float().view(-1, 1, 1, 1)
    ct = ((1 - b).sqrt() * (1 - ab_prev) / (1 - ab)).float().view(-1, 1, 1, 1)
    got = d.posterior_mean(x0, xt, t)
    assert torch.allclose(got, c0 * x0 + ct * xt, atol=1e-5), \
        "mu~ = sqrt(ab_{t-1}) beta_t / (1 - ab_t) x0 + sqrt(alpha_t) (1 - ab_{t-1}) / (1 - ab_t) x_t"
    got0 = d.posterior_mean(x0, xt, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(got0, x0, atol=1e-6), "at t = 0, alphabar_{-1} = 1 and the posterior mean is x0 itself"


def test_gap_posterior_mean_is_the_mean_of_x_prev_given_x_t_and_x0():
    """Monte Carlo: draw x_{t-1} ~ q(. | x0), then x_t ~ q(. | x_{t-1}); the residual x_{t-1} - mu~ has mean 0,
    no correlation with x_t, and variance Sigma_t."""
    d = Diffusion(1000)
    g = torch.Generator().manual_seed(2)
    n, t = 40000, 400
    x0 = torch.full((n, 1), 0.6)
    x_prev = d.q_sample(x0, torch.full((n,), t - 1), torch.randn(n, 1, generator=g))
    x_t = math.sqrt(1 - float(d.betas[t])) * x_prev + math.sqrt(float(d.betas[t])) * torch.randn(n, 1, generator=g)
    r = (x_prev - d.posterior_mean(x0, x_t, torch.full((n,), t))).flatten()
    corr = float(torch.corrcoef(torch.stack([r, x_t.flatten()]))[0, 1])
    var = float(d.posterior_variance(torch.tensor([t])))
    assert abs(float(r.mean())) < 4 * math.sqrt(var / n) and abs(corr) < 0.03, \
        f"x_(t-1) - mu~ should have mean 0 and no correlation with x_t; got mean {float(r.mean()):.2e}, correlation {corr:.3f}"
    assert abs(float(r.var()) / var - 1) < 0.05, f"the residual variance should be Sigma_t = {var:.3e}, got {float(r.var()):.3e}"


def test_gap_is_zero_when_x_t_tells_everything():
    """One image in the data set: the perfect DPM knows x0 from any x_t, so there is no gap at any t."""
    d = Diffusion(1000)
    x0 = two_images()[:1].expand(3, -1, -1, -1)
    ts = [0, 1, 300, 999]
    out = pdae.posterior_mean_gap(None, exact_eps(d, x0), d, x0, ts, generator=torch.Generator().manual_seed(3))
    assert out["t"] == ts and len(out["pretrained"]) == len(ts) and out["pdae"] is None, \
        'return {"t": ts, "pretrained": [one float per t], "pdae": None} when pdae is None'
    assert max(out["pretrained"]) < 1e-9, f"the exact predictor of a one-image data set leaves no gap, got {out['pretrained']}"


def test_gap_opens_in_the_middle_of_the_chain():
    """Two images: early on x_t still shows which one it is, at the end the posterior mean hardly uses x0;
    in between x_t is ambiguous and the best DPM without z misses the true mean (the 'critical stage')."""
    d = Diffusion(1000)
    data = two_images()
    x0 = data[:1].expand(64, -1, -1, -1)
    ts = [1, 200, 500, 850, 999]
    gap = pdae.posterior_mean_gap(None, bayes_eps(d, data), d, x0, ts, generator=torch.Generator().manual_seed(4))["pretrained"]
    peak = max(range(len(ts)), key=lambda i: gap[i])
    assert gap[0] < 1e-9 and 0 < peak < len(ts) - 1 and gap[peak] > 100 * max(gap[0], gap[-1]), \
        f"the gap should be ~0 at t = 1, peak inside and fall again at t = 999; got {dict(zip(ts, [f'{v:.1e}' for v in gap]))}"


def test_gap_is_filled_by_a_perfect_shift():
    d = Diffusion(1000)
    data = two_images(5)
    x0 = data[:1].expand(16, -1, -1, -1)
    ts = [1, 500, 700, 850]
    model = PerfectPDAE(d, data)
    out = pdae.posterior_mean_gap(model, model.eps, d, x0, ts, generator=torch.Generator().manual_seed(6))
    assert out["pdae"] is not None and len(out["pdae"]) == len(ts)
    worst = max(out["pretrained"])
    assert worst > 1e-8, f"(sanity) the pre-trained DPM leaves a gap: {out['pretrained']}"
    assert max(out["pdae"]) < 1e-3 * worst, (
        f"with eps_hat = eps_theta - c_t G and a G that knows x0, PDAE's mean mu_theta + Sigma_t G is the true one: "
        f"the gap should vanish, got {out['pdae']} (pre-trained: {out['pretrained']})")


def test_gap_compares_both_on_the_same_x_t():
    d = Diffusion(1000)
    data = two_images(7)

    class NoShift(PerfectPDAE):  # G = 0: PDAE is the pre-trained DPM, so both curves must agree exactly
        def predict(self, x_t, t, z):
            eps = self.eps(x_t, t)
            return eps, torch.zeros_like(eps)

    model = NoShift(d, data)
    out = pdae.posterior_mean_gap(model, model.eps, d, data[:1].expand(8, -1, -1, -1), [300, 700],
                                  generator=torch.Generator().manual_seed(8))
    assert out["pdae"] == out["pretrained"], \
        "with G = 0 the two curves must be identical: draw the noise once per t and use the same x_t for both"
