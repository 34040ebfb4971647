"""The one inference entry point: each subcommand makes one figure or table of the papers.

    python sample.py --ckpt runs/diffae-toyfaces32/ckpt.pt reconstruct   # Diff-AE Fig. 3/10
    python sample.py --ckpt CKPT interpolate     # lerp z_sem, slerp x_T (§5.2, Fig. 4d)
    python sample.py --ckpt CKPT vary            # one z_sem, several random x_T (Fig. 3)
    python sample.py --ckpt CKPT predict-x0      # predicted x0 along a T=10 run (Fig. 6)
    python sample.py --ckpt CKPT eval            # reconstruction MSE/SSIM at T=10..100 (Table 2)

Everything is rebuilt from the checkpoint alone (it records its dataset and preset); official
Diff-AE checkpoints are read directly. Outputs go under --out (default: beside the checkpoint).
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace

import torch

import checkpoint
import classifier
import cli
import codes
import judge
import metrics
import pdae
from codes import decode, encode, eps_fn
from diffusion import lerp, slerp
from plot import log_plot, save_grid


def held_out(ck, n, args):
    return codes.held_out(ck, n, args.src)


def write_json(path, obj):
    """Atomically, so an interrupted command never leaves half a file (a partial result is whole); a score
    that does not exist (NaN: an attribute with one class among the images) is written as null, as JSON has it."""
    def plain(o):
        if isinstance(o, float) and math.isnan(o):
            return None
        return {k: plain(v) for k, v in o.items()} if isinstance(o, dict) else [plain(v) for v in o] if isinstance(o, list) else o
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.tmp{os.getpid()}", "w") as f:
        json.dump(plain(obj), f, indent=1, allow_nan=False)
    os.replace(f"{path}.tmp{os.getpid()}", path)


def toyfaces_judge(names, res, what):
    """The toyfaces judge where the labels are toyfaces' (None, with one line, elsewhere)."""
    if judge.knows(names):
        return judge.attribute_judge(res)
    print(f"{what}: skipped (the attribute judge knows toyfaces' attributes only; this dataset's labels are "
          f"{', '.join(names[:5]) + (' ...' if len(names) > 5 else '') if names else 'none'})")
    return None


# --- subcommands ----------------------------------------------------------------------------

def require_pdae(kind, command):
    if kind != "pdae":
        cli.usage_error(f"{command} is a PDAE figure: pass a checkpoint of train.py --model pdae")


def cmd_reconstruct(kind, model, d, ck, args):
    x, _, _ = held_out(ck, args.n, args)
    rows = codes.reconstruction_rows(kind, model, d, x.to(args.device), args.steps, args.seed)
    path = save_grid(os.path.join(args.out, f"reconstruct_T{args.steps}.png"), rows)
    print(f"wrote {path}: rows = input | inferred x_T" + (" | random x_T" if kind != "ddim" else ""))


def cmd_interpolate(kind, model, d, ck, args):
    x, _, _ = held_out(ck, 2 * args.n, args)
    x = x.to(args.device)
    a, b = x[0::2][:args.n], x[1::2][:args.n]
    if len(b) == 0:
        cli.usage_error("interpolate goes from one image to another: give at least two (--images A B" + (
            ")" if args.images else "; the held-out split, every 100th image of the dataset, has only one)"))
    alphas = torch.linspace(0, 1, args.frames).tolist()
    rows = []
    with torch.inference_mode():
        za, xa = encode(kind, model, d, a, args.steps)
        zb, xb = encode(kind, model, d, b, args.steps)
        for i in range(len(a)):
            frames = []
            for al in alphas:  # Diff-AE §5.2: Lerp on z_sem, Slerp on x_T
                z = lerp(za[i:i + 1], zb[i:i + 1], al) if za is not None else None
                frames.append(decode(kind, model, d, z, slerp(xa[i:i + 1], xb[i:i + 1], al), args.steps))
            rows.append(torch.cat(frames))
    path = save_grid(os.path.join(args.out, f"interpolate_T{args.steps}.png"), rows)
    print(f"wrote {path}: each row goes from one held-out image to another in {args.frames} frames")


def cmd_vary(kind, model, d, ck, args):
    """Diff-AE Fig. 3 and Fig. 10 / App. D: decodings of one z_sem from random x_T, and their per-pixel mean
    and standard deviation: what z_sem fixes (the mean) and what x_T decides (where the deviation is)."""
    if kind == "ddim":
        cli.usage_error("vary needs a semantic code: use a Diff-AE or PDAE checkpoint")
    x, _, _ = held_out(ck, args.n, args)
    x = x.to(args.device)
    g = torch.Generator().manual_seed(args.seed)
    rows, maps = [], []
    with torch.inference_mode():
        z = model.encode(x)
        for i in range(len(x)):
            zi = z[i:i + 1].expand(args.frames, -1)
            noise = torch.randn((args.frames,) + x.shape[1:], generator=g).to(x.device)
            dec = decode(kind, model, d, zi, noise, args.steps).float()
            rows.append(torch.cat([x[i:i + 1], dec]))
            std = dec.std(0, keepdim=True).mean(1, keepdim=True).expand(-1, 3, -1, -1)  # one grey map per image
            maps.append(torch.cat([x[i:i + 1], dec.mean(0, keepdim=True), std / std.max().clamp_min(1e-8) * 2 - 1]))
    path = save_grid(os.path.join(args.out, f"vary_T{args.steps}.png"), rows)
    mpath = save_grid(os.path.join(args.out, f"vary_mean_std_T{args.steps}.png"), maps)
    print(f"wrote {path}: each row = input, then {args.frames} decodings of its z_sem with random x_T\n"
          f"wrote {mpath}: each row = input, the per-pixel mean of those decodings, their standard deviation "
          f"(white = most variation, scaled per image)")


def cmd_ood(kind, model, d, ck, args):
    """Diff-AE Fig. 11-12 / App. J: images shifted by --shift pixels (and --images of another kind) are still
    reconstructed, while their inferred x_T stops looking like N(0, I) noise; in-distribution rows beside them."""
    if kind == "ddim":
        cli.usage_error("ood asks what z_sem and x_T make of unusual inputs: use a Diff-AE or PDAE checkpoint")
    x, _, _ = codes.held_out(ck, args.n, replace(args.src, images=None))
    sets = {"held-out": x, f"shifted {args.shift}px": torch.roll(x, (args.shift, args.shift), (2, 3))}
    if args.images:
        sets["--images"] = codes.user_images(ck, args.src)
    res, rows = {"T": args.steps, "shift": args.shift, "sets": {}}, []
    with torch.inference_mode():
        for name, xs in sets.items():
            z, x_T = encode(kind, model, d, xs.to(args.device), args.steps)
            rec = decode(kind, model, d, z, x_T, args.steps).float().cpu()
            stats = metrics.noise_statistics(x_T.cpu())
            stats["adjacent_correlation"] = metrics.adjacent_correlation(x_T.cpu())
            res["sets"][name] = {"mse": float(metrics.mse(rec, xs).mean()), **{k: float(v.mean()) for k, v in stats.items()}}
            rows += [xs, rec, (x_T.float().cpu() / 3).clamp(-1, 1)]  # x_T shown at +-3 sigma
            r = res["sets"][name]
            print(f"{name:>14s}: reconstruction MSE {r['mse']:.2e}; inferred x_T: mean {r['mean']:+.3f}, std {r['std']:.3f}, "
                  f"skew {r['skew']:+.3f}, excess kurtosis {r['excess_kurtosis']:+.3f}, adjacent-pixel correlation "
                  f"{r['adjacent_correlation']:+.3f} (noise: 0, 1, 0, 0, 0)")
    path = save_grid(os.path.join(args.out, f"ood_T{args.steps}.png"), rows)
    write_json(os.path.join(args.out, "ood.json"), res)
    print(f"wrote {path} and ood.json: per set three rows, input | reconstruction | inferred x_T")


def cmd_neighbours(kind, model, d, ck, args):
    """Diff-AE Fig. 9 / App. C: does the latent DDIM memorise? Each sample beside its nearest training images
    by image MSE and by normalised z_sem distance, and how close samples sit to the training set against
    held-out images (a memorising model's samples sit closer than held-out data does)."""
    if kind == "ddim" or model.latent is None:
        cli.usage_error("neighbours asks whether the latent DDIM memorises: pass a checkpoint with one (train.py --model latent)")
    samples = generate(kind, model, d, args.n, args)
    train_ds = codes.dataset_of(ck, args.src, "train")
    X, _ = codes.items(train_ds, torch.arange(min(args.search, len(train_ds))))
    held, _, _ = held_out(ck, args.n, args)
    mean, std = model.latent.mean.float().cpu(), model.latent.std.float().cpu()
    zn = lambda imgs: classifier.normalize(codes.encode_all(model, imgs, args.batch_size, args.device), mean, std)
    z_train = zn(X)
    d_img, i_img = metrics.nearest(samples, X, k=args.k)
    d_z, i_z = metrics.nearest(zn(samples), z_train, k=args.k)
    d_held, _ = metrics.nearest(held, X, k=1)
    lpips_fn, why_not = metrics.lpips_model(args.device)
    by = [("MSE", i_img), ("normalised z_sem", i_z)]
    q = lambda t: [round(float(v), 5) for v in t.float().quantile(torch.tensor([0.1, 0.5, 0.9]))]
    res = {"n_train": len(X), "k": args.k, "sample_to_train_mse_q10_50_90": q(d_img[:, 0]),
           "heldout_to_train_mse_q10_50_90": q(d_held[:, 0]), "sample_to_train_z_q10_50_90": q(d_z[:, 0])}
    if lpips_fn is not None:  # App. C's third distance; one LPIPS per (image, training image) pair
        lp = lambda a, b: metrics.lpips_distance(lpips_fn, a.to(args.device), b.to(args.device))
        d_lp, i_lp = metrics.nearest_by(lp, samples, X, k=args.k)
        by.append(("LPIPS", i_lp))
        res["sample_to_train_lpips_q10_50_90"] = q(d_lp[:, 0])
        res["heldout_to_train_lpips_q10_50_90"] = q(metrics.nearest_by(lp, held, X, k=1)[0][:, 0])
    else:
        print(f"LPIPS neighbours: skipped ({why_not})")
    rows = [torch.cat([samples[j:j + 1]] + [X[i[j]] for _, i in by]) for j in range(len(samples))]
    path = save_grid(os.path.join(args.out, f"neighbours_T{args.steps}.png"), rows)
    write_json(os.path.join(args.out, "neighbours.json"), res)
    print(f"nearest training image (MSE), quantiles 10/50/90%: samples {res['sample_to_train_mse_q10_50_90']}, "
          f"held-out images {res['heldout_to_train_mse_q10_50_90']} (a memorising model's samples sit much closer than held-out images)")
    print(f"wrote {path}: each row = sample, its {args.k} nearest training images by " + ", then by ".join(n for n, _ in by))


def cmd_predict_x0(kind, model, d, ck, args):
    x, _, _ = held_out(ck, args.n, args)
    x = x.to(args.device)
    rows = []
    with torch.inference_mode():
        z, x_T = encode(kind, model, d, x, args.steps)
        preds = []
        d.ddim_sample(eps_fn(kind, model, z), x_T, args.steps, on_step=lambda t, xt, x0: preds.append(x0))
        for i in range(len(x)):
            rows.append(torch.cat([x[i:i + 1]] + [p[i:i + 1] for p in preds]))
    path = save_grid(os.path.join(args.out, f"predict_x0_T{args.steps}.png"), rows)
    print(f"wrote {path}: each row = input, then the predicted x0 at each of the {args.steps} steps from its inferred x_T")


def cmd_eval(kind, model, d, ck, args):
    """Diff-AE Table 2: reconstruction MSE / SSIM at several T, with inferred and with random x_T; the probe (Table 1)."""
    x, y, names = held_out(ck, args.n, args)
    modes = [m for m in args.x_T.split(",") if m]
    if not modes or set(modes) - {"inferred", "random"}:
        cli.usage_error(f"--x-T takes inferred, random or both (comma-separated), got {args.x_T!r}")
    if kind == "ddim":
        modes = ["inferred"]  # a random x_T carries nothing of the input without a z_sem
    results = {"checkpoint": args.ckpt, "kind": kind, "grid": d.grid, "n_images": len(x), "rows": []}
    path = os.path.join(args.out, "eval.json")
    referee = toyfaces_judge(names, x.shape[-1], "the attribute judge") if args.judge and "random" in modes else None
    lpips_fn, why_not = metrics.lpips_model(args.device)
    if lpips_fn is None:
        print(f"LPIPS: skipped ({why_not})")
    g = torch.Generator().manual_seed(args.seed)
    for steps in args.T:
        for xT_mode in modes:
            row = eval_row(kind, model, d, x, y, steps, xT_mode, g, lpips_fn, referee, args)
            results["rows"].append(row)
            write_json(path, results)  # after every row: an evaluation stopped midway keeps what it finished
    if names and kind != "ddim" and args.probe:
        results["probe"] = probe(model, ck, args)
        if math.isnan(results["probe"]["mean"]):  # every attribute has one value only among the held-out images
            print("linear probe on z_sem: no score, as no attribute takes both values among the held-out images "
                  "(every 100th image, or CelebA's partition 2); add images")
        else:
            print(f"linear probe on z_sem: mean balanced accuracy {results['probe']['mean']:.3f} over {len(names)} attributes "
                  f"(an untrained encoder of the same architecture: {results['probe']['untrained_encoder']['mean']:.3f})")
    elif kind != "ddim" and args.probe:
        print("linear probe on z_sem: skipped (this dataset has no labels)")
    write_json(path, results)
    print(f"wrote {path}")


def eval_row(kind, model, d, x, y, steps, xT_mode, g, lpips_fn, referee, args):
    """One row of Table 2: decode every image from its z_sem and an inferred or random x_T, and score it."""
    mse, ssim, lp, recs = [], [], [], []
    t0 = time.time()
    with torch.inference_mode():
        for xb in x.split(args.batch_size):
            xb = xb.to(args.device)
            z = model.encode(xb) if kind != "ddim" else None
            if xT_mode == "inferred":
                x_T = d.ddim_invert(eps_fn(kind, model, z), xb, steps)
            else:
                x_T = torch.randn(xb.shape, generator=g).to(xb.device)
            rec = decode(kind, model, d, z, x_T, steps).float()
            mse.append(metrics.mse(rec, xb).cpu())
            ssim.append(metrics.ssim(rec, xb).cpu())
            if lpips_fn is not None:
                lp.append(metrics.lpips_distance(lpips_fn, rec, xb).cpu())
            recs.append(rec.cpu())
    # grain: the decodings' fine high-frequency energy over the inputs' (1: as the data; above: grainy)
    grain = metrics.grain_ratio(torch.cat(recs), x)
    row = dict(T=steps, x_T=xT_mode, mse=float(torch.cat(mse).mean()), ssim=float(torch.cat(ssim).mean()),
               lpips=float(torch.cat(lp).mean()) if lp else None, grain_ratio=grain, seconds=round(time.time() - t0, 1))
    lp_txt = f"  LPIPS {row['lpips']:.4f}" if lp else ""
    print(f"T={steps:<4d} x_T={xT_mode:<8s}  MSE {row['mse']:.2e}  SSIM {row['ssim']:.4f}{lp_txt}  grain {grain:.2f}x the "
          f"inputs'  ({row['seconds']}s)", flush=True)
    if referee is not None and xT_mode == "random":  # do random-x_T reconstructions keep the attributes?
        acc = judge.attribute_accuracy(referee, torch.cat(recs), y)
        row["attribute_balanced_accuracy"], row["attribute_mean"] = acc, sum(acc.values()) / len(acc)
        print(f"          the judge finds the input's attributes kept: {row['attribute_mean']:.3f} mean balanced "
              f"accuracy ({', '.join(f'{k} {v:.2f}' for k, v in acc.items())})")
    return row


def probe(model, ck, args):
    """A logistic-regression probe on z_sem: trained on encoded training images, scored on held-out ones."""
    tr, te = codes.dataset_of(ck, args.src, "train"), codes.dataset_of(ck, args.src, "test")
    Xtr, Ytr = codes.items(tr, torch.arange(min(args.probe_train, len(tr))))
    Xte, Yte = codes.items(te, torch.arange(len(te)))

    def score(m):
        return classifier.probe_accuracy(codes.encode_all(m, Xtr, 256, args.device), Ytr,
                                         codes.encode_all(m, Xte, 256, args.device), Yte)

    res = score(model)
    res["attributes"] = list(tr.attr_names)
    # the control: the same probe on an untrained encoder of the same architecture. Random conv
    # features already separate simple attributes linearly, so a probe score means something only beside it.
    torch.manual_seed(0)
    fresh = checkpoint.make_model({"kind": ck["kind"], "config": ck["config"]}).to(args.device).eval()
    control = score(fresh)
    res["untrained_encoder"] = {"per_attribute": control["per_attribute"], "mean": control["mean"]}
    return res


# --- the semantic latent space (Diff-AE §5.3, §5.6, §5.7) -------------------------------------

def direction_for(model, ck, args):
    if args.classifier:
        return codes.released_direction(args.classifier, args.attr)
    return codes.direction_for(model, ck, args.ckpt, args.attr, args.src, args.direction_l2, args.seed,
                               args.batch_size, args.device)


def cmd_manipulate(kind, model, d, ck, args):
    """Diff-AE §5.3 / Fig. 5: move z_sem along an attribute direction, decode with the image's own x_T."""
    if kind == "ddim":
        cli.usage_error("manipulate needs a semantic code: use a Diff-AE or PDAE checkpoint")
    direction, mean, std = direction_for(model, ck, args)
    # the images to edit need no labels (a --labels-csv may label the training images only); --measure's do
    x, y, names = codes.held_out(ck, args.n, args.src if args.measure else replace(args.src, labels_csv=None))
    if args.measure:
        return measure_manipulation(kind, model, d, args, (x, y, names), (direction, mean, std))
    x = x.to(args.device)
    with torch.inference_mode():
        z, x_T = encode(kind, model, d, x, args.invert_steps)
        if direction.numel() != z.shape[1]:
            cli.usage_error(f"the direction has {direction.numel()} dimensions, this model's z_sem {z.shape[1]}: "
                            f"use the classifier released with this model")
        outs = [decode(kind, model, d, classifier.manipulate(z, direction.to(z), s, mean.to(z), std.to(z)), x_T, args.steps)
                for s in args.scale]
    rows = [torch.cat([x[i:i + 1]] + [o[i:i + 1] for o in outs]) for i in range(len(x))]
    path = save_grid(os.path.join(args.out, f"manipulate_{args.attr}_T{args.steps}.png"), rows)
    print(f"wrote {path}: each row = input, then scales {args.scale} along {args.attr} "
          f"(x_T inverted in {args.invert_steps} steps, decoded in {args.steps})")


def measure_manipulation(kind, model, d, args, held, code_dir):
    """Does adding the attribute flip images that lacked it, and leave the others alone? (the toyfaces judge)"""
    (x, y, names), (direction, mean, std) = held, code_dir
    referee = toyfaces_judge(names, x.shape[-1], "--measure")
    if referee is None:
        cli.usage_error("--measure counts flips with the toyfaces judge; on this dataset, look at the grid instead (drop --measure)")
    a = codes.attribute_index(names, args.attr)
    before = judge.judge_apply(referee, x, referee) > 0
    sel = (y[:, a] == 0) if args.scale[-1] > 0 else (y[:, a] == 1)  # images that lack what we add (or have what we remove)
    res = {"attr": args.attr, "n_images": int(sel.sum()), "rows": []}
    for s in args.scale:
        outs = []
        with torch.inference_mode():
            for xb in x[sel].split(args.batch_size):
                z, x_T = encode(kind, model, d, xb.to(args.device), args.invert_steps)
                moved = classifier.manipulate(z, direction.to(z), s, mean.to(z), std.to(z))
                outs.append(decode(kind, model, d, moved, x_T, args.steps).float().cpu())
        after = judge.judge_apply(referee, torch.cat(outs), referee) > 0
        flipped = (after[:, a] != before[sel][:, a]).float().mean().item()
        changed = {names[i]: (after[:, i] != before[sel][:, i]).float().mean().item() for i in range(len(names)) if i != a}
        res["rows"].append({"scale": s, "flipped": flipped, "other_changed": changed, "max_other_changed": max(changed.values())})
        print(f"scale {s:+.2f}: {args.attr} flipped on {flipped:.1%} of {int(sel.sum())} images; "
              f"other attributes changed on at most {max(changed.values()):.1%}")
    path = os.path.join(args.out, f"manipulate_{args.attr}.json")
    write_json(path, res)
    print(f"wrote {path}")


def cmd_sample(kind, model, d, ck, args):
    """Diff-AE §5.7: unconditional samples: latent DDIM -> z_sem, x_T ~ N(0, I), decode."""
    x = generate(kind, model, d, args.n, args)
    path = save_grid(os.path.join(args.out, f"sample_T{args.steps}.png"), list(x.split(args.frames + 1)))
    print(f"wrote {path}: {args.n} unconditional samples")


def generate(kind, model, d, n, args, z=None):
    """n images: the DDIM baseline from noise, or an autoencoder decoding z (default: from its latent DDIM)."""
    if kind != "ddim" and z is None and model.latent is None:
        cli.usage_error("this checkpoint has no latent DDIM; train one with python train.py --model latent --ckpt THIS.pt")
    g = torch.Generator().manual_seed(args.seed)
    outs = []
    with torch.inference_mode():
        for i in range(0, n, args.batch_size):
            m = min(args.batch_size, n - i)
            x_T = torch.randn((m, 3, args.res, args.res), generator=g).to(args.device)
            if kind == "ddim":
                outs.append(decode(kind, model, d, None, x_T, args.steps).float().cpu())
                continue
            zi = z[i:i + m].to(args.device) if z is not None else \
                model.latent.sample(m, args.latent_steps or args.steps, generator=g, device=args.device)
            if kind == "pdae" and z is None:  # PDAE §4.8: no shift in the last 30% of steps for sampled z
                outs.append(model.decode(zi, x_T, args.steps, shift_until=args.shift_until).float().cpu())
            else:
                outs.append(decode(kind, model, d, zi, x_T, args.steps).float().cpu())
    return torch.cat(outs)


def cmd_conditional(kind, model, d, ck, args):
    """Diff-AE §5.6 / Table 3: few-shot conditional sampling by rejection on a linear classifier of z_sem."""
    if kind == "ddim" or model.latent is None:
        cli.usage_error("conditional needs an autoencoder with a latent DDIM (train.py --model latent)")
    z, y, names = codes.training_codes(model, ck, args.src, 10_100, args.seed, args.batch_size, args.device)
    a = codes.attribute_index(names, args.attr)
    if not bool(torch.all((y[:, a] == 0) | (y[:, a] == 1))):
        cli.usage_error(f"conditional needs a binary label (0/1); {args.attr} takes other values: "
                        f"use manipulate for a continuous one")
    if len(y[:, a].unique()) < 2:  # no classifier separates one class (and PU needs positives)
        cli.usage_error(f"every training image has {args.attr} = {float(y[0, a]):g}: conditional needs images with and "
                        f"without it; choose another --attr or give labels with both values (--labels-csv)")
    g = torch.Generator().manual_seed(args.seed)
    pos, neg = torch.nonzero(y[:, a] == 1).flatten(), torch.nonzero(y[:, a] == 0).flatten()
    pos, neg = pos[torch.randperm(len(pos), generator=g)], neg[torch.randperm(len(neg), generator=g)]
    mean, std = model.latent.mean.cpu(), model.latent.std.cpu()  # the training codes' statistics (App. A.2)
    zn = classifier.normalize(z, mean, std)
    if args.labels == "binary":  # Table 3: 50 positives + 50 negatives
        sel = torch.cat([pos[:50], neg[:50]])
        probe = classifier.fit_logistic(zn[sel], y[sel, a:a + 1])
    else:  # Table 3 PU: 100 positives + 10k unlabelled (drawn from everything, positives included)
        probe = classifier.fit_pu(zn[pos[:100]], zn[torch.randperm(len(z), generator=g)[:10_000]])
    prob_fn = lambda zz: torch.sigmoid(probe(classifier.normalize(zz.cpu(), mean, std)))[:, 0]
    sample_fn = lambda m: model.latent.sample(m, args.latent_steps or args.steps, generator=g, device=args.device).cpu()
    with torch.inference_mode():
        try:
            zs, stats = classifier.rejection_sample(sample_fn, prob_fn, args.n, generator=g)
        except RuntimeError as e:  # the latent DDIM almost never makes a code the classifier accepts
            raise cli.Failure(f"conditional {args.attr}: {e}; the model is too young or the attribute too rare for it")
    x = generate(kind, model, d, args.n, args, z=zs)
    res = {"attr": args.attr, "labels": args.labels, "n": args.n, "rejection": stats}
    referee = toyfaces_judge(names, x.shape[-1], "the attribute rate of the samples")
    if referee is not None:
        hit = (judge.judge_apply(referee, x, referee)[:, referee.attributes.index(args.attr)] > 0).float().mean().item()
        res["fraction_with_attr"], res["base_rate"] = hit, float(y[:, a].mean())
        print(f"{hit:.1%} of {args.n} conditional samples carry {args.attr} (base rate {res['base_rate']:.1%})")
    path = save_grid(os.path.join(args.out, f"conditional_{args.attr}_{args.labels}_T{args.steps}.png"),
                     list(x.split(args.frames + 1)))
    write_json(os.path.join(args.out, f"conditional_{args.attr}_{args.labels}.json"), res)
    print(f"wrote {path}")


def cmd_eval_samples(kind, model, d, ck, args):
    """Diff-AE Table 4: sample quality at several T, as a toy Frechet distance (and FID if installed).

    The toy Frechet distance compares features of the toyfaces attribute judge, not Inception's:
    Inception features know nothing about toyfaces and cannot be downloaded here. It is only
    comparable between runs that use the same judge. Attribute rates of the samples are compared
    with the held-out data's, as the judge sees both. On another dataset only FID is reported.
    """
    real, _, names = held_out(ck, args.n, args)
    referee = toyfaces_judge(names, real.shape[-1], "toy FD and attribute rates")
    results = {"checkpoint": args.ckpt, "kind": kind, "n": len(real), "rows": []}
    if kind == "pdae":
        results["shift_until"] = args.shift_until  # §4.8
    if referee is not None:
        real_rates = (judge.judge_apply(referee, real, referee) > 0).float().mean(0)
        results["data_attribute_rates"] = dict(zip(referee.attributes, real_rates.tolist()))
    path = os.path.join(args.out, "eval_samples.json")
    for steps in args.T:
        args.steps = steps
        t0 = time.time()
        fake = generate(kind, model, d, len(real), args)
        row = {"T": steps, "grain_ratio": metrics.grain_ratio(fake, real)}
        if referee is not None:
            rates = (judge.judge_apply(referee, fake, referee) > 0).float().mean(0)
            row.update(toy_fd=judge.toy_frechet_distance(fake, real, referee), attribute_rates=dict(zip(referee.attributes, rates.tolist())),
                       max_rate_gap=float((rates - real_rates).abs().max()))
        try:
            row["fid"] = metrics.fid(fake, real)
        except ImportError as e:
            row["fid"] = None
            if referee is None:
                print(f"FID: skipped ({e})")
        row["seconds"] = round(time.time() - t0, 1)
        results["rows"].append(row)
        write_json(path, results)
        print(f"T={steps:<4d} grain {row['grain_ratio']:.2f}x the data's"
              + (f"  toy FD {row['toy_fd']:.3f}  max |rate - data rate| {row['max_rate_gap']:.3f}" if referee else "")
              + (f"  FID {row['fid']:.2f}" if row["fid"] is not None else "") + f"  ({row['seconds']}s)", flush=True)
        if referee is not None:  # each rate is a fraction of n images on both sides: its standard error is ~0.5/sqrt(n)
            print("       rates, samples / data: " + ", ".join(f"{a} {r:.2f}/{q:.2f}" for a, r, q in
                                                          zip(referee.attributes, rates.tolist(), real_rates.tolist())), flush=True)
    print(f"wrote {path}")


def cmd_gap(kind, model, d, ck, args):
    """PDAE Fig. 5 right: the posterior mean gap at each t, pre-trained DPM vs PDAE (gap.png + gap.json).

    For a Diff-AE checkpoint the same measure compares the decoder given each image's own z_sem
    with the decoder given another image's: how much of the gap z_sem closes at each noise level.
    """
    if kind not in ("pdae", "diffae"):
        cli.usage_error("gap compares two posterior means: pass a --model pdae or diffae checkpoint")
    curves = ("pretrained", "pdae") if kind == "pdae" else ("other_z", "own_z")
    labels = {"pretrained": "pre-trained DPM", "pdae": "PDAE", "other_z": "another image's z_sem", "own_z": "own z_sem"}
    x, _, _ = held_out(ck, args.n, args)
    ts = d.respace(min(args.steps, d.T)).tolist()  # --steps evenly spaced t
    g = torch.Generator().manual_seed(args.seed)
    sums, n = None, 0
    with torch.inference_mode():
        if kind == "diffae":
            z = torch.cat([model.encode(xb.to(args.device)) for xb in x.split(args.batch_size)])
            z_other = z.roll(1, 0)  # image i decoded with image i-1's code
        for i, xb in enumerate(x.split(args.batch_size)):
            xb = xb.to(args.device)
            if kind == "pdae":
                r = pdae.posterior_mean_gap(model, lambda a, t: model.unet(a, t), d, xb, ts, generator=g)
            else:
                rows, state = slice(i * args.batch_size, i * args.batch_size + len(xb)), g.get_state()
                r = {"own_z": pdae.posterior_mean_gap(None, model.eps_fn(z[rows]), d, xb, ts, generator=g)["pretrained"]}
                g.set_state(state)  # the same x_t for both curves
                r["other_z"] = pdae.posterior_mean_gap(None, model.eps_fn(z_other[rows]), d, xb, ts, generator=g)["pretrained"]
            part = {k: torch.tensor(r[k]) * len(xb) for k in curves}
            sums = part if sums is None else {k: sums[k] + part[k] for k in sums}
            n += len(xb)
    res = {"t": ts, **{k: (sums[k] / n).tolist() for k in curves},
           "n_images": n, "what": "mean over images and pixels of (true posterior mean - predicted mean)^2"}
    # the gap spans decades over t and is largest at t = 0, where no code helps: the mean of the
    # per-t ratios weighs every t alike (as the log-scale figure does), the ratio of means does not
    res["ratio_per_t"] = (sums[curves[1]] / sums[curves[0]]).tolist()
    res["mean_ratio"] = sum(res["ratio_per_t"]) / len(ts)
    res["ratio_of_means"] = float(sums[curves[1]].sum() / sums[curves[0]].sum())
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gap.json"), "w") as f:
        json.dump(res, f, indent=1)
    path = log_plot(os.path.join(args.out, "gap.png"), ts, {labels[k]: res[k] for k in curves}, d.T,
                    f"posterior mean gap ({n} images)")
    print(f"wrote {path} and gap.json: gap of {labels[curves[1]]} / gap of {labels[curves[0]]} = "
          f"{res['mean_ratio']:.2f} averaged over {len(ts)} timesteps ({res['ratio_of_means']:.2f} as a ratio of "
          f"t-averaged gaps, which t = 0 dominates)")


def cmd_diagnose(kind, model, d, ck, args):
    """Is z_sem used? Two label-free measures on held-out images (or --images) and one verdict line."""
    if kind == "ddim":
        cli.usage_error("diagnose asks whether a decoder uses z_sem: pass a Diff-AE or PDAE checkpoint")
    x, _, _ = held_out(ck, args.n, args)
    if len(x) < 2:
        cli.usage_error(f"diagnose compares images with each other: got {len(x)}; give at least two (--n 2 or more, or "
                        f"--images A B; the held-out split holds every 100th image of the dataset)")
    with torch.inference_mode():
        u = codes.z_usage(model, d, x.to(args.device), args.steps, args.seed)
    u["verdict"] = codes.z_usage_verdict(u)
    write_json(os.path.join(args.out, "diagnose.json"), u)
    print(f"gap with its own z_sem / with another image's: {u['gap_ratio']:.3f} (1 = z_sem ignored); decodings of one "
          f"z_sem agree: {u['agreement']:.3f} (0 = no more than any two images', 1 = identical); {len(x)} images, T = {args.steps}")
    print(u["verdict"])


def cmd_denoise_one_step(kind, model, d, ck, args):
    """PDAE Fig. 5 left: x0 predicted from x_t in one step by the pre-trained DPM and by PDAE."""
    require_pdae(kind, "denoise-one-step")
    x, _, _ = held_out(ck, args.n, args)
    x = x.to(args.device)
    ts = [round((i + 1) * (d.T - 1) / args.frames) for i in range(args.frames)]  # --frames timesteps up to T-1
    with torch.inference_mode():
        xs, pre, shifted = pdae.denoise_one_step(model, x, ts, generator=torch.Generator().manual_seed(args.seed))
    rows = []
    for i in range(len(x)):
        for seq in (xs, pre, shifted):
            rows.append(torch.cat([x[i:i + 1]] + [s[i:i + 1] for s in seq]))
    path = save_grid(os.path.join(args.out, "denoise_one_step.png"), rows)
    print(f"wrote {path}: per image three rows, each starting with the input: x_t | one-step x0 of the "
          f"pre-trained DPM | of PDAE, at t = {ts}")


def cmd_reconstruct_ddpm(kind, model, d, ck, args):
    """PDAE Fig. 6: input | DDIM from inferred x_T | DDIM from random x_T | DDPM (Eq. 5), --steps steps each."""
    require_pdae(kind, "reconstruct-ddpm")
    x, _, _ = held_out(ck, args.n, args)
    x = x.to(args.device)
    g = torch.Generator().manual_seed(args.seed)
    with torch.inference_mode():
        z = model.encode(x)
        noise = torch.randn(x.shape, generator=g).to(x.device)
        rows = [x, model.decode(z, model.encode_stochastic(x, z, args.steps), args.steps),
                model.decode(z, noise, args.steps), model.decode_ddpm(z, noise, args.steps, generator=g)]
    path = save_grid(os.path.join(args.out, f"reconstruct_ddpm_T{args.steps}.png"), rows)
    print(f"wrote {path}: rows = input | DDIM, inferred x_T | DDIM, random x_T | DDPM (mean shifted by Sigma G)")


def cmd_interpolate_g(kind, model, d, ck, args):
    """PDAE §4.4, Fig. 7: per pair, row 1 guides by G(x_t, Lerp(z1, z2)), row 2 by Lerp(G(x_t, z1), G(x_t, z2)).
    interpolate_g.json: how even each path is and how far apart the two are (path_smoothness)."""
    require_pdae(kind, "interpolate-g")
    x, _, names = held_out(ck, 2 * args.n, args)
    x = x.to(args.device)
    a, b = x[0::2][:args.n], x[1::2][:args.n]
    alphas = torch.linspace(0, 1, args.frames).tolist()
    by_z, by_g = [], []  # [pairs][frames, C, H, W]
    with torch.inference_mode():
        za, zb = model.encode(a), model.encode(b)
        xa, xb = model.encode_stochastic(a, za, args.steps), model.encode_stochastic(b, zb, args.steps)
        for i in range(len(a)):
            x_T = torch.cat([slerp(xa[i:i + 1], xb[i:i + 1], al) for al in alphas])  # both start from Slerp(x_T^1, x_T^2)
            z = torch.cat([lerp(za[i:i + 1], zb[i:i + 1], al) for al in alphas])
            by_z.append(model.decode(z, x_T, args.steps).float().cpu())
            by_g.append(torch.cat([d.ddim_sample(model.eps_fn_lerp_g(za[i:i + 1], zb[i:i + 1], al), x_T[k:k + 1], args.steps)
                                   for k, al in enumerate(alphas)]).float().cpu())
    ends = lambda i: (a[i:i + 1].cpu(), b[i:i + 1].cpu())
    rows = [torch.cat([ends(i)[0], path, ends(i)[1]]) for i in range(len(a)) for path in (by_z[i], by_g[i])]
    path = save_grid(os.path.join(args.out, f"interpolate_g_T{args.steps}.png"), rows)
    referee = toyfaces_judge(names, x.shape[-1], "the attribute path")
    res = {"pairs": len(a), "frames": args.frames, "T": args.steps, "codes": path_smoothness(by_z, referee),
           "trajectories": path_smoothness(by_g, referee),
           "codes_vs_trajectories_mse": float(torch.stack([(p - q).square().mean() for p, q in zip(by_z, by_g)]).mean())}
    write_json(os.path.join(args.out, "interpolate_g.json"), res)
    for name in ("codes", "trajectories"):
        r = res[name]
        print(f"{name:>12s}: frame-to-frame MSE {r['step_mse']:.2e}, largest step / mean step {r['evenness']:.2f} (1: even)"
              + (f", judge flips beyond the endpoints' {r['extra_flips']:.2f} per pair" if referee is not None else ""))
    print(f"G(Lerp z) against Lerp G, per frame: MSE {res['codes_vs_trajectories_mse']:.2e}\n"
          f"wrote {path}: per pair, input, {args.frames} frames, input; row 1 by codes, row 2 by trajectories")


def path_smoothness(paths, referee=None):
    """An interpolation is smooth when its frames move by even steps and each attribute that differs
    between the ends flips once: the mean frame-to-frame MSE, the largest step over the mean step, and
    (with the judge) the judge's decision changes along the path beyond |end - start|."""
    steps = [(p[1:] - p[:-1]).square().flatten(1).mean(1) for p in paths]
    res = {"step_mse": float(torch.stack([s.mean() for s in steps]).mean()),
           "evenness": float(torch.stack([s.max() / s.mean().clamp_min(1e-12) for s in steps]).mean())}
    if referee is not None:
        flips = []
        for p in paths:
            on = (judge.judge_apply(referee, p, referee) > 0).float()  # [frames, attributes]
            flips.append(((on[1:] - on[:-1]).abs().sum() - (on[-1] - on[0]).abs().sum()).item())
        res["extra_flips"] = sum(flips) / len(flips)
    return res


def cmd_guidance(kind, model, d, ck, args):
    """PDAE §4.6, Fig. 9: scale G by 0, 0.5, ..., 3 (truncation-like effect); labels y for a label-conditioned
    PDAE. guidance.json, per scale: how often the judge agrees with the condition, and the diversity of two
    decodings of one condition from two random x_T (a truncation trades the second for the first)."""
    require_pdae(kind, "guidance")
    x, y, names = held_out(ck, args.n, args)
    label = isinstance(model.encoder, pdae.LabelEmbedding)
    if label and y.shape[1] != model.encoder.n_labels:
        cli.usage_error(f"this PDAE is conditioned on {model.encoder.n_labels} labels; the held-out data has {y.shape[1]}")
    scales = [0.5 * i for i in range(7)]
    x = x.to(args.device)
    g = torch.Generator().manual_seed(args.seed)
    noise = [torch.randn(x.shape, generator=g).to(x.device) for _ in range(2)]
    with torch.inference_mode():
        z = model.encode(y.to(args.device) if label else x)
        cols = [[model.decode(z, e, args.steps, scale=s).float().cpu() for e in noise] for s in scales]
    rows = [torch.cat([x[i:i + 1].cpu()] + [c[0][i:i + 1] for c in cols]) for i in range(len(x))]
    path = save_grid(os.path.join(args.out, f"guidance_T{args.steps}.png"), rows)
    referee = toyfaces_judge(names, x.shape[-1], "agreement with the condition")
    target = None if referee is None else (y > 0.5).float() if label else (judge.judge_apply(referee, x.cpu(), referee) > 0).float()
    res = {"n": len(x), "T": args.steps, "condition": "labels" if label else "image", "rows": []}
    for s, (c1, c2) in zip(scales, cols):
        row = {"scale": s, "diversity_mse": float((c1 - c2).square().mean())}
        if target is not None:
            row["agreement"] = float(((judge.judge_apply(referee, c1, referee) > 0).float() == target).float().mean())
        res["rows"].append(row)
        print(f"scale {s:.1f}: diversity (MSE of two x_T) {row['diversity_mse']:.4f}"
              + (f", judge agrees with the {res['condition']} on {row['agreement']:.1%} of attributes" if target is not None else ""))
    write_json(os.path.join(args.out, "guidance.json"), res)
    print(f"wrote {path} and guidance.json: each row = the image whose {'labels' if label else 'z'} guide, then DDIM "
          f"from one random x_T with G scaled by {scales}")


# --- the command line: one subparser per figure, each with only its own flags ------------------

FLAGS = {
    "steps": (cli.positive_int, None, "DDIM steps T (default 100; 10 for predict-x0; at most the model's T)"),
    "n": (cli.positive_int, None, "number of images (default 8; 256 for eval and eval-samples)"),
    "batch-size": (cli.positive_int, 128, "images per network batch"),
    "frames": (cli.ranged(int, 2), 7, "images per row"),
    "shift": (cli.nonnegative_int, 4, "ood: pixels to shift the held-out images by, right and down"),
    "k": (cli.positive_int, 3, "neighbours: nearest training images shown per sample"),
    "search": (cli.positive_int, 10_000, "neighbours: training images searched (the first ones of the training split)"),
    "images": (str, None, "your own image files instead of held-out data"),
    "data": (str, None, "dataset to draw held-out images from (default: the checkpoint's)"),
    "data-dir": (str, None, "where that dataset lies"),
    "T": (cli.number_list(int, 1), "10,20,50,100", "comma-separated DDIM step counts"),
    "x-T": (str, "inferred,random", "the x_T rows: inferred and/or random"),
    "probe-train": (cli.positive_int, 10_000, "training images for the probe (its L2 strength is cross-validated on them)"),
    "attr": (str, "Smiling", "the attribute (a label column)"),
    "scale": (cli.number_list(float), "-0.4,-0.2,0,0.2,0.4", "comma-separated steps along the direction, in units of sqrt(z_dim) (official: 0.3); a list that starts negative needs the = form: --scale=-0.3,0,0.3"),
    "direction-l2": (cli.positive_float, None, "L2 strength of the probe whose normal is the direction (default "
                                               "classifier.DIRECTION_WEIGHT_DECAY; smaller: sharper, further off the codes)"),
    "labels": (cli.one_of("binary", "pu"), "binary", "Table 3's setups: binary or pu"),
    "classifier": (str, None, "a released attribute classifier (Diff-AE's *_autoenc_cls last.ckpt, PDAE's classifier "
                              "checkpoint.pt): its direction for --attr, no dataset needed"),
    "labels-csv": (str, None, "your labels: CSV with columns file,label1,... (binary or continuous)"),
    "latent-steps": (cli.positive_int, None, "latent DDIM steps (default: --steps)"),
    "shift-until": (cli.ranged(float, 0, 1), 0.3, "pdae, sampled z: the share of the last steps that run the DPM alone "
                                                  "(§4.8's 30%; 0 shifts to the end)"),
    "invert-steps": (cli.positive_int, None, "DDIM steps of the inversion to x_T (default: --steps; for released "
                                             "models 250, rendered with --steps 100, as the official notebook)"),
}
SWITCHES = {"no-probe": ("probe", "skip the linear probe on z_sem"), "no-judge": ("judge", "skip the attribute judge"),
            "measure": ("measure", "measure flip rates with the toyfaces judge"),
            "align": ("align", "FFHQ-align --images first, as the released face models expect (align.py; pip install dlib-bin face-recognition-models)")}
IMAGES = ["steps", "n", "batch-size", "images", "align", "data", "data-dir"]
COMMANDS = {  # name: (function, its flags, one line for --help)
    "reconstruct": (cmd_reconstruct, IMAGES, "input, from inferred x_T, from random x_T (Diff-AE Fig. 3/10)"),
    "interpolate": (cmd_interpolate, IMAGES + ["frames"], "lerp z_sem, slerp x_T (Diff-AE §5.2, Fig. 4d)"),
    "vary": (cmd_vary, IMAGES + ["frames"], "one z_sem, several random x_T, their mean and std maps (Diff-AE Fig. 3, 10)"),
    "ood": (cmd_ood, IMAGES + ["shift"], "shifted and other-domain inputs: reconstruction and how Gaussian x_T is (Diff-AE Fig. 11-12)"),
    "neighbours": (cmd_neighbours, ["steps", "n", "batch-size", "latent-steps", "shift-until", "k", "search", "data", "data-dir"],
                   "latent-DDIM samples beside their nearest training images (Diff-AE Fig. 9)"),
    "predict-x0": (cmd_predict_x0, IMAGES, "predicted x0 along the run (Diff-AE Fig. 6)"),
    "eval": (cmd_eval, IMAGES + ["T", "x-T", "probe-train", "no-probe", "no-judge"], "reconstruction and probe tables (Tables 1-2)"),
    "manipulate": (cmd_manipulate, IMAGES + ["invert-steps", "attr", "scale", "direction-l2", "measure", "labels-csv", "classifier", "probe-train"],
                   "move z_sem along an attribute direction (Diff-AE §5.3, Fig. 5)"),
    "sample": (cmd_sample, ["steps", "n", "batch-size", "frames", "latent-steps", "shift-until"], "unconditional samples from the latent DDIM"),
    "conditional": (cmd_conditional, IMAGES + ["attr", "labels", "labels-csv", "latent-steps", "frames", "probe-train"],
                    "few-shot conditional samples (Table 3)"),
    "eval-samples": (cmd_eval_samples, ["n", "batch-size", "T", "latent-steps", "shift-until", "data", "data-dir"],
                     "unconditional sample table (Table 4)"),
    "gap": (cmd_gap, IMAGES, "posterior-mean gap per t (PDAE Fig. 5)"),
    "diagnose": (cmd_diagnose, IMAGES, "is z_sem used? the gap and the agreement of decodings, one verdict"),
    "denoise-one-step": (cmd_denoise_one_step, IMAGES + ["frames"], "one-step x0 predictions, DPM vs PDAE (PDAE Fig. 5)"),
    "reconstruct-ddpm": (cmd_reconstruct_ddpm, IMAGES, "mean-shifted DDPM reconstruction (PDAE §4.4)"),
    "interpolate-g": (cmd_interpolate_g, IMAGES + ["frames"], "G(Lerp z) against Lerp G, and how smooth each path is (PDAE §4.4, Fig. 7)"),
    "guidance": (cmd_guidance, IMAGES, "G scaled by 0 .. 3: agreement and diversity (PDAE §4.6, Fig. 9)"),
}
SHARED = {"seed": (cli.seed_int, 0, "random seed"), "device": (str, None, "cpu or cuda (default: cuda when available)"),
          "out": (str, None, "output folder (default: the checkpoint's folder; runs/samples/NAME for released ones)"),
          "amp": (cli.one_of(*cli.AMP_CHOICES), "auto", "autocast of the networks, as train.py's: auto (bf16 on CUDA and on a CPU with "
                                                  "native bf16), bf16, fp16 or off (float32); samplers stay float32"),
          "compile": (bool, False, "torch.compile the denoising networks, which every DDIM step calls: on a CPU 1.4-2x the "
                                   "sampling speed after a compile of about a minute (seconds from inductor's cache on later "
                                   "runs), so for long commands (docs/RESULTS.md)"),
          "grid": (cli.one_of("diffae", "pdae"), None, "sampler timesteps: diffae, or pdae (PDAE's linspace(0, 999, N+1), the image at "
                              "timestep 0); default: the checkpoint's (pdae for imported PDAE models)")}


def add_flag(parser, name, spec, suppress=False):
    kind, default, helptext = spec
    kw = dict(default=argparse.SUPPRESS) if suppress else dict(default=default)
    if kind is bool:  # a shared switch
        parser.add_argument(f"--{name}", dest=name.replace("-", "_"), action="store_true", help=helptext, **kw)
        return
    if name == "images":
        kw["nargs"] = "+"
    parser.add_argument(f"--{name}", dest=name.replace("-", "_"), type=kind, help=helptext, **kw)


def parse_args(argv):
    """Shared flags go before or after the subcommand; every other flag after it, for its own subcommand."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="our checkpoint, an official Diff-AE .ckpt or an official PDAE checkpoint.pt")
    for name, spec in SHARED.items():
        add_flag(ap, name, spec, suppress=True)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd, (_, flags, helptext) in COMMANDS.items():
        p = sub.add_parser(cmd, help=helptext, description=helptext)
        for name, spec in SHARED.items():
            add_flag(p, name, spec, suppress=True)
        for name in flags:
            if name in SWITCHES:
                dest, h = SWITCHES[name]
                p.add_argument(f"--{name}", dest=dest, action="store_false" if name.startswith("no-") else "store_true", help=h)
            else:
                add_flag(p, name, FLAGS[name])
    args = ap.parse_args(argv)
    for name, (kind, default, _) in list(SHARED.items()) + list(FLAGS.items()):  # what a command lacks, at its default
        dest = name.replace("-", "_")
        if not hasattr(args, dest):
            setattr(args, dest, kind(default) if isinstance(default, str) and kind is not str else default)
    for name, (dest, _) in SWITCHES.items():
        if not hasattr(args, dest):
            setattr(args, dest, name.startswith("no-"))
    return args


@cli.entry
def main(argv=None):
    args = parse_args(argv)
    args.src = codes.Source(args.data, args.data_dir, args.images, args.labels_csv, args.align)
    if args.align and not args.images:
        cli.usage_error("--align aligns your photos: pass them with --images FILE ...")
    args.steps = args.steps or {"predict-x0": 10, "diagnose": 20}.get(args.command, 100)
    args.n = args.n or {"eval": 256, "eval-samples": 256, "diagnose": 64}.get(args.command, 8)
    args.device = cli.pick_device(args.device)
    args.direction_l2 = args.direction_l2 or classifier.DIRECTION_WEIGHT_DECAY
    torch.manual_seed(args.seed)
    try:
        ck = checkpoint.load(args.ckpt)
    except checkpoint.CheckpointError as e:
        cli.usage_error(str(e))
    if args.grid is not None:
        for part in ("diffusion", "latent"):  # the image sampler's grid and the latent DDIM's
            if part == "diffusion" or ck["config"].get(part):
                ck["config"].setdefault(part, {})["grid"] = args.grid
    d = checkpoint.diffusion(ck)
    official = ck["config"].get("train", {}).get("source") == "official"
    args.invert_steps = args.invert_steps or (250 if official and args.command == "manipulate" else args.steps)
    for name, v in (("--steps", [args.steps]), ("--T", args.T), ("--latent-steps", [args.latent_steps or 1]),
                    ("--invert-steps", [args.invert_steps])):
        if max(v) > d.T:
            cli.usage_error(f"{name} {max(v)}: this model has T = {d.T} timesteps; use at most {d.T}")
    args.res = ck["config"].get("train", {}).get("res") or ck["config"]["unet"]["res"]
    if args.out is None:  # beside our checkpoints; released ones get a folder of their own under runs/
        name = ck["config"].get("train", {}).get("name") or os.path.splitext(os.path.basename(args.ckpt))[0]
        args.out = (os.path.join("runs", "samples", name) if official
                    else os.path.dirname(os.path.abspath(args.ckpt)))
    model = checkpoint.build(ck).to(args.device)
    if args.compile:  # in place: the module keeps its state_dict keys, which direction caches hash
        for net in (getattr(model, "unet", None), getattr(model, "G", None)):
            if net is not None:
                net.compile()
    amp = cli.autocast_dtype(args.device, args.amp)
    if args.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    with torch.autocast(args.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        COMMANDS[args.command][0](ck["kind"], model, d, ck, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
