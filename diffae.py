"""The diffusion autoencoder (Diff-AE §3): semantic encoder + conditional DDIM decoder.

An image is represented by two codes:
- z_sem = Enc(x0), a vector with the high-level content (identity, attributes, pose);
- x_T, an image-sized "stochastic code" with what z_sem leaves out (fine detail), found by
  running the deterministic DDIM forward from x0 *given* z_sem (Eq. 8).
Decoding (z_sem, x_T) with DDIM (Eq. 1) gives back x0 almost exactly. Decoding z_sem with a
*random* x_T ~ N(0, I) (randn, not rand) keeps the semantics and redraws the details.
"""
from torch import nn

from diffusion import Diffusion
from encoder import EncoderConfig, SemanticEncoder
from unet import UNet, UNetConfig, check_input_skip


class DiffAE(nn.Module):
    def __init__(self, unet_cfg: UNetConfig, enc_cfg: EncoderConfig, diffusion: Diffusion = None):
        super().__init__()
        if unet_cfg.cond_dim != enc_cfg.z_dim:
            raise ValueError(f"the UNet's cond_dim ({unet_cfg.cond_dim}) must equal the encoder's z_dim ({enc_cfg.z_dim})")
        self.encoder = SemanticEncoder(enc_cfg)
        self.unet = UNet(unet_cfg)
        self.diffusion = diffusion or Diffusion()
        check_input_skip(unet_cfg, self.diffusion)
        self.latent = None  # the optional second stage (latent_ddim.LatentDDIM), attached after it is trained

    def eps_fn(self, z):
        """The noise predictor eps_theta(x_t, t, z_sem) as the sampler sees it: a function of (x_t, t)."""
        return lambda x, t: self.unet(x, t, z)

    def loss(self, x0, t=None, noise=None, weights=None):
        """Diff-AE Eq. 6: the simple DDPM loss with z_sem = Enc(x0); encoder and decoder trained jointly.

        weights: optional per-t weights (objective.t_weights); None is Eq. 6 exactly.
        """
        return self.diffusion.loss(self.eps_fn(self.encoder(x0)), x0, t, noise, weights=weights)

    def encode(self, x0):
        """z_sem = Enc(x0)."""
        return self.encoder(x0)

    def encode_stochastic(self, x0, z, steps):
        """Diff-AE Eq. 8: x_T by running the conditional DDIM forward from x0."""
        return self.diffusion.ddim_invert(self.eps_fn(z), x0, steps)

    def decode(self, z, x_T, steps):
        """Diff-AE Eq. 1: the conditional DDIM from x_T to x0 given z_sem."""
        return self.diffusion.ddim_sample(self.eps_fn(z), x_T, steps)

    def reconstruct(self, x0, steps):
        z = self.encode(x0)
        return self.decode(z, self.encode_stochastic(x0, z, steps), steps)
