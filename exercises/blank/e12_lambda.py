"""Exercise 12 (lambda): PDAE's weighting lambda_t of the loss, and why lambda_t = 1 fails.
Replaces loss_weights in pdae.py (PDAE.loss passes it to Diffusion.loss as `weights`, Exercise 2).

Check:  STUDENT=exercises/mine python -m pytest tests/exercises -k lambda
"""
import torch  # noqa: F401

from pdae import snr  # noqa: F401  snr(d) = alphabar_t / (1 - alphabar_t), float64 (T,)


def loss_weights(d, gamma=0.1):
    """PDAE Eq. 10: lambda_t = (1 / (1 + SNR(t)))^(1 - gamma) * (SNR(t) / (1 + SNR(t)))^gamma.

    The first factor down-weights the early steps (t small, SNR large: x_t is almost the image, and what the
    DPM cannot predict there is pixel-level noise that a compact z cannot and should not carry); the second
    the late steps (SNR -> 0). The weight peaks where SNR = gamma / (1 - gamma), in the "critical stage" of
    §3.4 where the trajectories of different images separate. PDAE found lambda_t = 1 (the plain loss)
    "extremely unstable" (§3.4). gamma = 0.1 in the paper.

    d: a Diffusion. Returns lambda, float64 of shape (T,). (It simplifies to SNR^gamma / (1 + SNR).)
    """
    raise NotImplementedError("exercise lambda: write PDAE Eq. 10")
