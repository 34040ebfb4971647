"""Exercise 12 (lambda): PDAE Eq. 10 and §3.4, the weighting that replaces lambda_t = 1."""
import torch

import pdae
from diffusion import Diffusion

EXERCISE = "lambda"


def test_lambda_closed_form():
    for schedule in ("linear", "cosine"):
        d = Diffusion(1000, schedule)
        s = d.alphas_cumprod / (1 - d.alphas_cumprod)
        lam = pdae.loss_weights(d, 0.1)
        assert lam.dtype == torch.float64 and lam.shape == (1000,), \
            f"lambda must be float64 of shape (1000,), got {lam.dtype} {tuple(lam.shape)}"
        want = (1 / (1 + s)) ** 0.9 * (s / (1 + s)) ** 0.1
        assert torch.allclose(lam, want, rtol=1e-9, atol=0), (
            f"{schedule}: lambda_t = (1/(1+SNR))^(1-gamma) (SNR/(1+SNR))^gamma; at t = 0, 500, 999 expected "
            f"{[f'{float(want[i]):.4g}' for i in (0, 500, 999)]}, got {[f'{float(lam[i]):.4g}' for i in (0, 500, 999)]}")


def test_lambda_gamma_limits():
    d = Diffusion(1000)
    ab = d.alphas_cumprod
    assert torch.allclose(pdae.loss_weights(d, 0.0), 1 - ab, rtol=1e-9), "gamma = 0 leaves 1/(1+SNR) = 1 - alphabar_t"
    assert torch.allclose(pdae.loss_weights(d, 1.0), ab, rtol=1e-9), "gamma = 1 leaves SNR/(1+SNR) = alphabar_t"


def test_lambda_peaks_in_the_critical_stage():
    d = Diffusion(1000)
    for gamma in (0.1, 0.3):
        lam = pdae.loss_weights(d, gamma)
        peak = int(lam.argmax())
        snr_peak = float(pdae.snr(d)[peak])
        assert 100 < peak < 900, f"gamma = {gamma}: the weight should peak in the middle of the chain, it peaks at t = {peak}"
        assert abs(snr_peak / (gamma / (1 - gamma)) - 1) < 0.1, \
            (f"gamma = {gamma}: the peak should sit at SNR = gamma / (1 - gamma) = {gamma / (1 - gamma):.3f}, "
             f"it is at SNR {snr_peak:.3f}")
    lam = pdae.loss_weights(d, 0.1)
    assert lam[0] < 1e-3 * lam.max(), "the first steps (huge SNR) must be weighted down by orders of magnitude"


def test_lambda_one_spends_the_loss_on_the_first_steps():
    """§3.4: where does the loss sit? Images = content (std 0.45, which a good z can tell) + detail (std 0.1).

    The pre-trained DPM's eps error at t is SNR v / (1 + SNR v) per pixel (v = the data variance): ~1 at
    small t, whatever the image. With lambda_t = 1 about half the loss sits in the first 10% of the steps,
    where the error is pixel noise that no compact z can explain; Eq. 10 moves the weight to the middle.
    """
    d = Diffusion(1000)
    s = pdae.snr(d)
    v = 0.45 ** 2 + 0.1 ** 2
    err = s * v / (1 + s * v)  # what G would have to explain at each t
    share = lambda lam: float((lam * err)[:100].sum() / (lam * err).sum())
    flat = share(torch.ones(1000, dtype=torch.float64))
    ours = share(pdae.loss_weights(d, 0.1))
    assert flat > 0.4, f"(sanity) with lambda = 1 the first 100 steps hold {flat:.0%} of the loss"
    assert ours < 0.25, f"with Eq. 10 the first 100 of 1000 steps should hold < 25% of the loss, they hold {ours:.0%}"
