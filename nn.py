"""Building blocks of the ADM UNet as Diff-AE uses it (Dhariwal & Nichol; Diff-AE Fig. 7a, Eq. 7).

Module names (in_layers, emb_layers, cond_emb_layers, out_layers, skip_connection, qkv, proj_out)
follow the official Diff-AE code so that its released checkpoints load by renaming prefixes only.
"""
import hashlib
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def zero_module(module):
    """Zero a module's parameters: residual branches start as the identity (ADM's init)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of (original, unrespaced) timesteps: [cos | sin] of t * freq."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb  # (B, dim)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the autocast dtype: its statistics overflow in fp16."""

    def forward(self, x):
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).type(x.dtype)


def normalization(channels, groups=32):
    """GroupNorm with 32 groups as ADM; widths that `groups` does not divide fall back to a divisor.

    A group of one channel (32 groups on a 32-channel map) subtracts each channel's own spatial
    mean, so nothing after it can know the image's mean colour; the CPU presets pass fewer groups.
    """
    groups = min(groups, channels)
    if channels % groups:
        groups = math.gcd(groups, channels)
    return GroupNorm32(groups, channels)


def ada_group_norm(h, norm, t_scale, t_shift, z_scale=None):
    """Diff-AE Eq. 7: AdaGN(h, t, z) = z_s * (t_s * GroupNorm(h) + t_b).

    Callers pass t_s = 1 + MLP(t) and z_s = 1 + Affine(z): a zero-initialised network starts
    as plain GroupNorm. With z_scale=None this is the unconditional DDIM's AdaGN.
    """
    h = t_scale * norm(h) + t_shift
    if z_scale is not None:
        h = z_scale * h
    return h


class Downsample(nn.Module):
    """2x average pooling (inside a ResBlock, as ADM's resblock_updown does), or with `channels` a
    stride-2 3x3 conv between levels (ADM's conv_resample when resblock_updown is off)."""

    def __init__(self, channels=None):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if channels else nn.AvgPool2d(2)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """2x nearest-neighbour upsampling, followed with `channels` by a 3x3 conv (ADM's conv_resample)."""

    def __init__(self, channels=None):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if channels else None

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """ADM residual block, optionally resampling, conditioned on t (and z) through AdaGN.

    emb_dim=None gives the unconditioned block of Diff-AE's semantic encoder: a single
    norm-act-conv branch. cond_dim adds the z_sem scale of Eq. 7.
    """

    def __init__(self, ch_in, ch_out, emb_dim=None, cond_dim=None, dropout=0.0, up=False, down=False, groups=32):
        super().__init__()
        self.in_layers = nn.Sequential(normalization(ch_in, groups), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1))
        self.resample = Upsample() if up else Downsample() if down else None
        self.conditioned = emb_dim is not None
        if self.conditioned:
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * ch_out))  # -> (t_s, t_b)
            if cond_dim is not None:
                self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, ch_out))  # -> z_s
            self.out_layers = nn.Sequential(
                normalization(ch_out, groups), nn.SiLU(), nn.Dropout(dropout),
                zero_module(nn.Conv2d(ch_out, ch_out, 3, padding=1)))
        self.skip_connection = nn.Identity() if ch_in == ch_out else nn.Conv2d(ch_in, ch_out, 1)

    def forward(self, x, emb=None, cond=None):
        if self.resample is not None:  # resample between the activation and the conv, skip path too
            h = self.in_layers[:-1](x)
            h, x = self.resample(h), self.resample(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        if self.conditioned:
            t_s, t_b = self.emb_layers(emb).type(h.dtype)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
            z_s = None
            if cond is not None and hasattr(self, "cond_emb_layers"):
                z_s = 1 + self.cond_emb_layers(cond).type(h.dtype)[:, :, None, None]
            norm, act, drop, conv = self.out_layers
            h = conv(drop(act(ada_group_norm(h, norm, 1 + t_s, t_b, z_s))))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all pixels, through F.scaled_dot_product_attention.

    The qkv projection is laid out per head as (q, k, v), as in ADM's legacy attention order,
    so official weights load unchanged; new_order=True reads ADM's other layout (q, k, v, each split
    into heads: use_new_attention_order), the same weights arranged differently.
    """

    def __init__(self, channels, num_heads=1, groups=32, new_order=False):
        super().__init__()
        self.num_heads, self.new_order = num_heads, new_order
        self.norm = normalization(channels, groups)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        B, C, H, W = x.shape
        x = x.reshape(B, C, H * W)  # (B, C, L)
        layout = "b (three h c) l" if self.new_order else "b (h three c) l"
        qkv = rearrange(self.qkv(self.norm(x)), f"{layout} -> three b h l c", h=self.num_heads, three=3)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, L, C/heads)
        a = rearrange(a, "b h l c -> b (h c) l")
        return (x + self.proj_out(a)).reshape(B, C, H, W)


def resampler(kind, ch, block, up):
    """The layer between two levels of a UNet half: inside a ResBlock made by `block` ("resblock", ADM's
    resblock_updown), a stride-2 conv / nearest + 3x3 conv ("conv", ADM's conv_resample) or pooling /
    nearest alone ("pool")."""
    if kind == "resblock":
        return block(ch, ch, up=up, down=not up)
    if kind not in ("conv", "pool"):
        raise ValueError(f"resample={kind!r}; expected 'resblock', 'conv' or 'pool'")
    width = ch if kind == "conv" else None
    return Upsample(width) if up else Downsample(width)


def attention(cfg, channels):
    """The self-attention block at a width, as a UNetConfig or EncoderConfig asks: cfg.num_heads heads, or
    channels // cfg.head_ch when head_ch is set (ADM's num_head_channels: heads grow with the width)."""
    if cfg.head_ch and channels % cfg.head_ch:
        raise ValueError(f"head_ch={cfg.head_ch} does not divide an attention width of {channels} channels")
    heads = channels // cfg.head_ch if cfg.head_ch else cfg.num_heads
    return AttentionBlock(channels, heads, cfg.norm_groups, cfg.new_attention_order)


class EmbedSequential(nn.Sequential):
    """A stack of layers where ResBlocks also receive the time embedding and z."""

    def forward(self, x, emb=None, cond=None):
        for layer in self:
            x = layer(x, emb, cond) if isinstance(layer, ResBlock) else layer(x)
        return x


def weights_sha256(state_dict):
    """A content hash of network weights: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        v = state_dict[k].detach().cpu().contiguous()
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)};".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
