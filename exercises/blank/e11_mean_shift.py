"""Exercise 11 (mean_shift): PDAE's mean-shift coefficient, and its sign.
Replaces _mean_shift_coef_on and ddim_shift_coef in pdae.py (mean_shift_coef calls the first).

Check:  STUDENT=exercises/mine python -m pytest tests/exercises -k mean_shift
"""
import torch  # noqa: F401


def _mean_shift_coef_on(ab):
    """PDAE Eq. 5 and 7: the coefficient c_t of G in the shifted noise predictor eps_hat = eps_theta - c_t G.

    PDAE's decoder is the frozen DPM with its posterior mean moved by Sigma_t G (Eq. 5, classifier guidance
    with G = grad_x_t log p(z | x_t)):
        mu_hat = mu_theta(x_t, t) + Sigma_t * G,   Sigma_t = beta_t (1 - alphabar_{t-1}) / (1 - alphabar_t)
    Since mu = (x_t - beta_t / sqrt(1 - alphabar_t) * eps) / sqrt(alpha_t), raising mu by Sigma_t G is the
    same as lowering eps by c_t G with
        c_t = sqrt(alpha_t) * sqrt(1 - alphabar_t) / beta_t * Sigma_t          (the factor in Eq. 7)
    so c_t >= 0, and every caller *subtracts* c_t G. (Flip one sign and G learns to push away from z.)

    ab: the alphabar of a chain, float64 (N,): the full schedule d.alphas_cumprod, or the kept timesteps of a
        respaced one. Along it: alphabar_{prev} = 1 before the first entry, else the previous entry;
        alpha = ab / ab_prev; beta = 1 - alpha.
    Returns c, float64 (N,). c[0] = 0 because Sigma_0 = 0.
    """
    raise NotImplementedError("exercise mean_shift: write the mean-shift coefficient of PDAE Eq. 7")


def ddim_shift_coef(d):
    """PDAE Eq. 6: for DDIM, classifier guidance becomes eps_hat = eps_theta - sqrt(1 - alphabar_t) G.

    d: a Diffusion. Returns sqrt(1 - alphabar_t) for every t, float64 (T,).
    """
    raise NotImplementedError("exercise mean_shift: write the DDIM coefficient of PDAE Eq. 6")
