"""Building blocks: AdaGN (Diff-AE Eq. 7), timestep embedding, attention, ResBlock."""
import math

import pytest
import torch

from nn import AttentionBlock, ResBlock, ada_group_norm, normalization, timestep_embedding


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adagn_with_unit_scales_is_groupnorm(seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2, 64, 5, 5, generator=g) * 3 + 1
    norm = normalization(64)
    ones, zeros = torch.ones(2, 64, 1, 1), torch.zeros(2, 64, 1, 1)
    assert torch.allclose(ada_group_norm(h, norm, ones, zeros, ones), norm(h))
    assert torch.allclose(ada_group_norm(h, norm, ones, zeros), norm(h))
    # and in general z_s * (t_s * GN(h) + t_b)
    ts, tb, zs = (torch.randn(2, 64, 1, 1, generator=g) for _ in range(3))
    assert torch.allclose(ada_group_norm(h, norm, ts, tb, zs), zs * (ts * norm(h) + tb), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_one_channel_groups_erase_channel_means_and_wider_groups_keep_them(seed):
    # why the CPU presets use 8 groups: with 32 groups on 32 channels (ADM's rule at a small width)
    # adding any constant to a channel changes nothing downstream, so the mean colour is invisible
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2, 32, 6, 6, generator=g)
    shift = torch.randn(2, 32, 1, 1, generator=g)
    one_per_group, four_per_group = normalization(32), normalization(32, groups=8)
    assert one_per_group.num_groups == 32 and four_per_group.num_groups == 8
    assert torch.allclose(one_per_group(h + shift), one_per_group(h), atol=1e-5)
    assert (four_per_group(h + shift) - four_per_group(h)).abs().max() > 0.1
    # a width the group count does not divide falls back to a common divisor
    assert normalization(24, groups=16).num_groups == 8


def test_groupnorm_runs_in_float32():
    norm = normalization(32)
    h = torch.randn(2, 32, 4, 4).to(torch.bfloat16)
    out = norm(h)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), norm(h.float()), atol=2e-2)


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 1, 17, 999])
    dim = 8
    e = timestep_embedding(t, dim)
    for i, ti in enumerate(t.tolist()):
        for k in range(dim // 2):
            f = math.exp(-math.log(10000) * k / (dim // 2))
            assert e[i, k] == pytest.approx(math.cos(ti * f), abs=1e-5)
            assert e[i, dim // 2 + k] == pytest.approx(math.sin(ti * f), abs=1e-5)


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_equals_legacy_einsum_form(heads):
    """SDPA with the per-head (q, k, v) layout equals ADM's legacy QKV attention written out."""
    torch.manual_seed(heads)
    blk = AttentionBlock(16, heads)
    torch.nn.init.normal_(blk.proj_out.weight)
    x = torch.randn(2, 16, 4, 4)
    B, C, L = 2, 16, 16
    qkv = blk.qkv(blk.norm(x.reshape(B, C, L)))
    ch = C // heads
    q, k, v = qkv.reshape(B * heads, 3 * ch, L).split(ch, dim=1)
    w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(ch), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(B, C, L)
    ref = (x.reshape(B, C, L) + blk.proj_out(a)).reshape(B, C, 4, 4)
    assert torch.allclose(blk(x), ref, atol=1e-5)


def test_resblock_starts_as_identity_and_resamples():
    x = torch.randn(2, 8, 8, 8)
    emb = torch.randn(2, 16)
    assert torch.equal(ResBlock(8, 8, 16)(x, emb), x)  # zero-initialised residual branch (ADM)
    assert ResBlock(8, 12, 16, down=True)(x, emb).shape == (2, 12, 4, 4)
    assert ResBlock(8, 8, 16, cond_dim=4, up=True)(x, emb, torch.randn(2, 4)).shape == (2, 8, 16, 16)
    assert ResBlock(8, 8)(x).shape == x.shape  # the encoder's unconditioned block
