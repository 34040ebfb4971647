"""Exercise 7 (slerp): interpolate stochastic codes on the sphere, not on the straight line.
Replaces slerp in diffusion.py (sample.py interpolate uses it for x_T, and lerp for z_sem).

Check:  STUDENT=exercises/mine python -m pytest tests/exercises -k slerp
"""
import torch  # noqa: F401


def slerp(a, b, alpha):
    """Spherical linear interpolation, per sample (Diff-AE §5.2, following DDIM).

    x_T ~ N(0, I) in d = C*H*W dimensions has norm close to sqrt(d): all its probability sits on a
    thin shell. The straight line (lerp) between two such codes cuts through the inside of the shell
    (at alpha = 0.5 its norm is about sqrt(d / 2)), where no x_T ever lies; slerp follows the arc:

        theta = arccos( <a, b> / (|a| |b|) )                 the angle between a and b
        slerp(a, b; alpha) = sin((1 - alpha) theta) / sin(theta) * a + sin(alpha theta) / sin(theta) * b

    a, b:  tensors of the same shape (B, ...): B separate codes; flatten each sample to a vector
           (a.flatten(1)) to get its own theta (a (B,) tensor), and broadcast the two weights back.
    alpha: a float in [0, 1]. alpha = 0 gives a, alpha = 1 gives b.
    When theta is ~0 (a and b parallel), sin(theta) ~ 0: fall back to lerp's weights (1 - alpha, alpha)
    instead of dividing by zero (use torch.where on theta > 1e-4, and clamp cos to [-1, 1] before arccos).
    Returns a tensor of the shape and dtype of a.
    """
    raise NotImplementedError("exercise slerp: write spherical interpolation")
