"""Exercise 6 (two_codes): z_sem carries the semantics, x_T the rest (Diff-AE §3, §5.1, Eq. 1 and 8).

The checks use a decoder whose perfect noise predictor we can write down: given z, the images are
N(up(z), s^2 I), where up(z) is a coarse 2x2 picture blown up to 8x8 (the "semantics") and s the size
of the fine detail. For such a decoder the DDIM maps x_T to (about) up(z) + s * x_T: z sets the content,
x_T only the detail. The encoder is the matching one: average-pool the image to 2x2.
"""
import torch
import torch.nn.functional as F

from diffae import DiffAE
from diffusion import Diffusion
from encoder import EncoderConfig
from exercise_helpers import gaussian_eps, rel
from unet import UNetConfig

EXERCISE = "two_codes"
S = 0.3  # the size of the detail that z does not know


def up(z):
    return F.interpolate(z.view(-1, 3, 2, 2), scale_factor=4, mode="nearest")  # (B, 12) -> (B, 3, 8, 8)


class CoarseEncoder(torch.nn.Module):
    def forward(self, x):
        return F.avg_pool2d(x, 4).flatten(1)  # (B, 3, 8, 8) -> (B, 12)


class GaussianDecoder(torch.nn.Module):
    """eps(x_t, t, z): the exact noise predictor of the images N(up(z), S^2 I)."""

    def __init__(self, d):
        super().__init__()
        self.d = d

    def forward(self, x, t, z):
        return gaussian_eps(self.d, up(z), S)(x, t)


def model():
    d = Diffusion(1000)
    m = DiffAE(UNetConfig(res=8, ch=8, ch_mult=(1,), num_res_blocks=1, attn_res=(), dropout=0.0, embed_dim=8, cond_dim=12),
               EncoderConfig(res=8, ch=8, ch_mult=(1,), num_res_blocks=1, attn_res=(), z_dim=12), d)
    m.unet, m.encoder = GaussianDecoder(d), CoarseEncoder()
    return m


def images(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, 12, generator=g) * 0.6 - 0.3
    return (up(z) + S * torch.randn(n, 3, 8, 8, generator=g)).clamp(-1, 1)


def test_two_codes_encode_stochastic_runs_ddim_forward_given_z():
    m, x0 = model(), images()
    z = m.encode(images(seed=1))  # not x0's own code: encode_stochastic must use the z it is given
    got = m.encode_stochastic(x0, z, 10)
    want = m.diffusion.ddim_invert(lambda x, t: m.unet(x, t, z), x0, 10)
    assert got.shape == x0.shape, f"x_T has the shape of the image {tuple(x0.shape)}, got {tuple(got.shape)}"
    assert torch.allclose(got, want, atol=1e-5), \
        "x_T = diffusion.ddim_invert(eps_theta(., ., z), x0, steps): Eq. 8 with the z you are given"


def test_two_codes_decode_runs_ddim_given_z():
    m = model()
    z, x_T = m.encode(images()), torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    got = m.decode(z, x_T, 10)
    want = m.diffusion.ddim_sample(lambda x, t: m.unet(x, t, z), x_T, 10)
    assert torch.allclose(got, want, atol=1e-5), "decode = diffusion.ddim_sample(eps_theta(., ., z), x_T, steps): Eq. 1 given z"


def test_two_codes_reconstruct_is_near_exact():
    m, x0 = model(), images(seed=3)
    err = rel(m.reconstruct(x0, 100), x0)
    assert err < 0.1, f"decode(z, encode_stochastic(x0, z)) should give back x0 (relative error < 0.1), got {err:.3f}"


def test_two_codes_inferred_x_T_looks_like_noise():
    """x_T is a standard-normal-looking code: random stochastic codes are drawn with torch.randn, not rand."""
    m, x0 = model(), images(8, seed=4)
    x_T = m.encode_stochastic(x0, m.encode(x0), 100)
    assert abs(float(x_T.mean())) < 0.15 and 0.8 < float(x_T.std()) < 1.2, \
        f"the inferred x_T should have mean ~0 and std ~1, got mean {float(x_T.mean()):.3f}, std {float(x_T.std()):.3f}"


def test_two_codes_x_T_only_changes_the_details():
    """Fix z, vary x_T (sample.py vary): the picture stays up(z); only the S-sized detail changes, as S * x_T."""
    m = model()
    z = m.encode(images(1, seed=5)).expand(4, -1)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    out = m.decode(z, x_T, 100)
    err = rel(out - up(z), S * x_T)
    assert err < 0.15, f"with z fixed, decode(z, x_T) - up(z) should be ~S * x_T (relative error < 0.15), got {err:.3f}"


def test_two_codes_z_changes_the_content_not_the_details():
    """Fix x_T, vary z: the content moves with z, the detail pattern stays the same."""
    m = model()
    z1, z2 = m.encode(images(1, seed=7)), m.encode(images(1, seed=8))
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    a, b = m.decode(z1, x_T, 100), m.decode(z2, x_T, 100)
    err = rel(a - b, up(z1) - up(z2))
    assert err < 0.15, f"same x_T, two z: the two images should differ by up(z1) - up(z2) (relative error < 0.15), got {err:.3f}"
