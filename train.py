"""The one training entry point: build the model, then a plain PyTorch loop, read top to bottom.

    python train.py                                   # Diff-AE on built-in toyfaces, CPU-sized (presets.py)
    python train.py --data ffhq --res 128             # the paper's FFHQ-128 preset (Table 5)
    python train.py --model ddim|diffae|latent|pdae --data NAME --res R [--steps N] [--out DIR]
    python train.py --resume runs/X/ckpt.pt --steps N  # continue a run (in its own folder)
    torchrun --standalone --nproc_per_node=2 train.py --device cpu ...   # data-parallel (distributed.py)

Elsewhere: the presets and their rules, presets.py; the loss, objective.py; the run folder, runfolder.py.
Every step is seeded from (seed, step, rank), so a run resumed from a checkpoint continues
exactly as if it had never stopped (on the CPU), and the data order does not depend on workers.
"""
import argparse
import contextlib
import getpass
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

import checkpoint
import cli
import data
import distributed
import pdae
import presets
from diffusion import Diffusion
from encoder import PDAEEncoder
from latent_ddim import LatentDDIM, LatentNetConfig
from objective import WEIGHTINGS, Objective, run_weights, step_noise
from runfolder import LossHealth, Progress, RunFolder, StopSignals, last_good


# --- the run ----------------------------------------------------------------------------------

def load_or_fail(path, what):
    try:
        return checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        cli.usage_error(f"{what}: {e}")


def resolve(args, amp_dtype):
    """(Run, the checkpoint to resume and its path, or None, None) from the command line."""
    if not args.resume:
        return presets.fresh_run(args, amp_dtype), None, None
    path = args.resume
    if path == "auto":
        if not args.out:
            cli.usage_error("--resume auto continues OUT/ckpt.pt: pass --out OUT (or --resume PATH)")
        path = os.path.join(args.out, "ckpt.pt")
    ck = load_or_fail(path, "--resume")
    if "train" not in ck["config"] or ck["config"]["train"].get("source") == "official":
        cli.usage_error(f"--resume {path}: this checkpoint was not written by train.py (no training record); "
                        f"use it as --pretrained or --ckpt instead")
    if ck["config"].get("latent") is not None:
        cli.usage_error(f"--resume {path}: this checkpoint holds a latent DDIM; resume its autoencoder's ckpt.pt, or --model latent")
    if not ck.get("optimizer"):
        cli.usage_error(f"--resume {path}: its optimizer state was stripped (a checkpoint shared for sampling); "
                        f"start a new run, or resume from the run's own ckpt.pt")
    return presets.resumed_run(args, ck, path), ck, path


def dataset(run, split, n=None):
    try:
        return data.make_dataset(run.data, run.res, data_dir=run.data_dir, split=split, n=n, seed=run.seed)
    except data.DatasetError as e:
        cli.usage_error(str(e))


def preview_batch(run, n=8):
    """Fixed held-out images for the reconstruction grid written at each save (None without a held-out split)."""
    try:
        ds = data.make_dataset(run.data, run.res, data_dir=run.data_dir, split="test", seed=run.seed)
        return torch.stack([ds[i][0] for i in range(min(n, len(ds)))])
    except (data.DatasetError, RuntimeError):  # no such split, or an empty one (stack of nothing)
        return None


# --- the model ----------------------------------------------------------------------------------

def build_pdae(run, grad_checkpoint):
    """A PDAE around the frozen --pretrained DDIM; the checkpoint keeps the DPM's weights and a sha256."""
    if not run.pretrained:
        cli.usage_error("--model pdae needs --pretrained CKPT: a pre-trained DDIM (train.py --model ddim, or an "
                        "official DDIM baseline). PDAE keeps it frozen and trains only an encoder and G on top of it.")
    ck = load_or_fail(run.pretrained, "--pretrained")
    if ck["kind"] != "ddim":
        cli.usage_error(f"--pretrained {run.pretrained} is a {ck['kind']!r} checkpoint; PDAE needs an unconditional "
                        f"DDIM (kind 'ddim': train.py --model ddim, or an official DDIM baseline)")
    pretrained = checkpoint.build(ck)
    unet_cfg = replace(pretrained.cfg, grad_checkpoint=grad_checkpoint)  # for G only: the UNet is frozen
    if run.res != unet_cfg.res:
        cli.usage_error(f"--pretrained {run.pretrained} was trained at {unet_cfg.res}x{unet_cfg.res}; pass --res {unet_cfg.res}")
    if run.pdae_cond == "label":  # §4.6: G conditioned on the dataset's labels, no image encoder
        names = dataset(run, "train").attr_names
        if not names:
            cli.usage_error(f"dataset {run.data!r} has no labels to condition on (§4.6 needs attributes or classes)")
        encoder = pdae.LabelEmbedding(len(names), run.hp["z_dim"])
    else:
        encoder = PDAEEncoder(presets.pdae_encoder_config(unet_cfg.res, run.hp))
    model = pdae.PDAE(unet_cfg, encoder, checkpoint.diffusion(ck), run.hp.get("gamma", pdae.GAMMA))
    model.unet.load_state_dict(pretrained.state_dict())
    model.config = dict(model.config, diffusion=dict(ck["config"].get("diffusion", model.config["diffusion"])))
    model.config["pdae"] = dict(model.config["pdae"], pretrained_path=str(run.pretrained),
                                pretrained_sha256=pdae.weights_sha256(pretrained.state_dict()))
    return model


def build_model(run, resume, grad_checkpoint):
    """(model, its checkpoint config): from the preset, from --pretrained (PDAE), or from the resumed file."""
    torch.manual_seed(run.seed)
    if run.model == "pdae":
        if resume is not None:  # the checkpoint holds the frozen DPM too: no --pretrained needed
            config = {k: v for k, v in resume["config"].items() if k != "train"}
            config["unet"] = {**config["unet"], "grad_checkpoint": grad_checkpoint}
            model = pdae.PDAE.from_config(config)
        else:
            model = build_pdae(run, grad_checkpoint)
        return model, dict(model.config)
    diffusion = Diffusion(T=1000, schedule="linear")
    unet_cfg, enc_cfg = presets.model_configs(run.model, run.hp, run.res, diffusion)
    unet_cfg.grad_checkpoint = grad_checkpoint
    config = dict(checkpoint.configs(unet=unet_cfg, encoder=enc_cfg), diffusion=diffusion.config())
    return checkpoint.make_model({"kind": run.model, "config": config}), config


class EMA:
    """Exponential moving average of a module's floating tensors (parameters and buffers)."""

    def __init__(self, module, decay, state=None):
        live = module.state_dict()
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in live.items()} if state is None else \
            {k: v.to(live[k].device) for k, v in state.items()}
        pairs = [(self.state[k], v) for k, v in live.items() if v.dtype.is_floating_point]
        self.dst, self.src = [a for a, _ in pairs], [b for _, b in pairs]

    @torch.no_grad()
    def update(self):
        torch._foreach_lerp_(self.dst, self.src, 1 - self.decay)  # one fused op over all tensors


@dataclass
class State:
    """What the loop updates and a checkpoint keeps."""
    kind: str
    model: nn.Module
    config: dict
    opt: torch.optim.Optimizer
    ema: EMA
    health: LossHealth
    step: int
    batch: int

    def checkpoint(self):
        return {"kind": self.kind, "config": self.config, "model": self.model.state_dict(), "ema": self.ema.state,
                "optimizer": self.opt.state_dict(), "step": self.step, "images_seen": self.step * self.batch,
                "rng": {"torch": torch.get_rng_state()}, "health": {"ref": self.health.ref}}


@dataclass
class Place:
    """Where a run executes: this process's rank of `world`, its device, the autocast dtype (None: float32)."""
    rank: int
    world: int
    device: torch.device
    amp: torch.dtype = None


def prepare(run, args, model, config, resume, place):
    """The State on its device (fresh or resumed) and the objective the loop steps."""
    # channels-last and the fused Adam pay on a CPU too: oneDNN's NHWC convolutions, one kernel per update
    model.to(place.device, memory_format=torch.channels_last) if args.channels_last else model.to(place.device)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=run.hp["lr"], weight_decay=0.0, fused=True)  # Table 5: Adam, no weight decay
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
    state = State(run.model, model, config, opt, EMA(model, run.hp["ema"], resume["ema"] if resume else None),
                  LossHealth(resume.get("health", {}).get("ref") if resume else None),
                  resume["step"] if resume else 0, run.hp["batch_size"])
    diffusion = checkpoint.diffusion({"config": config})
    objective = Objective(run.model, model, diffusion, run_weights(run.hp, diffusion))
    objective = torch.compile(objective) if args.compile else objective  # the first step compiles (cli.compiles)
    if place.world > 1:
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=[place.device.index] if place.device.type == "cuda" else None)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = place.device.type == "cuda"
    return state, objective, diffusion.T


# --- data ---------------------------------------------------------------------------------------

def batches(ds, run, start, place, workers):
    """Yields (x0, y) on the device for steps [start, run.steps)."""
    sampler = data.StepBatches(len(ds), run.hp["batch_size"], start, run.steps, run.seed, place.rank, place.world)
    if hasattr(ds, "tensors"):  # in-memory toyfaces: indexing beats any DataLoader
        X, Y = ds.tensors()
        it = ((X[i], Y[i]) for i in sampler)
    else:
        workers = workers if workers is not None else (8 if place.device.type == "cuda" else 0)
        it = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers,
                                         pin_memory=place.device.type == "cuda", persistent_workers=workers > 0)
    for step, (x, y) in zip(range(start, run.steps), it):
        if run.data != "toyfaces":  # horizontal flips, as the official training; the decision is part of the step's seed
            m = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(run.seed * 7919 + step)) < 0.5
            x = torch.where(m[:, None, None, None], x.flip(-1), x)
        yield x.to(place.device, non_blocking=True), y.to(place.device, non_blocking=True)


# --- the loop -----------------------------------------------------------------------------------

def train_step(objective, x0, y, t, noise, accum, place, scaler):
    """Forward and backward over `accum` micro-batches; returns the mean loss (summed over ranks / world)."""
    micro = x0.shape[0] // accum
    loss_val = torch.zeros((), device=place.device)
    for j in range(accum):
        mb = slice(j * micro, (j + 1) * micro)
        sync = objective.no_sync() if place.world > 1 and j < accum - 1 else contextlib.nullcontext()
        with sync, torch.autocast(place.device.type, dtype=place.amp or torch.float32, enabled=place.amp is not None):
            loss = objective(x0[mb], y[mb], t[mb], noise[mb]) / accum
        scaler.scale(loss).backward()
        loss_val += loss.detach().float()
    return loss_val


def loop(run, args, state, objective, T, ds, place, folder, stop):
    """Forward and backward, clip, step, EMA, log, save. Returns the exit code."""
    hp, log = run.hp, print if place.rank == 0 else (lambda *a, **k: None)
    params = [q for q in state.model.parameters() if q.requires_grad]
    scaler = torch.amp.GradScaler("cuda", enabled=place.amp == torch.float16)
    save_every = args.save_every or max(1, run.steps // 10)
    progress = Progress(run.out, run.steps, state.step, hp["batch_size"], args.log_every, enabled=place.rank == 0)
    deadline = time.time() + 60 * args.minutes if args.minutes else math.inf
    ckpt = os.path.join(run.out, "ckpt.pt")
    state.model.train()
    for x0, y in batches(ds, run, state.step, place, args.workers):
        # This step's t and noise, from (seed, step).
        t, noise = step_noise(run.seed, state.step, hp["batch_size"], x0.shape[1:], T, place.rank, place.world, place.device)
        if args.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        # Accumulate gradients; every rank agrees on the loss and on whether to stop.
        loss = train_step(objective, x0, y, t, noise, args.grad_accum, place, scaler)
        loss, (stopped, out_of_time) = distributed.agree(loss, (stop.requested is not None, time.time() >= deadline), place.world)
        if not math.isfinite(loss):
            log(f"error: non-finite loss ({loss}) at step {state.step + 1}; stopping. {last_good(ckpt)}. "
                f"Lower --lr{' or use --amp off' if place.amp is not None else ''}.")
            return 1
        # Clip, step the optimizer, update the EMA.
        scaler.unscale_(state.opt)
        if hp.get("grad_clip", 1.0):
            nn.utils.clip_grad_norm_(params, hp.get("grad_clip", 1.0))
        scaler.step(state.opt)
        scaler.update()
        state.opt.zero_grad(set_to_none=True)
        state.ema.update()
        state.step += 1
        state.health.add(loss)
        progress.update(state.step, loss)
        if args.compile and state.step == progress.step0 + 1:
            log(f"the first step compiled the objective in {time.time() - progress.t_start:.0f} s; {compile_cache()}")
        # Save when due, when asked to stop, and at the end; never an unhealthy state.
        if stopped or out_of_time or state.step % save_every == 0 or state.step == run.steps or \
                (args.keep_every and state.step % args.keep_every == 0):
            if not state.health.healthy():
                log(f"error: the loss diverged at step {state.step} ({state.health.describe()}); stopping without "
                    f"saving. {last_good(ckpt)}. Lower --lr and resume from it, or start anew.")
                return 1
            if folder is not None:
                t_save = time.time()
                folder.save(state.checkpoint())
                progress.pause(time.time() - t_save)
        if stopped:
            log(f"{stop.requested or 'interrupted'}: saved step {state.step} to {ckpt}; continue with python train.py --resume {ckpt}")
            return stop.exit_code()
        if out_of_time and state.step < run.steps:
            log(f"--minutes {args.minutes:g}: time is up at step {state.step} of {run.steps}; saved {ckpt}. "
                f"Continue with python train.py --resume {ckpt}")
            break
    distributed.check_replicas(state.model, place.rank, place.world)
    progress.close()
    log(f"done: {progress.summary(state.step)}. Checkpoint {ckpt}, previews and log.jsonl in {run.out}/.\n"
        f"next: python sample.py --ckpt {ckpt} reconstruct   (or eval, interpolate, vary, predict-x0)")
    return 0


def compile_cache():
    """Where inductor keeps what it compiled: a later run of the same model reuses it and compiles faster."""
    where = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    return f"its kernels are cached in {where} (TORCHINDUCTOR_CACHE_DIR), which later runs reuse"


def start_line(run, model, place, compiled):
    hp, n = run.hp, sum(q.numel() for q in model.parameters() if q.requires_grad)
    line = (f"{run.model} on {run.data} {run.res}px, preset {run.preset}, {n / 1e6:.2f}M trainable parameters, batch "
            f"{hp['batch_size']} x {run.steps} steps ({hp['batch_size'] * run.steps:,} images), {place.device}"
            f"{f' x {place.world}' if place.world > 1 else ''}, {cli.precision(place.amp)}"
            f"{', compiled (--no-compile: eager)' if compiled else ''}; run folder {run.out}")
    if run.model in ("diffae", "pdae"):
        line += "\nnote: no loss touches z_sem directly; the encoder learns through the denoising loss (Eq. 6)"
    return line


def train(args):
    rank, world, device = distributed.setup(args.device)
    place = Place(rank, world, device, cli.autocast_dtype(device, args.amp))
    try:
        run, resume, resume_path = resolve(args, place.amp)
        if run.hp["batch_size"] % (world * args.grad_accum):
            cli.usage_error(f"batch size {run.hp['batch_size']} is not divisible by world size {world} x --grad-accum {args.grad_accum}")
        ds = dataset(run, "train", run.n_train)
        model, config = build_model(run, resume, args.grad_checkpoint)
        config["train"] = run.recorded(len(ds))
        args.compile = cli.compiles(args.compile, device, run.steps * run.hp["batch_size"], world)
        folder = RunFolder(run.out, resume_path, args.keep_every, preview_batch(run)) if rank == 0 else None
        with folder or contextlib.nullcontext(), StopSignals() as stop:
            state, objective, T = prepare(run, args, model, config, resume, place)
            (print if rank == 0 else (lambda *a: None))(start_line(run, model, place, args.compile))
            return loop(run, args, state, objective, T, ds, place, folder, stop)
    finally:
        distributed.end(world)


# --- the second stage: the latent DDIM (Diff-AE §4) ----------------------------------------------

def encode_training_set(model, ds, device, workers):
    """z_sem of every training image, with the frozen encoder: (N, z_dim) on the CPU."""
    print(f"encoding {len(ds)} training images with the frozen encoder ...", flush=True)
    zs, t0 = [], time.time()
    loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=workers)
    with torch.inference_mode():
        for i, (x, _) in enumerate(loader):
            zs.append(model.encode(x.to(device)).float().cpu())
            if time.time() - t0 > 10 or i == len(loader) - 1:
                print(f"  encoded {sum(len(z) for z in zs)}/{len(ds)}", flush=True)
                t0 = time.time()
    return torch.cat(zs)


def latent_source(args):
    """(the autoencoder checkpoint, its path, the latent stage's saved state or None): from --ckpt, or from a
    stopped latent run (--resume, which holds the autoencoder too)."""
    image_only = ("pretrained", "pdae_cond", "t_weights", "t_gamma", "t_floor", "input_skip", "res", "minutes", "z_dim")
    given = [k for k in image_only if getattr(args, k) is not None and getattr(args, k) is not False]  # 0 is a value
    for k in given + (["grad_accum"] if args.grad_accum != 1 else []):
        cli.usage_error(f"--{k.replace('_', '-')} does not apply to --model latent (it trains on the codes of --ckpt)")
    if args.resume:
        ck = load_or_fail(args.resume, "--resume")
        if "latent_state" not in ck:
            cli.usage_error(f"--resume {args.resume}: no unfinished latent DDIM in it (a finished latent stage keeps no "
                            f"optimizer state); train a new one with --model latent --ckpt AUTOENCODER.pt")
        return ck, ck["config"]["latent_train"]["source"], ck["latent_state"]
    if not args.ckpt:
        cli.usage_error("--model latent needs --ckpt AUTOENCODER.pt (a diffae or pdae checkpoint)")
    ck = load_or_fail(args.ckpt, "--ckpt")
    if ck["kind"] not in ("diffae", "pdae") or ck["config"].get("pdae", {}).get("condition") == "label":
        cli.usage_error(f"{args.ckpt} is a {ck['kind']} checkpoint without an image encoder; the latent DDIM "
                        f"needs an autoencoder (diffae or pdae)")
    return ck, args.ckpt, None


def train_latent(args):
    """Encode the training set once with the frozen autoencoder, then fit the latent DDIM to those codes.
    The output checkpoint holds both, so sample.py needs only it; saved every ~10% of the run and on a
    stop signal, with the state that --resume continues from."""
    ck, source, state = latent_source(args)
    run, device = presets.latent_run(args, ck, state), cli.pick_device(args.device)
    path = os.path.join(run.out, "ckpt.pt")
    with RunFolder(run.out, args.resume), StopSignals() as stop:
        z_all = encode_training_set(checkpoint.build(ck).to(device), dataset(run, "train", run.n_train), device, args.workers or 0)
        save = lambda *fit: checkpoint.save(path, with_latent(ck, *fit, run, source))
        # PDAE's latent sampler clamps its start and clips z0 each step, on the autoencoder's grid
        took = fit_latent(run, z_all.to(device), args, cli.autocast_dtype(device, args.amp), ck, state, save, stop)
    if stop.requested:
        print(f"{stop.requested}: {took}; saved to {path}. Continue with python train.py --model latent --resume {path}")
        return stop.exit_code()
    print(f"done: {took}. {path} holds the autoencoder and its latent DDIM.\n"
          f"next: python sample.py --ckpt {path} sample   (or manipulate, conditional, eval)")
    return 0


def fit_latent(run, z_all, args, amp_dtype, ck, state, save, stop):
    """The latent DDIM's loop: Diff-AE Eq. 9 (L1 on eps) over random codes, AdamW (Table 6), EMA."""
    hp, device = run.hp, z_all.device
    torch.manual_seed(run.seed)
    latent = LatentDDIM(LatentNetConfig(z_dim=z_all.shape[1], hidden=hp["hidden"], num_layers=hp["num_layers"]),
                        clip=ck["kind"] == "pdae", grid=checkpoint.diffusion(ck).grid).to(device)
    latent.set_stats(z_all)
    opt = torch.optim.AdamW(latent.net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"], fused=True)
    step0 = state["step"] if state is not None else 0
    if state is not None:  # the unfinished run's weights, EMA and optimizer
        latent.load_state_dict({k[len("latent."):]: v for k, v in ck["model"].items() if k.startswith("latent.")})
        opt.load_state_dict(state["optimizer"])
    ema = EMA(latent, hp["ema"], {k[len("latent."):]: v for k, v in ck["ema"].items() if k.startswith("latent.")} if state else None)
    print(f"latent DDIM: {sum(q.numel() for q in latent.parameters()) / 1e6:.2f}M parameters, batch {hp['batch_size']} x "
          f"{run.steps} steps{f' from step {step0}' if step0 else ''}, {device}, {cli.precision(amp_dtype)}; "
          f"run folder {run.out}", flush=True)
    progress = Progress(run.out, run.steps, step0, hp["batch_size"], args.log_every, label="latent step", unit="codes")
    save_every, step = args.save_every or max(1, run.steps // 10), step0
    while step < run.steps and not stop.requested:
        step += 1
        g = torch.Generator().manual_seed(run.seed * 1_000_003 + step)
        idx = torch.randint(0, len(z_all), (hp["batch_size"],), generator=g).to(device)
        t = torch.randint(0, latent.diffusion.T, (hp["batch_size"],), generator=g).to(device)
        noise = torch.randn((hp["batch_size"], z_all.shape[1]), generator=g).to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = latent.loss(z_all[idx], t, noise)  # Diff-AE Eq. 9 (L1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(latent.net.parameters(), 1.0)
        opt.step()
        ema.update()
        progress.update(step, loss.item())
        if step % save_every == 0 or step == run.steps or stop.requested:
            save(latent, ema, opt if step < run.steps else None, step)
    progress.close()
    return progress.summary(step)


def with_latent(ck, latent, ema, opt, step, run, source):
    """One file: the autoencoder as it was, plus the latent DDIM under "latent.*" (and, while unfinished,
    the state --resume continues from)."""
    new = {k: v for k, v in ck.items() if k != "latent_state"}
    new["config"] = dict(ck["config"], latent=latent.config)
    new["config"]["latent_train"] = dict(preset=run.preset, hparams=run.hp, steps=run.steps, seed=run.seed, data=run.data,
                                         data_dir=run.data_dir, n_train=run.n_train, source=os.path.abspath(source))
    for key, src in (("ema", ema.state), ("model", latent.state_dict())):
        base = {k: v for k, v in (ck.get(key) or ck["model"]).items() if not k.startswith("latent.")}
        new[key] = dict(base, **{f"latent.{k}": v.detach().cpu() for k, v in src.items()})
    if opt is not None:
        new["latent_state"] = {"optimizer": opt.state_dict(), "step": step}
    return new


# --- the command line ---------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, choices=["ddim", "diffae", "latent", "pdae"], help="default: diffae")
    ap.add_argument("--data", default=None, help="toyfaces (default), or a folder name under data/ (ffhq, celeba, ...)")
    ap.add_argument("--data-dir", default=None, help="where the images are (default: data/NAME; toyfaces: its cache)")
    ap.add_argument("--res", type=cli.positive_int, default=None, help="image resolution (default: the preset's)")
    ap.add_argument("--preset", default=None, help=f"one of {', '.join(presets.PRESETS)} (default: from --data/--res)")
    ap.add_argument("--steps", type=cli.positive_int, default=None, help="training steps in all (default: the preset's budget)")
    ap.add_argument("--batch-size", type=cli.positive_int, default=None, help="global batch size (default: the preset's)")
    ap.add_argument("--lr", type=cli.positive_float, default=None)
    ap.add_argument("--ema", type=cli.ranged(float, 0, 1, hi_open=True), default=None, help="EMA decay of the weights, in [0, 1)")
    ap.add_argument("--z-dim", type=cli.positive_int, default=None, help="ddim/diffae/pdae: the size of z_sem (default: the preset's; Table 2 b-e)")
    ap.add_argument("--t-weights", default=None, choices=WEIGHTINGS,
                    help="ddim/diffae: per-t loss weights; uniform is Eq. 6, snr weighs t by SNR^gamma/(1+SNR) (PDAE Eq. 10)")
    ap.add_argument("--t-gamma", type=cli.ranged(float, -1, 1), default=None,
                    help=f"gamma of --t-weights snr, in [-1, 1] (PDAE's {pdae.GAMMA}; below 0 the weight grows with t)")
    ap.add_argument("--t-floor", type=cli.ranged(float, 0, 1), default=None,
                    help="share of Eq. 6's uniform weight mixed into --t-weights snr, in [0, 1] (keeps the small t)")
    ap.add_argument("--input-skip", action="store_true", help="ddim/diffae: eps = sqrt(1 - alphabar_t) x_t + net(...)")
    ap.add_argument("--out", default=None, help="run folder (default: runs/MODEL-DATARES; with --resume PATH: PATH's folder)")
    ap.add_argument("--seed", type=cli.seed_int, default=None, help="default 0")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--resume", default=None, help="a checkpoint to continue, or 'auto' for OUT/ckpt.pt")
    ap.add_argument("--ckpt", default=None, help="--model latent: the trained autoencoder to encode with")
    ap.add_argument("--pretrained", default=None, help="--model pdae: the frozen pre-trained DDIM checkpoint")
    ap.add_argument("--pdae-cond", default=None, choices=["image", "label"],
                    help="--model pdae: learn z from images (default) or condition G on labels (§4.6)")
    ap.add_argument("--n-train", type=cli.positive_int, default=None, help="training set size (default: all; toyfaces 10000)")
    ap.add_argument("--minutes", type=cli.positive_float, default=None,
                    help="stop and save after this many minutes of steps (a class period); --resume continues to --steps")
    ap.add_argument("--save-every", type=cli.positive_int, default=None, help="steps between checkpoints (default: ~10 per run)")
    ap.add_argument("--keep-every", type=cli.positive_int, default=None,
                    help="steps between kept snapshots OUT/ckpt_STEP.pt (learning curves; each can be --resume'd or sampled)")
    ap.add_argument("--log-every", type=cli.positive_float, default=10.0, help="seconds between progress lines")
    ap.add_argument("--grad-accum", type=cli.positive_int, default=1, help="micro-batches per step (same global batch)")
    ap.add_argument("--workers", type=cli.nonnegative_int, default=None, help="DataLoader workers (default: 8 on CUDA, 0 on CPU)")
    ap.add_argument("--amp", default="auto", choices=cli.AMP_CHOICES,
                    help="autocast dtype (auto: bf16 on CUDA, fp16 where it lacks bf16, and on a CPU with native bf16; "
                         "float32 elsewhere; off: float32)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the objective (default: on CUDA and on CPU runs of 150k+ images)")
    ap.add_argument("--grad-checkpoint", action="store_true", help="recompute activations in backward (256^2)")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW (default: channels-last)")
    return ap.parse_args(argv)


@cli.entry
def main(argv=None):
    args = parse_args(argv)
    if args.model == "latent":
        return train_latent(args)
    try:
        return train(args)
    except data.DatasetError as e:  # a file that breaks while training (its header read fine)
        print(f"error: {e}. The last saved checkpoint is intact; resume from it once the data is fixed.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
