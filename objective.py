"""The training objective of each model, with its per-t loss weights: the one place to change the loss.

    ddim:   Diff-AE Eq. 6 on an unconditional UNet (the DDIM baseline, and PDAE's pre-trained DPM)
    diffae: Diff-AE Eq. 6 through the encoder and the conditional UNet (no loss touches z_sem itself)
    pdae:   PDAE Eq. 7, weighted by its own lambda_t (Eq. 10, inside pdae.PDAE.loss)

`train.py` and `bench.py` both step this module's `Objective`, so the benchmark times the training
step as it runs. `step_noise` draws each step's t and noise from (seed, step), so a run resumed from a
checkpoint, or split over ranks and micro-batches, computes the same steps as one that never stopped.
"""
import torch
from torch import nn

import pdae

WEIGHTINGS = ("uniform", "snr")


def t_weights(name, diffusion, gamma=None, floor=None):
    """Per-t loss weights of the DDIM and Diff-AE losses, mean 1: None for "uniform" (Eq. 6), or for "snr"
    SNR^gamma / (1 + SNR), PDAE Eq. 10's lambda_t. It moves weight from the small-t steps, where eps is
    mostly unpredictable pixel noise, to the steps where z_sem decides the image; gamma < 0 makes it
    grow with t up to t = T - 1. gamma: PDAE's (pdae.GAMMA) unless given.
    floor: the share of Eq. 6's uniform weight mixed in, floor + (1 - floor) lambda_t / mean, so that the
    small-t steps, which remove the last pixel noise of a decoding, are not starved (mass at both ends)."""
    if name in (None, "uniform"):
        return None
    if name == "snr":
        w = pdae.loss_weights(diffusion, pdae.GAMMA if gamma is None else gamma)
        floor = floor or 0.0
        return floor + (1 - floor) * w / w.mean()
    raise ValueError(f"unknown t weighting {name!r}: use one of {', '.join(WEIGHTINGS)}")


def run_weights(hp, diffusion):
    """The t weights a run's hyperparameters name (presets.py; --t-weights, --t-gamma, --t-floor)."""
    return t_weights(hp.get("t_weights"), diffusion, hp.get("t_gamma"), hp.get("t_floor"))


class Objective(nn.Module):
    """The training loss as a module's forward, so DistributedDataParallel and torch.compile can wrap it."""

    def __init__(self, kind, model, diffusion, weights=None):
        super().__init__()
        self.kind, self.model, self.diffusion, self.weights = kind, model, diffusion, weights

    def forward(self, x0, y, t, noise):
        if self.kind == "ddim":
            return self.diffusion.loss(lambda x, tt: self.model(x, tt), x0, t, noise, weights=self.weights)
        if self.kind == "pdae":
            return self.model.loss(x0, y, t, noise)  # PDAE Eq. 7 with its own lambda_t (Eq. 10)
        return self.model.loss(x0, t, noise, weights=self.weights)  # Diff-AE Eq. 6


def step_noise(seed, step, batch, shape, T, rank=0, world=1, device="cpu"):
    """t ~ U{0..T-1} and noise of global batch `step`, this rank's share: any world size and accumulation
    computes the same step. Dropout is seeded per rank."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    t = torch.randint(0, T, (batch,), generator=g)[rank::world].to(device)
    noise = torch.randn((batch,) + tuple(shape), generator=g)[rank::world].to(device)
    torch.manual_seed(seed * 1_000_003 + step * 1009 + rank)
    return t, noise
