"""Property tests of classifier.py on synthetic codes whose true attribute directions are known."""
import math

import pytest
import torch

from classifier import (attribute_direction, code_stats, denormalize, fit_linear_regression, fit_logistic, fit_pu,
                        manipulate, normalize, probe_accuracy, rejection_sample)
from metrics import balanced_accuracy


def synthetic_codes(n, d, seed):
    """Raw codes z = mu + sigma * x with x ~ N(0, I): normalising z recovers x, where the truth lives."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    mu, sigma = 3 * torch.randn(d, generator=g), 0.5 + 2 * torch.rand(d, generator=g)
    w = torch.randn(d, generator=g)
    return x, mu + sigma * x, w / w.norm(), g


@pytest.mark.parametrize("seed", [0, 1])
def test_normalize_round_trip(seed):
    _, z, _, _ = synthetic_codes(500, 16, seed)
    mean, std = code_stats(z)
    zn = normalize(z, mean, std)
    assert torch.allclose(zn.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(zn.std(0), torch.ones(16), atol=1e-5)
    assert torch.allclose(denormalize(zn, mean, std), z, atol=1e-5)


def test_code_stats_dead_dimension_is_finite():
    z = torch.randn(100, 4)
    z[:, 2] = 7.0  # a dimension the encoder never uses
    mean, std = code_stats(z)
    assert torch.isfinite(normalize(z, mean, std)).all()


@pytest.mark.parametrize("seed,d", [(0, 8), (1, 32), (2, 64)])
def test_logistic_recovers_direction(seed, d):
    x, z, w, g = synthetic_codes(2000, d, seed)
    y = (x @ w + 0.1 * torch.randn(2000, generator=g) > 0).float()
    mean, std = code_stats(z)
    zn = normalize(z, mean, std)
    probe = fit_logistic(zn, y)
    assert attribute_direction(probe) @ w >= 0.95
    assert balanced_accuracy(y, probe(zn)[:, 0] > 0).item() >= 0.93


def test_logistic_is_deterministic_and_works_under_no_grad():
    x, z, w, _ = synthetic_codes(300, 8, 0)
    y = (x @ w > 0).float()
    with torch.no_grad():
        a, b = fit_logistic(x, y), fit_logistic(x, y)
    assert torch.equal(a.linear.weight, b.linear.weight) and torch.equal(a.linear.bias, b.linear.bias)


@pytest.mark.parametrize("seed,d", [(0, 8), (1, 32)])
def test_rare_class_is_not_ignored(seed, d):
    # about 5% positives: the class-balanced fit still separates them, the plain fit mostly says "no"
    x, z, w, g = synthetic_codes(2000, d, seed)
    y = (x @ w + 0.5 * torch.randn(2000, generator=g) > 1.645 * math.sqrt(1.25)).float()
    assert 0.03 < y.mean() < 0.07
    zn = normalize(z, *code_stats(z))
    ba_balanced = balanced_accuracy(y, fit_logistic(zn, y)(zn)[:, 0] > 0).item()
    ba_plain = balanced_accuracy(y, fit_logistic(zn, y, balanced=False)(zn)[:, 0] > 0).item()
    assert ba_balanced >= 0.85
    assert ba_balanced > ba_plain + 0.05


def test_multi_attribute_fit_matches_separate_fits():
    x, _, w, g = synthetic_codes(1000, 8, 3)
    w2 = torch.randn(8, generator=g)
    y = torch.stack([(x @ w > 0), (x @ w2 > 1)], 1).float()
    both = fit_logistic(x, y)
    for a in range(2):
        single = fit_logistic(x, y[:, a])
        assert attribute_direction(both, a) @ attribute_direction(single) > 0.999


@pytest.mark.parametrize("seed,d", [(0, 4), (1, 16)])
def test_ridge_recovers_linear_map(seed, d):
    g = torch.Generator().manual_seed(seed)
    zn = torch.randn(1000, d, generator=g)
    A, b = torch.randn(d, 2, generator=g), torch.randn(2, generator=g)
    y = zn @ A + b + 0.01 * torch.randn(1000, 2, generator=g)
    probe = fit_linear_regression(zn, y, ridge=1e-6)
    assert torch.allclose(probe.linear.weight.T, A, atol=5e-3)
    assert torch.allclose(probe.linear.bias, b, atol=5e-3)
    # a continuous label (head pose) gives a direction like a classifier does
    assert attribute_direction(probe, 1) @ (A[:, 1] / A[:, 1].norm()) > 0.9999
    shrunk = fit_linear_regression(zn, y, ridge=1.0)
    assert shrunk.linear.weight.norm() < probe.linear.weight.norm()


@pytest.mark.parametrize("seed,d", [(0, 8), (1, 32)])
def test_pu_direction_aligns(seed, d):
    # 200 labelled positives against 2000 unlabelled codes of the whole population (~30% positive)
    x, z, w, g = synthetic_codes(4000, d, seed)
    zn = normalize(z, *code_stats(z))
    positive = x @ w + 0.3 * torch.randn(4000, generator=g) > 0.5
    pos, unlabelled = zn[:2000][positive[:2000]][:200], zn[2000:]
    assert len(pos) == 200
    probe = fit_pu(pos, unlabelled)
    assert attribute_direction(probe) @ w >= 0.93  # 200 positives in 32 dims: seeds 0-7 give 0.95-0.99
    # oversampling to 1:1 makes the labelled positives score above 1/2 on average
    assert torch.sigmoid(probe(pos)).mean() > 0.5


@pytest.mark.parametrize("d", [8, 512])
def test_manipulate_scale_zero_is_exact(d):
    _, z, w, _ = synthetic_codes(64, d, 0)
    mean, std = code_stats(z)
    assert torch.equal(manipulate(z, w, 0.0, mean, std), z)
    assert torch.equal(manipulate(z, w, torch.zeros(64), mean, std), z)


@pytest.mark.parametrize("seed,d", [(0, 8), (1, 32)])
def test_manipulate_moves_logit_linearly(seed, d):
    x, z, w, _ = synthetic_codes(1000, d, seed)
    mean, std = code_stats(z)
    probe = fit_logistic(normalize(z, mean, std), (x @ w > 0).float())
    u = attribute_direction(probe)
    scales = torch.tensor([-0.5, -0.25, 0.0, 0.25, 0.5])
    logits = torch.stack([probe(normalize(manipulate(z[:10], u, s, mean, std), mean, std))[:, 0] for s in scales])
    assert (logits.diff(dim=0) > 0).all()
    # official convention: scale is in units of sqrt(D), the norm of a typical normalised code
    slope = math.sqrt(d) * probe.linear.weight[0].norm()
    expected = logits[2] + scales[:, None] * slope
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-3)
    # the move is along the direction only, in normalised space
    delta = normalize(manipulate(z[:10], u, 0.3, mean, std), mean, std) - normalize(z[:10], mean, std)
    assert torch.allclose(delta, 0.3 * math.sqrt(d) * u.expand(10, d), atol=1e-4)


def test_manipulate_per_code_scales():
    _, z, w, _ = synthetic_codes(3, 8, 0)
    mean, std = code_stats(z)
    scales = torch.tensor([0.1, -0.2, 0.3])
    out = manipulate(z, w, scales, mean, std)
    for i in range(3):
        assert torch.allclose(out[i], manipulate(z[i:i + 1], w, scales[i].item(), mean, std)[0])


def uniform_candidates(g):
    # candidates whose class probability is their own value: p ~ U[0, 1)
    return (lambda m: torch.rand(m, 1, generator=g)), (lambda c: c[:, 0])


@pytest.mark.parametrize("seed,threshold", [(0, 0.5), (1, 0.5), (2, 0.0), (3, 0.8)])
def test_rejection_sample_statistics(seed, threshold):
    g = torch.Generator().manual_seed(seed)
    sample_fn, prob_fn = uniform_candidates(g)
    out, stats = rejection_sample(sample_fn, prob_fn, 2000, threshold=threshold, generator=g)
    assert out.shape == (2000, 1)
    assert (prob_fn(out) >= threshold).all()
    # accepted / above-threshold ~ E[p | p >= threshold] = (1 + threshold) / 2, within 4 sigma
    rate, k = stats["accepted"] / stats["above_threshold"], stats["above_threshold"]
    expected = (1 + threshold) / 2
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / k)
    assert stats["acceptance_rate"] == stats["accepted"] / stats["drawn"]
    assert stats["accepted"] >= 2000 and stats["drawn"] == stats["rounds"] * 2000


def test_rejection_sample_is_deterministic():
    runs = []
    for seed in (0, 0, 1):
        g = torch.Generator().manual_seed(seed)
        runs.append(rejection_sample(*uniform_candidates(g), 100, generator=g))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][0], runs[2][0])


def test_rejection_sample_gives_up():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(RuntimeError, match="accepted"):
        rejection_sample(lambda m: torch.rand(m, 2, generator=g), lambda c: torch.zeros(len(c)), 10,
                         generator=g, max_rounds=3)


@pytest.mark.parametrize("seed", [0, 1])
def test_probe_accuracy_on_predictable_codes(seed):
    x, z, w, g = synthetic_codes(3000, 32, seed)
    W = torch.cat([w[:, None], torch.randn(32, 2, generator=g)], 1)
    W = W / W.norm(dim=0)
    y = (x @ W + 0.1 * torch.randn(3000, 3, generator=g) > torch.tensor([0.0, 1.0, -0.5])).float()
    result = probe_accuracy(z[:2000], y[:2000], z[2000:], y[2000:])
    assert len(result["per_attribute"]) == 3
    assert min(result["per_attribute"]) >= 0.9
    assert result["mean"] == pytest.approx(sum(result["per_attribute"]) / 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_probe_cross_validation_sees_no_test_labels_and_fits_each_attribute_alone(seed):
    """The chosen L2 strengths depend on training codes only, and each attribute's accuracy is the
    one a probe with that attribute's strength gets: attributes are independent problems."""
    x, z, w, g = synthetic_codes(1500, 64, seed)
    W = torch.cat([w[:, None], torch.randn(64, 2, generator=g)], 1)
    y = (x @ W + 2.0 * torch.randn(1500, 3, generator=g) > 0).float()  # noisy labels: the penalty matters
    ztr, ytr, zte, yte = z[:1000], y[:1000], z[1000:], y[1000:]
    grid = (1e-4, 1e-2, 1.0)
    res = probe_accuracy(ztr, ytr, zte, yte, grid=grid)
    flipped = probe_accuracy(ztr, ytr, zte, 1 - yte, grid=grid)
    assert res["weight_decay"] == flipped["weight_decay"]
    assert all(any(abs(v - g_) < 1e-9 * max(g_, 1) for g_ in grid) for v in res["weight_decay"])
    for a, wd in enumerate(res["weight_decay"]):
        alone = probe_accuracy(ztr, ytr[:, a:a + 1], zte, yte[:, a:a + 1], weight_decay=wd)
        assert alone["per_attribute"][0] == pytest.approx(res["per_attribute"][a], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_strong_l2_direction_tends_to_class_mean_difference(seed):
    # two correlated dimensions (rho 0.8), the label set by dimension 0 alone: the sharpest classifier's
    # normal is e_0, but the classes' means differ along (1, rho). Growing L2 moves the normal from the
    # one to the other, and a unit step along it grows less unlikely under the codes' Gaussian
    # (smaller Mahalanobis length): why DIRECTION_WEIGHT_DECAY is not the best classifier's strength.
    g = torch.Generator().manual_seed(seed)
    n, d, rho = 4000, 6, 0.8
    x = torch.randn(n, d, generator=g)
    x[:, 1] = rho * x[:, 0] + math.sqrt(1 - rho ** 2) * x[:, 1]
    y = (x[:, 0] + 0.3 * torch.randn(n, generator=g) > 0.4).float()  # unbalanced on purpose
    zn = normalize(x, *code_stats(x))
    mean_diff = zn[y == 1].mean(0) - zn[y == 0].mean(0)
    mean_diff = mean_diff / mean_diff.norm()
    prec = torch.linalg.inv(torch.cov(zn.T))
    dirs = [attribute_direction(fit_logistic(zn, y, weight_decay=wd)) for wd in (1e-4, 1e-2, 1.0, 1e3)]
    to_mean = [float(v @ mean_diff) for v in dirs]
    mahal = [float(v @ prec @ v) for v in dirs]
    assert abs(float(dirs[0] @ torch.eye(d)[0])) >= 0.97 and to_mean[0] <= 0.85
    assert to_mean[-1] >= 0.999
    assert all(a < b for a, b in zip(to_mean, to_mean[1:]))
    assert all(a > b for a, b in zip(mahal, mahal[1:]))
