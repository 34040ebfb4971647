"""Exercise 7 (slerp): Diff-AE §5.2 interpolates z_sem with Lerp and x_T with Slerp."""
import math

import torch

import diffusion

EXERCISE = "slerp"


def pair(seed=0, shape=(3, 3, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def norms(x):
    return x.flatten(1).norm(dim=1)


def angle(u, v):
    u, v = u.flatten(1), v.flatten(1)
    return torch.arccos(((u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1))).clamp(-1, 1))


def test_slerp_endpoints():
    a, b = pair()
    for al, want in ((0.0, a), (1.0, b)):
        got = diffusion.slerp(a, b, al)
        assert got.shape == a.shape, f"slerp must keep the shape {tuple(a.shape)}, got {tuple(got.shape)}"
        assert torch.allclose(got, want, atol=1e-4), f"slerp(a, b, {al}) must be {'a' if al == 0 else 'b'}"


def test_slerp_moves_at_constant_angular_speed():
    a, b = pair(1)
    a, b = a / norms(a).view(-1, 1, 1, 1), b / norms(b).view(-1, 1, 1, 1)  # on the unit sphere
    theta = angle(a, b)
    for al in (0.25, 0.5, 0.75):
        got = diffusion.slerp(a, b, al)
        assert torch.allclose(angle(a, got), al * theta, atol=1e-3), \
            f"at alpha = {al} the angle from a should be alpha * theta = {(al * theta).tolist()}, got {angle(a, got).tolist()}"


def test_slerp_keeps_the_norm_of_equal_norm_codes():
    a, b = pair(2)
    b = b / norms(b).view(-1, 1, 1, 1) * norms(a).view(-1, 1, 1, 1)  # same norm as a, per sample
    for al in (0.25, 0.5, 0.75):
        got = norms(diffusion.slerp(a, b, al))
        assert torch.allclose(got, norms(a), rtol=1e-4), \
            f"between two codes of norm {norms(a).tolist()} slerp stays on the sphere; at alpha = {al} got norms {got.tolist()}"


def test_slerp_is_per_sample():
    a, b = pair(3)
    b[0] = 5 * a[0] + 0.1 * b[0]  # sample 0: nearly parallel; the others: orthogonal-ish
    together = diffusion.slerp(a, b, 0.3)
    for i in range(3):
        alone = diffusion.slerp(a[i:i + 1], b[i:i + 1], 0.3)
        assert torch.allclose(together[i:i + 1], alone, atol=1e-5), \
            f"sample {i} changes when others are in the batch: compute one theta per sample (flatten(1))"


def test_slerp_midpoint_of_two_noises_is_a_typical_noise():
    """Why not lerp: the lerp midpoint of two N(0, I) codes has norm ~sqrt(d/2), far from the shell at sqrt(d)."""
    a, b = pair(4, (8, 3, 16, 16))
    d = 3 * 16 * 16
    mid_s = norms(diffusion.slerp(a, b, 0.5)).mean() / math.sqrt(d)
    mid_l = norms(diffusion.lerp(a, b, 0.5)).mean() / math.sqrt(d)
    assert abs(float(mid_s) - 1) < 0.05, \
        (f"the slerp midpoint of two N(0, I) codes should have norm ~sqrt(d) = {math.sqrt(d):.1f}, "
         f"got {float(mid_s) * math.sqrt(d):.1f}")
    assert abs(float(mid_l) - 1 / math.sqrt(2)) < 0.05  # lerp shrinks it by 1/sqrt(2): a washed-out decode


def test_slerp_parallel_codes_do_not_give_nan():
    a, _ = pair(5)
    for b in (a.clone(), 2 * a):
        got = diffusion.slerp(a, b, 0.3)
        assert torch.isfinite(got).all(), "slerp of parallel codes must not divide by sin(0): fall back to lerp's weights"
        assert torch.allclose(got, 0.7 * a + 0.3 * b, atol=1e-4), "for parallel codes (theta = 0) slerp equals lerp"
