"""PDAE: an autoencoder around a *frozen* pre-trained DPM (Zhang et al., NeurIPS 2022, §3).

The pre-trained unconditional eps_theta(x_t, t) cannot say which image x_t came from: its
posterior mean mu_theta(x_t, t) misses the true q(x_{t-1} | x_t, x0) mean by a "posterior mean
gap" (§3.1). PDAE learns z = E_phi(x0) and a gradient estimator G_psi(x_t, z, t), read as the
score grad_x_t log p(z | x_t) of an implicit classifier, so that the classifier-guided mean
shift Sigma_t * G fills that gap (Eq. 5, 7). The encoder learns only through this denoising loss:
a z that says nothing about x0 cannot shrink the gap, so the gradient makes z describe x0.

Sampling never needs a new loop: PDAE hands the samplers of diffusion.py a shifted noise
predictor eps_hat = eps_theta - c_t * G, with
  c_t = sqrt(1 - alphabar_t)                                  for DDIM and its inversion (Eq. 6, 8),
  c_t = sqrt(alpha_t) sqrt(1 - alphabar_t) / beta_t * Sigma_t  for DDPM and training (Eq. 5, 7).
G_psi reuses the frozen UNet's input blocks and time embedding: one encoder-half pass per step
feeds both eps_theta's decoder half and G's new middle/output blocks (Fig. 2).
"""
from dataclasses import asdict, replace

import torch
from torch import nn

from diffusion import Diffusion, _bcast, posterior_variance_on
from encoder import PDAEEncoder, PDAEEncoderConfig
from nn import ResBlock, ada_group_norm, attention, weights_sha256
from unet import UNet, UNetConfig, check_input_skip, decoder_half, run_block


# --- schedule coefficients (float64, length T) ----------------------------------------------

GAMMA = 0.1  # Eq. 10's gamma, the paper's choice (§3.4)

def snr(d):
    """SNR(t) = alphabar_t / (1 - alphabar_t)."""
    return d.alphas_cumprod / (1 - d.alphas_cumprod)


def loss_weights(d, gamma=GAMMA):
    """lambda_t of PDAE Eq. 10, (1/(1+SNR))^(1-gamma) * (SNR/(1+SNR))^gamma, which simplifies to this.

    The first factor down-weights the early (high-SNR) steps, the second the late (low-SNR) ones;
    it peaks at SNR = gamma / (1 - gamma), the "critical stage" of §3.4.
    """
    s = snr(d)
    return s ** gamma / (1 + s)  # PDAE Eq. 10


def _mean_shift_coef_on(ab):
    """c_t along a chain given by its alphabar sequence (the full schedule or a respaced one)."""
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    alpha = ab / ab_prev
    beta = 1 - alpha
    sigma = posterior_variance_on(ab)
    return alpha.sqrt() * (1 - ab).sqrt() / beta * sigma   # PDAE Eq. 7


def mean_shift_coef(d, steps=None):
    """c_t = sqrt(alpha_t) sqrt(1 - alphabar_t) / beta_t * Sigma_t >= 0, the coefficient of G in Eq. 7.

    Sign convention. Eq. 5 moves the DDPM mean by +Sigma_t G. Since
    mu = (x_t - beta_t / sqrt(1 - alphabar_t) * eps) / sqrt(alpha_t), raising mu by Sigma_t G is
    the same as *lowering* eps by c_t G:  eps_hat = eps_theta - c_t G, and Eq. 7 is
    ||eps - (eps_theta - c_t G)||^2. This function returns the positive c_t and every caller
    subtracts c_t * G. (The official code stores -c_t as `shift_coef` and adds it: the same thing.)
    Flipping only one of the two signs trains G to point *away* from z, and then the DDIM guidance
    of Eq. 6, which subtracts sqrt(1 - alphabar_t) G, pushes samples away from their code.

    c_0 = 0 (Sigma_0 = 0). With `steps`, the coefficient of the respaced chain a `steps`-step
    d.ddpm_sample walks (its own alpha, beta and Sigma), stored at the original timesteps (0 elsewhere).
    """
    if steps is None or steps == d.T:
        return _mean_shift_coef_on(d.alphas_cumprod)
    ts = d.respace(steps, rule="even")  # the timesteps ddpm_sample visits (tests/test_pdae.py checks they agree)
    out = torch.zeros(d.T, dtype=torch.float64)
    out[ts] = _mean_shift_coef_on(d.alphas_cumprod[ts])
    return out


def ddim_shift_coef(d):
    """sqrt(1 - alphabar_t): the coefficient of G in the DDIM noise predictor, PDAE Eq. 6."""
    return (1 - d.alphas_cumprod).sqrt()


# --- the gradient estimator G_psi(x_t, z, t) ------------------------------------------------

class ShiftResBlock(ResBlock):
    """ResBlock whose AdaGN scales and shifts twice, PDAE Eq. 9: z_s (t_s GroupNorm(h) + t_b) + z_b."""

    def __init__(self, ch_in, ch_out, emb_dim, cond_dim, dropout=0.0, up=False, down=False, groups=32):
        super().__init__(ch_in, ch_out, emb_dim, None, dropout, up=up, down=down, groups=groups)
        self.z_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * ch_out))  # -> (z_s, z_b)

    def forward(self, x, emb=None, cond=None):
        if self.resample is not None:
            h = self.in_layers[:-1](x)
            h, x = self.resample(h), self.resample(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        t_s, t_b = self.emb_layers(emb).type(h.dtype)[:, :, None, None].chunk(2, dim=1)   # (B, C, 1, 1) each
        z_s, z_b = self.z_emb_layers(cond).type(h.dtype)[:, :, None, None].chunk(2, dim=1)
        norm, act, drop, conv = self.out_layers
        h = ada_group_norm(h, norm, 1 + t_s, t_b, 1 + z_s) + z_b  # PDAE Eq. 9
        return self.skip_connection(x) + conv(drop(act(h)))


class GradientEstimator(nn.Module):
    """PDAE §3.3, Fig. 2: G_psi(x_t, z, t), the new half of a UNet on top of a frozen one.

    It owns only new blocks: a middle block, output blocks and an output layer mirroring the
    pre-trained UNet's, fed by that UNet's skips and time embedding (passed in, not copied), with
    z entering every ResBlock through Eq. 9's AdaGN. The output layer is zero-initialised, so
    G == 0 at the start and PDAE starts exactly as the pre-trained DPM.
    """

    def __init__(self, cfg: UNetConfig, z_dim):
        super().__init__()
        self.cfg = cfg
        E = cfg.embed_dim
        block = lambda a, b, **kw: ShiftResBlock(a, b, E, E, cfg.dropout, groups=cfg.norm_groups, **kw)
        attn = lambda c: attention(cfg, c)  # the frozen UNet's heads at every width
        self.z_embed = nn.Linear(z_dim, E)  # z -> the vector every block's (z_s, z_b) projection reads

        # the same middle/decoder/output layout as the pre-trained UNet's, with Eq. 9 blocks; out_ch = in_ch
        self.middle_block, self.output_blocks, self.out = decoder_half(replace(cfg, out_ch=cfg.in_ch), block, attn)

    def _run(self, block, h, emb, c):
        return run_block(self, block, h, emb, c)

    def forward(self, hs, emb, z):
        """hs: the frozen UNet's encode_half outputs; emb: its time embedding; z: (B, z_dim)."""
        c = self.z_embed(z)  # (B, E)
        hs, h = list(hs), hs[-1]  # a copy: the loop below pops the skips, and the caller may reuse them
        if h.device.type == "cpu" and torch.is_grad_enabled():
            # torch's CPU GroupNorm backward segfaults on a channels-last input that needs no grad
            # (the frozen skips of NHWC images, e.g. toyfaces'). Only this one meets a GroupNorm
            # alone (the others are concatenated with h, which has a grad), so let it ask for a
            # grad rather than copy every skip to NCHW, which costs G time.
            h = h.detach().requires_grad_()
        h = self._run(self.middle_block, h, emb, c)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, hs.pop()], dim=1), emb, c)  # (B, C + C_skip, H, W)
        return self.out(h)  # (B, in_ch, H, W), the shape of x_t


class LabelEmbedding(nn.Module):
    """§4.6's class-conditional G_psi(x_t, y, t): z is a learned embedding of the label y, not E(x0).

    y is a float vector (B, n_labels) (one-hot class or binary attributes) or class indices (B,).
    """

    def __init__(self, n_labels, z_dim):
        super().__init__()
        self.n_labels, self.z_dim = n_labels, z_dim
        self.proj = nn.Linear(n_labels, z_dim)

    def forward(self, y):
        if y.dim() == 1 and not y.is_floating_point():
            y = nn.functional.one_hot(y, self.n_labels)
        if y.dim() != 2 or y.shape[1] != self.n_labels:
            raise ValueError(f"this PDAE is conditioned on labels (§4.6): encode(y) takes labels of shape "
                             f"(B, {self.n_labels}) or class indices (B,), got a tensor of shape {tuple(y.shape)}")
        return self.proj(y.float())  # (B, z_dim)


# --- the autoencoder --------------------------------------------------------------------------

def _tuples(d):
    """A config dict with lists (as a checkpoint may hold them) back to the dataclasses' tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


class PDAE(nn.Module):
    """A frozen pre-trained DPM eps_theta (.unet) + a trained encoder (.encoder) and G_psi (.G).

    The same interface as diffae.DiffAE (encode, eps_fn, encode_stochastic, decode, reconstruct),
    so every sample.py command works on either. `encoder` is a PDAEEncoder (x0 -> z) or, for the
    class-conditional variant of §4.6, a LabelEmbedding (y -> z).
    """

    def __init__(self, unet_cfg: UNetConfig, encoder: nn.Module, diffusion: Diffusion = None, gamma=GAMMA):
        super().__init__()
        if unet_cfg.cond_dim is not None:
            raise ValueError("PDAE needs an unconditional pre-trained UNet (cond_dim=None)")
        self.unet = UNet(unet_cfg).requires_grad_(False).eval()  # eps_theta: frozen, always in eval mode
        label = isinstance(encoder, LabelEmbedding)
        self.encoder = encoder
        self.G = GradientEstimator(unet_cfg, encoder.z_dim if label else encoder.cfg.z_dim)
        self.diffusion = diffusion or Diffusion()
        check_input_skip(unet_cfg, self.diffusion)
        self.latent = None  # the optional latent DDIM over z (latent_ddim.LatentDDIM), for unconditional sampling
        self.gamma = gamma
        self.weights = loss_weights(self.diffusion, gamma)          # lambda_t, Eq. 10
        self.ddpm_coef = mean_shift_coef(self.diffusion)            # c_t of Eq. 5 and 7
        self.ddim_coef = ddim_shift_coef(self.diffusion)            # sqrt(1 - alphabar_t) of Eq. 6
        self.config = {
            "unet": asdict(unet_cfg),
            "encoder": {"n_labels": encoder.n_labels, "z_dim": encoder.z_dim} if label else asdict(encoder.cfg),
            "diffusion": self.diffusion.config(),
            "pdae": {"condition": "label" if label else "image", "gamma": gamma},
        }

    @classmethod
    def from_config(cls, cfg):
        """The untrained PDAE a checkpoint's config describes (extra keys, e.g. "train", are kept)."""
        pc = cfg.get("pdae", {})
        if pc.get("condition", "image") == "label":
            encoder = LabelEmbedding(**cfg["encoder"])
        else:
            encoder = PDAEEncoder(PDAEEncoderConfig(**_tuples(cfg["encoder"])))
        unet_cfg = UNetConfig(**_tuples(cfg["unet"]))
        model = cls(unet_cfg, encoder, Diffusion(**cfg.get("diffusion", {})), pc.get("gamma", GAMMA))
        model.config = {**model.config, **cfg}
        return model

    def train(self, mode=True):
        super().train(mode)
        self.unet.eval()  # the pre-trained DPM stays as it was trained to be used: no dropout
        return self

    # --- the two noise predictors, from one frozen pass --------------------------------------

    def _frozen(self, x_t, t):
        """One pass of the frozen UNet: its time embedding, the skips of its encoder half, and eps_theta."""
        with torch.no_grad():  # theta is frozen: no graph through it
            emb = self.unet.embed_time(t)
            hs = self.unet.encode_half(x_t, emb)
            eps = self.unet.add_input_skip(self.unet.decode_half(hs, emb), x_t, t)
        return emb, hs, eps

    def predict(self, x_t, t, z):
        """(eps_theta(x_t, t), G_psi(x_t, z, t)), sharing one encoder-half pass."""
        emb, hs, eps = self._frozen(x_t, t)
        return eps, self.G(hs, emb, z)

    def _shifted(self, zs, ws, coef, shift_from):
        """eps_hat(x_t, t) = eps_theta - c_t * sum_i w_i G(x_t, z_i, t), as a callable for the samplers.

        Timesteps t < shift_from (when given) get eps_theta alone.
        """
        def eps_hat(x, t):
            c = coef[t.cpu()]
            if shift_from is not None:
                c = torch.where(t.cpu() < shift_from, torch.zeros_like(c), c)
            emb, hs, eps = self._frozen(x, t)
            if shift_from is not None and not bool(c.any()):
                return eps  # §4.8: the last steps use the pre-trained DPM alone (G is not even run)
            g = sum(w * self.G(hs, emb, z).float() for w, z in zip(ws, zs))
            return eps.float() - _bcast(c, x) * g  # PDAE Eq. 6 (DDIM) / Eq. 5, 7 (DDPM)

        return eps_hat

    def _coef(self, kind, steps=None):
        if kind == "ddim":
            return self.ddim_coef
        if kind == "ddpm":
            return self.ddpm_coef if steps is None else mean_shift_coef(self.diffusion, steps)
        raise ValueError(f"kind must be 'ddim' (Eq. 6) or 'ddpm' (Eq. 5), got {kind!r}")

    def _shift_from(self, shift_until, kind, steps):
        """§4.8's stop rule as the official sampler counts it: the last int(p * N) of the N network calls
        of a `steps`-step sampler drop the shift. Returns the smallest timestep that keeps it."""
        d = self.diffusion
        if kind == "ddim":
            ts = sorted(t for t, _ in d.ddim_moves(steps or d.T))
        else:
            ts = d.respace(steps or d.T, rule="even").tolist()  # the timesteps ddpm_sample visits
        k = int(shift_until * len(ts))
        return ts[k] if k < len(ts) else d.T

    def eps_fn(self, z, shift_until=None, scale=1.0, kind="ddim", steps=None):
        """The guided noise predictor eps_hat(x_t, t) = eps_theta(x_t, t) - c_t * scale * G(x_t, z, t).

        kind="ddim": c_t = sqrt(1 - alphabar_t) (Eq. 6), for ddim_sample / ddim_invert.
        kind="ddpm": c_t of Eq. 7 on the chain of a `steps`-step DDPM, so ddpm_sample's mean is
        mu_theta + Sigma_t G (Eq. 5). scale: the guidance strength (§4.6's truncation-like effect).
        shift_until=p: the last int(p * N) of the sampler's N steps use eps_theta alone (§4.8 uses
        0.3 when z is sampled from the latent DDIM); `steps` says which sampler (None: the full chain).
        """
        shift_from = None if shift_until is None else self._shift_from(shift_until, kind, steps)
        return self._shifted([z], [scale], self._coef(kind, steps), shift_from)

    def eps_fn_lerp_g(self, z1, z2, alpha, kind="ddim"):
        """§4.4's trajectory interpolation: guidance by Lerp(G(x_t, z1, t), G(x_t, z2, t); alpha)."""
        return self._shifted([z1, z2], [1 - alpha, alpha], self._coef(kind), None)

    # --- training ----------------------------------------------------------------------------

    def condition(self, x0, y=None):
        """z for the loss: E(x0), or the label embedding of y for the class-conditional variant."""
        if isinstance(self.encoder, LabelEmbedding):
            if y is None:
                raise ValueError("this PDAE is conditioned on labels: loss(x0, y) needs y")
            return self.encoder(y)
        return self.encoder(x0)

    def loss(self, x0, y=None, t=None, noise=None, generator=None):
        """PDAE Eq. 7: E lambda_t ||eps - eps_theta(x_t, t) + c_t G(x_t, E(x0), t)||^2, lambda_t of Eq. 10.

        theta is frozen; the gradient reaches G and, through z, the encoder: the only signal z gets.
        """
        eps_hat = self.eps_fn(self.condition(x0, y), kind="ddpm")  # eps_theta - c_t G
        return self.diffusion.loss(eps_hat, x0, t, noise, weights=self.weights, generator=generator)

    # --- autoencoding ------------------------------------------------------------------------

    def encode(self, x0):
        """z = E(x0) (for the label variant: the embedding of labels y)."""
        return self.encoder(x0)

    def encode_stochastic(self, x0, z, steps):
        """PDAE Eq. 8: x_T by running the guided DDIM forward from x0."""
        return self.diffusion.ddim_invert(self.eps_fn(z), x0, steps)

    def decode(self, z, x_T, steps, shift_until=None, scale=1.0):
        """PDAE Eq. 6: the guided DDIM from x_T to x0 (shift_until: §4.8's stop rule, see eps_fn)."""
        return self.diffusion.ddim_sample(self.eps_fn(z, shift_until, scale, steps=steps), x_T, steps)

    def decode_ddpm(self, z, x_T, steps=None, generator=None, clip=False):
        """PDAE Eq. 5: ancestral sampling with the mean shifted by Sigma_t G.

        As the official DDPM sampler, every step's mean is exactly mu_theta + Sigma_t G (no clipping);
        clip=True first clips the predicted x0, which only matters where it leaves [-1, 1].
        """
        return self.diffusion.ddpm_sample(self.eps_fn(z, kind="ddpm", steps=steps), x_T, steps, clip, generator)

    def reconstruct(self, x0, steps):
        z = self.encode(x0)
        return self.decode(z, self.encode_stochastic(x0, z, steps), steps)

    def pretrained_sha256(self):
        return weights_sha256(self.unet.state_dict())


# --- measurements (§4.2, Fig. 5) --------------------------------------------------------------

@torch.no_grad()
def posterior_mean_gap(pdae, unet, d, x0, ts, z=None, generator=None):
    """§4.2, Fig. 5 right: for each t in ts, the mean squared distance between the true posterior
    mean mu~_t(x_t, x0) and the pre-trained DPM's mu_theta(x_t, t), and PDAE's mu_theta + Sigma_t G.

    pdae: a PDAE or None (then only the pre-trained curve); unet: the pre-trained noise predictor,
    any eps_fn(x_t, t); z: the codes (default pdae.encode(x0)). x_t ~ q(x_t | x0) with Gaussian
    noise from `generator`, the same x_t for both. The squared distance is averaged over pixels
    and images. Returns {"t": [...], "pretrained": [...], "pdae": [...] or None}.
    """
    if pdae is not None and z is None:
        z = pdae.encode(x0)
    out = {"t": [], "pretrained": [], "pdae": [] if pdae is not None else None}
    coef = mean_shift_coef(d)
    for t in ts:
        tt = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=x0.device)
        x_t = d.q_sample(x0, tt, torch.randn(x0.shape, generator=generator).to(x0.device))
        true = d.posterior_mean(x0, x_t, tt)
        mean = lambda eps: d.posterior_mean(d.predict_x0(x_t, tt, eps), x_t, tt)  # mu from an eps, no clipping
        out["t"].append(int(t))
        out["pretrained"].append(float((true - mean(unet(x_t, tt).float())).square().mean()))
        if pdae is not None:
            eps, g = pdae.predict(x_t, tt, z)
            eps_hat = eps.float() - _bcast(coef[tt.cpu()], x_t) * g.float()  # mean = mu_theta + Sigma_t G (Eq. 5)
            out["pdae"].append(float((true - mean(eps_hat)).square().mean()))
    return out


@torch.no_grad()
def denoise_one_step(pdae, x0, ts, z=None, generator=None):
    """§4.2, Fig. 5 left: x0_hat = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t) in one step,
    with eps = eps_theta (pre-trained) and eps = eps_theta - c_t G (PDAE, Eq. 7's c_t as the official).

    Returns (x_t, x0_pretrained, x0_pdae), each a list over ts of (B, C, H, W) tensors.
    """
    d = pdae.diffusion
    z = pdae.encode(x0) if z is None else z
    xs, pre, shifted = [], [], []
    for t in ts:
        tt = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=x0.device)
        x_t = d.q_sample(x0, tt, torch.randn(x0.shape, generator=generator).to(x0.device))
        eps, g = pdae.predict(x_t, tt, z)
        eps_hat = eps.float() - _bcast(pdae.ddpm_coef[tt.cpu()], x_t) * g.float()
        xs.append(x_t)
        pre.append(d.predict_x0(x_t, tt, eps.float()))
        shifted.append(d.predict_x0(x_t, tt, eps_hat))
    return xs, pre, shifted
