"""The two codes of a checkpoint (Diff-AE §3), for the images a command is asked about.

    z_sem = encoder(x0)                   the semantic code (absent for the DDIM baseline)
    x_T   = DDIM inversion of x0 given z  the stochastic code (Diff-AE Eq. 8)

and the attribute directions in z_sem (App. A.2). `sample.py`, `explore.py` and `train.py`'s
previews all use these functions, so every figure encodes, decodes and edits one way.
"""
import hashlib
import os
from dataclasses import dataclass

import torch

import align
import checkpoint
import classifier
import cli
import data
from nn import weights_sha256


# --- encoding and decoding, for every checkpoint kind -------------------------------------------

def eps_fn(kind, model, z=None):
    """The noise predictor the sampler sees, for a checkpoint kind."""
    if kind == "ddim":
        return lambda x, t: model(x, t)
    return model.eps_fn(z)


def encode(kind, model, d, x, steps):
    """x0 -> (z_sem, x_T): z from the encoder, x_T by DDIM inversion given z (Diff-AE Eq. 8)."""
    z = model.encode(x) if kind != "ddim" else None
    return z, d.ddim_invert(eps_fn(kind, model, z), x, steps)


def decode(kind, model, d, z, x_T, steps, on_step=None):
    return d.ddim_sample(eps_fn(kind, model, z), x_T, steps, on_step=on_step)


def random_x_T(shape, seed, device="cpu"):
    """x_T ~ N(0, I) drawn on the CPU from `seed`, so a seed gives the same x_T on every device."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)


def reconstruction_rows(kind, model, d, x, steps, seed=0):
    """[input, reconstruction from inferred x_T, reconstruction from random x_T (with a z_sem only)]."""
    with torch.inference_mode():
        z, x_T = encode(kind, model, d, x, steps)
        rows = [x, decode(kind, model, d, z, x_T, steps)]
        if kind != "ddim":
            rows.append(decode(kind, model, d, z, random_x_T(x.shape, seed, x.device), steps))
    return rows


# --- the images a command is asked about ----------------------------------------------------------

@dataclass
class Source:
    """Where images and labels come from: the checkpoint's dataset unless data / images / labels_csv say otherwise."""
    data: str = None
    data_dir: str = None
    images: list = None
    labels_csv: str = None
    align: bool = False  # FFHQ-align src.images first (align.py), as the released face models expect


def resolution(ck):
    return ck["config"].get("train", {}).get("res") or ck["config"]["unet"]["res"]


def dataset_of(ck, src, split):
    """The checkpoint's dataset (or src.data), split "train" or "test"; UsageError if it is not there."""
    tc = ck["config"].get("train", {})
    name = src.data or tc.get("data")
    if name is None:
        cli.usage_error("this checkpoint does not record its dataset; pass --data NAME [--data-dir DIR] or --images FILE ...")
    try:
        ds = data.make_dataset(name, resolution(ck), data_dir=src.data_dir or tc.get("data_dir"), split=split,
                               seed=tc.get("seed", 0))
        return data.with_labels(ds, src.labels_csv) if src.labels_csv else ds
    except data.DatasetError as e:
        if src.data or tc.get("source") != "official" or split != "test":
            cli.usage_error(str(e))
        # a released checkpoint names a dataset this machine may not have: show it working on toyfaces
        print(f"note: {e}\nnote: using held-out toyfaces at {resolution(ck)}px instead; pass --images FILE ... or --data NAME")
        return data.make_dataset("toyfaces", resolution(ck), split="test")


def items(ds, idx):
    """(images, labels) of dataset items idx, as two stacked tensors."""
    if hasattr(ds, "tensors"):  # in-memory toyfaces: index the tensors directly
        X, Y = ds.tensors()
        return X[idx], Y[idx]
    pairs = [ds[int(i)] for i in idx]
    return torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])


def held_out(ck, n, src):
    """n held-out images with their labels and label names, or the user's src.images (no labels)."""
    if src.images:
        return user_images(ck, src), torch.zeros(len(src.images), 0), []
    ds = dataset_of(ck, src, "test")
    x, y = items(ds, torch.arange(min(n, len(ds))))
    return x, y, list(ds.attr_names)


def user_images(ck, src):
    """The user's photos at the model's resolution: FFHQ-aligned with src.align, else centre-cropped."""
    res = resolution(ck)
    try:
        if src.align:
            return torch.stack([data.square_resize(align.align_face(f, res), res) for f in src.images])
        if ck["config"].get("train", {}).get("source") == "official":
            print("note: the released models were trained on aligned faces; pass --align (or python align.py) for a photo")
        return torch.stack([data.square_resize(data.load_rgb(f), res) for f in src.images])
    except (OSError, data.DatasetError, align.AlignError) as e:
        cli.usage_error(f"cannot read --images: {e}")


def encode_all(model, x, batch_size, device):
    """z_sem of images x, batch by batch, as float32 on the CPU."""
    with torch.inference_mode():
        return torch.cat([model.encode(b.to(device)).float().cpu() for b in x.split(batch_size)])


def training_codes(model, ck, src, n=5000, seed=0, batch_size=128, device="cpu"):
    """z_sem of n random training images (5000 make a stable direction, App. A.2) with their labels and names."""
    ds = dataset_of(ck, src, "train")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:min(n, len(ds))]
    x, y = items(ds, idx)
    return encode_all(model, x, batch_size, device), y, list(ds.attr_names)


# --- attribute directions in z_sem (Diff-AE §5.3, App. A.2) ------------------------------------------

def attribute_index(names, attr):
    if attr not in names:
        cli.usage_error(f"unknown --attr {attr!r}; this dataset's labels are: {', '.join(names) or '(none)'}; "
                        f"give your own with --labels-csv FILE (columns: file,label1,...)")
    return names.index(attr)


def direction_for(model, ck, ckpt_path, attr, src, l2=classifier.DIRECTION_WEIGHT_DECAY, seed=0, batch_size=128,
                  device="cpu"):
    """(direction, mean, std) of an attribute in normalised z space, trained once and cached beside the checkpoint."""
    path = direction_cache(ck, ckpt_path, attr, src, l2)
    if os.path.exists(path):
        try:
            c = torch.load(path, weights_only=True)
            return c["direction"], c["mean"], c["std"]
        except Exception as e:  # a cache that cannot be read is rebuilt, never trusted
            print(f"note: the cached direction {path} cannot be read ({type(e).__name__}); training it again")
    z, y, names = training_codes(model, ck, src, seed=seed, batch_size=batch_size, device=device)
    col = y[:, attribute_index(names, attr)]
    if getattr(model, "latent", None) is not None:  # the autoencoder's own code statistics, as the official code
        mean, std = model.latent.mean.detach().float().cpu(), model.latent.std.detach().float().cpu()
    else:  # the training set's codes (the labelled set where a --labels-csv names other images)
        mean, std = classifier.code_stats(z)
    if len(col.unique()) < 2:
        cli.usage_error(f"every training image has {attr} = {float(col[0]):g}: no direction separates one class; "
                        f"use labels with both values")
    zn = classifier.normalize(z, mean, std)
    binary = bool(torch.all((col == 0) | (col == 1)))
    # a binary label gets logistic regression; a continuous one (head pose, age) a ridge regression
    probe = classifier.fit_logistic(zn, col[:, None], weight_decay=l2) if binary else classifier.fit_linear_regression(zn, col[:, None])
    direction = classifier.attribute_direction(probe)
    checkpoint.save(path, {"direction": direction, "mean": mean, "std": std, "binary": binary, "n": len(z)})
    print(f"trained a {'logistic' if binary else 'linear'} probe for {attr} on {len(z)} codes; cached at {path}")
    return direction, mean, std


def released_direction(path, attr):
    """(direction, mean, std) from a released classifier file: its row for `attr`, as a unit vector, and the
    code statistics it normalises by (the official notebooks' edit, with no dataset on disk)."""
    try:
        c = checkpoint.read_classifier(path)
    except checkpoint.CheckpointError as e:
        cli.usage_error(f"--classifier: {e}")
    i = attribute_index(c["names"], attr)
    return torch.nn.functional.normalize(c["weight"][i].float(), dim=0), c["mean"].float(), c["std"].float()


def direction_cache(ck, ckpt_path, attr, src, l2):
    """Where a direction is cached: keyed by the data (or the labels file's contents), the attribute,
    the probe's L2 strength and the checkpoint's weights, so nothing stale is ever reused."""
    if src.labels_csv:
        try:
            with open(src.labels_csv, "rb") as f:
                tag = f"{os.path.splitext(os.path.basename(src.labels_csv))[0]}-{hashlib.sha256(f.read()).hexdigest()[:10]}"
        except OSError as e:
            cli.usage_error(f"--labels-csv {src.labels_csv}: {e.strerror}; give a CSV with columns file,label1,...")
    else:
        tag = src.data or ck["config"].get("train", {}).get("data")
    weights = weights_sha256(ck.get("ema") or ck["model"])[:10]
    return os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), "directions", f"{tag}_{attr}_wd{l2:g}_{weights}.pt")


# --- is z_sem used? a label-free diagnosis ---------------------------------------------------------

def z_usage(model, d, x, steps=20, seed=0):
    """Two label-free measures of how much the decoder relies on z_sem, for images x (at least two):

    gap_ratio: the posterior-mean gap (PDAE §4.2) of the decoder given each image's own z_sem, over the
        gap given another image's, averaged over `steps` timesteps: 1 when z_sem is ignored, below 1 as
        it helps denoise its own image.
    agreement: 1 - (distance between decodings of one z_sem from two random x_T) / (distance between
        decodings of two images' z_sem): 0 when z_sem is ignored, 1 when it alone decides the image.
    """
    import pdae
    g = torch.Generator().manual_seed(seed)
    z = model.encode(x)
    other = z.roll(1, 0)  # image i with image i-1's code
    ts = d.respace(min(steps, d.T)).tolist()
    state = g.get_state()
    own = pdae.posterior_mean_gap(None, model.eps_fn(z), d, x, ts, generator=g)["pretrained"]
    g.set_state(state)  # the same x_t for both
    theirs = pdae.posterior_mean_gap(None, model.eps_fn(other), d, x, ts, generator=g)["pretrained"]
    x_a, x_b = (torch.randn(x.shape, generator=g).to(x.device) for _ in range(2))
    a, b, c = (d.ddim_sample(model.eps_fn(zz), xx, steps).float() for zz, xx in ((z, x_a), (z, x_b), (other, x_b)))
    same, different = float((a - b).square().mean()), float((a - c).square().mean())
    return {"gap_ratio": sum(o / max(t, 1e-12) for o, t in zip(own, theirs)) / len(ts),
            "agreement": 1 - same / max(different, 1e-12), "t": ts, "gap_own": own, "gap_other": theirs,
            "decodings_same_z": same, "decodings_other_z": different}


def z_usage_verdict(u):
    """One line: used, used weakly, or carries nothing (thresholds: a tenth of the way from ignored to decisive)."""
    if u["gap_ratio"] <= 0.9 and u["agreement"] >= 0.1:
        return "z_sem is used: the decoder denoises an image better with its own z_sem, and its decodings agree"
    if u["gap_ratio"] >= 0.97 and u["agreement"] <= 0.03:
        return "z_sem carries nothing: the decoder denoises as well with another image's z_sem, and decodings of one z_sem differ as much as any two"
    return "z_sem is used weakly: see README, 'If z_sem carries nothing'"
