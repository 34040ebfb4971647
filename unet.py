"""The ADM UNet noise predictor eps(x_t, t[, z]) (Diff-AE §3.1, Fig. 7a, Table 5).

cond_dim=None is the plain DDIM baseline; cond_dim=d makes it the Diff-AE decoder, where z_sem
enters every ResBlock through the AdaGN scale of Eq. 7.
"""
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffusion import Diffusion
from nn import EmbedSequential, ResBlock, attention, normalization, resampler, timestep_embedding, zero_module


@dataclass
class UNetConfig:
    res: int = 32                 # image resolution (decides where attention goes)
    ch: int = 64                  # base channels
    ch_mult: tuple = (1, 2, 4, 8)
    num_res_blocks: int = 2
    attn_res: tuple = (16,)       # pixel resolutions that get self-attention
    dropout: float = 0.1
    embed_dim: int = 512          # width of the time embedding (and AdaGN's input)
    cond_dim: int = None          # size of z_sem; None = unconditional DDIM
    num_heads: int = 1
    norm_groups: int = 32         # GroupNorm groups (ADM: 32); see nn.normalization for the CPU presets' 8
    in_ch: int = 3
    out_ch: int = 3
    grad_checkpoint: bool = False  # recompute blocks in backward: less memory, more time
    input_skip: dict = None       # CPU presets: eps = sqrt(1 - alphabar_t) x_t + net(x_t, t, z) on this
                                  # schedule ({"T": .., "schedule": ..}); None = ADM's plain output
    # ADM options that only imported official models use (official.py, official_pdae.py):
    head_ch: int = None           # channels per attention head (num_head_channels); None = num_heads heads
    new_attention_order: bool = False  # qkv split into q, k, v before heads (use_new_attention_order)
    resample: str = "resblock"    # levels change size inside a ResBlock ("resblock"), by a strided /
                                  # nearest + 3x3 conv ("conv") or by pooling / nearest alone ("pool")
    time_embed_ch: int = None     # width of the sinusoidal embedding of t; None = ch


def skip_channels(cfg: UNetConfig):
    """Channels of every input-block output (the skips), in order: the conv, then per level its blocks and downsample."""
    chs = [cfg.ch * cfg.ch_mult[0]]
    for level, mult in enumerate(cfg.ch_mult):
        chs += [cfg.ch * mult] * cfg.num_res_blocks
        if level < len(cfg.ch_mult) - 1:
            chs.append(cfg.ch * mult)
    return chs


def decoder_half(cfg: UNetConfig, block, attn):
    """Middle block, output blocks (one per skip, deepest first) and output layer, built from `block`.

    The UNet builds its own with this; PDAE's gradient estimator builds a second one with other blocks.
    """
    skip_chs = skip_channels(cfg)
    ch, res = skip_chs[-1], cfg.res // 2 ** (len(cfg.ch_mult) - 1)
    middle = EmbedSequential(block(ch, ch), attn(ch), block(ch, ch))
    output_blocks = nn.ModuleList()
    for level, mult in reversed(list(enumerate(cfg.ch_mult))):
        for i in range(cfg.num_res_blocks + 1):
            layers = [block(ch + skip_chs.pop(), cfg.ch * mult)]
            ch = cfg.ch * mult
            if res in cfg.attn_res:
                layers.append(attn(ch))
            if level > 0 and i == cfg.num_res_blocks:
                layers.append(resampler(cfg.resample, ch, block, up=True))
                res *= 2
            output_blocks.append(EmbedSequential(*layers))
    out = nn.Sequential(normalization(ch, cfg.norm_groups), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.out_ch, 3, padding=1)))
    return middle, output_blocks, out


def check_input_skip(cfg: UNetConfig, diffusion):
    """The eps skip must use the schedule the model is trained and sampled with."""
    if cfg.input_skip is not None and (cfg.input_skip.get("T"), cfg.input_skip.get("schedule")) != (diffusion.T, diffusion.schedule):
        raise ValueError(f"the UNet's input_skip schedule {cfg.input_skip} differs from the diffusion's "
                         f"(T={diffusion.T}, schedule={diffusion.schedule!r})")


def run_block(net, block, h, emb, cond):
    """block(h, emb, cond), recomputed in backward when net.cfg.grad_checkpoint is set (less memory)."""
    if net.cfg.grad_checkpoint and net.training and torch.is_grad_enabled():
        return checkpoint(block, h, emb, cond, use_reentrant=False)
    return block(h, emb, cond)


class UNet(nn.Module):
    """eps_theta(x_t, t, z). Skip connections join each encoder-half output to one decoder block."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        E, Z = cfg.embed_dim, cfg.cond_dim
        block = lambda a, b, **kw: ResBlock(a, b, E, Z, cfg.dropout, groups=cfg.norm_groups, **kw)
        attn = lambda c: attention(cfg, c)
        self.time_embed = nn.Sequential(nn.Linear(cfg.time_embed_ch or cfg.ch, E), nn.SiLU(), nn.Linear(E, E))

        ch = cfg.ch * cfg.ch_mult[0]
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_ch, ch, 3, padding=1))])
        res = cfg.res
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [block(ch, cfg.ch * mult)]
                ch = cfg.ch * mult
                if res in cfg.attn_res:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbedSequential(*layers))
            if level < len(cfg.ch_mult) - 1:
                self.input_blocks.append(EmbedSequential(resampler(cfg.resample, ch, block, up=False)))
                res //= 2
        self.middle_block, self.output_blocks, self.out = decoder_half(cfg, block, attn)
        if cfg.input_skip is not None:
            if cfg.out_ch != cfg.in_ch:
                raise ValueError("input_skip adds x_t to the output: it needs out_ch == in_ch")
            ab = Diffusion(**cfg.input_skip).alphas_cumprod
            self.register_buffer("skip_coef", (1 - ab).sqrt().float(), persistent=False)  # (T,)

    def embed_time(self, t):
        return self.time_embed(timestep_embedding(t, self.cfg.time_embed_ch or self.cfg.ch))  # (B, E)

    def _run(self, block, h, emb, cond):
        return run_block(self, block, h, emb, cond)

    def encode_half(self, x, emb, cond=None):
        """The input blocks: returns every intermediate feature map (the skips; the last is the deepest).

        PDAE reuses exactly this half of a frozen pre-trained UNet.
        """
        hs, h = [], x
        for block in self.input_blocks:
            h = self._run(block, h, emb, cond)
            hs.append(h)
        return hs

    def decode_half(self, hs, emb, cond=None):
        """Middle block, then output blocks fed by the skips in reverse order."""
        hs = list(hs)
        h = self._run(self.middle_block, hs[-1], emb, cond)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, hs.pop()], dim=1), emb, cond)  # (B, C + C_skip, H, W)
        return self.out(h)

    def add_input_skip(self, out, x, t):
        """eps = sqrt(1 - alphabar_t) x_t + out when cfg.input_skip is set, else out.

        sqrt(1 - alphabar_t) x_t is E[eps | x_t] for unit-variance data, nearly exact at large t,
        where a small, briefly trained net is *worse* than it (docs/RESULTS.md, "The `toy32`
        recipe"): the net then learns only the correction, which carries x0 (and z_sem).
        The loss is still Eq. 6 on eps; only the network's form changes.
        """
        if self.cfg.input_skip is None:
            return out
        return out + self.skip_coef[t.to(self.skip_coef.device)].view(-1, 1, 1, 1).to(out.dtype) * x

    def forward(self, x, t, z=None):
        if (z is None) != (self.cfg.cond_dim is None):
            raise ValueError(f"this UNet has cond_dim={self.cfg.cond_dim}; pass z exactly when cond_dim is set")
        emb = self.embed_time(t)
        return self.add_input_skip(self.decode_half(self.encode_half(x, emb, z), emb, z), x, t)
