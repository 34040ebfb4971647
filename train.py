"""The one training entry point: a plain PyTorch loop, read top to bottom.

    python train.py                                   # Diff-AE on built-in toyfaces, CPU, ~12 minutes
    python train.py --data ffhq --res 128             # the paper's FFHQ-128 preset (Table 5)
    python train.py --model ddim|diffae|latent|pdae --data NAME --res R [--steps N] [--out DIR]
    torchrun --standalone --nproc_per_node=2 train.py --device cpu ...   # data-parallel

Every step is seeded from (seed, step, rank), so a run resumed from a checkpoint continues
exactly as if it had never stopped (on the CPU), and the data order does not depend on workers.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

import checkpoint
from diffusion import Diffusion

# --- presets --------------------------------------------------------------------------------
# The paper's Table 5 (autoencoder / DDIM baseline) and small presets that train on a CPU.
# "images" is the paper's training budget; steps = images / batch_size unless --steps says otherwise.
PAPER = dict(lr=1e-4, ema=0.9999, dropout=0.1, embed_dim=512, z_dim=512, num_res_blocks=2, attn_res=(16,))
PRESETS = {
    "celeba64":   dict(PAPER, res=64, batch_size=128, ch=64, ch_mult=(1, 2, 4, 8), enc_ch_mult=(1, 2, 4, 8, 8), images=72_000_000),
    "ffhq64":     dict(PAPER, res=64, batch_size=128, ch=64, ch_mult=(1, 2, 4, 8), enc_ch_mult=(1, 2, 4, 8, 8), images=48_000_000),
    "ffhq128":    dict(PAPER, res=128, batch_size=128, ch=128, ch_mult=(1, 1, 2, 3, 4), enc_ch_mult=(1, 1, 2, 3, 4, 4), images=130_000_000),
    "horse128":   dict(PAPER, res=128, batch_size=128, ch=128, ch_mult=(1, 1, 2, 3, 4), enc_ch_mult=(1, 1, 2, 3, 4, 4), images=130_000_000),
    "bedroom128": dict(PAPER, res=128, batch_size=128, ch=128, ch_mult=(1, 1, 2, 3, 4), enc_ch_mult=(1, 1, 2, 3, 4, 4), images=120_000_000),
    "ffhq256":    dict(PAPER, res=256, batch_size=64, ch=128, ch_mult=(1, 1, 2, 2, 4, 4), enc_ch_mult=(1, 1, 2, 2, 4, 4, 4), images=90_000_000),
    # CPU presets: ~12 minutes on 2 cores (toy32), ~1 minute (tiny16, for smoke tests and classes)
    # They use 8 GroupNorm groups, not ADM's 32: at 32 channels, 32 groups would be one channel
    # each, and the net could never see an image's mean colour (see nn.normalization).
    # toy32 also adds the eps input skip and PDAE's lambda_t weights (README, "What makes the
    # decoder use z_sem"): together they make a 12-minute decoder rely on z_sem; off elsewhere.
    "toy32":  dict(res=32, batch_size=32, lr=6e-4, ema=0.995, dropout=0.0, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                   attn_res=(8,), enc_ch_mult=(1, 2, 2, 4), embed_dim=128, z_dim=128, norm_groups=8, images=48_000,
                   input_skip=True, t_weights="pdae"),
    "tiny16": dict(res=16, batch_size=16, lr=2e-4, ema=0.98, dropout=0.0, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                   attn_res=(), enc_ch_mult=(1, 2, 2), embed_dim=64, z_dim=32, norm_groups=8, images=3_200),
}
PAPER_BY_RES = {64: "ffhq64", 128: "ffhq128", 256: "ffhq256"}

# The latent DDIM (Table 6), keyed by the autoencoder's preset: "images" counts z_sem trained.
LATENT_PAPER = dict(hidden=2048, num_layers=10, lr=1e-4, weight_decay=0.01, ema=0.9999)
LATENT_PRESETS = {
    "celeba64":   dict(LATENT_PAPER, batch_size=512, images=300_000_000),
    "ffhq64":     dict(LATENT_PAPER, batch_size=256, images=100_000_000),
    "ffhq128":    dict(LATENT_PAPER, batch_size=256, images=100_000_000),
    "ffhq256":    dict(LATENT_PAPER, batch_size=256, images=100_000_000),
    "horse128":   dict(LATENT_PAPER, num_layers=20, weight_decay=0.0, batch_size=2048, images=2_000_000_000),
    "bedroom128": dict(LATENT_PAPER, num_layers=20, weight_decay=0.0, batch_size=2048, images=2_000_000_000),
    "toy32":  dict(hidden=512, num_layers=10, lr=1e-3, weight_decay=0.01, ema=0.999, batch_size=256, images=1_280_000),
    "tiny16": dict(hidden=128, num_layers=4, lr=1e-3, weight_decay=0.01, ema=0.99, batch_size=64, images=6_400),
}


def pick_preset(args):
    if args.preset:
        if args.preset not in PRESETS:
            raise SystemExit(usage_error(f"unknown --preset {args.preset!r}; choose from {', '.join(PRESETS)}"))
        return args.preset
    if args.data == "toyfaces":
        return {16: "tiny16", None: "toy32", 32: "toy32"}.get(args.res, "toy32")
    if f"{args.data}{args.res}" in PRESETS:
        return f"{args.data}{args.res}"
    if args.res in PAPER_BY_RES:
        return PAPER_BY_RES[args.res]
    raise SystemExit(usage_error(f"no preset for --data {args.data} --res {args.res}; pass --preset NAME "
                                 f"({', '.join(PRESETS)}) and --res"))


def usage_error(msg):
    print(f"error: {msg}", file=sys.stderr)
    return 2


def model_configs(kind, p, res, diffusion):
    from encoder import EncoderConfig
    from unet import UNetConfig
    unet = UNetConfig(res=res, ch=p["ch"], ch_mult=tuple(p["ch_mult"]), num_res_blocks=p["num_res_blocks"],
                      attn_res=tuple(p["attn_res"]), dropout=p["dropout"], embed_dim=p["embed_dim"],
                      cond_dim=p["z_dim"] if kind == "diffae" else None, norm_groups=p.get("norm_groups", 32),
                      input_skip={"T": diffusion.T, "schedule": diffusion.schedule} if p.get("input_skip") else None)
    enc = EncoderConfig(res=res, ch=p["ch"], ch_mult=tuple(p["enc_ch_mult"]), num_res_blocks=p["num_res_blocks"],
                        attn_res=tuple(p["attn_res"]), z_dim=p["z_dim"],
                        norm_groups=p.get("norm_groups", 32)) if kind == "diffae" else None
    return unet, enc


class Objective(nn.Module):
    """The training loss as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, kind, model, diffusion, weights=None):
        super().__init__()
        self.kind, self.model, self.diffusion, self.weights = kind, model, diffusion, weights

    def forward(self, x0, y, t, noise):
        if self.kind == "ddim":
            return self.diffusion.loss(lambda x, tt: self.model(x, tt), x0, t, noise, weights=self.weights)
        if self.kind == "pdae":
            return self.model.loss(x0, y, t, noise)  # PDAE Eq. 7 with its own lambda_t (Eq. 10)
        return self.model.loss(x0, t, noise, weights=self.weights)  # Diff-AE Eq. 6


def t_weights(name, diffusion):
    """Per-t loss weights for the DDIM and Diff-AE losses: None (uniform, Eq. 6) or PDAE's lambda_t.

    "pdae" borrows Eq. 10 of PDAE, scaled to mean 1: it moves weight from the small-t steps, where
    eps is mostly unpredictable pixel noise, to the middle and late ones, where z_sem decides the
    image. A departure from Diff-AE's Eq. 6, opt-in (see README, "What makes the decoder use z_sem").
    """
    if name in (None, "uniform"):
        return None
    if name == "pdae":
        from pdae import loss_weights
        w = loss_weights(diffusion)
        return w / w.mean()
    raise ValueError(f"unknown t weighting {name!r}: use 'uniform' or 'pdae'")


# --- data -----------------------------------------------------------------------------------

def step_indices(n, batch, step, seed):
    """The dataset indices of global batch `step`: epoch-wise permutations seeded by (seed, epoch)."""
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, pos = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out += perm[pos:pos + batch - len(out)].tolist()
    return out


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler for a DataLoader: this rank's share of each global batch from `start` on."""

    def __init__(self, n, batch, start, stop, seed, rank, world):
        self.n, self.batch, self.start, self.stop, self.seed, self.rank, self.world = n, batch, start, stop, seed, rank, world

    def __len__(self):
        return self.stop - self.start

    def __iter__(self):
        for step in range(self.start, self.stop):
            idx = step_indices(self.n, self.batch, step, self.seed)
            yield idx[self.rank::self.world]


def batches(ds, batch, start, stop, seed, rank, world, device, workers, flip):
    """Yields (x0, y) on the device for steps [start, stop)."""
    sampler = StepBatches(len(ds), batch, start, stop, seed, rank, world)
    if hasattr(ds, "tensors"):  # in-memory toyfaces: indexing beats any DataLoader
        X, Y = ds.tensors()
        it = ((X[i], Y[i]) for i in sampler)
    else:
        it = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    for step, (x, y) in zip(range(start, stop), it):
        if flip:  # horizontal flips, as the official training; the decision is part of the step's seed
            g = torch.Generator().manual_seed(seed * 7919 + step)
            m = torch.rand(x.shape[0], generator=g) < 0.5
            x = torch.where(m[:, None, None, None], x.flip(-1), x)
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# --- the loop -------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="diffae", choices=["ddim", "diffae", "latent", "pdae"])
    ap.add_argument("--data", default="toyfaces", help="toyfaces, or a folder name under data/ (ffhq, celeba, ...)")
    ap.add_argument("--data-dir", default=None, help="where the images are (default: data/NAME)")
    ap.add_argument("--res", type=int, default=None, help="image resolution (default: the preset's)")
    ap.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} (default: from --data/--res)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's budget)")
    ap.add_argument("--batch-size", type=int, default=None, help="global batch size (default: the preset's)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--ema", type=float, default=None, help="EMA decay of the weights")
    ap.add_argument("--t-weights", default=None, choices=["uniform", "pdae"],
                    help="ddim/diffae: per-t loss weights; uniform is Eq. 6, pdae borrows PDAE's Eq. 10 (opt-in)")
    ap.add_argument("--input-skip", action="store_true",
                    help="ddim/diffae: eps = sqrt(1 - alphabar_t) x_t + net(...) (opt-in; see unet.UNet.add_input_skip)")
    ap.add_argument("--out", default=None, help="run folder (default: runs/MODEL-DATA-RES)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--resume", default=None, help="a checkpoint to continue, or 'auto' for OUT/ckpt.pt")
    ap.add_argument("--ckpt", default=None, help="--model latent: the trained autoencoder to encode with")
    ap.add_argument("--pretrained", default=None, help="--model pdae: the frozen pre-trained DDIM checkpoint")
    ap.add_argument("--pdae-cond", default="image", choices=["image", "label"],
                    help="--model pdae: learn z from images (representation learning) or condition G on labels (§4.6)")
    ap.add_argument("--n-train", type=int, default=None, help="toyfaces: training set size")
    ap.add_argument("--save-every", type=int, default=None, help="steps between checkpoints (default: ~10 per run)")
    ap.add_argument("--keep-every", type=int, default=None,
                    help="steps between kept snapshots OUT/ckpt_STEP.pt (learning curves; each can be --resume'd or sampled)")
    ap.add_argument("--log-every", type=float, default=10.0, help="seconds between progress lines")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (same global batch)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 8 on CUDA, 0 on CPU)")
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="autocast dtype (CUDA default: bf16, else fp16 with a GradScaler; CPU default: off, bf16 on request)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network (CUDA)")
    ap.add_argument("--grad-checkpoint", action="store_true", help="recompute activations in backward (256^2)")
    ap.add_argument("--no-channels-last", action="store_true")
    return ap.parse_args(argv)


def setup_distributed(device_arg):
    """torchrun sets RANK/WORLD_SIZE; NCCL on CUDA, Gloo on CPU."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device(device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    cuda = (device_arg or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, torch.device(f"cuda:{local}" if cuda else "cpu")


def main(argv=None):
    args = parse_args(argv)
    if args.model == "latent":
        return train_latent(args)
    rank, world, device = setup_distributed(args.device)
    master = rank == 0
    log = print if master else (lambda *a, **k: None)

    # --- configuration: preset, then command-line overrides; or everything from --resume ---
    resume = None
    if args.resume:
        path = os.path.join(args.out or "", "ckpt.pt") if args.resume == "auto" else args.resume
        resume = checkpoint.load(path)
        tc = resume["config"]["train"]
        kind, preset_name = resume["kind"], tc["preset"]
        p = dict(tc["hparams"])
        args.data, args.res, args.data_dir = tc["data"], tc["res"], args.data_dir or tc.get("data_dir")
        args.seed, args.out = tc["seed"], args.out or tc["out"]
        args.steps = args.steps or tc["steps"]
        args.n_train = tc["n_train"]
    else:
        kind = args.model
        preset_name = pick_preset(args)
        p = dict(PRESETS[preset_name])
        for k in ("batch_size", "lr", "ema", "t_weights"):
            if getattr(args, k) is not None:
                p[k] = getattr(args, k)
        if args.input_skip:
            p["input_skip"] = True
        args.res = args.res or p["res"]
        args.steps = args.steps or max(1, p["images"] // p["batch_size"])
        args.out = args.out or os.path.join("runs", f"{kind}-{args.data}{args.res}")
    if args.keep_every is not None and args.keep_every < 1:
        raise SystemExit(usage_error(f"--keep-every must be a positive number of steps, got {args.keep_every}"))
    if p["batch_size"] % (world * args.grad_accum):
        raise SystemExit(usage_error(f"batch size {p['batch_size']} is not divisible by world size {world} x grad-accum {args.grad_accum}"))

    import data
    try:
        ds = data.make_dataset(args.data, args.res, data_dir=args.data_dir, split="train", n=args.n_train, seed=args.seed)
    except data.DatasetError as e:
        raise SystemExit(usage_error(str(e)))

    # --- the model -------------------------------------------------------------------------
    torch.manual_seed(args.seed)
    if kind == "pdae":
        import pdae
        if resume is not None:  # the checkpoint holds the frozen DPM too: no --pretrained needed
            config = {k: v for k, v in resume["config"].items() if k != "train"}
            config["unet"] = {**config["unet"], "grad_checkpoint": args.grad_checkpoint}
            model = pdae.PDAE.from_config(config)
        else:
            model, config = pdae.build_for_training(args, p)
        diffusion = model.diffusion
    else:
        diffusion = Diffusion(T=1000, schedule="linear")
        unet_cfg, enc_cfg = model_configs(kind, p, args.res, diffusion)
        unet_cfg.grad_checkpoint = args.grad_checkpoint
        config = checkpoint.configs(unet=unet_cfg, encoder=enc_cfg)
        config["diffusion"] = {"T": diffusion.T, "schedule": diffusion.schedule}
        ck0 = {"kind": kind, "config": config}
        model = checkpoint.make_model(ck0)
    config["train"] = dict(preset=preset_name, hparams=p, data=args.data, data_dir=args.data_dir, res=args.res,
                           seed=args.seed, out=args.out, steps=args.steps, n_train=len(ds))
    model.to(device)
    cuda = device.type == "cuda"
    if cuda and not args.no_channels_last:
        model.to(memory_format=torch.channels_last)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=p["lr"], weight_decay=0.0, fused=cuda)  # Table 5: Adam, no weight decay
    step = images_seen = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        ema = {k: v.to(device) for k, v in resume["ema"].items()}
        opt.load_state_dict(resume["optimizer"])
        step, images_seen = resume["step"], resume["images_seen"]
    # the live tensors behind the state dict (params and buffers) paired with their EMA copies, once
    live = model.state_dict()
    ema_pairs = [(ema[k], v) for k, v in live.items() if v.dtype.is_floating_point]
    ema_dst, ema_src = [a for a, _ in ema_pairs], [b for _, b in ema_pairs]

    objective = Objective(kind, model, diffusion, t_weights(p.get("t_weights"), diffusion))
    if args.compile:
        objective = torch.compile(objective)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if cuda else None)
    if cuda:
        amp_dtype = {"auto": torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
                     "bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[args.amp]
    else:  # CPU: float32 unless asked; bf16 is ~1.4x faster where the CPU has AVX512-BF16/AMX
        amp_dtype = torch.bfloat16 if args.amp == "bf16" else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    os.makedirs(args.out, exist_ok=True)
    ck_path = os.path.join(args.out, "ckpt.pt")
    save_every = args.save_every or max(1, args.steps // 10)
    preview = preview_batch(args, kind) if master else None
    n_params = sum(q.numel() for q in params)
    log(f"{kind} on {args.data} {args.res}px, preset {preset_name}, {n_params / 1e6:.2f}M trainable parameters, "
        f"batch {p['batch_size']} x {args.steps} steps ({p['batch_size'] * args.steps:,} images), {device}"
        f"{f' x {world}' if world > 1 else ''}; run folder {args.out}")
    if kind == "diffae" or kind == "pdae":
        log("note: no loss touches z_sem directly; the encoder learns through the denoising loss (Eq. 6)")

    def save():
        ck = {"kind": kind, "config": config, "model": model.state_dict(), "ema": ema,
              "optimizer": opt.state_dict(), "step": step, "images_seen": images_seen,
              "rng": {"torch": torch.get_rng_state()}}
        checkpoint.save(ck_path, ck)
        if args.keep_every and step % args.keep_every == 0:
            checkpoint.save(os.path.join(args.out, f"ckpt_{step:07d}.pt"), ck)
        if preview is not None:
            write_preview(kind, ck, preview, os.path.join(args.out, f"preview_{step:07d}.png"))

    logf = open(os.path.join(args.out, "log.jsonl"), "a") if master else None
    t_last, n_last, loss_sum, loss_n, t_start, step0 = time.time(), 0, 0.0, 0, time.time(), step
    micro = p["batch_size"] // world // args.grad_accum
    model.train()
    for x0, y in batches(ds, p["batch_size"], step, args.steps, args.seed, rank, world, device,
                         args.workers if args.workers is not None else (8 if cuda else 0), flip=args.data != "toyfaces"):
        # t and noise are drawn for the whole global batch and each rank takes its share, so any
        # world size and accumulation computes the same step; dropout is seeded per rank.
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        t_all = torch.randint(0, diffusion.T, (p["batch_size"],), generator=g)[rank::world].to(device)
        noise_all = torch.randn((p["batch_size"],) + tuple(x0.shape[1:]), generator=g)[rank::world].to(device)
        torch.manual_seed(args.seed * 1_000_003 + step * 1009 + rank)
        if cuda and not args.no_channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        loss_val = 0.0
        for j in range(args.grad_accum):
            mb = slice(j * micro, (j + 1) * micro)
            xs, ys, ts, ns = x0[mb], y[mb], t_all[mb], noise_all[mb]
            sync = j == args.grad_accum - 1 or world == 1
            ctx = objective.no_sync() if not sync and world > 1 else torch.enable_grad()
            with ctx, torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = objective(xs, ys, ts, ns) / args.grad_accum
            scaler.scale(loss).backward()
            loss_val += loss.detach()
        if world > 1:  # every rank sees the same mean loss, so all stop together on a bad one
            dist.all_reduce(loss_val)  # SUM: Gloo has no AVG
            loss_val = loss_val / world
        loss_val = float(loss_val)
        if not math.isfinite(loss_val):
            log(f"error: non-finite loss ({loss_val}) at step {step}; stopping. The last good checkpoint is "
                f"{ck_path if os.path.exists(ck_path) else '(none yet)'}; try a lower --lr or --amp off")
            return 1
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # EMA of the weights, one fused op over all tensors
            torch._foreach_lerp_(ema_dst, ema_src, 1 - p["ema"])
        step += 1
        images_seen += p["batch_size"]
        loss_sum, loss_n = loss_sum + loss_val, loss_n + 1

        now = time.time()
        if master and (now - t_last >= args.log_every or step == args.steps or step == step0 + 1):
            ips = (images_seen - n_last if n_last else p["batch_size"]) / max(now - t_last, 1e-9)
            eta = (args.steps - step) * p["batch_size"] / max(ips, 1e-9)
            rec = dict(step=step, loss=loss_sum / loss_n, images_per_s=round(ips, 2), eta_s=round(eta),
                       images_seen=images_seen, elapsed_s=round(now - t_start, 1))
            log(f"step {step}/{args.steps}  loss {rec['loss']:.4f}  {ips:.1f} img/s  ETA {fmt_time(eta)}", flush=True)
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            t_last, n_last, loss_sum, loss_n = now, images_seen, 0.0, 0
        if master and (step % save_every == 0 or step == args.steps or (args.keep_every and step % args.keep_every == 0)):
            t_save = time.time()
            save()
            t_last += time.time() - t_save  # checkpoints and previews do not count against images/s
    if world > 1:  # DDP keeps replicas identical; check it rather than trust it
        flat = torch.cat([v.detach().float().flatten() for v in model.state_dict().values()])
        ref = flat.clone()
        dist.broadcast(ref, 0)
        if rank == 1:
            print(f"rank 1 weights {'match' if torch.equal(flat, ref) else 'DIFFER FROM'} rank 0", flush=True)
        dist.barrier()
        dist.destroy_process_group()
    if master:
        took = time.time() - t_start
        log(f"done: {step} steps, {(step - step0) * p['batch_size'] / max(took, 1e-9):.1f} img/s on average over "
            f"{fmt_time(took)}. Checkpoint {ck_path}, previews and log.jsonl in {args.out}/.\n"
            f"next: python sample.py --ckpt {ck_path} reconstruct   (or eval, interpolate, vary, predict-x0)")
    return 0


def train_latent(args):
    """Second stage (Diff-AE §4): encode the training set once with the frozen autoencoder, then fit
    the latent DDIM to those codes. The output checkpoint holds both, so sample.py needs only it."""
    from latent_ddim import LatentDDIM, LatentNetConfig
    import data
    if not args.ckpt:
        raise SystemExit(usage_error("--model latent needs --ckpt AUTOENCODER.pt (a diffae or pdae checkpoint)"))
    try:
        ck = checkpoint.load(args.ckpt)
    except checkpoint.CheckpointError as e:
        raise SystemExit(usage_error(str(e)))
    if ck["kind"] not in ("diffae", "pdae"):
        raise SystemExit(usage_error(f"{args.ckpt} is a {ck['kind']} checkpoint; the latent DDIM needs an autoencoder (diffae or pdae)"))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tc = ck["config"].get("train", {})
    data_name = args.data if args.data != "toyfaces" or not tc.get("data") else tc["data"]
    res = tc.get("res") or ck["config"]["unet"]["res"]
    preset = args.preset or tc.get("preset") or PAPER_BY_RES.get(res, "ffhq128")
    p = dict(LATENT_PRESETS.get(preset, LATENT_PRESETS["ffhq128"]))
    for k in ("batch_size", "lr", "ema"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    steps = args.steps or max(1, p["images"] // p["batch_size"])
    out = args.out or os.path.join("runs", f"latent-{data_name}{res}")
    os.makedirs(out, exist_ok=True)
    try:
        ds = data.make_dataset(data_name, res, data_dir=args.data_dir or tc.get("data_dir"), split="train",
                               n=args.n_train or tc.get("n_train"), seed=tc.get("seed", args.seed))
    except data.DatasetError as e:
        raise SystemExit(usage_error(str(e)))

    model = checkpoint.build(ck).to(device)
    print(f"encoding {len(ds)} training images with the frozen encoder ...", flush=True)
    zs, t0 = [], time.time()
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=args.workers or 0)
    with torch.inference_mode():
        for i, (x, _) in enumerate(loader):
            zs.append(model.encode(x.to(device)).float().cpu())
            if time.time() - t0 > 10 or i == len(loader) - 1:
                print(f"  encoded {sum(len(z) for z in zs)}/{len(ds)}", flush=True)
                t0 = time.time()
    z_all = torch.cat(zs)  # (N, z_dim)

    torch.manual_seed(args.seed)
    latent = LatentDDIM(LatentNetConfig(z_dim=z_all.shape[1], hidden=p["hidden"], num_layers=p["num_layers"])).to(device)
    latent.set_stats(z_all.to(device))
    z_all = z_all.to(device)
    ema = {k: v.detach().clone() for k, v in latent.state_dict().items()}
    opt = torch.optim.AdamW(latent.net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])  # Table 6
    print(f"latent DDIM: {sum(q.numel() for q in latent.parameters()) / 1e6:.2f}M parameters, batch {p['batch_size']} x "
          f"{steps} steps, {device}; run folder {out}", flush=True)
    logf = open(os.path.join(out, "log.jsonl"), "a")
    t_last, t_start, loss_sum, loss_n = time.time(), time.time(), 0.0, 0
    for step in range(1, steps + 1):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        idx = torch.randint(0, len(z_all), (p["batch_size"],), generator=g).to(device)
        t = torch.randint(0, latent.diffusion.T, (p["batch_size"],), generator=g).to(device)
        noise = torch.randn((p["batch_size"], z_all.shape[1]), generator=g).to(device)
        loss = latent.loss(z_all[idx], t, noise)  # Diff-AE Eq. 9 (L1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(latent.net.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            sd = latent.state_dict()
            keys = [k for k in ema if ema[k].dtype.is_floating_point]
            torch._foreach_lerp_([ema[k] for k in keys], [sd[k] for k in keys], 1 - p["ema"])
        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        if time.time() - t_last >= args.log_every or step == steps:
            rec = dict(step=step, loss=loss_sum / loss_n, elapsed_s=round(time.time() - t_start, 1))
            print(f"latent step {step}/{steps}  L1 {rec['loss']:.4f}  "
                  f"ETA {fmt_time((steps - step) * (time.time() - t_start) / step)}", flush=True)
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            t_last, loss_sum, loss_n = time.time(), 0.0, 0

    # one file: the autoencoder as it was, plus the latent DDIM under "latent.*"
    new = dict(ck)
    new["config"] = dict(ck["config"], latent=latent.config)
    new["config"]["latent_train"] = dict(preset=preset, hparams=p, steps=steps, source=os.path.abspath(args.ckpt))
    for key, src in (("ema", ema), ("model", latent.state_dict())):
        base = {k: v for k, v in (ck.get(key) or ck["model"]).items() if not k.startswith("latent.")}
        new[key] = dict(base, **{f"latent.{k}": v.detach().cpu() for k, v in src.items()})
    path = os.path.join(out, "ckpt.pt")
    checkpoint.save(path, new)
    print(f"done: {path} holds the autoencoder and its latent DDIM.\n"
          f"next: python sample.py --ckpt {path} sample   (or manipulate, conditional, eval)")
    return 0


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def preview_batch(args, kind):
    """Fixed held-out images for the reconstruction grids written at each checkpoint."""
    import data
    try:
        ds = data.make_dataset(args.data, args.res, data_dir=args.data_dir, split="test", seed=args.seed)
    except data.DatasetError:
        return None
    return torch.stack([ds[i][0] for i in range(min(8, len(ds)))])


def write_preview(kind, ck, x, path):
    import sample
    if ck["config"].get("pdae", {}).get("condition") == "label":
        return  # a label-conditioned PDAE has no image encoder to reconstruct with
    model = checkpoint.build(ck)
    rows = sample.reconstruction_rows(kind, model, checkpoint.diffusion(ck), x, steps=20, seed=0)
    sample.save_grid(path, rows)


if __name__ == "__main__":
    sys.exit(main())
