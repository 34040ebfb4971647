"""Exercise 9 (direction): Diff-AE §5.3 and App. A.2, attribute manipulation with a linear classifier on z_sem.

Synthetic codes whose attributes are known: in normalised space an attribute is on iff u . w_true > 0.
"""
import math

import torch

import classifier

EXERCISE = "direction"
D = 16


def data(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, D, generator=g)                        # normalised codes
    w_true = torch.randn(2, D, generator=g)
    w_true = w_true / w_true.norm(dim=1, keepdim=True)         # two attributes, two true directions
    y = (u @ w_true.T > 0).float()                             # (n, 2)
    mean, std = 3 * torch.randn(D, generator=g), 0.5 + torch.rand(D, generator=g) * 2
    return mean + std * u, y, w_true                           # raw codes, as an encoder gives them


def fitted(seed=0):
    z, y, w_true = data(seed=seed)
    mean, std = classifier.code_stats(z)
    probe = classifier.fit_logistic(classifier.normalize(z, mean, std), y)
    return z, y, w_true, mean, std, probe


def test_direction_is_the_unit_normal_of_the_hyperplane():
    z, y, w_true, mean, std, probe = fitted()
    for i in (0, 1):
        d = classifier.attribute_direction(probe, i)
        assert d.shape == (D,), f"attribute_direction(probe, {i}) must be a vector of shape ({D},), got {tuple(d.shape)}"
        assert abs(float(d.norm()) - 1) < 1e-5, f"the direction must be a unit vector, its norm is {float(d.norm()):.4f}"
        w = probe.linear.weight[i]
        assert torch.allclose(d, w / w.norm(), atol=1e-6), f"attribute {i}: the direction is its own row w of the weights, / ||w||"
        cos = float(d @ w_true[i])
        assert cos > 0.9, f"attribute {i}: the classifier's normal should point along the true direction (cos {cos:.2f} <= 0.9)"
    fresh = classifier.LinearProbe(D, 1)  # weights that require grad
    assert not classifier.attribute_direction(fresh).requires_grad, "detach the direction from the probe's graph"


def test_direction_manipulate_closed_form():
    z, y, w_true, mean, std, probe = fitted(1)
    d = classifier.attribute_direction(probe, 0)
    assert torch.equal(classifier.manipulate(z, d, 0.0, mean, std), z), "scale 0 must return z exactly (write z + std * step)"
    got = classifier.manipulate(z, d, 0.3, mean, std)
    want = z + std * (0.3 * math.sqrt(D) * d)
    assert torch.allclose(got, want, atol=1e-5), "z' = z + std * (scale * sqrt(D) * direction): a step in normalised space"
    scales = torch.linspace(-0.5, 0.5, len(z))
    got = classifier.manipulate(z, d, scales, mean, std)
    assert torch.allclose(got, z + std * (scales[:, None] * math.sqrt(D) * d), atol=1e-5), "a tensor of scales is one per code"


def test_direction_moves_the_classifier_logit_linearly():
    """Along the unit normal, the logit grows by exactly scale * sqrt(D) * ||w||: the attribute is added, not guessed."""
    z, y, w_true, mean, std, probe = fitted(2)
    d = classifier.attribute_direction(probe, 0)
    logit = lambda zz: probe(classifier.normalize(zz, mean, std))[:, 0]
    moved = classifier.manipulate(z, d, 0.25, mean, std)
    gain = logit(moved) - logit(z)
    want = 0.25 * math.sqrt(D) * float(probe.linear.weight[0].norm())
    assert torch.allclose(gain, torch.full_like(gain, want), rtol=1e-3), \
        f"moving by scale 0.25 should raise every logit by {want:.3f}; got {gain[:4].tolist()}..."
    neg = y[:, 0] == 0
    flipped = float((logit(classifier.manipulate(z[neg], d, 0.5, mean, std)) > 0).float().mean())
    assert flipped > 0.9, f"scale 0.5 should give the attribute to >90% of the codes that lacked it, got {flipped:.0%}"
