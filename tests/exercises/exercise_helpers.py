"""Small shared pieces of the exercise checks: analytic noise predictors need no trained model."""


def rel(a, b):
    return float((a - b).norm() / b.norm())


def exact_eps(d, x0):
    """The perfect noise predictor when the data set is the single image x0 (any batch of them):
    eps = (x_t - sqrt(alphabar_t) x0) / sqrt(1 - alphabar_t). With it DDIM is exact."""
    def eps(x, t):
        ab = d.alphas_cumprod[t.cpu()].float().view(-1, *([1] * (x.dim() - 1)))
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    return eps


def gaussian_eps(d, mean, s):
    """The perfect noise predictor when the data are N(mean, s^2 I): a smooth, curved ODE, not exact for DDIM.

    E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mean) / (ab s^2 + 1 - ab).
    """
    def eps(x, t):
        ab = d.alphas_cumprod[t.cpu()].float().view(-1, *([1] * (x.dim() - 1)))
        return (1 - ab).sqrt() * (x - ab.sqrt() * mean) / (ab * s ** 2 + 1 - ab)
    return eps
