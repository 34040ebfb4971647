"""Exercise 3 (ddim_step): Diff-AE Eq. 5 (predict x0), Eq. 1 (a DDIM step down) and Eq. 8 (the same step up)."""
import math

import torch

from diffusion import Diffusion
from exercise_helpers import exact_eps, gaussian_eps, rel

EXERCISE = "ddim_step"


def smooth_eps(x, t):
    """A made-up noise predictor: not exact for anything, but smooth in x and t."""
    return 0.5 * torch.tanh(x) + 0.1 * torch.cos(t.float() / 200)[:, None, None, None]


def test_ddim_step_predict_x0_inverts_the_forward_process():
    d = Diffusion(1000)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1, torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500])
    got = d.predict_x0(d.q_sample(x0, t, eps), t, eps)
    assert got.shape == x0.shape and got.dtype == torch.float32, f"predict_x0 must return float32 {tuple(x0.shape)}"
    err = (got - x0).abs().flatten(1).max(1).values.tolist()
    assert max(err) < 1e-4, f"predict_x0(q_sample(x0, t, eps), t, eps) must give back x0; max error per t = {t.tolist()}: {err}"


def test_ddim_step_closed_form_without_clipping():
    d = Diffusion(1000)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    for t, ab_to in [(500, d.alphas_cumprod[400]), (10, 1.0), (200, d.alphas_cumprod[300]), (999, 0.0)]:
        tt = torch.full((2,), t)
        eps = smooth_eps(x, tt).double()
        ab, ab_to64 = d.alphas_cumprod[t], torch.as_tensor(ab_to, dtype=torch.float64)
        x0 = (x.double() - (1 - ab).sqrt() * eps) / ab.sqrt()
        want = ab_to64.sqrt() * x0 + (1 - ab_to64).sqrt() * eps
        x_next, x0_got = d.ddim_step(smooth_eps, x, t, ab_to, clip=False)
        assert torch.allclose(x0_got.double(), x0, atol=1e-4), f"t = {t}: the second output must be x0 of Eq. 5"
        assert torch.allclose(x_next.double(), want, atol=1e-4), (
            f"t = {t} -> alphabar {float(ab_to64):.4f}: x_next must be sqrt(ab_to) x0 + sqrt(1 - ab_to) eps "
            f"(max error {float((x_next.double() - want).abs().max()):.2e})")


def test_ddim_step_clips_x0_and_keeps_eps_consistent():
    d = Diffusion(1000)
    x = 3 * torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))  # far outside [-1, 1]
    t, ab_to = 100, d.alphas_cumprod[50]
    x_next, x0 = d.ddim_step(smooth_eps, x, t, ab_to, clip=True)
    assert x0.min() >= -1 and x0.max() <= 1, "with clip=True the returned x0 must lie in [-1, 1]"
    tt = torch.full((2,), t)
    x0_want = d.predict_x0(x, tt, smooth_eps(x, tt)).clamp(-1, 1)
    eps_want = d.eps_from_x0(x, tt, x0_want)
    want = math.sqrt(float(ab_to)) * x0_want + math.sqrt(1 - float(ab_to)) * eps_want
    assert torch.allclose(x0, x0_want, atol=1e-5), "x0 must be predict_x0(...) clamped to [-1, 1]"
    assert torch.allclose(x_next, want, atol=1e-4), \
        "after clamping x0, recompute eps = self.eps_from_x0(x, tt, x0) and use both in the step"


def test_ddim_step_slides_along_the_noise_of_x():
    """With the perfect predictor, a DDIM move keeps eps fixed: it goes from q_sample(x0, t, eps) to q_sample(x0, s, eps)."""
    d = Diffusion(1000)
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.rand(2, 3, 4, 4, generator=g) * 1.6 - 0.8, torch.randn(2, 3, 4, 4, generator=g)
    f = exact_eps(d, x0)
    for t, s in [(500, 300), (300, 500), (999, 0), (10, 900)]:
        x_t = d.q_sample(x0, torch.full((2,), t), eps)
        x_s, _ = d.ddim_step(f, x_t, t, d.alphas_cumprod[s], clip=False)
        want = d.q_sample(x0, torch.full((2,), s), eps)
        assert rel(x_s, want) < 1e-4, \
            f"from t = {t} to t = {s} with the perfect predictor you should land on q_sample(x0, {s}, eps)"


def test_ddim_step_makes_sampling_invertible():
    """eta = 0: decoding is a function of x_T, and encoding (Eq. 8) inverts it exactly for the perfect predictor."""
    d = Diffusion(1000)
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 1.8 - 0.9
    f = exact_eps(d, x0)
    for steps in (10, 50):
        x_T = d.ddim_invert(f, x0, steps)
        back = d.ddim_sample(f, x_T, steps)
        assert rel(back, x0) < 1e-5, f"{steps} steps: ddim_sample(ddim_invert(x0)) should be x0, relative error {rel(back, x0):.2e}"
    x_T = torch.randn(2, 3, 8, 8)
    assert torch.equal(d.ddim_sample(smooth_eps, x_T, 10), d.ddim_sample(smooth_eps, x_T, 10)), \
        "a DDIM decode must be deterministic: no fresh noise inside the step"


def test_ddim_step_inversion_error_shrinks_with_more_steps():
    """For a predictor that is not exact, encode-then-decode is near-exact; the error falls as T grows (Diff-AE Table 2)."""
    d = Diffusion(1000)
    x0 = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1
    f = gaussian_eps(d, 0.3, 0.5)
    errs = [rel(d.ddim_sample(f, d.ddim_invert(f, x0, s, clip=False), s, clip=False), x0) for s in (10, 50, 200)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.05, \
        f"relative reconstruction error at 10, 50, 200 steps should fall and end below 0.05, got {errs}"
