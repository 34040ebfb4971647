"""Figures and numbers for the exercises that sample.py does not make. Run it through exercises/run.py
to see your own functions at work (EXERCISES.md gives each command):

    python exercises/show.py noising [--res 16] [--out runs/class]       # Exercise 1: q_sample at t = 0 ... 999
    python exercises/show.py swap --ckpt runs/class/ckpt.pt [--steps 50] # Exercise 6: z_sem of one image, x_T of another
    python exercises/show.py codes --ckpt runs/class-latent/ckpt.pt      # Exercise 8: sampled codes vs real codes
    python exercises/show.py direction --attr Blond_Hair                 # Exercise 9: manipulation, judged on codes
    python exercises/show.py fewshot --ckpt runs/class-latent/ckpt.pt --attr Eyeglasses   # Exercise 10
    python exercises/show.py weights                                     # Exercise 12: lambda_t = 1 vs PDAE Eq. 10
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import data  # noqa: E402
import pdae  # noqa: E402
from diffusion import Diffusion  # noqa: E402
from plot import save_grid  # noqa: E402


def noising(args):
    """Rows: 4 toyfaces; columns: x_t = q_sample(x0, t, eps) for t = 0, 100, ..., 900, 999, with one eps per image."""
    d = Diffusion(1000)
    x0, _ = data.ToyFaces(res=args.res, n=100, seed=0, split="test").tensors()
    x0 = x0[:4]
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(args.seed))
    ts = list(range(0, 1000, 100)) + [999]
    cols = [d.q_sample(x0, torch.full((4,), t), eps) for t in ts]
    rows = [torch.cat([c[i:i + 1] for c in cols]) for i in range(4)]
    path = save_grid(os.path.join(args.out, "noising.png"), rows)
    print(f"wrote {path}: columns t = {ts}")
    for t in (0, 100, 300, 500, 700, 999):
        ab = float(d.alphas_cumprod[t])
        print(f"  t = {t:3d}: x_t = {ab ** 0.5:.3f} * x0 + {(1 - ab) ** 0.5:.3f} * eps")


def swap(args):
    """Diff-AE §5.1 both ways: cell (i, j) decodes z_sem of image i with the inferred x_T of image j."""
    import checkpoint
    ck = checkpoint.load(args.ckpt)
    if ck["kind"] not in ("diffae", "pdae"):
        raise SystemExit(f"error: swap needs an autoencoder checkpoint (diffae or pdae), got {ck['kind']!r}")
    model = checkpoint.build(ck).eval()
    res = ck["config"]["unet"]["res"]
    x, _ = data.ToyFaces(res=res, n=100, seed=0, split="test").tensors()
    x = x[:args.n]
    with torch.inference_mode():
        z = model.encode(x)
        x_T = model.encode_stochastic(x, z, args.steps)
        rows = [torch.cat([x[i:i + 1]] + [model.decode(z[i:i + 1], x_T[j:j + 1], args.steps) for j in range(len(x))])
                for i in range(len(x))]
    out = os.path.join(args.out or os.path.dirname(os.path.abspath(args.ckpt)), f"swap_T{args.steps}.png")
    save_grid(out, [torch.cat([x[:1] * 0 + 1, x])] + rows)  # first row: a white corner, then the images giving x_T
    print(f"wrote {out}: row i = z_sem of image i (left), column j = x_T of image j (top); the diagonal reconstructs")


def encoded(args, n_train):
    """The checkpoint's model and z_sem of toyfaces training and held-out images, with their attributes."""
    import checkpoint
    ck = checkpoint.load(args.ckpt)
    if ck["kind"] not in ("diffae", "pdae"):
        raise SystemExit(f"error: this needs an autoencoder checkpoint (diffae or pdae), got {ck['kind']!r}")
    model = checkpoint.build(ck).eval()
    res = ck["config"]["unet"]["res"]
    train = data.ToyFaces(res=res, n=n_train, seed=0, split="train")
    test = data.ToyFaces(res=res, n=args.n_codes, seed=0, split="test")
    (xtr, ytr), (xte, yte) = train.tensors(), test.tensors()
    with torch.inference_mode():
        z_tr = torch.cat([model.encode(b) for b in xtr.split(256)]).float()
        z_te = torch.cat([model.encode(b) for b in xte.split(256)]).float()
    return model, z_tr, ytr, z_te, yte, list(train.attr_names)


def judge(z_tr, y_tr):
    """An independent referee: logistic probes for all attributes on half of the training codes (the other
    half is what the exercise's own classifier may use). Returns (predict(z) -> (N, A) bools, mean, std)."""
    import classifier
    mean, std = classifier.code_stats(z_tr)
    half = len(z_tr) // 2
    probe = classifier.fit_logistic(classifier.normalize(z_tr[half:], mean, std), y_tr[half:])
    return (lambda z: probe(classifier.normalize(z, mean, std)) > 0), mean, std


def codes(args):
    """Diff-AE §4 in numbers: do codes sampled by the latent DDIM look like the encoder's codes of real images?"""
    model, z_tr, y_tr, z_real, _, names = encoded(args, args.n_codes)
    if getattr(model, "latent", None) is None:
        raise SystemExit("error: this checkpoint has no latent DDIM: train one with train.py --model latent --ckpt ...")
    with torch.inference_mode():
        z_fake = model.latent.sample(len(z_real), args.steps, generator=torch.Generator().manual_seed(args.seed)).float()
    has, _, _ = judge(z_tr, y_tr)
    off = ((z_fake.mean(0) - z_real.mean(0)) / z_real.std(0)).abs()
    ratio = z_fake.std(0) / z_real.std(0)
    print(f"{len(z_fake)} codes from the latent DDIM ({args.steps} steps) vs {len(z_real)} encoded held-out images:")
    print(f"  per-dimension mean offset, in data stds: median {float(off.median()):.2f}, max {float(off.max()):.2f}")
    print(f"  per-dimension std ratio sampled / real:  median {float(ratio.median()):.2f}, "
          f"range {float(ratio.min()):.2f} .. {float(ratio.max()):.2f}")
    print(f"  attribute rates a linear probe finds:  {'attribute':<12} {'real':>6} {'sampled':>8}")
    for name, r, f in zip(names, has(z_real).float().mean(0).tolist(), has(z_fake).float().mean(0).tolist()):
        print(f"  {'':<38}{name:<12} {r:6.2f} {f:8.2f}")


def direction(args):
    """Diff-AE §5.3 in code space: move held-out codes that lack --attr along its direction; how many gain it?"""
    import classifier
    _, z_tr, y_tr, z_te, y_te, names = encoded(args, args.n_codes)
    a = names.index(args.attr)
    has, _, _ = judge(z_tr, y_tr)
    half = len(z_tr) // 2  # the direction is learnt on the first half, the referee on the second
    mean, std = classifier.code_stats(z_tr)
    probe = classifier.fit_logistic(classifier.normalize(z_tr[:half], mean, std), y_tr[:half, a:a + 1])
    d = classifier.attribute_direction(probe)
    lack = z_te[y_te[:, a] == 0]
    print(f"{len(lack)} held-out codes without {args.attr}; a referee probe judges the moved codes:")
    print(f"  {'scale':>6} {'gain ' + args.attr:>16} {'largest change in another attribute':>38}")
    before = has(lack)
    for s in (0.0, 0.1, 0.2, 0.3, 0.5):
        after = has(classifier.manipulate(lack, d, s, mean, std))
        others = [(after[:, i] != before[:, i]).float().mean().item() for i in range(len(names)) if i != a]
        worst = max(range(len(others)), key=lambda i: others[i])
        other_name = [n for i, n in enumerate(names) if i != a][worst]
        print(f"  {s:6.2f} {after[:, a].float().mean().item():16.1%} {others[worst]:31.1%} ({other_name})")


def fewshot(args):
    """Diff-AE §5.6 in code space: 100 positives + 10,000 unlabelled codes -> PU classifier -> rejection sampling
    of latent-DDIM codes. How many accepted codes carry --attr, by a referee probe, against the base rate?"""
    import classifier
    model, z_tr, y_tr, _, _, names = encoded(args, 10_100)
    if getattr(model, "latent", None) is None:
        raise SystemExit("error: this checkpoint has no latent DDIM: train one with train.py --model latent --ckpt ...")
    a = names.index(args.attr)
    has, _, _ = judge(z_tr, y_tr)
    g = torch.Generator().manual_seed(args.seed)
    mean, std = model.latent.mean, model.latent.std
    pos = torch.nonzero(y_tr[:, a] == 1).flatten()
    pos = pos[torch.randperm(len(pos), generator=g)[:100]]
    unl = torch.randperm(len(z_tr), generator=g)[:10_000]
    pu = classifier.fit_pu(classifier.normalize(z_tr[pos], mean, std), classifier.normalize(z_tr[unl], mean, std))
    prob = lambda z: torch.sigmoid(pu(classifier.normalize(z, mean, std)))[:, 0]
    draw = lambda m: model.latent.sample(m, args.steps, generator=g).float()
    with torch.inference_mode():
        base = has(draw(1000))[:, a].float().mean().item()
        kept, stats = classifier.rejection_sample(draw, prob, 500, generator=g, batch_size=1000)
    hit = has(kept)[:, a].float().mean().item()
    print(f"PU classifier from 100 positives + 10,000 unlabelled codes; rejection sampling kept "
          f"{stats['accepted']} of {stats['drawn']} latent-DDIM codes (rate {stats['acceptance_rate']:.2f})")
    print(f"{args.attr}: {hit:.1%} of the kept codes carry it, against {base:.1%} of unconditional codes (the referee probe)")


def weights(args):
    """PDAE §3.4 in numbers: where the loss sits with lambda_t = 1 and with Eq. 10 (gamma = 0.1)."""
    d = Diffusion(1000)
    s = pdae.snr(d)
    lam = pdae.loss_weights(d, args.gamma)
    c = pdae.mean_shift_coef(d)
    v = 0.45 ** 2 + 0.1 ** 2  # images: content (std 0.45) + detail (std 0.1), per pixel
    err = s * v / (1 + s * v)  # the pre-trained DPM's eps error at t: what G has to explain
    print(f"{'t':>5} {'SNR':>10} {'c_t':>8} {'lambda_t':>9}   (lambda_t of Eq. 10, gamma = {args.gamma})")
    for t in (1, 10, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999):
        print(f"{t:5d} {float(s[t]):10.3g} {float(c[t]):8.4f} {float(lam[t]):9.4f}")
    print(f"peak of lambda_t at t = {int(lam.argmax())} (SNR {float(s[lam.argmax()]):.3f}; gamma / (1 - gamma) = "
          f"{args.gamma / (1 - args.gamma):.3f})")
    stages = [(0, 100), (100, 400), (400, 700), (700, 1000)]
    for name, w in (("lambda_t = 1", torch.ones_like(lam)), ("Eq. 10     ", lam)):
        tot = float((w * err).sum())
        shares = "  ".join(f"t in [{a},{b}): {float((w * err)[a:b].sum()) / tot:5.1%}" for a, b in stages)
        print(f"share of the loss with {name}: {shares}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["noising", "swap", "codes", "direction", "fewshot", "weights"])
    ap.add_argument("--ckpt", default="runs/class/ckpt.pt")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--n", type=int, default=5, help="swap: images")
    ap.add_argument("--n-codes", type=int, default=2000, help="codes: images to encode and codes to sample")
    ap.add_argument("--res", type=int, default=16)
    ap.add_argument("--attr", default="Blond_Hair", help="direction / fewshot: the attribute")
    ap.add_argument("--gamma", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.what == "noising":
        args.out = args.out or "runs/class"
    torch.manual_seed(args.seed)
    {"noising": noising, "swap": swap, "codes": codes, "direction": direction, "fewshot": fewshot,
     "weights": weights}[args.what](args)


if __name__ == "__main__":
    main()
