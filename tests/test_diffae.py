"""The diffusion autoencoder: how z_sem learns, and what the two codes do."""
import pytest
import torch

from diffae import DiffAE
from encoder import EncoderConfig
from unet import UNetConfig
from test_unet import perturb

UC = dict(res=16, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_res=(), dropout=0.0, embed_dim=32, cond_dim=8)
EC = dict(res=16, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_res=(), z_dim=8)


def make(seed=0):
    torch.manual_seed(seed)
    return DiffAE(UNetConfig(**UC), EncoderConfig(**EC))


def encoder_grad_norm(model):
    return sum(float(p.grad.norm()) for p in model.encoder.parameters() if p.grad is not None)


def test_encoder_learns_through_the_denoising_loss():
    """Users of the official code saw z_sem never train. The only path is Eq. 6's loss through z.

    At initialisation the residual branches and the output conv are zero (ADM's init), so no
    gradient can reach z yet: update 1 moves the output conv, update 2 the residual convs, and
    from the third step on the encoder's gradient is non-zero and z starts to differ between images.
    """
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    norms = []
    for step in range(4):
        torch.manual_seed(step)
        opt.zero_grad()
        model.loss(x).backward()
        norms.append(encoder_grad_norm(model))
        opt.step()
    assert norms[:2] == [0.0, 0.0]  # by design of the zero init, explained above
    assert all(n > 0 for n in norms[2:]), norms
    z = model.encode(x)
    assert z.std(0).mean() > 0  # different images, different codes


def test_different_z_same_xT_decode_differently():
    model = perturb(make()).eval()
    x_T = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1)
    z = torch.randn(2, 8)
    with torch.no_grad():
        out = model.decode(z, x_T, steps=5)
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_reconstruct_is_encode_stochastic_then_decode():
    model = perturb(make(1), seed=1).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        x_T = model.encode_stochastic(x, z, 10)
        assert torch.equal(model.reconstruct(x, 10), model.decode(z, x_T, 10))
        assert x_T.shape == x.shape


def test_config_mismatch_is_refused():
    with pytest.raises(ValueError, match="cond_dim"):
        DiffAE(UNetConfig(**dict(UC, cond_dim=4)), EncoderConfig(**EC))
