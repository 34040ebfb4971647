"""Exercise 5 (adagn): adaptive group normalisation, and where z_sem enters the decoder.
Replaces ada_group_norm and ResBlock.forward in nn.py (every ResBlock of the UNet and of the encoder).

Check:  STUDENT=exercises/mine python -m pytest tests/exercises -k adagn
"""
import torch  # noqa: F401


def ada_group_norm(h, norm, t_scale, t_shift, z_scale=None):
    """Diff-AE Eq. 7: AdaGN(h, t, z) = z_s * (t_s * GroupNorm(h) + t_b).

    h:       feature maps (B, C, H, W).
    norm:    the GroupNorm module to apply to h.
    t_scale, t_shift: t_s and t_b, (B, C, 1, 1) each, from the timestep embedding.
    z_scale: z_s, (B, C, 1, 1), from z_sem; None for a UNet without z (the DDIM baseline, PDAE's
             frozen DPM): then the result is t_s * GroupNorm(h) + t_b.
    """
    raise NotImplementedError("exercise adagn: write Eq. 7")


def forward(self, x, emb=None, cond=None):
    """ResBlock.forward: an ADM residual block conditioned on t (emb) and z_sem (cond) through Eq. 7.

    self has (see nn.py, class ResBlock):
      in_layers     = Sequential(GroupNorm, SiLU, Conv2d)                  the first half of the branch
      resample      = Upsample / Downsample / None
      conditioned   = False for the semantic encoder's blocks (no t, no z): then the branch is only in_layers
      emb_layers    = Sequential(SiLU, Linear(emb_dim, 2 C))               -> (t_s, t_b): chunk(2, dim=1)
      cond_emb_layers = Sequential(SiLU, Linear(cond_dim, C)), only when the block has a cond_dim
      out_layers    = Sequential(GroupNorm, SiLU, Dropout, Conv2d (zero-initialised))
      skip_connection = Identity or a 1x1 Conv2d
    emb:  (B, emb_dim) the time embedding;  cond: (B, cond_dim) z_sem, or None.

    What to write, after the given lines:
      if not self.conditioned: return self.skip_connection(x) + h
      t_s, t_b = the two halves of self.emb_layers(emb), each reshaped to (B, C, 1, 1), cast to h.dtype
      z_s = 1 + self.cond_emb_layers(cond), as (B, C, 1, 1)  -- only when cond is not None and the block
            has cond_emb_layers (hasattr(self, "cond_emb_layers")); otherwise z_s = None
      h = conv(dropout(SiLU( ada_group_norm(h, GroupNorm, 1 + t_s, t_b, z_s) )))   with (norm, act, drop, conv) = self.out_layers
      return self.skip_connection(x) + h
    The "1 +" make a zero-initialised network start as plain GroupNorm (t_s = 0, z_s = 0 => scale 1).
    """
    if self.resample is not None:  # given: resample between the activation and the conv, skip path too
        h = self.in_layers[:-1](x)
        h, x = self.resample(h), self.resample(x)
        h = self.in_layers[-1](h)
    else:
        h = self.in_layers(x)
    raise NotImplementedError("exercise adagn: condition the block on t and z (Diff-AE Eq. 7)")
