"""Exercise 2 (simple_loss): the denoising loss that trains everything. Replaces Diffusion.loss in diffusion.py.

Check:  STUDENT=exercises/mine python -m pytest tests/exercises -k simple_loss
"""
import torch  # noqa: F401

from diffusion import _bcast  # noqa: F401  _bcast(a, x): a (B,) float64 tensor as float32 (B, 1, ..., 1) beside x


def loss(self, eps_fn, x0, t=None, noise=None, weights=None, kind="mse", generator=None):
    """Diff-AE Eq. 6 (PDAE Eq. 3): L_simple = E_{t, eps} || eps_fn(x_t, t) - eps ||^2.

    self:    the Diffusion (self.T timesteps; self.q_sample from Exercise 1).
    eps_fn:  the noise predictor, any callable eps_fn(x_t, t) -> eps of the shape of x_t.
             For Diff-AE it is `lambda x, t: unet(x, t, z_sem)` with z_sem = Enc(x0): no loss touches
             z_sem itself, and the encoder learns only through the gradient of this loss.
    x0:      clean data (B, ...), images or codes.
    t:       LongTensor (B,) or None: then draw t ~ U{0, ..., T-1} with torch.randint(0, self.T, (B,), generator=generator).
    noise:   eps (the shape of x0) or None: then draw it with torch.randn(x0.shape, generator=generator).
    weights: None, or a float64 tensor of length T: a weight lambda_t per timestep (PDAE Eq. 7 and 10, Exercise 12).
    kind:    "mse" (squared error, Eq. 6) or "l1" (absolute error, the latent DDIM's Eq. 9).

    Steps: x_t = self.q_sample(x0, t, noise); err = eps_fn(x_t, t).float() - noise; per sample, the mean of
    err^2 (or |err|) over all its other dimensions -> shape (B,); multiply by weights[t] if given;
    return the mean over the batch (a 0-dim tensor that keeps its graph: no .item(), no torch.no_grad()).
    """
    raise NotImplementedError("exercise simple_loss: write Eq. 6, the mean of ||eps_fn(x_t, t) - eps||^2")
