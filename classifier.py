"""Linear classifiers on normalised semantic codes z (Diff-AE §5.3, §5.6, App. A.2; PDAE §4.5, §4.7).

Everything here is a plain function of tensors: it knows nothing about images or which encoder
made z, so Diff-AE's and PDAE's codes are handled alike. The recipe (Diff-AE App. A.2):
normalise z to zero mean and unit variance per dimension over the whole set, fit logistic
regression on it, and use the weight vector (the normal of the separating hyperplane) as the
attribute direction for manipulation, or its probability for rejection sampling.

Facts checked against the official Diff-AE code (experiment_classifier.py, manipulate.ipynb,
predict.py): the classifier is one nn.Linear(512, n_attributes) trained with plain BCE on
normalised z (mean and unbiased std per dimension over the whole inferred set); manipulation is
    z' = denormalize(normalize(z) + scale * sqrt(512) * w / ||w||)
with scale 0.3 in the notebook and scale in [-0.5, 0.5] in predict.py ("too strong gives
artifacts"). sqrt(dim) is the typical norm of a normalised code, so `scale` is a fraction of it;
`manipulate` below keeps that convention so the official scales carry over.
"""
import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from metrics import balanced_accuracy


def in_float32(fit):
    """A fit runs in float32, with gradients, whatever autocast the caller's networks run in (CPU or CUDA):
    bf16's 8 bits of mantissa lose a converging probe's small steps."""
    @functools.wraps(fit)
    def run(*args, **kwargs):
        cuda = torch.autocast("cuda", enabled=False) if torch.cuda.is_available() else contextlib.nullcontext()
        with torch.autocast("cpu", enabled=False), cuda, torch.enable_grad():
            return fit(*args, **kwargs)
    return run


# ----------------------------------------------------------------------------
# Normalisation of z (Diff-AE App. A.2)

def code_stats(z, eps=1e-8):
    """Per-dimension mean and std of a set of codes z [N, D] (unbiased std, as the official code)."""
    z = z.float()
    return z.mean(0), z.std(0).clamp_min(eps)  # a dead dimension must not divide by zero


def normalize(z, mean, std):
    # Diff-AE App. A.2: zero mean, unit variance over the whole set before the classifier
    return (z - mean) / std


def denormalize(z_norm, mean, std):
    return z_norm * std + mean


# ----------------------------------------------------------------------------
# The probe

class LinearProbe(nn.Module):
    """Diff-AE App. A.2: one linear layer on normalised z; n_out attributes at once.

    For logistic regression its outputs are logits; for ridge regression, predicted values.
    """

    def __init__(self, z_dim, n_out=1):
        super().__init__()
        self.linear = nn.Linear(z_dim, n_out)

    def forward(self, z_norm):
        return self.linear(z_norm)  # (N, n_out)


def _as_columns(y):
    return (y[:, None] if y.dim() == 1 else y).float()  # (N, A)


def class_balance_weights(y):
    """Per-example weights that give each class of each attribute half of the total weight.

    Equivalent to BCE's pos_weight = n_neg / n_pos (up to a constant), i.e. to oversampling the
    rarer class to 1:1 as App. A.2 does for the PU classifier. Without it a rare attribute
    (Bald, Eyeglasses) is fit by "always no" and its probe is useless for the rare class.
    """
    y = _as_columns(y)
    n = y.shape[0]
    p = y.mean(0).clamp(1 / n, 1 - 1 / n)  # an attribute with one class only must not give inf
    return y * (0.5 / p) + (1 - y) * (0.5 / (1 - p))  # (N, A)


def logistic_loss(probe, z_norm, y, weight, weight_decay):
    """Weighted-mean BCE per attribute, summed over attributes, plus L2 on the weights (not the bias)."""
    bce = F.binary_cross_entropy_with_logits(probe(z_norm), y, reduction="none")  # (N, A)
    data = ((weight * bce).sum(0) / weight.sum(0)).sum()  # attributes are independent problems
    return data + 0.5 * weight_decay * probe.linear.weight.pow(2).sum()


@in_float32
def fit_logistic(z_norm, y, weight_decay=1e-3, steps=100, lr=1.0, sample_weight=None, balanced=True):
    """Diff-AE App. A.2: logistic regression on normalised z; y [N] or [N, A] in {0, 1}.

    Full batch with L-BFGS from a zero init: the problem is convex, so this reaches the optimum
    in a few dozen iterations on a CPU and is deterministic (no seed needed), where the official
    code ran 300k samples of minibatch Adam. weight_decay keeps the weights finite on separable
    data (few-shot sets always are). balanced=True (default) applies class_balance_weights;
    the official code did not (plain BCE), which matters only for rare attributes.
    """
    z_norm = z_norm.detach().float()
    y = _as_columns(y.detach())
    weight = class_balance_weights(y) if balanced else torch.ones_like(y)
    if sample_weight is not None:
        weight = weight * sample_weight.detach().float()[:, None]
    probe = LinearProbe(z_norm.shape[1], y.shape[1]).to(z_norm.device)
    nn.init.zeros_(probe.linear.weight)
    nn.init.zeros_(probe.linear.bias)
    opt = torch.optim.LBFGS(probe.parameters(), lr=lr, max_iter=steps, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = logistic_loss(probe, z_norm, y, weight, weight_decay)
        loss.backward()
        return loss

    with torch.enable_grad():  # callers often sit inside torch.no_grad() after encoding
        opt.step(closure)
    return probe.requires_grad_(False)


@in_float32
def fit_linear_regression(z_norm, y, ridge=1e-3):
    """Ridge regression for continuous labels (head pose, lighting): closed form, on normalised z.

    Minimises mean squared error + ridge * ||W||^2; the bias is not penalised. The returned
    probe's weight is the direction along which the label grows, as for a classifier.
    """
    z = z_norm.detach().double()
    y = _as_columns(y.detach()).double()
    z_mean, y_mean = z.mean(0), y.mean(0)
    zc, yc = z - z_mean, y - y_mean
    n, d = z.shape
    gram = zc.T @ zc / n + ridge * torch.eye(d, dtype=z.dtype, device=z.device)  # (D, D)
    W = torch.linalg.solve(gram, zc.T @ yc / n)  # (D, A): the normal equations
    probe = LinearProbe(d, y.shape[1]).to(z_norm.device)
    probe.linear.weight.data.copy_(W.T)
    probe.linear.bias.data.copy_(y_mean - z_mean @ W)
    return probe.requires_grad_(False)


@in_float32
def fit_pu(z_norm_pos, z_norm_unlabelled, weight_decay=1e-3, steps=100):
    """Diff-AE §5.6 / App. A.2: positive-unlabelled classifier.

    The unlabelled codes are taken as negatives and the positives are oversampled to match
    their count (the official code zips two equal-length loaders, one per class). Weighting each
    positive by n_unlabelled / n_pos is that oversampling exactly (the full-batch loss is the
    same), without materialising the copies.
    """
    n_pos, n_unl = len(z_norm_pos), len(z_norm_unlabelled)
    z = torch.cat([z_norm_pos, z_norm_unlabelled])
    y = torch.cat([torch.ones(n_pos), torch.zeros(n_unl)]).to(z.device)
    sample_weight = torch.cat([torch.full((n_pos,), n_unl / n_pos), torch.ones(n_unl)]).to(z.device)
    return fit_logistic(z, y, weight_decay=weight_decay, steps=steps, sample_weight=sample_weight, balanced=False)


# ----------------------------------------------------------------------------
# Attribute manipulation (Diff-AE §5.3, PDAE §4.5)

# The L2 strength of the probe whose normal is used as a manipulation direction. Not the strength
# that classifies best: a weakly regularised probe leans on low-variance dimensions of z, so a step
# along its normal leaves the codes' distribution and the decoder changes other things too.
# Stronger L2 pulls the normal toward the class-mean difference (its limit), the direction along
# which the data themselves differ (docs/RESULTS.md, Diff-AE §5.3, has the measured comparison).
# The official code has no explicit L2; its finite run of minibatch Adam stops short of the optimum.
DIRECTION_WEIGHT_DECAY = 0.1


def attribute_direction(probe, index=0):
    """Diff-AE §5.3: the normal of the separating hyperplane, as a unit vector in normalised-z space."""
    w = probe.linear.weight[index].detach()
    return w / w.norm()


def manipulate(z, direction, scale, mean, std):
    """Diff-AE §5.3: move z along a unit direction in normalised space and map back.

    As the official code: z_norm' = z_norm + scale * sqrt(D) * direction, so scale is a fraction
    of a normalised code's typical norm (official: 0.3, within [-0.5, 0.5]); a negative scale
    removes the attribute. scale may be a float or a tensor [N], one per code.
    Written as z + std * step rather than denormalize(normalize(z) + step): the two are the same
    affine map, but this one returns z bit-exactly when scale is 0.
    """
    scale = torch.as_tensor(scale, dtype=z.dtype, device=z.device)
    if scale.dim() == 1:
        scale = scale[:, None]  # (N, 1): one scale per code
    step = scale * math.sqrt(z.shape[-1]) * direction.to(z)  # (N, D) or (D,), normalised units
    return z + std.to(z) * step


# ----------------------------------------------------------------------------
# Few-shot conditional sampling (Diff-AE §5.6, App. A.2; PDAE §4.7)

def rejection_sample(sample_fn, prob_fn, n, threshold=0.5, generator=None, max_rounds=100, batch_size=None):
    """Diff-AE §5.6, App. A.2 (following D2C): draw, threshold, then accept with probability p(c|z).

    sample_fn(m) returns m candidates (e.g. codes from the latent DDIM); prob_fn(candidates)
    returns their class probabilities [m]. A candidate is kept iff p >= threshold and u < p with
    u ~ U[0, 1) from `generator`, so the result is deterministic given it (and a deterministic
    sample_fn). Returns (the first n accepted, stats); stats count every round in full.
    """
    batch_size = batch_size or n
    accepted, n_drawn, n_above, n_accepted = [], 0, 0, 0
    for rounds in range(1, max_rounds + 1):
        candidates = sample_fn(batch_size)
        p = prob_fn(candidates).reshape(batch_size)
        u = torch.rand(batch_size, generator=generator, device=p.device if generator is None else generator.device)
        above = p >= threshold
        keep = above & (u.to(p.device) < p)
        accepted.append(candidates[keep])
        n_drawn += batch_size
        n_above += int(above.sum())
        n_accepted += int(keep.sum())
        if n_accepted >= n:
            break
    else:
        raise RuntimeError(f"rejection_sample: only {n_accepted} of {n} accepted after {max_rounds} rounds "
                           f"of {batch_size}; lower the threshold or raise max_rounds")
    stats = dict(rounds=rounds, drawn=n_drawn, above_threshold=n_above, accepted=n_accepted,
                 acceptance_rate=n_accepted / n_drawn)
    return torch.cat(accepted)[:n], stats


# ----------------------------------------------------------------------------
# Evaluation: does z linearly predict the attributes?

PROBE_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2)  # the L2 strengths a probe's cross-validation tries


@in_float32
def probe_accuracy(z_train, y_train, z_test, y_test, weight_decay=None, folds=5, grid=PROBE_WEIGHT_DECAYS):
    """Fit a logistic probe on train codes (normalised with train stats), score it on test codes.

    weight_decay=None picks each attribute's L2 strength from `grid` by `folds`-fold cross-validation
    on the training codes alone (balanced accuracy), as App. A.2 names no strength and a fixed one
    can over-regularise a probe on a few hundred dimensions; a number fixes it for all attributes.
    Returns {"per_attribute": [balanced accuracy per attribute], "mean": their mean (NaNs skipped),
    "weight_decay": [the strength used per attribute]}.
    """
    z_train, y_train = z_train.float(), _as_columns(y_train).float()
    if weight_decay is None:
        wd = cross_validate_weight_decay(z_train, y_train, folds, grid)
    else:
        wd = torch.full((y_train.shape[1],), float(weight_decay))
    mean, std = code_stats(z_train)
    pred = torch.zeros(len(z_test), y_train.shape[1], dtype=torch.bool)
    for w in wd.unique():  # attributes are independent problems: fit once per strength, keep its columns
        probe = fit_logistic(normalize(z_train, mean, std), y_train, weight_decay=w.item())
        with torch.no_grad():
            cols = wd == w
            pred[:, cols] = (probe(normalize(z_test.float(), mean, std)) > 0)[:, cols]
    acc = balanced_accuracy(_as_columns(y_test), pred)
    return {"per_attribute": acc.tolist(), "mean": acc.nanmean().item(), "weight_decay": wd.tolist()}


def cross_validate_weight_decay(z, y, folds, grid):
    """Per attribute, the L2 strength of `grid` with the best mean held-out-fold balanced accuracy.

    Folds are contiguous slices of the codes in the order given (toyfaces' and CelebA's orders
    carry no structure; shuffle codes that are sorted by class first); ties go to the larger strength.
    """
    n = len(z)
    score = torch.zeros(len(grid), y.shape[1])
    for k in range(folds):
        held = torch.zeros(n, dtype=torch.bool)
        held[k * n // folds:(k + 1) * n // folds] = True
        mean, std = code_stats(z[~held])
        for i, w in enumerate(grid):
            probe = fit_logistic(normalize(z[~held], mean, std), y[~held], weight_decay=w)
            with torch.no_grad():
                score[i] += balanced_accuracy(y[held], probe(normalize(z[held], mean, std)) > 0).nan_to_num(0.0)
    best = len(grid) - 1 - score.flip(0).argmax(0)  # argmax of the flipped scores: ties to the larger strength
    return torch.tensor(grid, dtype=torch.float32)[best]
