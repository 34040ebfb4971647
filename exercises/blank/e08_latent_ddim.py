"""Exercise 8 (latent_ddim): the second stage that samples new z_sem: normalisation and the L1 loss.
Replaces LatentDDIM.set_stats, .normalize, .denormalize and .loss in latent_ddim.py.

Check:  STUDENT=exercises/mine python -m pytest tests/exercises -k latent_ddim
"""
import torch  # noqa: F401


@torch.no_grad()
def set_stats(self, z_all):
    """Store the per-dimension mean and standard deviation of the training codes z_all (N, D).

    Write them into the buffers in place: self.mean.copy_(...), self.std.copy_(...) (both of shape (D,)),
    with the unbiased std (torch's default, z.std(0)), computed in float32 (z_all.float()).
    """
    raise NotImplementedError("exercise latent_ddim: write set_stats")


def normalize(self, z):
    """Diff-AE §4: "the latent distribution ... is first normalized to have zero mean and unit variance".

    z: codes (B, D) -> (z - mean) / std, per dimension, with the stored self.mean and self.std.
    """
    raise NotImplementedError("exercise latent_ddim: write normalize")


def denormalize(self, zn):
    """The inverse of normalize: zn * std + mean. LatentDDIM.sample() calls it on its output."""
    raise NotImplementedError("exercise latent_ddim: write denormalize")


def loss(self, z, t=None, noise=None, generator=None):
    """Diff-AE Eq. 9: L_latent = E_{t, eps} || eps_omega(z_t, t) - eps ||_1, on *normalised* codes.

    z: raw codes (B, D) from the frozen encoder. Normalise them first (self.normalize), unless
    self.znormalize is False (official models trained on raw z); then use z as it is.
    The diffusion of the codes is self.diffusion (constant betas of 0.008, App. A.1) and the noise
    predictor is the MLP self.net(z_t, t). Reuse Exercise 2: self.diffusion.loss(eps_fn, x0, t=..., noise=...,
    kind=..., generator=...). L1, not L2: App. A.1 found the L1 loss gives better samples for the latent.
    """
    raise NotImplementedError("exercise latent_ddim: write the latent loss (Diff-AE Eq. 9)")
