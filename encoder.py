"""Semantic encoders x0 -> z_sem (Diff-AE §3.2; PDAE §3.3).

No loss touches z directly: the encoder learns only because the decoder's denoising loss
(Diff-AE Eq. 6) back-propagates through z into it. A z that carries nothing useful cannot lower
that loss, so the gradient pushes z to describe what the noisy x_t alone cannot tell.
"""
from dataclasses import dataclass

from torch import nn

from nn import AttentionBlock, EmbedSequential, ResBlock, attention, normalization, resampler


@dataclass
class EncoderConfig:
    res: int = 32
    ch: int = 64
    ch_mult: tuple = (1, 2, 4, 8, 8)   # Table 5 "Encoder ch. mult." (one level deeper than the UNet)
    num_res_blocks: int = 2
    attn_res: tuple = (16,)
    z_dim: int = 512
    num_heads: int = 1
    norm_groups: int = 32
    in_ch: int = 3
    head_ch: int = None                # as UNetConfig's: options only imported official models use
    new_attention_order: bool = False
    resample: str = "resblock"         # "resblock", "conv" (a stride-2 conv) or "pool" between levels


class SemanticEncoder(nn.Module):
    """Diff-AE's encoder: the first half of the UNet (no time input), pooled to a z_sem vector."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        G = cfg.norm_groups
        ch = cfg.ch * cfg.ch_mult[0]
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_ch, ch, 3, padding=1))])
        res = cfg.res
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, cfg.ch * mult, groups=G)]
                ch = cfg.ch * mult
                if res in cfg.attn_res:
                    layers.append(attention(cfg, ch))
                self.input_blocks.append(EmbedSequential(*layers))
            if level < len(cfg.ch_mult) - 1:
                down = resampler(cfg.resample, ch, lambda a, b, **kw: ResBlock(a, b, groups=G, **kw), up=False)
                self.input_blocks.append(EmbedSequential(down))
                res //= 2
        self.middle_block = EmbedSequential(ResBlock(ch, ch, groups=G), attention(cfg, ch), ResBlock(ch, ch, groups=G))
        self.out = nn.Sequential(normalization(ch, G), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Conv2d(ch, cfg.z_dim, 1), nn.Flatten())

    def forward(self, x):
        h = x
        for block in self.input_blocks:
            h = block(h)
        return self.out(self.middle_block(h))  # (B, z_dim)


@dataclass
class PDAEEncoderConfig:
    res: int = 128
    ch: int = 64
    ch_mult: tuple = (1, 2, 4, 4, 4)  # one stride-2 conv per entry: 128 -> 4 (official FFHQ-128: 64,128,256,256,256)
    attn_res: tuple = (16,)           # feature-map resolutions followed by self-attention
    num_heads: int = 4
    z_dim: int = 512
    norm_groups: int = 32
    in_ch: int = 3


class PDAEEncoder(nn.Module):
    """PDAE §3.3's encoder: stacked stride-2 convolutions (GroupNorm + SiLU between) and one linear layer to z.

    No time input and no residual blocks: PDAE finds this enough, since the frozen DPM already
    knows how to denoise and z only has to say which image it is.
    """

    def __init__(self, cfg: PDAEEncoderConfig):
        super().__init__()
        self.cfg = cfg
        n_down = len(cfg.ch_mult)
        if cfg.res % 2 ** n_down:
            raise ValueError(f"res {cfg.res} is not divisible by 2^{n_down} (one halving per ch_mult entry)")
        layers, ch_in, res = [], cfg.in_ch, cfg.res
        for i, mult in enumerate(cfg.ch_mult):
            if i > 0:
                layers += [normalization(ch_in, cfg.norm_groups), nn.SiLU()]
            ch_out, res = cfg.ch * mult, res // 2
            layers.append(nn.Conv2d(ch_in, ch_out, 3, stride=2, padding=1))  # (B, ch_out, res, res)
            if res in cfg.attn_res:
                layers.append(AttentionBlock(ch_out, cfg.num_heads, cfg.norm_groups))
            ch_in = ch_out
        layers += [normalization(ch_in, cfg.norm_groups), nn.SiLU(), nn.Flatten(),  # (B, C * res * res)
                   nn.Linear(ch_in * res * res, cfg.z_dim)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)  # (B, z_dim)
