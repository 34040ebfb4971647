"""PDAE: the weighting, the sign of the mean shift, the frozen DPM, the shared encoder half."""

import pytest
import torch

import checkpoint
import pdae
from diffusion import Diffusion
from encoder import PDAEEncoder, PDAEEncoderConfig
from test_unet import perturb
from unet import UNetConfig

UC = dict(res=16, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_res=(8,), dropout=0.1, embed_dim=32)
EC = dict(res=16, ch=16, ch_mult=(1, 2), attn_res=(), num_heads=1, z_dim=8)
T = 100



def make(seed=0, trained_G=False, input_skip=False):
    """A PDAE around a random 'pre-trained' UNet; G at its zero init unless trained_G."""
    torch.manual_seed(seed)
    uc = dict(UC, input_skip={"T": T, "schedule": "linear"}) if input_skip else UC
    model = pdae.PDAE(UNetConfig(**uc), PDAEEncoder(PDAEEncoderConfig(**EC)), Diffusion(T=T))
    perturb(model.unet, seed=seed)
    if trained_G:
        perturb(model.G, seed=seed + 1)
    return model.eval()


def images(n=2, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def pretrained_eps(model):
    return lambda x, t: model.unet(x, t)


# --- coefficients ---------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_loss_weights_are_eq10_in_both_forms_and_peak_inside(schedule):
    d = Diffusion(T=1000, schedule=schedule)
    g = 0.1
    snr = d.alphas_cumprod / (1 - d.alphas_cumprod)
    lam = pdae.loss_weights(d, g)
    assert lam.dtype == torch.float64 and lam.shape == (1000,)
    torch.testing.assert_close(lam, (1 / (1 + snr)) ** (1 - g) * (snr / (1 + snr)) ** g, rtol=1e-12, atol=0)
    torch.testing.assert_close(lam, snr ** g / (1 + snr), rtol=1e-12, atol=0)
    peak = int(lam.argmax())
    assert 0 < peak < 999 and lam[0] < lam[peak] and lam[-1] < lam[peak]  # both ends down-weighted
    # the maximum of s^g / (1 + s) is at s = g / (1 - g)
    assert abs(float(torch.log(snr[peak] / (g / (1 - g))))) < 0.1


def test_mean_shift_coef_closed_form_and_positive():
    d = Diffusion(T=1000)
    beta = d.betas
    alpha = 1 - beta
    ab = torch.cumprod(alpha, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    sigma = beta * (1 - ab_prev) / (1 - ab)
    c = pdae.mean_shift_coef(d)
    assert c.dtype == torch.float64
    torch.testing.assert_close(c, alpha.sqrt() * (1 - ab).sqrt() / beta * sigma, rtol=1e-12, atol=0)
    torch.testing.assert_close(c, alpha.sqrt() * (1 - ab_prev) / (1 - ab).sqrt(), rtol=1e-10, atol=1e-15)
    assert c[0] == 0 and (c[1:] > 0).all()  # Sigma_0 = 0; positive: every caller subtracts c_t G


@pytest.mark.parametrize("steps", [None, 10])
def test_ddpm_eps_hat_shifts_the_mean_by_plus_sigma_G(steps):
    """The sign convention, end to end: the mean ddpm_sample takes from eps_hat is mu_theta + Sigma_t G (Eq. 5),
    on the full chain and on a respaced one (its own Sigma)."""
    model = make(trained_G=True)
    d = model.diffusion
    visited = []  # the chain ddpm_sample really walks
    d.ddpm_sample(lambda x, t: visited.append(int(t[0])) or torch.zeros_like(x), torch.zeros(1, 1), steps)
    ts = torch.tensor(sorted(visited))
    assert torch.equal(pdae.mean_shift_coef(d, steps).nonzero().flatten(), ts[1:])  # c = 0 off the chain and at t = 0
    ab_seq = d.alphas_cumprod[ts]
    x, z = torch.randn(3, 3, 16, 16), torch.randn(3, 8)
    for i in (1, len(ts) // 2, len(ts) - 1):
        t = torch.full((3,), int(ts[i]), dtype=torch.long)
        with torch.no_grad():
            eps, G = model.predict(x, t, z)
            eps_hat = model.eps_fn(z, kind="ddpm", steps=steps)(x, t)
        ab, ab_prev = float(ab_seq[i]), float(ab_seq[i - 1])
        beta = 1 - ab / ab_prev  # the step's own beta on this (possibly respaced) chain
        var = beta * (1 - ab_prev) / (1 - ab)
        mean = lambda e: (ab_prev ** 0.5 * beta * d.predict_x0(x, t, e) + (1 - beta) ** 0.5 * (1 - ab_prev) * x) / (1 - ab)
        assert G.abs().max() > 1e-3
        torch.testing.assert_close(mean(eps_hat), mean(eps) + var * G, rtol=1e-4, atol=1e-5)


def test_ddim_eps_hat_is_eq6_and_shift_until_drops_it():
    model = make(trained_G=True)
    ab = model.diffusion.alphas_cumprod
    x, z = torch.randn(2, 3, 16, 16), torch.randn(2, 8)
    with torch.no_grad():
        for t0 in (10, 50, 90):
            t = torch.full((2,), t0, dtype=torch.long)
            eps, G = model.predict(x, t, z)
            torch.testing.assert_close(model.eps_fn(z)(x, t), eps - float((1 - ab[t0]).sqrt()) * G)
            plain = model.eps_fn(z, shift_until=0.3)(x, t)
            if t0 < 30:
                assert torch.equal(plain, eps)  # §4.8: the last 30% of the steps use eps_theta alone
            else:
                torch.testing.assert_close(plain, eps - float((1 - ab[t0]).sqrt()) * G)
            torch.testing.assert_close(model.eps_fn(z, scale=2.0)(x, t), eps - 2 * float((1 - ab[t0]).sqrt()) * G)
            torch.testing.assert_close(model.eps_fn_lerp_g(z, z.flip(0), 0.0)(x, t), model.eps_fn(z)(x, t))


@pytest.mark.parametrize("grid", ["diffae", "pdae"])
@pytest.mark.parametrize("steps", [7, 10, 20])
def test_the_30_percent_rule_drops_G_in_the_last_int_p_N_steps(grid, steps):
    """§4.8 as the official sampler counts: of N steps the last int(0.3 N) run eps_theta alone."""
    model = make(trained_G=True)
    model.diffusion = Diffusion(T=T, grid=grid)
    calls = []
    model.G.register_forward_hook(lambda mod, args, out: calls.append(1))
    x_T, z = torch.randn(2, 3, 16, 16), torch.randn(2, 8)
    with torch.no_grad():
        model.decode(z, x_T, steps, shift_until=0.3)
    assert len(calls) == steps - int(0.3 * steps)
    moves = model.diffusion.ddim_moves(steps)
    kept = moves[len(moves) - int(0.3 * steps) - 1][0]  # the last step that still uses G
    eps = model.eps_fn(z, shift_until=0.3, steps=steps)
    x, t = torch.randn(2, 3, 16, 16), torch.full((2,), kept)
    with torch.no_grad():
        assert not torch.equal(eps(x, t), model.predict(x, t, z)[0])
        assert torch.equal(eps(x, t - 1), model.predict(x, t - 1, z)[0])


# --- G == 0 at init: PDAE is exactly the pre-trained DPM --------------------------------------

@pytest.mark.parametrize("input_skip", [False, True])
def test_fresh_pdae_samplers_reproduce_the_pretrained_dpm_exactly(input_skip):
    model = make(input_skip=input_skip)
    d = model.diffusion
    x, z = images(2), torch.randn(2, 8)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.decode(z, x_T, 5), d.ddim_sample(pretrained_eps(model), x_T, 5))
        assert torch.equal(model.encode_stochastic(x, z, 5), d.ddim_invert(pretrained_eps(model), x, 5))
        for steps in (None, 10):
            a = model.decode_ddpm(z, x_T, steps, generator=torch.Generator().manual_seed(2))
            b = d.ddpm_sample(pretrained_eps(model), x_T, steps, clip=False, generator=torch.Generator().manual_seed(2))
            assert torch.equal(a, b)


# --- training touches only the encoder and G ----------------------------------------------------

def test_training_leaves_the_pretrained_weights_bit_exact_and_trains_the_encoder():
    model = make()
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    sha = model.pretrained_sha256()
    enc0 = [p.clone() for p in model.encoder.parameters()]
    params = [p for p in model.parameters() if p.requires_grad]  # as train.py
    assert not any(p.requires_grad for p in model.unet.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    model.train()
    assert not model.unet.training and model.G.training and model.encoder.training
    x, g = images(4), torch.Generator().manual_seed(0)
    enc_grad = []
    for _ in range(4):
        opt.zero_grad()
        model.loss(x, generator=g).backward()
        enc_grad.append(sum(float(p.grad.norm()) for p in model.encoder.parameters() if p.grad is not None))
        opt.step()
    after = model.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.pretrained_sha256() == sha
    assert all(p.grad is None for p in model.unet.parameters())
    # G's output conv starts at zero, so z gets no gradient until it has moved (the Diff-AE story)
    assert enc_grad[0] == 0 and enc_grad[-1] > 0, enc_grad
    assert any(not torch.equal(a, b) for a, b in zip(enc0, model.encoder.parameters()))


def test_backward_with_channels_last_images():
    """Datasets hand out NHWC-strided images; torch's CPU GroupNorm backward used to crash on G's frozen input."""
    model = make().train()
    x = images(2).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last strides
    model.loss(x, None, torch.tensor([10, 80])).backward()
    assert model.G.out[-1].weight.grad.abs().sum() > 0


def test_frozen_unet_has_no_dropout_in_train_mode():
    model = make(trained_G=True).train()
    x, t, z = torch.randn(2, 3, 16, 16), torch.tensor([40, 70]), torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(model.predict(x, t, z)[0], model.predict(x, t, z)[0])


def test_loss_is_eq7_with_lambda_weights():
    model = make(trained_G=True)
    d = model.diffusion
    x, t, noise, z = images(3), torch.tensor([3, 40, 99]), torch.randn(3, 3, 16, 16), None
    with torch.no_grad():
        z = model.encode(x)
        x_t = d.q_sample(x, t, noise)
        eps, G = model.predict(x_t, t, z)
        c = pdae.mean_shift_coef(d)[t].float().view(-1, 1, 1, 1)
        lam = pdae.loss_weights(d)[t].float()
        want = (lam * (noise - eps + c * G).square().flatten(1).mean(1)).mean()  # Eq. 7 as written
        torch.testing.assert_close(model.loss(x, None, t, noise), want)


# --- the reused encoder half is shared, and run once -------------------------------------------

def test_encoder_half_is_shared_not_copied():
    model = make()
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(model) == n(model.unet) + n(model.encoder) + n(model.G)
    names = [k for k, _ in model.G.named_parameters()]
    assert not any(k.startswith(("input_blocks", "time_embed")) for k in names)
    unet_ptrs = {p.data_ptr() for p in model.unet.parameters()}
    assert not any(p.data_ptr() in unet_ptrs for p in model.G.parameters())
    assert all(k.split(".")[0] in ("unet", "encoder", "G") for k in model.state_dict())


def test_encode_half_runs_once_per_eps_hat_call():
    model = make(trained_G=True)
    calls = []
    model.unet.input_blocks[0].register_forward_hook(lambda *a: calls.append(1))
    x, t, z = torch.randn(2, 3, 16, 16), torch.tensor([10, 80]), torch.randn(2, 8)
    with torch.no_grad():
        model.eps_fn(z)(x, t)
        assert len(calls) == 1
        model.eps_fn_lerp_g(z, z.flip(0), 0.5)(x, t)
        assert len(calls) == 2
    model.loss(images(2), t=t)
    assert len(calls) == 3


# --- the posterior mean gap (§4.2) -----------------------------------------------------------

def test_gap_shapes_and_zero_for_an_exact_predictor():
    d = Diffusion(T=T)
    x_star = images(1)
    x0 = x_star.expand(3, -1, -1, -1)
    exact = lambda x, t: d.eps_from_x0(x, t, x_star.expand(x.shape[0], -1, -1, -1))  # the single-point data's true eps
    ts = [0, 1, 50, 99]
    out = pdae.posterior_mean_gap(None, exact, d, x0, ts, generator=torch.Generator().manual_seed(0))
    assert out["t"] == ts and len(out["pretrained"]) == 4 and out["pdae"] is None
    assert max(out["pretrained"]) < 1e-10

    model = make(trained_G=True)
    x = images(2)
    gen = lambda: torch.Generator().manual_seed(0)
    out = pdae.posterior_mean_gap(model, pretrained_eps(model), model.diffusion, x, ts, generator=gen())
    assert len(out["pdae"]) == len(out["pretrained"]) == 4 and all(v > 0 for v in out["pretrained"])
    assert out["pdae"] != out["pretrained"]
    fresh = make()  # G == 0: PDAE's curve is the pre-trained one
    out = pdae.posterior_mean_gap(fresh, pretrained_eps(fresh), fresh.diffusion, x, ts, generator=gen())
    assert out["pdae"] == out["pretrained"]


def test_denoise_one_step_shapes():
    model = make(trained_G=True)
    xs, pre, shifted = pdae.denoise_one_step(model, images(2), [10, 60], generator=torch.Generator().manual_seed(0))
    assert len(xs) == len(pre) == len(shifted) == 2 and shifted[0].shape == (2, 3, 16, 16)


# --- checkpoints and train.py's entry -----------------------------------------------------------

def test_checkpoint_rebuilds_the_same_model():
    model = make(trained_G=True)
    ck = {"kind": "pdae", "config": model.config, "ema": model.state_dict(), "model": model.state_dict()}
    again = checkpoint.build(ck)
    x, t, z = torch.randn(2, 3, 16, 16), torch.tensor([10, 80]), torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(again.eps_fn(z)(x, t), model.eps_fn(z)(x, t))


def test_label_conditioned_variant():
    """§4.6: G_psi(x_t, y, t) with the encoder replaced by an embedding of the labels."""
    torch.manual_seed(0)
    model = pdae.PDAE(UNetConfig(**UC), pdae.LabelEmbedding(5, 8), Diffusion(T=T))
    y = (torch.rand(2, 5) > 0.5).float()
    model.loss(images(2), y).backward()
    assert model.encode(torch.tensor([0, 4])).shape == (2, 8)
    with pytest.raises(ValueError, match="labels"):
        model.encode(images(2))
    again = pdae.PDAE.from_config(model.config)
    again.load_state_dict(model.state_dict())
    assert isinstance(again.encoder, pdae.LabelEmbedding)
