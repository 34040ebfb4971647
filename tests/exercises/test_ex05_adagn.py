"""Exercise 5 (adagn): Diff-AE Eq. 7, AdaGN(h, t, z) = z_s (t_s GroupNorm(h) + t_b), and the ResBlock that uses it."""
import pytest
import torch

import nn as blocks  # the project's nn.py (torch.nn is not used here)
from unet import UNet, UNetConfig

EXERCISE = "adagn"
REFERENCE = {"forward": blocks.ResBlock.forward, "ada_group_norm": blocks.ada_group_norm}  # taken before any swap


def perturb(module, seed=0, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    norm = torch.nn.GroupNorm(2, 4)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * r(4))
        norm.bias.copy_(0.3 * r(4))
    return r(2, 4, 5, 5), norm, 1 + 0.5 * r(2, 4, 1, 1), r(2, 4, 1, 1), 1 + 0.5 * r(2, 4, 1, 1)


def test_adagn_closed_form():
    h, norm, ts, tb, zs = tensors()
    got = blocks.ada_group_norm(h, norm, ts, tb, zs)
    assert torch.allclose(got, zs * (ts * norm(h) + tb), atol=1e-6), "AdaGN(h, t, z) must be z_s * (t_s * GroupNorm(h) + t_b)"
    got = blocks.ada_group_norm(h, norm, ts, tb)
    assert torch.allclose(got, ts * norm(h) + tb, atol=1e-6), "without z (z_scale=None) it is t_s * GroupNorm(h) + t_b"


def test_adagn_z_scales_the_time_shift_too():
    h, norm, ts, tb, zs = tensors(1)
    got = blocks.ada_group_norm(h, norm, torch.zeros_like(ts), tb, zs)
    assert torch.allclose(got, (zs * tb).expand_as(h), atol=1e-6), \
        "with t_s = 0 Eq. 7 leaves z_s * t_b: z_s multiplies the whole (t_s GroupNorm(h) + t_b), shift included"


CASES = {
    "encoder-block": dict(ch_in=4, ch_out=8),                         # the semantic encoder's: no t, no z
    "t-only":        dict(ch_in=8, ch_out=8, emb_dim=6),              # the DDIM baseline's
    "t-and-z":       dict(ch_in=4, ch_out=8, emb_dim=6, cond_dim=3),  # the Diff-AE decoder's
    "down":          dict(ch_in=8, ch_out=8, emb_dim=6, cond_dim=3, down=True),
    "up":            dict(ch_in=8, ch_out=4, emb_dim=6, cond_dim=3, up=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_adagn_resblock_matches_the_reference(case, monkeypatch):
    kw = CASES[case]
    block = perturb(blocks.ResBlock(**kw))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, kw["ch_in"], 8, 8, generator=g)
    emb = torch.randn(2, 6, generator=g) if "emb_dim" in kw else None
    cond = torch.randn(2, 3, generator=g) if "cond_dim" in kw else None
    with torch.no_grad():
        got = block(x, emb, cond)
        monkeypatch.setattr(blocks.ResBlock, "forward", REFERENCE["forward"])
        monkeypatch.setattr(blocks, "ada_group_norm", REFERENCE["ada_group_norm"])
        want = block(x, emb, cond)
    assert got.shape == want.shape, f"{case}: output shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    assert torch.allclose(got, want, atol=1e-5), (
        f"{case}: your block differs from the reference by up to {float((got - want).abs().max()):.3g}; "
        f"expected skip(x) + conv(drop(act(AdaGN(h, 1 + t_s, t_b, 1 + z_s))))")


def test_adagn_z_enters_as_one_plus_a_scale():
    """Force z_s = 1 + Affine(z) = 0: the normalised branch is wiped out whatever x and t are."""
    block = perturb(blocks.ResBlock(4, 4, emb_dim=6, cond_dim=3))
    lin = block.cond_emb_layers[1]
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.fill_(-1.0)  # Affine(z) = -1  =>  z_s = 0
        x, emb, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 6), torch.randn(2, 3)
        out = block(x, emb, cond)
        conv = block.out_layers[-1]
        want = x + conv(torch.zeros(2, 4, 8, 8))  # act(0) = 0: only the conv's bias is left
    assert torch.allclose(out, want, atol=1e-5), \
        "with Affine(z) = -1 the block must return skip(x) + conv(0): z_s = 1 + cond_emb_layers(z) multiplies AdaGN's output"
    with torch.no_grad():
        lin.bias.fill_(0.0)  # Affine(z) = 0 => z_s = 1: z no longer matters
        a, b = block(x, emb, cond), block(x, emb, -cond)
    assert torch.allclose(a, b, atol=1e-6), "with Affine(z) = 0 (z_s = 1) the output must not depend on z"


def test_adagn_z_steers_the_unet_and_gets_its_gradient(monkeypatch):
    unet = perturb(UNet(UNetConfig(res=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_res=(), dropout=0.0,
                                   embed_dim=16, cond_dim=4)), std=0.05)
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([100, 700])
    z = torch.randn(2, 4, generator=g, requires_grad=True)
    out = unet(x, t, z)
    out.square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0, \
        "z_sem must get a gradient through the decoder: it is the only way the encoder learns (Diff-AE §3.2)"
    monkeypatch.setattr(blocks.ResBlock, "forward", REFERENCE["forward"])
    monkeypatch.setattr(blocks, "ada_group_norm", REFERENCE["ada_group_norm"])
    with torch.no_grad():
        want = unet(x, t, z)
    assert torch.allclose(out.detach(), want, atol=1e-5), "the whole UNet with your blocks differs from the reference"
