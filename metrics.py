"""Evaluation metrics: reconstruction quality (Diff-AE Table 2), Frechet distance, and a
toyfaces attribute judge.

Reconstruction metrics follow the official Diff-AE evaluation (phizaz/diffae `metrics.py`,
`ssim.py`): images in [-1, 1] are mapped to [0, 1] first, and every metric is one number per
image, averaged over channels and pixels. Average over images yourself.

The judge is a small CNN trained on toyfaces' ground-truth attributes. It answers "does this
generated or manipulated image carry the attribute?" and gives the feature space of
`toy_frechet_distance`, our toy-domain stand-in for FID.
"""

import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoint

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

    def blur(t):
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


# ----------------------------------------------------------------------------
# Attribute judge for toyfaces


class AttributeNet(nn.Module):
    """Small CNN: attribute logits and a feature vector for toyfaces images of any resolution.
    Input is resized to `work_res` first, so one architecture judges every resolution."""

    def __init__(self, n_attrs=8, width=32, work_res=32, attributes=None):
        super().__init__()
        attributes = list(attributes) if attributes else [f"attr{i}" for i in range(n_attrs)]
        self.config = dict(n_attrs=n_attrs, width=width, work_res=work_res, attributes=attributes)
        self.attributes, self.work_res = attributes, work_res
        chans = [width, 2 * width, 4 * width, 4 * width]

        def block(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU()]

        layers = block(3, chans[0], 1)
        for cin, cout in zip(chans, chans[1:]):  # work_res -> work_res / 8
            layers += block(cin, cout, 2) + block(cout, cout, 1)
        self.body = nn.Sequential(*layers)
        self.feature_dim = chans[-1]
        self.head = nn.Linear(self.feature_dim, n_attrs)

    def resize(self, x):
        if x.shape[-2:] == (self.work_res, self.work_res):
            return x
        # antialias: downsampling a 256px face to 32px must average, not alias, the strands
        return F.interpolate(x, size=(self.work_res, self.work_res), mode="bilinear",
                             align_corners=False, antialias=True)

    def features(self, x):
        # (B, 3, H, W) in [-1, 1] -> (B, feature_dim), global average pool
        return self.body(self.resize(x)).mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.features(x))  # (B, n_attrs) logits


def train_attribute_net(res, n_train=2000, steps=300, batch_size=64, lr=2e-3, seed=0,
                        device="cpu", width=32, work_res=32, log_every=100):
    """Train an AttributeNet on toyfaces ground truth (split "train") with per-attribute BCE."""
    from data import ToyFaces  # imported here so metrics.py works without data.py
    torch.manual_seed(seed)
    net = AttributeNet(len(ToyFaces.ATTRIBUTES), width, work_res, ToyFaces.ATTRIBUTES)
    x, y = ToyFaces(res, n_train, seed=seed, split="train").tensors()
    x = torch.cat([net.resize(xb) for xb in x.split(500)])  # once here, not at every step
    x, y, net = x.to(device), y.to(device), net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=g)
        # horizontal flips keep every toyfaces attribute: twice the data for free
        flip = (torch.rand(batch_size, generator=g) < 0.5).to(device)[:, None, None, None]
        xb = torch.where(flip, x[idx].flip(-1), x[idx])
        # mild pixel noise: the judge will also see generated images, which are never clean
        xb = xb + 0.1 * torch.rand(batch_size, 1, 1, 1, generator=g).to(device) * torch.randn_like(xb)
        loss = F.binary_cross_entropy_with_logits(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"judge step {step + 1}/{steps} loss {loss.item():.4f} "
                  f"{time.time() - t0:.0f}s", flush=True)
    return net.eval()


def attribute_judge(res, cache_dir="data/cache", device="cpu"):
    """The toyfaces judge for resolution `res`: loaded from `cache_dir` or trained and cached."""
    from data import ToyFaces
    # the renderer's version is in the name: a judge of old faces must not judge new ones
    path = os.path.join(cache_dir, f"toyfaces-v{ToyFaces.VERSION}-judge-res{res}.pt")
    if os.path.exists(path):
        ck = torch.load(path, map_location="cpu", weights_only=True)
        net = AttributeNet(**ck["config"])
        net.load_state_dict(ck["state_dict"])
        print(f"attribute judge: loaded {path}")
        return net.to(device).eval()
    print(f"attribute judge: none cached at {path}, training one (about a minute on a CPU)")
    net = train_attribute_net(res, device=device, log_every=0)
    checkpoint.save(path, {"config": net.config, "state_dict": {k: v.cpu() for k, v in net.state_dict().items()}})
    return net


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


@torch.no_grad()
def judge_apply(fn, images, judge, batch_size=256):
    # run fn (judge or judge.features) over images in batches, on the judge's device
    device = next(judge.parameters()).device
    return torch.cat([fn(x.to(device).float()).cpu() for x in images.split(batch_size)])


def attribute_accuracy(judge, images, attrs, batch_size=256):
    """Balanced accuracy of the judge's predictions (logit > 0) against `attrs` [N, n_attrs]
    0/1, per attribute: {name: accuracy} (NaN where the labels hold one class only).
    images: [N, 3, H, W] in [-1, 1]."""
    pred = judge_apply(judge, images, judge, batch_size) > 0
    acc = balanced_accuracy(torch.as_tensor(attrs).cpu(), pred)
    return dict(zip(judge.attributes, acc.tolist()))


def toy_frechet_distance(images_a, images_b, judge, batch_size=256):
    """Frechet distance between two image sets in the judge's feature space.

    A toy-domain stand-in for FID, not FID: Inception features know nothing about toyfaces
    and cannot be downloaded here. Its values mean nothing on their own, and compare only
    between runs that use the same judge (same resolution, same cached file)."""
    fa = judge_apply(judge.features, images_a, judge, batch_size)
    fb = judge_apply(judge.features, images_b, judge, batch_size)
    return frechet_distance(fa, fb)


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
