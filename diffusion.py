"""Gaussian diffusion, independent of any network (Diff-AE Eq. 1-6, 8; PDAE Eq. 1-6, 8).

A noise predictor is any callable eps_fn(x_t, t) -> eps, with t the *original* timestep index in
[0, T) even when sampling with fewer steps. Diff-AE passes `lambda x, t: unet(x, t, z)`, PDAE its
shifted eps; every sampler below is written once for all of them.

Schedule coefficients live in float64 and are cast to float32 where used, as the official
Diff-AE / guided-diffusion code does, so that its checkpoints reproduce the paper's numbers.

The two papers' official DDIM samplers walk different grids (`grid`): Diff-AE's visits N respaced
timesteps and ends at alphabar = 1 (encoding: at alphabar = 0); PDAE's visits N + 1 timesteps from
0 to T - 1 and treats the clean image as the state at timestep 0. Each checkpoint samples on the
grid it was made for; both are the same DDIM step (`ddim_step`), only the list of moves differs.
"""
import math

import torch


def beta_schedule(name, T):
    if name == "linear":  # Ho et al., rescaled so any T spans the same noise range
        scale = 1000 / T
        return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    if name == "cosine":  # Nichol & Dhariwal: alphabar(s) = cos^2((s + 0.008) / 1.008 * pi / 2)
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)], dtype=torch.float64)
    if name == "const":  # Diff-AE App. A.1: the latent DDIM's constant 0.008
        return torch.full((T,), 0.008 * 1000 / T, dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {name!r}: use 'linear', 'cosine' or 'const'")


def space_timesteps(T, steps, rule="ddim"):
    """The sorted original timesteps a `steps`-step sampler visits.

    rule="ddim": the official Diff-AE sampler's (guided-diffusion's "ddimN"): the smallest integer
    stride s with len(range(0, T, s)) == steps, e.g. 0, 100, ..., 900 for 10 steps; when no integer
    stride fits (say 600 of 1000) it falls back to the even rule.
    rule="even": guided-diffusion's space_timesteps(T, [steps]): round(i * (T - 1) / (steps - 1)),
    e.g. 0, 111, ..., 999; the official code uses it for DDPM sampling.
    rule="pdae": the official PDAE sampler's "ddimN": {int(s) for s in linspace(0, T - 1, steps + 1)},
    e.g. 0, 99, 199, ..., 999: steps + 1 states (fewer where int() collapses two) for `steps` moves.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}], got {steps}")
    if rule == "pdae":
        stride = (T - 1) / steps  # numpy.linspace's arithmetic (i * stride, last point exact), then truncated
        return sorted({int(i * stride) for i in range(steps)} | {T - 1})
    if rule == "ddim":
        for stride in range(1, T + 1):
            if len(range(0, T, stride)) == steps:
                return list(range(0, T, stride))
    elif rule != "even":
        raise ValueError(f"unknown respacing rule {rule!r}: use 'ddim', 'even' or 'pdae'")
    stride = (T - 1) / (steps - 1) if steps > 1 else 1
    return sorted({round(i * stride) for i in range(steps)})  # Python's round, as the official code


# The official DDIM grids: "diffae" (guided-diffusion's, Diff-AE's checkpoints), "pdae" (PDAE's).
GRIDS = ("diffae", "pdae")


def posterior_variance_on(ab):
    """Sigma_t = beta_t (1 - alphabar_{t-1}) / (1 - alphabar_t) (DDPM Eq. 7) along a chain given by its
    alphabar sequence (the full schedule or a respaced one)."""
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    return (1 - ab / ab_prev) * (1 - ab_prev) / (1 - ab)


def _bcast(a, x):
    """A per-sample float64 coefficient as float32 (B, 1, 1, 1) beside x."""
    return a.to(device=x.device, dtype=torch.float32).reshape(-1, *([1] * (x.dim() - 1)))


class Diffusion:
    def __init__(self, T=1000, schedule="linear", respacing="ddim", grid="diffae"):
        if grid not in GRIDS:
            raise ValueError(f"unknown DDIM grid {grid!r}: use 'diffae' or 'pdae'")
        self.T, self.schedule, self.respacing, self.grid = T, schedule, respacing, grid
        self.betas = beta_schedule(schedule, T)                  # (T,) float64
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)   # alphabar_t, (T,) float64

    def __repr__(self):
        return f"Diffusion(T={self.T}, schedule={self.schedule!r}, respacing={self.respacing!r}, grid={self.grid!r})"

    def config(self):
        """The keyword arguments that rebuild this diffusion (a checkpoint's config['diffusion']); defaults left out."""
        out = {"T": self.T, "schedule": self.schedule}
        if self.respacing != "ddim":
            out["respacing"] = self.respacing
        if self.grid != "diffae":
            out["grid"] = self.grid
        return out

    def ab(self, t):
        return self.alphas_cumprod[t.cpu()]

    # --- forward process -----------------------------------------------------------------

    def q_sample(self, x0, t, noise):
        """Diff-AE Eq. 2: x_t = sqrt(alphabar_t) x0 + sqrt(1 - alphabar_t) eps."""
        ab = self.ab(t)
        return _bcast(ab.sqrt(), x0) * x0 + _bcast((1 - ab).sqrt(), x0) * noise

    def predict_x0(self, x_t, t, eps):
        """Diff-AE Eq. 1's f_theta: x0 = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t)."""
        ab = self.ab(t)
        return _bcast((1 / ab).sqrt(), x_t) * x_t - _bcast((1 / ab - 1).sqrt(), x_t) * eps

    def eps_from_x0(self, x_t, t, x0):
        ab = self.ab(t)
        return (_bcast((1 / ab).sqrt(), x_t) * x_t - x0) / _bcast((1 / ab - 1).sqrt(), x_t)

    def posterior_mean(self, x0, x_t, t):
        """Mean of q(x_{t-1} | x_t, x0) (DDPM Eq. 7), on the full T-step schedule."""
        return self._posterior(x0, x_t, t, self.alphas_cumprod)[0]

    @staticmethod
    def _posterior(x0, x_t, i, ab_seq):
        """q(x_prev | x_t, x0) for a schedule given by its alphabar sequence (full or respaced); i indexes it."""
        ab = ab_seq[i.cpu()]
        ab_prev = torch.where(i.cpu() > 0, ab_seq[(i.cpu() - 1).clamp(min=0)], torch.ones_like(ab))
        beta = 1 - ab / ab_prev
        coef_x0 = ab_prev.sqrt() * beta / (1 - ab)            # posterior_mean_coef_x0
        coef_xt = (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)  # posterior_mean_coef_xt
        var = posterior_variance_on(ab_seq)[i.cpu()]
        return _bcast(coef_x0, x0) * x0 + _bcast(coef_xt, x_t) * x_t, var

    def posterior_variance(self, t):
        return posterior_variance_on(self.alphas_cumprod)[t.cpu()]

    # --- training ------------------------------------------------------------------------

    def loss(self, eps_fn, x0, t=None, noise=None, weights=None, kind="mse", generator=None):
        """Diff-AE Eq. 6: E_t,eps ||eps_fn(x_t, t) - eps||^2, t ~ U[0, T); per-t weights for PDAE Eq. 10."""
        B = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.T, (B,), generator=generator).to(x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        err = eps_fn(self.q_sample(x0, t, noise), t).float() - noise
        per_sample = (err.square() if kind == "mse" else err.abs()).flatten(1).mean(1)  # (B,)
        if weights is not None:
            per_sample = per_sample * _bcast(weights[t.cpu()], per_sample).flatten()
        return per_sample.mean()

    # --- samplers ------------------------------------------------------------------------

    def respace(self, steps, rule=None):
        """The sorted original timesteps a `steps`-step sampler visits (LongTensor).

        On the "pdae" grid these are the steps + 1 states of the DDIM chain (timestep 0 included), unless
        a rule is named (DDPM sampling asks for "even" on either grid).
        """
        rule = rule or ("pdae" if self.grid == "pdae" else self.respacing)
        return torch.tensor(space_timesteps(self.T, steps, rule), dtype=torch.long)

    def ddim_moves(self, steps, encode=False):
        """The moves of a `steps`-step DDIM: (timestep the network sees, alphabar moved to), in running order.

        grid="diffae": one move per respaced timestep; decoding ends with a move to alphabar = 1, x0
        itself, and encoding with a move to alphabar = 0. grid="pdae": the respaced timesteps are the
        states, the clean image being the one at the smallest (timestep 0); decoding moves down to it,
        encoding up from it to T - 1, one move between neighbours.
        """
        ts = self.respace(steps).tolist()
        ab = self.alphas_cumprod[ts]
        if self.grid == "pdae":
            up = [(ts[i], ab[i + 1]) for i in range(len(ts) - 1)]
            down = [(ts[i], ab[i - 1]) for i in range(len(ts) - 1, 0, -1)]
        else:
            one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
            up = [(ts[i], ab[i + 1] if i + 1 < len(ts) else zero) for i in range(len(ts))]
            down = [(ts[i], ab[i - 1] if i > 0 else one) for i in range(len(ts) - 1, -1, -1)]
        return up if encode else down

    def ddim_step(self, eps_fn, x, t, ab_to, clip=True):
        """One deterministic DDIM move (eta = 0) from x at timestep t to the noise level ab_to.

        Downward this is Diff-AE Eq. 1; upward it is the inversion of Eq. 8. Returns (x_next, x0_pred).
        """
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        eps = eps_fn(x, tt).float()
        x0 = self.predict_x0(x, tt, eps)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = self.eps_from_x0(x, tt, x0)  # keep eps consistent with the clipped x0
        ab_to = torch.as_tensor(ab_to, dtype=torch.float64)
        return float(ab_to.sqrt()) * x0 + float((1 - ab_to).sqrt()) * eps, x0

    def ddim_sample(self, eps_fn, x_T, steps, clip=True, on_step=None):
        """Diff-AE Eq. 1: decode x_T -> x0 deterministically in `steps` respaced DDIM steps.

        on_step(t, x_t, x0_pred) is called at every step (for figures of the predicted x0).
        """
        x = x_T
        for t, ab_to in self.ddim_moves(steps):
            x_new, x0 = self.ddim_step(eps_fn, x, t, ab_to, clip)
            if on_step is not None:
                on_step(t, x, x0)
            x = x_new
        return x

    def ddim_invert(self, eps_fn, x0, steps, clip=True):
        """Diff-AE Eq. 8: run the DDIM ODE forward (the stochastic encoder) x0 -> x_T.

        On the "diffae" grid the last move goes to alphabar = 0, so x_T is the model's final noise
        estimate, as in the official Diff-AE sampler; on the "pdae" grid it stops at timestep T - 1.
        Decoding x_T with ddim_sample at the same `steps` is near-exact, not exact: each move assumes
        eps is the same at both ends of the step.
        """
        x = x0
        for t, ab_to in self.ddim_moves(steps, encode=True):
            x, _ = self.ddim_step(eps_fn, x, t, ab_to, clip)
        return x

    def ddpm_sample(self, eps_fn, x_T, steps=None, clip=True, generator=None):
        """Ancestral sampling: x_{t-1} ~ N(posterior mean at the predicted x0, Sigma_t), respaced if steps < T."""
        ts = self.respace(steps or self.T, rule="even")  # the official DDPM respacing
        ab_seq = self.alphas_cumprod[ts]
        x = x_T
        for i in reversed(range(len(ts))):
            tt = torch.full((x.shape[0],), int(ts[i]), dtype=torch.long, device=x.device)
            x0 = self.predict_x0(x, tt, eps_fn(x, tt).float())
            if clip:
                x0 = x0.clamp(-1, 1)
            ii = torch.full((x.shape[0],), i, dtype=torch.long)
            mean, var = self._posterior(x0, x, ii, ab_seq)
            if i > 0:
                noise = torch.randn(x.shape, generator=generator).to(x.device)
                x = mean + _bcast(var.sqrt(), x) * noise
            else:
                x = mean
        return x


def lerp(a, b, alpha):
    """Linear interpolation; used for z_sem (Diff-AE §5.2)."""
    return (1 - alpha) * a + alpha * b


def slerp(a, b, alpha):
    """Spherical interpolation per sample; used for x_T, whose norm concentrates near sqrt(dim) (§5.2)."""
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))  # (B,)
    s = torch.sin(theta).clamp(min=1e-8)
    wa = torch.where(theta > 1e-4, torch.sin((1 - alpha) * theta) / s, torch.full_like(theta, 1 - alpha))
    wb = torch.where(theta > 1e-4, torch.sin(alpha * theta) / s, torch.full_like(theta, alpha))
    shape = (-1,) + (1,) * (a.dim() - 1)
    return wa.reshape(shape).to(a.dtype) * a + wb.reshape(shape).to(a.dtype) * b
