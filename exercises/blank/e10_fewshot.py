"""Exercise 10 (fewshot): few-shot conditional sampling from positives only (positive-unlabelled).
Replaces fit_pu and rejection_sample in classifier.py (sample.py conditional uses both).

Check:  STUDENT=exercises/mine python -m pytest tests/exercises -k fewshot
"""
import torch  # noqa: F401

from classifier import fit_logistic  # noqa: F401  fit_logistic(z_norm, y, weight_decay, steps, sample_weight=..., balanced=...)


def fit_pu(z_norm_pos, z_norm_unlabelled, weight_decay=1e-3, steps=100):
    """Diff-AE §5.6 and App. A.2: a positive-unlabelled (PU) linear classifier on normalised codes.

    We have a few codes known to carry the class (z_norm_pos, say 100) and many codes of unknown class
    (z_norm_unlabelled, say 10,000, positives among them). Treat every unlabelled code as a negative,
    and oversample the positives to match their number, so the two sides weigh the same.

    Oversampling by n_unlabelled / n_pos copies is the same full-batch loss as giving each positive the
    weight n_unlabelled / n_pos (and each unlabelled code weight 1), without making the copies:
      z = cat([pos, unlabelled]); y = cat([ones(n_pos), zeros(n_unl)]);
      sample_weight = cat([full((n_pos,), n_unl / n_pos), ones(n_unl)])
      return fit_logistic(z, y, weight_decay=weight_decay, steps=steps, sample_weight=sample_weight, balanced=False)
    (balanced=False: the weights above already balance the two sides.) Put y and the weights on z's device.
    """
    raise NotImplementedError("exercise fewshot: write fit_pu")


def rejection_sample(sample_fn, prob_fn, n, threshold=0.5, generator=None, max_rounds=100, batch_size=None):
    """Diff-AE §5.6 (following D2C): draw candidates, keep each with probability p(class | z), if p >= threshold.

    sample_fn(m): m new candidates (e.g. z_sem from the latent DDIM), a tensor (m, ...).
    prob_fn(candidates): their class probabilities p, a tensor (m,) (reshape it to (m,)).
    Repeat rounds of batch_size (default n) candidates:
        candidates = sample_fn(batch_size); p = prob_fn(candidates).reshape(batch_size)
        u = torch.rand(batch_size, generator=generator)            uniform in [0, 1), one per candidate
        keep = (p >= threshold) & (u < p)                          (move u to p's device)
    until at least n are kept in total; if max_rounds rounds are not enough, raise RuntimeError with a
    message that says what to change (lower the threshold or raise max_rounds).

    Returns (the first n kept candidates, stats) where stats is a dict counting every round in full:
        rounds, drawn (all candidates), above_threshold (p >= threshold), accepted (kept),
        acceptance_rate = accepted / drawn.
    """
    raise NotImplementedError("exercise fewshot: write rejection sampling")
