import math

import numpy as np
import pytest
import torch

import metrics
from metrics import balanced_accuracy, frechet_distance, mse, psnr, ssim, ssim_map



def images(n=4, c=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) * 2 - 1


# ----------------------------------------------------------------------------
# MSE, PSNR


def test_mse_psnr_of_constant_offset():
    a = images() * 0.8  # room for the offset inside [-1, 1]
    b = a + 0.2  # 0.2 on the [-1, 1] scale is 0.1 on [0, 1]
    assert torch.allclose(mse(a, b), torch.full((4,), 0.01), atol=1e-6)
    assert torch.allclose(psnr(a, b), torch.full((4,), 20.0), atol=1e-3)


def test_mse_is_per_image_and_psnr_of_identical_is_inf():
    a = images()
    b = a.clone()
    b[1] = -b[1]
    assert mse(a, b).shape == (4,)
    assert mse(a, b)[0] == 0 and mse(a, b)[1] > 0
    assert torch.isinf(psnr(a, a)).all()


# ----------------------------------------------------------------------------
# SSIM


def test_ssim_of_identical_is_one():
    a = images()
    assert torch.allclose(ssim(a, a), torch.ones(4), atol=1e-5)


def test_ssim_is_symmetric_and_bounded():
    a, b = images(seed=0), images(seed=1)
    assert torch.allclose(ssim(a, b), ssim(b, a), atol=1e-6)
    for y in (b, -a, torch.zeros_like(a)):
        s = ssim_map(a, y)
        assert (s >= -1 - 1e-5).all() and (s <= 1 + 1e-5).all()


def test_ssim_decreases_with_noise():
    # smooth images, so noise is what lowers structural similarity
    a = torch.nn.functional.avg_pool2d(images(h=64, w=64), 4, 1, padding=2)
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(a.shape, generator=g)
    scores = [ssim(a, (a + s * noise).clamp(-1, 1)).mean().item() for s in (0, 0.05, 0.2, 0.5)]
    assert all(x > y for x, y in zip(scores, scores[1:])), scores


def test_ssim_of_constant_images_matches_closed_form():
    # flat images have zero variance: SSIM = luminance term (2 mu_a mu_b + C1)/(mu_a^2 + mu_b^2 + C1)
    # float64: in float32, blur(x^2) - blur(x)^2 cancels to ~1e-7, visible next to C2
    a = torch.full((1, 3, 32, 32), 0.4, dtype=torch.float64)
    b = torch.full((1, 3, 32, 32), -0.2, dtype=torch.float64)
    ua, ub, C1 = 0.7, 0.4, 0.01**2  # on [0, 1]
    want = (2 * ua * ub + C1) / (ua**2 + ub**2 + C1)
    interior = ssim_map(a, b)[..., 5:-5, 5:-5]  # zero padding reaches 5 pixels in
    assert torch.allclose(interior, torch.full_like(interior, want), atol=1e-9)


@pytest.mark.parametrize("i, j", [(8, 8), (0, 3)])  # an interior pixel, a zero-padded border one
def test_ssim_map_matches_explicit_weighted_sums(i, j):
    x = (images(1, 1, 16, 16, seed=3).double().numpy()[0, 0] + 1) / 2
    y = (images(1, 1, 16, 16, seed=4).double().numpy()[0, 0] + 1) / 2
    k = np.arange(11) - 5
    g = np.exp(-k**2 / (2 * 1.5**2))
    w = np.outer(g, g) / g.sum()**2
    px, py = np.pad(x, 5)[i:i + 11, j:j + 11], np.pad(y, 5)[i:i + 11, j:j + 11]
    mx, my = (w * px).sum(), (w * py).sum()
    vx, vy = (w * px * px).sum() - mx**2, (w * py * py).sum() - my**2
    cxy = (w * px * py).sum() - mx * my
    C1, C2 = 0.01**2, 0.03**2
    want = (2 * mx * my + C1) * (2 * cxy + C2) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
    a = torch.from_numpy(x * 2 - 1)[None, None]
    b = torch.from_numpy(y * 2 - 1)[None, None]
    assert ssim_map(a, b)[0, 0, i, j].item() == pytest.approx(want, abs=1e-5)


# ----------------------------------------------------------------------------
# Frechet distance


def gaussian_samples(mu, var, n=500, seed=0):
    # samples whose sample mean and (unbiased) covariance are exactly mu and diag(var)
    z = np.random.default_rng(seed).standard_normal((n, len(mu)))
    z -= z.mean(0)
    L = np.linalg.cholesky(np.cov(z, rowvar=False))
    z = z @ np.linalg.inv(L).T
    return z * np.sqrt(var) + mu


def test_frechet_distance_of_identical_sets_is_zero():
    f = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(f, f) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    a, b = gaussian_samples(mu1, v1, seed=1), gaussian_samples(mu2, v2, seed=2)
    want = ((mu1 - mu2)**2).sum() + (v1 + v2 - 2 * np.sqrt(v1 * v2)).sum()
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-8)


def test_frechet_distance_matches_product_eigenvalues_symmetric_nonnegative():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 8, generator=g) @ torch.randn(8, 8, generator=g)
    b = torch.randn(300, 8, generator=g) @ torch.randn(8, 8, generator=g) + 1
    # tr sqrt(S_a S_b) also equals the sum of square roots of the product's eigenvalues
    A, B = a.double().numpy(), b.double().numpy()
    Sa, Sb = np.cov(A, rowvar=False), np.cov(B, rowvar=False)
    tr_sqrt = np.sqrt(np.linalg.eigvals(Sa @ Sb).real.clip(0)).sum()
    want = ((A.mean(0) - B.mean(0))**2).sum() + np.trace(Sa) + np.trace(Sb) - 2 * tr_sqrt
    d = frechet_distance(a, b)
    assert d == pytest.approx(want, rel=1e-6)
    assert d == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert d >= 0
    # low rank covariances (fewer samples than dims) must not give nan or negative
    assert frechet_distance(a[:5], a[5:10]) >= 0


# ----------------------------------------------------------------------------
# balanced accuracy


def test_balanced_accuracy_closed_cases():
    t = torch.tensor([1, 1, 0, 0, 0, 0])
    assert balanced_accuracy(t, t).item() == 1.0
    assert balanced_accuracy(t, 1 - t).item() == 0.0
    # a constant predictor is at chance whatever the base rate
    assert balanced_accuracy(t, torch.ones(6)).item() == 0.5
    assert balanced_accuracy(t, torch.zeros(6)).item() == 0.5
    # TPR 1/2, TNR 3/4; the arguments are (labels, predictions)
    assert balanced_accuracy(t, torch.tensor([1, 0, 0, 0, 0, 1])).item() == pytest.approx(0.625)
    assert balanced_accuracy(torch.tensor([1, 0, 0, 0]), torch.tensor([1, 1, 1, 0])).item() == pytest.approx(2 / 3)
    # one class absent: the balanced accuracy is undefined, and says so
    assert math.isnan(balanced_accuracy([1, 1, 1, 1], [1, 1, 0, 0]).item())
    assert math.isnan(balanced_accuracy([0, 0, 0], [0, 0, 0]).item())
    assert math.isnan(balanced_accuracy([], []).item())


def test_balanced_accuracy_is_per_column():
    y = torch.tensor([[1, 0], [1, 0], [0, 0], [0, 0]])
    pred = torch.tensor([[1, 1], [0, 0], [0, 0], [0, 0]])
    acc = balanced_accuracy(y, pred)
    assert acc.shape == (2,) and acc[0].item() == pytest.approx((0.5 + 1.0) / 2)
    assert torch.isnan(acc[1])  # no positives: TPR undefined
    assert acc[0].item() == balanced_accuracy(y[:, 0], pred[:, 0]).item()
    with pytest.raises(ValueError, match="shape"):
        balanced_accuracy(y, pred[:, 0])


# ----------------------------------------------------------------------------
# attribute judge


def test_fid_without_backends_says_what_to_install():
    try:
        import torchmetrics  # noqa: F401
        pytest.skip("torchmetrics installed")
    except ImportError:
        pass
    try:
        import pytorch_fid  # noqa: F401
        pytest.skip("pytorch-fid installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install"):
        metrics.fid(images(2), images(2))


@pytest.mark.parametrize("seed", [0, 1])
def test_true_noise_has_the_moments_and_no_correlation_of_noise(seed):
    from metrics import adjacent_correlation, noise_statistics
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    s = noise_statistics(x)
    assert s["mean"].abs().max() < 0.03 and (s["std"] - 1).abs().max() < 0.03
    assert s["skew"].abs().max() < 0.1 and s["excess_kurtosis"].abs().max() < 0.2
    assert adjacent_correlation(x).abs().max() < 0.03
    smooth = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # neighbours share pixels: strongly correlated
    assert adjacent_correlation(smooth).min() > 0.5
    skewed = x.exp()
    assert noise_statistics(skewed)["skew"].min() > 1


@pytest.mark.parametrize("seed", [0, 1])
def test_each_key_is_its_own_nearest_neighbour_at_distance_zero(seed):
    from metrics import nearest
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(30, 3, 8, 8, generator=g)
    d, i = nearest(keys[[4, 17, 4]], keys, k=2)
    assert i[:, 0].tolist() == [4, 17, 4] and d[:, 0].abs().max() < 1e-6 and (d[:, 1] > 0).all()
    q = torch.rand(5, 3, 8, 8, generator=g)
    brute = ((q[:, None] - keys[None]) ** 2).flatten(2).mean(2)
    dd, ii = nearest(q, keys, k=3)
    assert torch.equal(ii, brute.topk(3, largest=False).indices) and torch.allclose(dd, brute.topk(3, largest=False).values, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_nearest_by_a_pair_distance_is_nearest_when_that_distance_is_the_mse(seed):
    """The LPIPS search of App. C runs through nearest_by: given the MSE as its pair distance, it must
    find what nearest finds, across chunk boundaries."""
    from metrics import nearest, nearest_by
    g = torch.Generator().manual_seed(seed)
    keys, q = torch.rand(37, 3, 8, 8, generator=g), torch.rand(4, 3, 8, 8, generator=g)
    mse = lambda a, b: (a - b).square().flatten(1).mean(1)
    d1, i1 = nearest(q, keys, k=3)
    d2, i2 = nearest_by(mse, q, keys, k=3, chunk=10)
    assert torch.equal(i1, i2) and torch.allclose(d1, d2, atol=1e-6)
    d, i = nearest_by(mse, keys[[5, 30]], keys, k=1, chunk=7)
    assert i[:, 0].tolist() == [5, 30] and d.abs().max() < 1e-7


def test_ssim_is_the_same_inside_a_bf16_autocast():
    """The networks may run in bf16; the metric must not: its blur stays in the images' precision."""
    a, b = images(2, seed=3), images(2, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ssim(a, b)
    assert torch.allclose(inside, ssim(a, b), atol=1e-6)


def test_grain_is_zero_on_planes_and_grows_with_fine_noise():
    from metrics import grain
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    plane = (0.3 * xx - 0.5 * yy).expand(2, 3, 16, 16)
    assert grain(plane).abs().max() < 1e-6 and grain(torch.zeros(1, 3, 8, 8)).item() == 0
    g = torch.Generator().manual_seed(0)
    noisy = [grain((plane + s * torch.randn(plane.shape, generator=g)).clamp(-1, 1)).mean() for s in (0.05, 0.1, 0.2)]
    assert noisy[0] < noisy[1] < noisy[2]


def test_grain_ratio_is_one_on_the_data_and_scales_with_contrast():
    from metrics import grain_ratio
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert abs(grain_ratio(x, x) - 1) < 1e-6
    assert abs(grain_ratio(0.5 * x, x) - 0.5) < 1e-5  # the Laplacian is linear: half the contrast, half the grain
