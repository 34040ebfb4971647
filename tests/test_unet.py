"""The UNet noise predictor and the semantic encoder."""
import pytest
import torch

from encoder import EncoderConfig, SemanticEncoder
from unet import UNet, UNetConfig

SMALL = dict(res=16, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_res=(8,), dropout=0.0, embed_dim=32)


def perturb(model, seed=0, std=0.05):
    """Random non-zero weights everywhere (no layer left at its zero init), as a trained net has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def test_unet_shapes_and_zero_output_at_init():
    u = UNet(UNetConfig(**SMALL))
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 500, 999])
    out = u(x, t)
    assert out.shape == x.shape and torch.all(out == 0)  # zero-initialised output conv


def test_unet_z_changes_the_prediction():
    u = perturb(UNet(UNetConfig(**SMALL, cond_dim=8))).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([100, 100])
    z1, z2 = torch.randn(1, 8).expand(2, -1), torch.randn(1, 8).expand(2, -1)
    assert not torch.allclose(u(x, t, z1), u(x, t, z2))
    with pytest.raises(ValueError, match="cond_dim"):
        u(x, t)
    with pytest.raises(ValueError, match="cond_dim"):
        UNet(UNetConfig(**SMALL))(x, t, z1)


def test_unet_split_halves_equal_forward():
    u = perturb(UNet(UNetConfig(**SMALL, cond_dim=8))).eval()
    x, t, z = torch.randn(2, 3, 16, 16), torch.tensor([5, 700]), torch.randn(2, 8)
    emb = u.embed_time(t)
    assert torch.equal(u.decode_half(u.encode_half(x, emb, z), emb, z), u(x, t, z))


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    u = perturb(UNet(UNetConfig(**SMALL)))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 700])
    u(x, t).square().sum().backward()
    g1 = [p.grad.clone() for p in u.parameters()]
    u.zero_grad()
    u.cfg.grad_checkpoint = True
    u(x, t).square().sum().backward()
    for a, p in zip(g1, u.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_encoder_deterministic_and_batch_independent(seed):
    enc = perturb(SemanticEncoder(EncoderConfig(res=16, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_res=(8,), z_dim=10)), seed).eval()
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    z = enc(x)
    assert z.shape == (5, 10)
    assert torch.equal(enc(x), z)
    assert torch.allclose(torch.cat([enc(x[i:i + 1]) for i in range(5)]), z, atol=1e-5)
    assert torch.allclose(enc(x.flip(0)), z.flip(0), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_input_skip_adds_sqrt_one_minus_alphabar_x_t(seed):
    """With input_skip, eps = sqrt(1 - alphabar_t) x_t + net: a fresh (zero-output) net gives exactly
    the skip, E[eps | x_t] for unit-variance data; a trained one adds its output on top."""
    from diffusion import Diffusion
    d = Diffusion(T=1000)
    skip = dict(SMALL, cond_dim=8, input_skip={"T": 1000, "schedule": "linear"})
    g = torch.Generator().manual_seed(seed)
    x, t, z = torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 1000, (4,), generator=g), torch.randn(4, 8, generator=g)
    coef = (1 - d.alphas_cumprod[t]).sqrt().float().view(-1, 1, 1, 1)
    assert torch.allclose(UNet(UNetConfig(**skip))(x, t, z), coef * x, atol=1e-7)
    torch.manual_seed(seed)
    plain = perturb(UNet(UNetConfig(**dict(skip, input_skip=None))), seed).eval()
    torch.manual_seed(seed)
    with_skip = perturb(UNet(UNetConfig(**skip)), seed).eval()
    assert torch.allclose(with_skip(x, t, z), plain(x, t, z) + coef * x, atol=1e-6)


def test_input_skip_must_match_the_diffusion_schedule():
    from diffae import DiffAE
    from diffusion import Diffusion
    cfg = UNetConfig(**SMALL, cond_dim=8, input_skip={"T": 1000, "schedule": "linear"})
    enc = EncoderConfig(res=16, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_res=(), z_dim=8)
    DiffAE(cfg, enc, Diffusion(T=1000))
    with pytest.raises(ValueError, match="input_skip"):
        DiffAE(cfg, enc, Diffusion(T=1000, schedule="cosine"))
