"""Exercise 8 (latent_ddim): Diff-AE §4 and Eq. 9: a DDIM over normalised z_sem, trained with an L1 loss."""
import torch

from exercise_helpers import exact_eps
from latent_ddim import LatentDDIM, LatentNetConfig

EXERCISE = "latent_ddim"
D = 6


def latent(**kw):
    torch.manual_seed(0)
    return LatentDDIM(LatentNetConfig(z_dim=D, hidden=32, num_layers=3, time_emb_dim=16), **kw)


def codes(n=500, seed=0):
    """Codes far from N(0, I), as real z_sem are: per-dimension means around 5, stds from 0.1 to 3."""
    g = torch.Generator().manual_seed(seed)
    mean, std = 5 + torch.randn(D, generator=g), torch.linspace(0.1, 3, D)
    return mean + std * torch.randn(n, D, generator=g)


class Exact(torch.nn.Module):
    """The perfect eps_omega(z_t, t) when every (normalised) code is the same point u."""

    def __init__(self, d, u):
        super().__init__()
        self.f, self.cfg = exact_eps(d, u), LatentNetConfig(z_dim=u.shape[-1])

    def forward(self, z_t, t):
        return self.f(z_t, t)


class Zero(torch.nn.Module):
    def forward(self, z_t, t):
        return torch.zeros_like(z_t)


def test_latent_ddim_normalised_codes_have_zero_mean_unit_std():
    lat, z = latent(), codes()
    lat.set_stats(z)
    assert torch.allclose(lat.mean, z.mean(0), atol=1e-5) and torch.allclose(lat.std, z.std(0), atol=1e-5), \
        "set_stats must store z.mean(0) and the unbiased z.std(0) in self.mean and self.std"
    zn = lat.normalize(z)
    assert torch.allclose(zn.mean(0), torch.zeros(D), atol=1e-4) and torch.allclose(zn.std(0), torch.ones(D), atol=1e-4), \
        (f"normalised training codes need mean 0 and std 1 per dimension; "
         f"got means {zn.mean(0).tolist()} and stds {zn.std(0).tolist()}")
    assert torch.allclose(lat.denormalize(zn), z, atol=1e-4), "denormalize(normalize(z)) must give back z"


def test_latent_ddim_loss_is_l1():
    lat, z = latent(), codes(8)
    lat.set_stats(codes())
    noise = torch.randn(8, D, generator=torch.Generator().manual_seed(1))
    t = torch.arange(8) * 120
    lat.net = Zero()
    got = float(lat.loss(z, t, noise))
    l1, l2 = float(noise.abs().mean()), float(noise.square().mean())
    assert abs(got - l1) < 1e-5, \
        f"predicting eps = 0 must cost mean|eps| = {l1:.4f} (L1, Eq. 9); got {got:.4f} (L2 would be {l2:.4f})"


def test_latent_ddim_loss_sees_normalised_codes():
    """Codes mean + std * u with a net that is perfect for the normalised point u: the loss is ~0 only if you normalise."""
    lat = latent()
    lat.set_stats(codes())
    u = torch.randn(1, D, generator=torch.Generator().manual_seed(2))
    z = (lat.mean + lat.std * u).expand(16, -1)
    lat.net = Exact(lat.diffusion, u)
    got = float(lat.loss(z, generator=torch.Generator().manual_seed(3)))
    assert got < 1e-3, f"the net is perfect for normalize(z) = u, so the loss must be ~0; got {got:.3f}: did you normalise z?"


def test_latent_ddim_loss_without_normalisation_when_asked():
    lat = latent(znormalize=False)
    lat.set_stats(codes())
    z = codes(16, seed=4)[:1].expand(16, -1)
    lat.net = Exact(lat.diffusion, z[:1])
    got = float(lat.loss(z, generator=torch.Generator().manual_seed(5)))
    assert got < 1e-3, f"with znormalize=False the loss is on the raw codes; got {got:.3f}"


def test_latent_ddim_samples_come_back_unnormalised():
    lat = latent()
    lat.set_stats(codes())
    lat.net = Exact(lat.diffusion, torch.zeros(D))  # every normalised code is 0, i.e. every raw code is the mean
    z = lat.sample(4, 10, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(z, lat.mean.expand(4, -1), atol=1e-3), \
        f"sample() must return raw codes (denormalize): expected the mean {lat.mean.tolist()}, got {z[0].tolist()}"


def test_latent_ddim_loss_trains_the_net():
    lat, z = latent(), codes(32)
    lat.set_stats(codes())
    lat.loss(z, generator=torch.Generator().manual_seed(7)).backward()
    g = sum(float(p.grad.abs().sum()) for p in lat.net.parameters() if p.grad is not None)
    assert g > 0, "the latent loss must keep its graph to the MLP eps_omega (no .item(), .detach() or no_grad)"
