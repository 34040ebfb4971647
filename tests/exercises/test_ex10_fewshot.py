"""Exercise 10 (fewshot): Diff-AE §5.6 and App. A.2, a PU classifier on z_sem and rejection sampling with it."""
import pytest
import torch

import classifier

EXERCISE = "fewshot"
D = 8


def clusters(n, frac_a, seed):
    """Codes of two classes: A around +1.5 e_1, B around -1.5 e_1. Returns (codes, is_A)."""
    g = torch.Generator().manual_seed(seed)
    is_a = torch.rand(n, generator=g) < frac_a
    z = torch.randn(n, D, generator=g)
    z[:, 0] += torch.where(is_a, 1.5, -1.5)
    return z, is_a


def test_fewshot_pu_is_oversampling_the_positives():
    pos, _ = clusters(10, 1.0, 0)
    unl, _ = clusters(200, 0.3, 1)
    got = classifier.fit_pu(pos, unl)
    copies = torch.cat([pos.repeat(20, 1), unl])  # 200 / 10 = 20 copies of each positive
    y = torch.cat([torch.ones(200), torch.zeros(200)])
    want = classifier.fit_logistic(copies, y, balanced=False)
    for name in ("weight", "bias"):
        a, b = getattr(got.linear, name), getattr(want.linear, name)
        assert torch.allclose(a, b, atol=2e-3), \
            (f"fit_pu must equal logistic regression with each positive copied n_unl / n_pos = 20 times "
             f"({name} differs: {a.flatten()[:3].tolist()} vs {b.flatten()[:3].tolist()})")


def test_fewshot_pu_finds_the_class_from_100_positives():
    pos, _ = clusters(100, 1.0, 2)
    unl, _ = clusters(2000, 0.2, 3)  # 20% of the unlabelled codes are positives too
    probe = classifier.fit_pu(pos, unl)
    test, is_a = clusters(1000, 0.5, 4)
    pred = (probe(test)[:, 0] > 0)
    tpr, tnr = float(pred[is_a].float().mean()), float((~pred[~is_a]).float().mean())
    assert tpr > 0.75 and tnr > 0.85, (
        f"100 positives + 2000 unlabelled should classify fresh codes well: true positive rate {tpr:.0%} (should be "
        f"> 75%), true negative rate {tnr:.0%} (> 85%). Without weighting the positives by n_unl / n_pos, class A is "
        f"called negative almost everywhere (a true positive rate of ~1%).")


def uniform_candidates(g):
    return lambda m: torch.rand(m, generator=g)  # candidate "codes" that are their own probability


def test_fewshot_rejection_keeps_p_above_threshold_with_probability_p():
    g = torch.Generator().manual_seed(5)
    out, stats = classifier.rejection_sample(uniform_candidates(g), lambda c: c, 1000, generator=g, batch_size=4000)
    assert out.shape == (1000,), f"return exactly n = 1000 accepted candidates, got shape {tuple(out.shape)}"
    assert float(out.min()) >= 0.5, "every accepted candidate must have p >= threshold = 0.5"
    for k in ("rounds", "drawn", "above_threshold", "accepted", "acceptance_rate"):
        assert k in stats, f"stats must have the key {k!r}"
    assert stats["drawn"] == 4000 * stats["rounds"] and stats["accepted"] >= 1000
    # accept iff p >= 0.5 and u < p, with p ~ U(0, 1): rate = integral_0.5^1 p dp = 0.375, accepted mean = 7/9
    assert abs(stats["acceptance_rate"] - 0.375) < 0.03, \
        f"p ~ U(0, 1): the acceptance rate should be ~0.375 (kept iff p >= 0.5 and u < p), got {stats['acceptance_rate']:.3f}"
    assert abs(float(out.mean()) - 7 / 9) < 0.03, f"accepted p should average 7/9 = 0.778, got {float(out.mean()):.3f}"
    assert abs(stats["above_threshold"] / stats["drawn"] - 0.5) < 0.03


def test_fewshot_rejection_is_deterministic_and_gives_up_clearly():
    run = lambda: classifier.rejection_sample(uniform_candidates(torch.Generator().manual_seed(6)), lambda c: c, 50,
                                              generator=torch.Generator().manual_seed(7))[0]
    assert torch.equal(run(), run()), "with the same generators the result must be the same: draw u from `generator`"
    g = torch.Generator().manual_seed(8)
    with pytest.raises(RuntimeError):
        classifier.rejection_sample(uniform_candidates(g), lambda c: c, 10, threshold=1.01, generator=g, max_rounds=3)
