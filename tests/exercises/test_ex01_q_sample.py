"""Exercise 1 (q_sample): the forward process q(x_t | x0) in closed form (Diff-AE Eq. 2; PDAE Eq. 1)."""
import math

import torch

from diffusion import Diffusion

EXERCISE = "q_sample"


def expected(d, x0, t, noise):
    ab = d.alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1)))
    return (ab.sqrt() * x0.double() + (1 - ab).sqrt() * noise.double()).float()


def test_q_sample_closed_form():
    d = Diffusion(1000)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    x_t = d.q_sample(x0, t, noise)
    assert x_t.shape == x0.shape and x_t.dtype == torch.float32, \
        f"x_t must have the shape {tuple(x0.shape)} and dtype float32 of x0, got {tuple(x_t.shape)} {x_t.dtype}"
    want = expected(d, x0, t, noise)
    err = (x_t - want).abs().flatten(1).max(1).values
    assert torch.all(err < 1e-5), (
        f"x_t should be sqrt(alphabar_t) x0 + sqrt(1 - alphabar_t) noise; max error per sample at t = {t.tolist()}: "
        f"{[f'{e:.2e}' for e in err.tolist()]} (alphabar_t = {[round(float(a), 5) for a in d.alphas_cumprod[t]]})")


def test_q_sample_uses_each_samples_own_t():
    d = Diffusion(1000)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 3, 4, 4, generator=g), torch.randn(3, 3, 4, 4, generator=g)
    t = torch.tensor([5, 400, 950])
    together = d.q_sample(x0, t, noise)
    for i in range(3):
        alone = d.q_sample(x0[i:i + 1], t[i:i + 1], noise[i:i + 1])
        assert torch.allclose(together[i:i + 1], alone, atol=1e-6), \
            f"sample {i} (t = {int(t[i])}) comes out differently in a batch: use alphabar of each sample's own t"


def test_q_sample_works_for_latent_codes():
    """The latent DDIM (Exercise 8) diffuses codes of shape (B, D) with the same function."""
    d = Diffusion(1000, "const")
    g = torch.Generator().manual_seed(2)
    z0, noise = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    t = torch.tensor([0, 1, 100, 500, 999])
    z_t = d.q_sample(z0, t, noise)
    assert z_t.shape == (5, 16), f"codes of shape (5, 16) must give z_t of shape (5, 16), got {tuple(z_t.shape)}"
    assert torch.allclose(z_t, expected(d, z0, t, noise), atol=1e-5), "wrong values for 2-D inputs (B, D)"


def test_q_sample_ends():
    """t = 0 is almost the data; t = T - 1 is almost pure noise: that is why sampling starts from N(0, I)."""
    d = Diffusion(1000)
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, torch.randn(2, 3, 8, 8, generator=g)
    first = d.q_sample(x0, torch.tensor([0, 0]), noise)
    last = d.q_sample(x0, torch.tensor([999, 999]), noise)
    assert (first - x0).abs().max() < 0.05, "at t = 0, x_t should be x0 plus a tiny bit (1%) of noise"
    assert (last - noise).abs().max() < 0.01, "at t = T - 1, x_t should be the noise (alphabar_T ~ 4e-5)"


def test_q_sample_is_the_t_step_markov_chain():
    """The closed form has the law of t small steps x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) eps_s (PDAE Eq. 1)."""
    d = Diffusion(1000)
    g = torch.Generator().manual_seed(4)
    n, t = 20000, 300
    x0 = torch.full((n, 1), 0.8)
    x = x0.clone()
    for s in range(t + 1):  # steps 0..t of the chain
        x = math.sqrt(1 - float(d.betas[s])) * x + math.sqrt(float(d.betas[s])) * torch.randn(n, 1, generator=g)
    jump = d.q_sample(x0, torch.full((n,), t), torch.randn(n, 1, generator=g))
    tol = 4 / math.sqrt(n)
    assert abs(float(jump.mean() - x.mean())) < tol and abs(float(jump.std() - x.std())) < tol, (
        f"after {t + 1} small steps from x0 = 0.8 the chain has mean {float(x.mean()):.3f} and std "
        f"{float(x.std()):.3f}; your q_sample at t = {t} gives mean {float(jump.mean()):.3f} and std {float(jump.std()):.3f}")
