"""Exercise 3 (ddim_step): one deterministic DDIM move, down (decoding) or up (encoding).
Replaces Diffusion.predict_x0 and Diffusion.ddim_step in diffusion.py.

Check:  STUDENT=exercises/mine python -m pytest tests/exercises -k ddim_step
"""
import torch  # noqa: F401

from diffusion import _bcast  # noqa: F401  _bcast(a, x): a (B,) float64 tensor as float32 (B, 1, ..., 1) beside x


def predict_x0(self, x_t, t, eps):
    """Diff-AE Eq. 5, f_theta: the clean image that x_t and the noise eps imply, by solving Eq. 2 for x0:

        x0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)

    self: the Diffusion (self.ab(t) gives alphabar_t per sample, float64 (B,)); t: LongTensor (B,).
    Returns a float32 tensor of the shape of x_t.
    """
    raise NotImplementedError("exercise ddim_step: write predict_x0 (Diff-AE Eq. 5)")


def ddim_step(self, eps_fn, x, t, ab_to, clip=True):
    """One DDIM move with eta = 0 from x (at timestep t) to the noise level ab_to (an alphabar value).

    Diff-AE Eq. 1 (ab_to = alphabar_{t-1} < alphabar_t: a decoding step) and Eq. 8 (ab_to = alphabar_{t+1}:
    an encoding step) are the same formula:
        eps = eps_fn(x, t)                         the predicted noise
        x0  = predict_x0(x, t, eps)                Eq. 5
        x_next = sqrt(ab_to) * x0 + sqrt(1 - ab_to) * eps
    No fresh noise is added (that is what eta = 0 means): the move is a deterministic function of x,
    so it can be run backwards, and an image has one x_T.

    x:     (B, ...) float32;  t: a Python int or 0-dim tensor, the same *original* timestep for the whole
           batch: call eps_fn with tt = torch.full((B,), int(t), dtype=torch.long, device=x.device).
    ab_to: a float or 0-dim float64 tensor.
    clip:  when True, clamp x0 to [-1, 1] (images live there), then recompute eps from the clamped x0
           with self.eps_from_x0(x, tt, x0) so that x0 and eps still describe the same x (the official
           Diff-AE sampler does this). With clip=False use eps and x0 as they are.
    Returns (x_next, x0): both float32 of the shape of x.
    """
    raise NotImplementedError("exercise ddim_step: write one DDIM step (Diff-AE Eq. 1 and 8)")
