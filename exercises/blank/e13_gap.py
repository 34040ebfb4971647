"""Exercise 13 (gap): the posterior mean gap that PDAE's mean shift fills (PDAE §3.1, §4.2, Fig. 5).
Replaces Diffusion.posterior_mean in diffusion.py and posterior_mean_gap in pdae.py (sample.py gap).

Check:  STUDENT=exercises/mine python -m pytest tests/exercises -k gap
"""
import torch  # noqa: F401

from diffusion import _bcast  # noqa: F401  _bcast(a, x): a (B,) float64 tensor as float32 (B, 1, ..., 1) beside x
from pdae import mean_shift_coef  # noqa: F401  mean_shift_coef(d) is c_t (Exercise 11)


def posterior_mean(self, x0, x_t, t):
    """The mean mu~_t(x_t, x0) of the forward-process posterior q(x_{t-1} | x_t, x0) (DDPM Eq. 7):

        mu~_t = sqrt(alphabar_{t-1}) beta_t / (1 - alphabar_t) * x0  +  sqrt(alpha_t) (1 - alphabar_{t-1}) / (1 - alphabar_t) * x_t

    with alphabar_{t-1} = 1 at t = 0 (so mu~_0 = x0). self: the Diffusion (self.betas, self.alphas_cumprod,
    float64 of length T); t: LongTensor (B,) (index with t.cpu()). Returns float32 of the shape of x0.
    """
    raise NotImplementedError("exercise gap: write the posterior mean (DDPM Eq. 7)")


@torch.no_grad()
def posterior_mean_gap(pdae, unet, d, x0, ts, z=None, generator=None):
    """PDAE §4.2 / Fig. 5 right: at each t in ts, how far the predicted posterior means are from the true one.

    The pre-trained DPM predicts mu_theta(x_t, t) from x_t alone; the truth mu~_t(x_t, x0) knows x0. Their
    distance is the "posterior mean gap" (§3.1): what x_t cannot tell about x0. PDAE shifts the mean by
    Sigma_t G(x_t, z, t) to fill it (Eq. 5): the better z describes x0, the smaller the gap left.

    pdae: a PDAE, or None (then only the pre-trained curve). pdae.predict(x_t, t, z) returns (eps_theta, G).
    unet: the pre-trained noise predictor, any eps_fn(x_t, t). d: the Diffusion. x0: images (B, ...).
    ts: a list of int timesteps. z: the codes (default: pdae.encode(x0) when pdae is given).
    For each t in ts, in order:
        tt = torch.full((B,), t, dtype=torch.long);  x_t = d.q_sample(x0, tt, torch.randn(x0.shape, generator=generator))
        true = d.posterior_mean(x0, x_t, tt)
        a predicted mean from a noise prediction e:  d.posterior_mean(d.predict_x0(x_t, tt, e), x_t, tt)  (no clipping)
        pre-trained:  e = unet(x_t, tt)
        PDAE:         eps, G = pdae.predict(x_t, tt, z);  e = eps - c_t * G  with c_t = mean_shift_coef(d)[t]
                      (the same x_t for both: draw the noise once per t)
        gap = the mean over images and pixels of (true - predicted)^2, as a Python float.
    Returns {"t": [ints], "pretrained": [floats], "pdae": [floats] or None}.
    """
    raise NotImplementedError("exercise gap: write the posterior mean gap measurement (PDAE §4.2)")
