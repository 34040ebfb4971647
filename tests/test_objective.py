"""objective.py: the per-t loss weights (PDAE Eq. 10's lambda_t with its gamma), the objective of each
model, and each step's t and noise."""
import pytest
import torch

import pdae
from diffusion import Diffusion
from objective import Objective, step_noise, t_weights


@pytest.mark.parametrize("seed", [0, 3])
def test_snr_t_weights_scale_each_samples_eq6_loss_by_lambda_t(seed):
    """--t-weights snr: each sample's Eq. 6 loss times lambda_t / mean(lambda) (PDAE Eq. 10);
    uniform (the default) is Eq. 6 exactly."""
    d = Diffusion(T=1000)
    w = t_weights("snr", d)
    lam = pdae.loss_weights(d)
    assert torch.allclose(w, lam / lam.mean()) and abs(float(w.mean()) - 1) < 1e-12
    assert t_weights("uniform", d) is None and t_weights(None, d) is None
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1, torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([5, 400, 990])
    net = lambda x, tt: 0.5 * x
    per = [d.loss(net, x0[i:i + 1], t[i:i + 1], noise[i:i + 1]) for i in range(3)]
    expect = sum(float(w[t[i]]) * per[i] for i in range(3)) / 3
    assert torch.allclose(d.loss(net, x0, t, noise, weights=w).float(), expect.float(), rtol=1e-5)
    assert torch.allclose(d.loss(net, x0, t, noise), sum(per) / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="t weighting"):
        t_weights("lambda", d)


@pytest.mark.parametrize("gamma", [-0.3, 0.0, 0.1, 0.5])
def test_t_gamma_is_eq10s_gamma_and_below_zero_the_weight_grows_with_t(gamma):
    """t_weights("snr", d, gamma) is PDAE Eq. 10 with that gamma, mean 1; gamma < 0 has no peak
    (the weight rises to t = T - 1); gamma in (0, 1) peaks where SNR = gamma / (1 - gamma)."""
    d = Diffusion(T=1000)
    w = t_weights("snr", d, gamma)
    s = pdae.snr(d)
    lam = s ** gamma * (1 / (1 + s)) ** (1 - gamma) * (1 / (1 + s)) ** gamma  # Eq. 10 as printed, regrouped
    assert torch.allclose(w, lam / lam.mean(), rtol=1e-10) and abs(float(w.mean()) - 1) < 1e-12
    assert torch.equal(t_weights("snr", d), t_weights("snr", d, pdae.GAMMA))
    rising = bool((w[1:] > w[:-1]).all())
    assert rising == (gamma <= 0)
    if 0 < gamma < 1:
        peak = int(w.argmax())
        assert abs(float(s[peak]) - gamma / (1 - gamma)) < abs(float(s[peak + 1] - s[peak - 1]))


@pytest.mark.parametrize("gamma,floor", [(-0.3, 0.2), (0.1, 0.5), (-0.5, 0.05)])
def test_t_floor_mixes_eq6s_uniform_weight_into_lambda_t(gamma, floor):
    """--t-floor f: f + (1 - f) lambda_t / mean, still mean 1 (the loss's scale keeps), every t weighs at
    least f; 0 is lambda_t unchanged, 1 is Eq. 6's uniform weight."""
    d = Diffusion(T=1000)
    w, lam = t_weights("snr", d, gamma, floor), t_weights("snr", d, gamma)
    assert abs(float(w.mean()) - 1) < 1e-12 and float(w.min()) >= floor
    assert torch.allclose(w - floor, (1 - floor) * lam, rtol=1e-10)
    assert torch.equal(t_weights("snr", d, gamma, 0.0), lam)
    assert torch.allclose(t_weights("snr", d, gamma, 1.0), torch.ones(1000, dtype=w.dtype))
    small, large = slice(0, 200), slice(800, 1000)  # mass at both ends: the small t gain, the large keep most
    assert float(w[small].mean()) > float(lam[small].mean()) and float(w[large].mean()) >= (1 - floor) * float(lam[large].mean())




@pytest.mark.parametrize("T", [1000, 50])
def test_step_noise_draws_t_below_T_and_splits_one_global_batch_over_ranks(T):
    t, noise = step_noise(7, 3, 8, (3, 4, 4), T)
    again = step_noise(7, 3, 8, (3, 4, 4), T)
    assert torch.equal(t, again[0]) and torch.equal(noise, again[1])
    assert int(t.min()) >= 0 and int(t.max()) < T and t.dtype == torch.long
    parts = [step_noise(7, 3, 8, (3, 4, 4), T, rank=r, world=2) for r in range(2)]
    assert torch.equal(torch.stack([parts[0][0], parts[1][0]], 1).flatten(), t)  # rank r takes items r, r+2, ...
    assert torch.equal(parts[1][1], noise[1::2])
    assert not torch.equal(step_noise(7, 4, 8, (3, 4, 4), T)[1], noise)


def test_each_models_objective_is_its_papers_loss():
    """ddim and diffae: Eq. 6 (weighted where asked); the module's forward equals the model's own loss."""
    from unet import UNet, UNetConfig
    d, g = Diffusion(T=1000), torch.Generator().manual_seed(0)
    net = UNet(UNetConfig(res=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_res=(), embed_dim=16, norm_groups=4, dropout=0.0))
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    t, w = torch.tensor([1, 200, 500, 999]), t_weights("snr", d, -0.3)
    got = Objective("ddim", net, d, w)(x0, torch.zeros(4, 0), t, noise)
    assert torch.allclose(got, d.loss(lambda x, tt: net(x, tt), x0, t, noise, weights=w))
