"""Exercise 9 (direction): a linear attribute direction in z_sem, and moving a code along it.
Replaces attribute_direction and manipulate in classifier.py (sample.py manipulate uses both).

Check:  STUDENT=exercises/mine python -m pytest tests/exercises -k direction
"""
import math  # noqa: F401

import torch  # noqa: F401


def attribute_direction(probe, index=0):
    """Diff-AE §5.3: the direction of an attribute is the normal of the classifier's separating hyperplane.

    probe: a classifier.LinearProbe, a logistic regression trained on *normalised* codes (App. A.2):
           probe.linear.weight has shape (n_attributes, D), one row w per attribute, and the logit of
           attribute `index` is w . z_norm + b.
    Returns w / ||w|| for that attribute: a unit vector of shape (D,), detached from any graph.
    """
    raise NotImplementedError("exercise direction: write attribute_direction")


def manipulate(z, direction, scale, mean, std):
    """Diff-AE §5.3: move codes along a unit direction, in the normalised space, and map back.

        z_norm  = (z - mean) / std
        z_norm' = z_norm + scale * sqrt(D) * direction        (D = z.shape[-1])
        z'      = z_norm' * std + mean    ==   z + std * (scale * sqrt(D) * direction)

    Write the last form: it returns z bit-exactly when scale is 0. sqrt(D) is the typical norm of a
    normalised code, so `scale` is a fraction of it (the official code uses 0.3; > 0.5 gives artefacts);
    a negative scale removes the attribute.

    z: codes (N, D); direction: (D,); mean, std: (D,), the statistics the classifier was trained with.
    scale: a float, or a tensor (N,) with one scale per code (then reshape it to (N, 1)).
    Returns z' of the shape and dtype of z (convert direction and std with .to(z)).
    """
    raise NotImplementedError("exercise direction: write manipulate")
