"""Exercise 2 (simple_loss): Diff-AE Eq. 6, the eps-prediction loss, with PDAE's per-t weights and the L1 kind."""
import torch

from diffae import DiffAE
from diffusion import Diffusion
from encoder import EncoderConfig
from exercise_helpers import exact_eps
from unet import UNetConfig

EXERCISE = "simple_loss"


def data(seed=0, shape=(4, 3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1, torch.randn(shape, generator=g)


def test_simple_loss_of_a_zero_predictor_is_the_noise_power():
    d = Diffusion(1000)
    x0, noise = data()
    t = torch.tensor([3, 30, 300, 900])
    got = d.loss(lambda x, tt: torch.zeros_like(x), x0, t, noise)
    want = noise.square().flatten(1).mean(1).mean()
    assert torch.is_tensor(got) and got.dim() == 0, f"return a 0-dim tensor (the mean), got {got!r}"
    assert torch.allclose(got, want, atol=1e-6), \
        f"predicting eps = 0 must cost mean(noise^2) = {float(want):.5f}, got {float(got):.5f}"


def test_simple_loss_feeds_the_predictor_x_t_and_t():
    d = Diffusion(1000)
    x0, noise = data(1)
    t = torch.tensor([0, 10, 500, 999])
    seen = []
    d.loss(lambda x, tt: seen.append((x.clone(), tt.clone())) or torch.zeros_like(x), x0, t, noise)
    assert len(seen) == 1, f"call eps_fn once, on the whole batch (it was called {len(seen)} times)"
    x, tt = seen[0]
    assert torch.equal(tt, t), f"eps_fn must get the timesteps t = {t.tolist()}, got {tt.tolist()}"
    assert torch.allclose(x, d.q_sample(x0, t, noise), atol=1e-6), "eps_fn must get x_t = q_sample(x0, t, noise)"


def test_simple_loss_is_zero_for_the_perfect_predictor():
    d = Diffusion(1000)
    x0, noise = data(2)
    got = float(d.loss(exact_eps(d, x0), x0, torch.tensor([1, 200, 600, 998]), noise))
    assert got < 1e-8, f"a predictor that knows x0 recovers eps exactly: the loss must be ~0, got {got:.2e}"


def test_simple_loss_weights_and_kinds():
    d = Diffusion(1000)
    x0, noise = data(3)
    noise[0] *= 3  # samples with different errors, so a misplaced weight shows
    t = torch.tensor([3, 30, 300, 900])
    zero = lambda x, tt: torch.zeros_like(x)
    per = noise.square().flatten(1).mean(1)
    w = torch.linspace(0, 2, 1000, dtype=torch.float64)
    got = d.loss(zero, x0, t, noise, weights=w)
    want = (w[t].float() * per).mean()
    assert torch.allclose(got, want, atol=1e-5), \
        f"with weights, the loss is mean_i(weights[t_i] * loss_i) = {float(want):.5f}, got {float(got):.5f}"
    got = d.loss(zero, x0, t, noise, kind="l1")
    want = noise.abs().flatten(1).mean(1).mean()
    assert torch.allclose(got, want, atol=1e-6), f"kind='l1' is the mean |error| = {float(want):.5f}, got {float(got):.5f}"


def test_simple_loss_draws_t_then_noise_from_the_generator():
    d = Diffusion(1000)
    x0, _ = data(4)
    f = lambda x, tt: 0.1 * x + tt.float()[:, None, None, None] / 1000
    a = d.loss(f, x0, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (4,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    b = d.loss(f, x0, t, noise)
    assert torch.allclose(a, b, atol=1e-6), \
        ("with t=None and noise=None draw t = torch.randint(0, T, (B,), generator=generator), "
         "then noise = torch.randn(x0.shape, generator=generator)")


def test_simple_loss_reaches_the_encoder():
    """No loss touches z_sem: the encoder learns only through Eq. 6 (Diff-AE §3.2). Keep the graph!"""
    torch.manual_seed(0)
    model = DiffAE(UNetConfig(res=8, ch=8, ch_mult=(1,), num_res_blocks=1, attn_res=(), dropout=0.0, embed_dim=16, cond_dim=4),
                   EncoderConfig(res=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_res=(), z_dim=4), Diffusion(100))
    with torch.no_grad():  # away from ADM's zero init, where no gradient can reach z yet
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    x0 = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss = model.loss(x0, torch.tensor([10, 50, 90]), torch.randn(3, 3, 8, 8))
    assert loss.requires_grad, "the loss lost its graph (.item(), .detach() or torch.no_grad()?): nothing could train"
    loss.backward()
    g = sum(float(p.grad.norm()) for p in model.encoder.parameters() if p.grad is not None)
    assert g > 0, "the encoder got no gradient: z_sem = Enc(x0) learns only through this loss"
