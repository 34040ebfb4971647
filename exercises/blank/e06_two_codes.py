"""Exercise 6 (two_codes): the two codes of Diff-AE, z_sem (semantics) and x_T (the rest).
Replaces DiffAE.encode_stochastic and DiffAE.decode in diffae.py.

Check:  STUDENT=exercises/mine python -m pytest tests/exercises -k two_codes
"""


def encode_stochastic(self, x0, z, steps):
    """Diff-AE §3.3, Eq. 8: the stochastic code x_T of x0, given its semantic code z = Enc(x0).

    Run the conditional DDIM *forward* (from x0 up to t = T) with the noise predictor that sees z:
    the decoder's own eps_theta(x_t, t, z). x_T then holds only what z leaves out.

    self:  the DiffAE: self.unet(x_t, t, z) is eps_theta, self.eps_fn(z) wraps it as a function of
           (x_t, t), and self.diffusion.ddim_invert(eps_fn, x0, steps) runs Eq. 8 (Exercise 3's step).
    x0: images (B, 3, H, W); z: codes (B, z_dim); steps: the number of DDIM steps.
    Returns x_T, the shape of x0.
    """
    raise NotImplementedError("exercise two_codes: write encode_stochastic (Diff-AE Eq. 8)")


def decode(self, z, x_T, steps):
    """Diff-AE §3.1, Eq. 1 conditioned on z: run the DDIM from x_T down to x0, with eps_theta(x_t, t, z).

    self.diffusion.ddim_sample(eps_fn, x_T, steps) runs Eq. 1 for a noise predictor eps_fn(x_t, t).
    With x_T from encode_stochastic(x0, z, steps) this gives back x0 almost exactly; with a random
    x_T ~ N(0, I) (torch.randn, not rand) it keeps what z says and redraws the rest.
    Returns x0, the shape of x_T.
    """
    raise NotImplementedError("exercise two_codes: write decode (Diff-AE Eq. 1 given z)")
