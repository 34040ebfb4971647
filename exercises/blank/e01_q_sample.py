"""Exercise 1 (q_sample): the forward process in closed form. Replaces Diffusion.q_sample in diffusion.py.

Check:  STUDENT=exercises/mine python -m pytest tests/exercises -k q_sample
"""
import torch  # noqa: F401  (you will need it)

from diffusion import _bcast  # noqa: F401  _bcast(a, x): a per-sample float64 tensor (B,) as float32 (B, 1, ..., 1) beside x


def q_sample(self, x0, t, noise):
    """Diff-AE Eq. 2 / PDAE Eq. 1: draw x_t ~ q(x_t | x0) in one jump, without the t small steps.

        x_t = sqrt(alphabar_t) * x0 + sqrt(1 - alphabar_t) * noise

    self:  the Diffusion; self.alphas_cumprod is alphabar, a float64 tensor of length T
           (self.ab(t) indexes it for you: it returns alphabar_t of every sample, shape (B,)).
    x0:    clean data, shape (B, ...): images (B, C, H, W) or latent codes (B, D); float32.
    t:     LongTensor (B,), one timestep in [0, T) per sample (they differ within a batch).
    noise: eps ~ N(0, I), the shape of x0.
    Returns x_t, the shape and dtype (float32) of x0.

    Broadcast each sample's coefficient over that sample's pixels: _bcast(a, x0) turns a (B,)
    float64 tensor into float32 of shape (B, 1, 1, 1) (or (B, 1) for codes).
    """
    raise NotImplementedError("exercise q_sample: write x_t = sqrt(alphabar_t) x0 + sqrt(1 - alphabar_t) noise")
