"""Property tests of the Gaussian diffusion (Diff-AE Eq. 1-2, 8) and its match to the official sampler."""
import math
import os

import pytest
import torch

from diffusion import Diffusion, lerp, slerp, space_timesteps

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "official-diffae")


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("T", [1000, 250])
def test_linear_schedule_closed_form(T):
    d = Diffusion(T, "linear")
    s = 1000 / T
    assert torch.allclose(d.betas, torch.linspace(1e-4 * s, 0.02 * s, T, dtype=torch.float64))
    assert torch.allclose(d.alphas_cumprod, torch.cumprod(1 - d.betas, 0))
    assert d.betas.dtype == d.alphas_cumprod.dtype == torch.float64


def test_cosine_schedule_matches_alphabar_formula():
    T = 1000
    d = Diffusion(T, "cosine")
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    expected = torch.tensor([f((t + 1) / T) / f(0) for t in range(T)], dtype=torch.float64)
    unclipped = d.betas < 0.999  # the last steps are clipped at beta = 0.999 by design
    k = int(unclipped.float().argmin()) if not unclipped.all() else T
    assert torch.allclose(d.alphas_cumprod[:k], expected[:k], rtol=1e-9)


def test_const_schedule():
    d = Diffusion(1000, "const")
    assert torch.all(d.betas == 0.008)
    with pytest.raises(ValueError, match="unknown beta schedule"):
        Diffusion(10, "quadratic")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_mean_and_variance(seed, schedule):
    d = Diffusion(1000, schedule)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(1, 3, 4, 4, generator=g) * 2 - 1
    t = torch.tensor([int(torch.randint(0, 1000, (1,), generator=g))])
    n = 20000
    noise = torch.randn(n, 3, 4, 4, generator=g)
    xt = d.q_sample(x0.expand(n, -1, -1, -1), t.expand(n), noise)
    ab = d.alphas_cumprod[t].float()
    assert torch.allclose(xt.mean(0), ab.sqrt() * x0[0], atol=4 / math.sqrt(n))
    assert torch.allclose(xt.var(0), (1 - ab).expand(3, 4, 4), rtol=0.06, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 2, 10, 37, 100, 600, 1000])
def test_respace_rules(steps):
    even = Diffusion(1000, respacing="even").respace(steps)
    assert len(even) == steps and even[0] == 0 and (steps == 1 or even[-1] == 999)
    assert torch.all(even[1:] > even[:-1])
    ddim = Diffusion(1000).respace(steps)
    assert len(ddim) == steps and ddim[0] == 0 and torch.all(ddim[1:] > ddim[:-1])
    strides = (ddim[1:] - ddim[:-1]).unique()
    if len(range(0, 1000, 1000 // steps)) == steps or steps == 1:  # an integer stride exists: the official rule
        assert len(strides) <= 1
    else:
        assert torch.equal(ddim, even)  # no integer stride: falls back to the even rule
    with pytest.raises(ValueError):
        space_timesteps(10, 11)


def test_ddim_rule_examples():
    assert space_timesteps(1000, 10) == list(range(0, 1000, 100))
    assert space_timesteps(1000, 20) == list(range(0, 1000, 50))
    assert space_timesteps(1000, 10, "even")[:3] == [0, 111, 222]


@pytest.mark.parametrize("steps", [5, 20])
def test_respacing_keeps_marginals(steps):
    """The respaced chain's own betas (1 - ab_i / ab_{i-1}) rebuild alphabar at each kept step."""
    d = Diffusion(1000)
    ts = d.respace(steps)
    ab = d.alphas_cumprod[ts]
    new_betas = 1 - ab / torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    assert torch.allclose(torch.cumprod(1 - new_betas, 0), ab, rtol=1e-12)


def test_predict_x0_inverts_q_sample():
    d = Diffusion(1000)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    xt = d.q_sample(x0, t, eps)
    assert torch.allclose(d.predict_x0(xt, t, eps), x0, atol=2e-3 * 150)  # t=999: 1/sqrt(ab) ~ 150 amplifies fp32
    assert torch.allclose(d.predict_x0(xt[:3], t[:3], eps[:3]), x0[:3], atol=1e-4)
    assert torch.allclose(d.eps_from_x0(xt, t, x0), eps, atol=1e-4)


def test_posterior_mean_closed_form():
    d = Diffusion(1000)
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([1, 300, 999])
    ab, ab_prev, b = d.alphas_cumprod[t], d.alphas_cumprod[t - 1], d.betas[t]
    c0 = (ab_prev.sqrt() * b / (1 - ab)).float().view(-1, 1, 1, 1)
    ct = ((1 - b).sqrt() * (1 - ab_prev) / (1 - ab)).float().view(-1, 1, 1, 1)
    assert torch.allclose(d.posterior_mean(x0, xt, t), c0 * x0 + ct * xt, atol=1e-6)
    # the posterior mean at the true x0 is the mean of x_{t-1} given (x_t, x0): at t=1 ab_prev = ab_0
    assert torch.allclose(d.posterior_variance(t), b * (1 - ab_prev) / (1 - ab))


def exact_eps_fn(d, x0):
    """The noise predictor that is exact for data = {x0}: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""
    def eps(x, t):
        ab = d.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    return eps


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("steps", [5, 20, 100])
def test_ddim_inversion_exact_for_exact_predictor(seed, steps):
    d = Diffusion(1000)
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 1.8 - 0.9
    f = exact_eps_fn(d, x0)
    x_T = d.ddim_invert(f, x0, steps)
    assert rel(d.ddim_sample(f, x_T, steps), x0) < 1e-5


@pytest.mark.parametrize("seed", [0, 1])
def test_ddim_inversion_error_shrinks_with_steps(seed):
    """For a smooth predictor that is not exact, invert-then-sample error falls as T grows."""
    d = Diffusion(1000)
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    mu, s2 = 0.3, 0.25  # data ~ N(mu, s2 I): its exact score gives a smooth, curved ODE

    def f(x, t):
        ab = d.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s2 + 1 - ab)
    errs = [rel(d.ddim_sample(f, d.ddim_invert(f, x0, s, clip=False), s, clip=False), x0) for s in (10, 50, 200)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.05


def test_ddim_matches_official_sampler():
    """reference_sampler.pt: the official Diff-AE DDIM loops with an analytic noise predictor."""
    path = os.path.join(FIXTURES, "reference_sampler.pt")
    if not os.path.exists(path):
        pytest.skip("official fixtures not found beside the repository")
    r = torch.load(path, weights_only=True)
    d = Diffusion(1000, "linear", respacing="even")  # this fixture was made with the even rule
    f = lambda x, t: 0.5 * torch.tanh(x) + 0.1 * torch.cos(t.float() / 200)[:, None, None, None]
    for N in (10, 20, 50, 100):
        assert torch.equal(d.respace(N), r[f"respace_{N}"].long())
        for c in ("clip", "noclip"):
            assert rel(d.ddim_invert(f, r["x0"], N, clip=c == "clip"), r[f"invert_{N}_{c}"]) < 1e-4
            assert rel(d.ddim_sample(f, r["noise"], N, clip=c == "clip"), r[f"sample_{N}_{c}"]) < 1e-4


def test_loss_weighting_and_kinds():
    d = Diffusion(1000)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 3, 4, 4, generator=g)
    t = torch.tensor([3, 30, 300, 900])
    f = lambda x, tt: torch.zeros_like(x)  # error = -noise
    per = noise.square().flatten(1).mean(1)
    assert torch.allclose(d.loss(f, x0, t, noise), per.mean())
    assert torch.allclose(d.loss(f, x0, t, noise, kind="l1"), noise.abs().flatten(1).mean(1).mean())
    w = torch.linspace(0, 2, 1000, dtype=torch.float64)
    assert torch.allclose(d.loss(f, x0, t, noise, weights=w), (w[t].float() * per).mean())
    assert d.loss(f, x0, t, noise, weights=torch.zeros(1000)) == 0


def test_ddpm_sample_exact_predictor_lands_on_data():
    d = Diffusion(1000)
    x0 = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(3)) * 1.6 - 0.8
    out = d.ddpm_sample(exact_eps_fn(d, x0), torch.randn(2, 3, 4, 4), steps=50, generator=torch.Generator().manual_seed(0))
    assert rel(out, x0) < 1e-4
    a = d.ddpm_sample(lambda x, t: 0.1 * x, torch.ones(1, 3, 4, 4), steps=10, generator=torch.Generator().manual_seed(5))
    b = d.ddpm_sample(lambda x, t: 0.1 * x, torch.ones(1, 3, 4, 4), steps=10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_lerp_slerp():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    for al in (0.0, 1.0):
        assert torch.allclose(slerp(a, b, al), a if al == 0 else b, atol=1e-5)
        assert torch.allclose(lerp(a, b, al), a if al == 0 else b)
    mid = slerp(a, b, 0.5)
    # slerp keeps the norm of equal-norm endpoints; lerp shrinks it
    bn = b / b.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * a.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(slerp(a, bn, 0.5).flatten(1).norm(dim=1), a.flatten(1).norm(dim=1), rtol=1e-4)
    assert torch.all(lerp(a, bn, 0.5).flatten(1).norm(dim=1) < a.flatten(1).norm(dim=1))
    assert torch.isfinite(slerp(a, a.clone(), 0.3)).all() and torch.allclose(slerp(a, a.clone(), 0.3), a, atol=1e-5)
    assert mid.shape == a.shape


# --- PDAE's DDIM grid ------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1000, 100])
def test_pdae_grid_is_numpys_linspace_truncated(T):
    np = pytest.importorskip("numpy")
    d = Diffusion(T, grid="pdae")
    for N in range(1, T + 1):
        assert d.respace(N).tolist() == sorted({int(s) for s in np.linspace(0, T - 1, N + 1)})
    assert d.respace(10, rule="even").tolist() == space_timesteps(T, 10, "even")  # DDPM keeps its own rule


def test_ddim_moves_of_the_two_grids():
    ab = Diffusion(1000).alphas_cumprod
    down, up = Diffusion(1000).ddim_moves(10), Diffusion(1000).ddim_moves(10, encode=True)
    assert [t for t, _ in down] == list(range(900, -1, -100)) and float(down[-1][1]) == 1.0  # ends at x0 itself
    assert [t for t, _ in up] == list(range(0, 1000, 100)) and float(up[-1][1]) == 0.0
    pd = Diffusion(1000, grid="pdae")
    down, up = pd.ddim_moves(10), pd.ddim_moves(10, encode=True)
    assert [t for t, _ in down] == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]  # N network calls
    assert torch.equal(down[-1][1], ab[0])  # the clean image is the state at timestep 0
    assert [t for t, _ in up] == [0, 99, 199, 299, 399, 499, 599, 699, 799, 899] and torch.equal(up[-1][1], ab[999])
    assert len(pd.ddim_moves(1000)) == 999  # linspace's 1001 points collapse onto 1000 timesteps
    assert Diffusion(**pd.config()).grid == "pdae" and Diffusion(1000).config() == {"T": 1000, "schedule": "linear"}
    with pytest.raises(ValueError, match="grid"):
        Diffusion(1000, grid="ddpm")


@pytest.mark.parametrize("steps", [1, 7, 20])
def test_pdae_grid_inversion_exact_for_exact_predictor(steps):
    d = Diffusion(1000, grid="pdae")
    x0 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(steps)) * 1.8 - 0.9
    f = exact_eps_fn(d, x0)
    x_T = d.ddim_invert(f, x0, steps)
    assert rel(d.ddim_sample(f, x_T, steps), x0) < 1e-5
