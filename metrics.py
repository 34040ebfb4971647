"""Evaluation metrics: reconstruction quality (Diff-AE Table 2), Frechet distance, balanced accuracy,
FID and LPIPS through their optional packages. No model of this project is imported here.

Reconstruction metrics follow the official Diff-AE evaluation (phizaz/diffae `metrics.py`,
`ssim.py`): images in [-1, 1] are mapped to [0, 1] first, and every metric is one number per
image, averaged over channels and pixels. Average over images yourself.

The judge is a small CNN trained on toyfaces' ground-truth attributes. It answers "does this
generated or manipulated image carry the attribute?" and gives the feature space of
`toy_frechet_distance`, our toy-domain stand-in for FID.
"""

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------
# Reconstruction metrics (Diff-AE Table 2: SSIM, LPIPS, MSE; PSNR as in the official code)


def to_unit(x):
    # the official evaluation maps [-1, 1] images to [0, 1] before every metric
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # float64 stays float64
    return (x + 1) / 2


def mse(a, b):
    """Per-image mean squared error. a, b: [N, C, H, W] in [-1, 1]; computed on [0, 1]
    as in the official Diff-AE evaluation. Returns Tensor[N]."""
    return (to_unit(a) - to_unit(b)).pow(2).mean(dim=(1, 2, 3))


def psnr(a, b):
    """Per-image PSNR in dB with data range 1. a, b: [N, C, H, W] in [-1, 1]; computed on
    [0, 1] as in the official Diff-AE evaluation. Identical images give +inf. Returns Tensor[N]."""
    return -10 * torch.log10(mse(a, b))  # = 20 log10(1 / sqrt(mse))


def gaussian_window(size=11, sigma=1.5):
    # normalised 2-D Gaussian, the outer product of a 1-D one, as in the official ssim.py
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)  # (size, size)


def ssim_map(a, b, window_size=11, sigma=1.5):
    """Per-pixel SSIM map [N, C, H, W] (Wang et al. 2004). a, b: [N, C, H, W] in [-1, 1];
    computed on [0, 1] as in the official Diff-AE evaluation: Gaussian window 11, sigma 1.5,
    each channel on its own (grouped conv), zero padding so the map keeps the image size
    (this lowers SSIM near the border, and we keep it to match the published numbers)."""
    x, y = to_unit(a), to_unit(b)
    C = x.shape[1]
    w = gaussian_window(window_size, sigma).to(x)
    w = w.expand(C, 1, window_size, window_size).contiguous()  # (C, 1, k, k)

    def blur(t):  # in the images' own precision, whatever autocast the caller's networks run in
        with torch.autocast(t.device.type, enabled=False):
            return F.conv2d(t, w, padding=window_size // 2, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    C1, C2 = 0.01**2, 0.03**2  # (K1 L)^2, (K2 L)^2 with data range L = 1
    return ((2 * mu_x * mu_y + C1) * (2 * cov_xy + C2)) / (
        (mu_x**2 + mu_y**2 + C1) * (var_x + var_y + C2))


def ssim(a, b):
    """Per-image SSIM, the mean of `ssim_map` over channels and pixels, as the official
    Diff-AE `ssim(..., size_average=False)`. a, b: [N, C, H, W] in [-1, 1]; computed on
    [0, 1]. Returns Tensor[N]."""
    return ssim_map(a, b).mean(dim=(1, 2, 3))


# ----------------------------------------------------------------------------
# Frechet distance (Heusel et al. 2017, the FID formula)


def sqrtm_psd(S):
    # symmetric square root of a PSD matrix; round-off can leave tiny negative eigenvalues
    lam, V = np.linalg.eigh(S)
    return (V * np.sqrt(np.clip(lam, 0, None))) @ V.T


def frechet_distance(feat_a, feat_b):
    """Frechet distance between Gaussians fitted to two feature sets [N, F] (N >= 2):
    ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2}), in float64.

    tr((S_a S_b)^{1/2}) = tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}): the right side is the root of a
    symmetric PSD matrix, so `eigh` computes it stably without scipy's `sqrtm`."""
    a = np.asarray(torch.as_tensor(feat_a).detach().cpu(), dtype=np.float64)
    b = np.asarray(torch.as_tensor(feat_b).detach().cpu(), dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    S_a = np.atleast_2d(np.cov(a, rowvar=False))  # unbiased, as pytorch-fid
    S_b = np.atleast_2d(np.cov(b, rowvar=False))
    R = sqrtm_psd(S_a)
    M = R @ S_b @ R
    lam = np.linalg.eigvalsh((M + M.T) / 2)
    tr_sqrt = np.sqrt(np.clip(lam, 0, None)).sum()
    d = ((mu_a - mu_b)**2).sum() + np.trace(S_a) + np.trace(S_b) - 2 * tr_sqrt
    return float(max(d, 0.0))  # a true distance is >= 0; clip round-off


def balanced_accuracy(y_true, y_pred):
    """Mean of the true-positive and true-negative rates of binary labels (0/1 or bool), per column:
    [N] -> a 0-d tensor, [N, A] -> [A]. Chance level is 0.5 whatever the base rate. A column with no
    positives or no negatives has no balanced accuracy: NaN (0/0), which callers skip (nanmean)."""
    t, p = torch.as_tensor(y_true).bool(), torch.as_tensor(y_pred).bool()
    if t.shape != p.shape:
        raise ValueError(f"balanced_accuracy: labels {tuple(t.shape)} and predictions {tuple(p.shape)} differ in shape")
    tpr = (p & t).sum(0) / t.sum(0)
    tnr = (~p & ~t).sum(0) / (~t).sum(0)
    return (tpr + tnr) / 2


def fid(images_a, images_b, device="cpu", batch_size=64):
    """FID with Inception-v3 features (torchmetrics, else pytorch-fid), optional: neither is a
    dependency, and both download Inception weights on first use. images: [N, 3, H, W] in [-1, 1]."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError:
        FrechetInceptionDistance = None
    if FrechetInceptionDistance is not None:
        m = FrechetInceptionDistance(feature=2048, normalize=True).to(device)
        for real, imgs in ((True, images_a), (False, images_b)):
            for x in imgs.split(batch_size):
                m.update(to_unit(x).clamp(0, 1).to(device), real=real)
        return float(m.compute())
    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError:
        raise ImportError("fid() needs torchmetrics or pytorch-fid: "
                          "pip install 'torchmetrics[image]' or pip install pytorch-fid") from None
    net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()

    @torch.no_grad()
    def feats(imgs):  # pytorch-fid takes [0, 1] and resizes to 299 itself
        return torch.cat([net(to_unit(x).clamp(0, 1).to(device))[0].flatten(1).cpu()
                          for x in imgs.split(batch_size)])
    return frechet_distance(feats(images_a), feats(images_b))


def lpips_model(device="cpu"):
    """(LPIPS with AlexNet features, as the official Diff-AE evaluation, None) or (None, why not).
    The `lpips` package is optional; its AlexNet weights download on first use."""
    try:
        import lpips
    except ImportError:
        return None, "pip install lpips; its AlexNet weights download on first use"
    try:
        return lpips.LPIPS(net="alex", verbose=False).to(device).eval(), None
    except Exception as e:  # no network for the first download, a broken cache, ...
        return None, f"lpips could not load its weights ({type(e).__name__}: {e})"


def lpips_distance(fn, a, b):
    """Per-image LPIPS of images in [-1, 1], the range the lpips package takes (shape [B])."""
    return fn(a.float(), b.float()).flatten()


# ----------------------------------------------------------------------------
# How Gaussian an inferred x_T is (Diff-AE App. J), and nearest neighbours (App. C)


def noise_statistics(x):
    """Per image, how far x [B, C, H, W] is from N(0, I) noise: its mean, std, skewness, excess kurtosis
    (0, 1, 0, 0 for Gaussian noise) and the correlation of horizontally and of vertically adjacent
    pixels (0 for independent noise). A dict of [B] tensors."""
    x = x.double().flatten(1)
    mu, sd = x.mean(1), x.std(1)
    u = (x - mu[:, None]) / sd[:, None]
    return {"mean": mu, "std": sd, "skew": u.pow(3).mean(1), "excess_kurtosis": u.pow(4).mean(1) - 3}


def adjacent_correlation(x):
    """The mean correlation of horizontally and vertically adjacent pixels, per image ([B, C, H, W] -> [B])."""
    x = x.double()
    x = (x - x.mean((1, 2, 3), keepdim=True)) / x.std((1, 2, 3), keepdim=True)
    h = (x[..., :, 1:] * x[..., :, :-1]).mean((1, 2, 3))
    v = (x[..., 1:, :] * x[..., :-1, :]).mean((1, 2, 3))
    return (h + v) / 2


def nearest(queries, keys, k=1):
    """(distances [Q, k], indices [Q, k]) of each query's k nearest keys by mean squared difference
    (images [N, C, H, W] or codes [N, D]), computed in chunks so memory stays bounded."""
    q, kk = queries.flatten(1).double(), keys.flatten(1).double()
    dists, idx = [], []
    for part in q.split(256):
        d = (part.square().sum(1, keepdim=True) - 2 * part @ kk.T + kk.square().sum(1)).clamp_min(0) / q.shape[1]
        top = d.topk(k, dim=1, largest=False)
        dists.append(top.values)
        idx.append(top.indices)
    return torch.cat(dists).float(), torch.cat(idx)


def nearest_by(dist, queries, keys, k=1, chunk=256):
    """`nearest` under any per-pair distance dist(a, b) -> [B] of two equal-sized batches (LPIPS, App. C):
    each query against every key, in chunks of keys."""
    dists, idx = [], []
    for q in queries:
        row = torch.cat([dist(q.expand(len(part), *q.shape), part).float().cpu() for part in keys.split(chunk)])
        top = row.topk(k, largest=False)
        dists.append(top.values)
        idx.append(top.indices)
    return torch.stack(dists), torch.stack(idx)


def grain(x):
    """Fine high-frequency energy per image: the mean absolute 4-neighbour discrete Laplacian of the image
    in [0, 1], inside the border ([B, C, H, W] -> [B]). 0 for any image linear in x and y; grainy
    decodings score above the data they imitate, over-smoothed ones below."""
    u = to_unit(x)
    lap = 4 * u[..., 1:-1, 1:-1] - u[..., :-2, 1:-1] - u[..., 2:, 1:-1] - u[..., 1:-1, :-2] - u[..., 1:-1, 2:]
    return lap.abs().mean((1, 2, 3))


def grain_ratio(x, reference):
    """Mean grain of images x over that of the images they imitate: 1 as the data, above 1 grainy."""
    return float(grain(x).mean()) / max(float(grain(reference).mean()), 1e-12)
