"""The latent DDIM: an optional second stage that learns to sample z_sem (Diff-AE §4, App. A.1, Table 6).

The autoencoder alone can only *encode* images; to generate new ones we also need new z_sem.
After the autoencoder is trained and frozen, a small DDIM is fitted to the distribution of
z_sem = Enc(x0) over the training set (Eq. 9). Generating is then: sample z_sem with this latent
DDIM, un-normalise it, draw x_T ~ N(0, I), and decode (z_sem, x_T) with the image decoder.

Nothing here is needed for encoding, reconstruction, interpolation or manipulation.

The network mirrors the official MLPSkipNet (module names included: time_embed, layers.{i}.linear,
.linear_emb, .cond_layers, .norm), so the released latent nets load by stripping a prefix.
"""
from dataclasses import asdict, dataclass

import torch
from torch import nn

from diffusion import Diffusion
from nn import timestep_embedding


@dataclass
class LatentNetConfig:
    z_dim: int = 512                # z_sem size (Table 6); also the width of the time embedding
    hidden: int = 2048              # MLP hidden size (Table 6)
    num_layers: int = 10            # N in Table 6: 10 for CelebA/FFHQ, 20 for Horse/Bedroom
    skip_layers: tuple = None       # layers whose input also gets z_t concatenated; None = every layer 1..N-1
    time_emb_dim: int = 64          # width of the sinusoidal embedding of t
    num_time_layers: int = 2        # depth of the MLP that maps the embedding of t to the scales
    time_last_act: bool = False     # SiLU after that MLP's last linear (off in every released model)
    use_norm: bool = True           # LayerNorm in the hidden layers
    condition_bias: float = 1.0     # hidden units are scaled by (condition_bias + s(t)): 1 = identity at s = 0
    dropout: float = 0.0
    activation: str = "silu"        # of the hidden and time layers, a name in ACTIVATIONS (official MLPSkipNet option)
    last_act: str = "none"          # applied to the output (official option; eps needs "none")

    def __post_init__(self):
        if self.skip_layers is None:
            self.skip_layers = tuple(range(1, self.num_layers))
        self.skip_layers = tuple(int(i) for i in self.skip_layers)


# The official MLPSkipNet's activation choices (its Activation enum), by name.
ACTIVATIONS = {"none": nn.Identity, "relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.2), "silu": nn.SiLU,
               "tanh": nn.Tanh}


class TimeScaledLinear(nn.Module):
    """One MLP layer: linear -> scale by t -> LayerNorm -> SiLU (App. A.1: "conditioned on t by scaling").

    The scale is applied *before* the norm, as in the official MLPLNAct. The last layer of the net
    has no scale, no norm and no activation: it outputs eps.
    """

    def __init__(self, d_in, d_out, cond_dim, last=False, use_norm=True, condition_bias=1.0, dropout=0.0,
                 activation="silu"):
        super().__init__()
        self.use_cond, self.condition_bias = not last, condition_bias
        self.linear = nn.Linear(d_in, d_out)
        self.act = ACTIVATIONS["none" if last else activation]()
        if self.use_cond:
            self.linear_emb = nn.Linear(cond_dim, d_out)
            # The same linear twice under two names: the official state dict holds both keys.
            self.cond_layers = nn.Sequential(ACTIVATIONS[activation](), self.linear_emb)
        self.norm = nn.LayerNorm(d_out) if use_norm and not last else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 and not last else nn.Identity()
        if not last:  # He init for the SiLU layers, as the official code; the output layer keeps PyTorch's
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_normal_(m.weight, a=0, nonlinearity="relu")

    def forward(self, h, cond):
        h = self.linear(h)
        if self.use_cond:
            h = h * (self.condition_bias + self.cond_layers(cond))  # (B, d_out) scaled per unit by t
        return self.dropout(self.act(self.norm(h)))


class LatentNet(nn.Module):
    """eps_omega(z_t, t): MLP + skip connections (Diff-AE App. A.1, Fig. 8, Table 6).

    Each skip layer sees the previous layer's output concatenated with the network input z_t, so
    the noisy code stays visible at every depth.
    """

    def __init__(self, cfg: LatentNetConfig):
        super().__init__()
        self.cfg = cfg
        D, H = cfg.z_dim, cfg.hidden
        time_layers = []
        for i in range(cfg.num_time_layers):
            time_layers.append(nn.Linear(cfg.time_emb_dim if i == 0 else D, D))
            if i < cfg.num_time_layers - 1 or cfg.time_last_act:
                time_layers.append(ACTIVATIONS[cfg.activation]())
        self.time_embed = nn.Sequential(*time_layers)

        self.layers = nn.ModuleList()
        for i in range(cfg.num_layers):
            last = i == cfg.num_layers - 1
            d_in = D if i == 0 else H
            d_in += D if i in cfg.skip_layers else 0
            self.layers.append(TimeScaledLinear(d_in, D if last else H, D, last=last, use_norm=cfg.use_norm,
                                                condition_bias=cfg.condition_bias, dropout=cfg.dropout,
                                                activation=cfg.activation))
        self.last_act = ACTIVATIONS[cfg.last_act]()

    def forward(self, z_t, t):
        cond = self.time_embed(timestep_embedding(t, self.cfg.time_emb_dim))  # (B, D)
        h = z_t
        for i, layer in enumerate(self.layers):
            if i in self.cfg.skip_layers:
                h = torch.cat([h, z_t], dim=1)  # (B, H + D): re-inject the input
            h = layer(h, cond)
        return self.last_act(h)  # (B, D): the predicted noise


class LatentDDIM(nn.Module):
    """The latent DDIM p_omega(z_{t-1} | z_t) on normalised z_sem (Diff-AE §4, Eq. 9).

    z_sem is normalised to zero mean and unit variance per dimension before the diffusion (§4:
    "first normalized"), so that the N(0, I) the sampler starts from matches the data's scale;
    sample() returns un-normalised codes, ready for the decoder.
    """

    def __init__(self, net_cfg: LatentNetConfig = None, T=1000, schedule="const", znormalize=True,
                 grid="diffae", clip=False):
        super().__init__()
        net_cfg = net_cfg or LatentNetConfig()
        self.net = LatentNet(net_cfg)
        self.register_buffer("mean", torch.zeros(net_cfg.z_dim))  # statistics of z_sem over the training set
        self.register_buffer("std", torch.ones(net_cfg.z_dim))
        self.diffusion = Diffusion(T, schedule, grid=grid)  # App. A.1: constant betas of 0.008 beat linear and cosine
        # znormalize=False only for imported official models trained on raw z (latent_znormalize=False).
        self.znormalize = znormalize
        # clip=True is PDAE's latent sampler: z_T ~ N(0, I) clamped to [-1, 1] and every step's predicted
        # normalised z_0 clipped to [-1, 1]; Diff-AE's (clip=False) leaves both unbounded.
        self.clip = clip
        self.config = {"net": asdict(net_cfg), "T": T, "schedule": schedule, "znormalize": znormalize,
                       "grid": grid, "clip": clip}

    @classmethod
    def from_config(cls, d):
        return cls(LatentNetConfig(**d["net"]), T=d.get("T", 1000), schedule=d.get("schedule", "const"),
                   znormalize=d.get("znormalize", True), grid=d.get("grid", "diffae"), clip=d.get("clip", False))

    @torch.no_grad()
    def set_stats(self, z_all):
        """Per-dimension mean and (unbiased) std of the training codes z_all (N, D), in float32."""
        z_all = z_all.float()
        self.mean.copy_(z_all.mean(0))
        self.std.copy_(z_all.std(0))

    def normalize(self, z):
        return (z - self.mean) / self.std

    def denormalize(self, zn):
        return zn * self.std + self.mean

    def loss(self, z, t=None, noise=None, generator=None):
        """Diff-AE Eq. 9: E_t,eps ||eps_omega(z_t, t) - eps||_1; L1 beat L2 for the latent (App. A.1).

        z are raw codes from the frozen encoder; t ~ U[0, T) and eps ~ N(0, I) unless given.
        """
        zn = self.normalize(z) if self.znormalize else z
        return self.diffusion.loss(self.net, zn, t=t, noise=noise, kind="l1", generator=generator)

    @torch.no_grad()
    def sample(self, n, steps, generator=None, device=None):
        """n new codes z_sem (n, D), un-normalised: DDIM from N(0, I) in `steps` respaced steps.

        Without `clip`, the predicted z_0 is not clipped: normalised codes are not bounded in [-1, 1]
        (Diff-AE's latent_clip_sample=False). With it, PDAE's official sampler: clamp the start and
        clip each step's z_0 to [-1, 1].
        """
        device = device if device is not None else self.mean.device
        z_T = torch.randn(n, self.net.cfg.z_dim, generator=generator).to(device)
        if self.clip:
            z_T = z_T.clamp(-1, 1)
        zn = self.diffusion.ddim_sample(self.net, z_T, steps, clip=self.clip)
        return self.denormalize(zn) if self.znormalize else zn
