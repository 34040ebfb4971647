"""The toyfaces attribute judge: toyfaces' own instrument, a small CNN trained on its ground-truth attributes.

It answers "does this generated or manipulated image carry the attribute?" and gives the feature
space of `toy_frechet_distance`, our toy-domain stand-in for FID. It knows toyfaces' attributes
only: `knows(names)` says whether a dataset's labels are the ones it judges.
"""
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoint
from classifier import in_float32
from data import ToyFaces
from metrics import balanced_accuracy, frechet_distance


def knows(names):
    """Whether the judge judges these label names (toyfaces' attributes, in its order)."""
    return list(names) == list(ToyFaces.ATTRIBUTES)


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


@in_float32  # under sample.py's bf16 autocast this net collapses to constant outputs (balanced accuracy 0.5)
def train_attribute_net(res, n_train=2000, steps=300, batch_size=64, lr=2e-3, seed=0,
                        device="cpu", width=32, work_res=32, log_every=100):
    """Train an AttributeNet on toyfaces ground truth (split "train") with per-attribute BCE."""
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
    # the renderer's version is in the name: a judge of old faces must not judge new ones
    path = os.path.join(cache_dir, f"toyfaces-v{ToyFaces.VERSION}-judge-res{res}.pt")
    if os.path.exists(path):
        ck = torch.load(path, map_location="cpu", weights_only=True)
        net = AttributeNet(**ck["config"])
        net.load_state_dict(ck["state_dict"])
        print(f"attribute judge: loaded {path}")
        return net.to(device).eval()
    print(f"attribute judge: none cached at {path}, training one (about a minute on a CPU)")
    with torch.inference_mode(False):  # the same referee whatever context the first caller sits in
        net = train_attribute_net(res, device=device, log_every=0)
    checkpoint.save(path, {"config": net.config, "state_dict": {k: v.cpu() for k, v in net.state_dict().items()}})
    return net


@torch.no_grad()
def judge_apply(fn, images, judge, batch_size=256):
    """fn (the judge or judge.features) over images in batches, on the judge's device, in float32 whatever
    autocast the caller runs in: one referee for every run."""
    device = next(judge.parameters()).device
    with torch.autocast(device.type, enabled=False):
        return torch.cat([fn(x.to(device).float()).float().cpu() for x in images.split(batch_size)])


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
