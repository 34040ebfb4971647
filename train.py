"""The one training entry point: a plain PyTorch loop, read top to bottom.

    python train.py                                   # Diff-AE on built-in toyfaces, CPU, ~13 minutes
    python train.py --data ffhq --res 128             # the paper's FFHQ-128 preset (Table 5)
    python train.py --model ddim|diffae|latent|pdae --data NAME --res R [--steps N] [--out DIR]
    python train.py --resume runs/X/ckpt.pt --steps N  # continue a run (in its own folder)
    torchrun --standalone --nproc_per_node=2 train.py --device cpu ...   # data-parallel

Every step is seeded from (seed, step, rank), so a run resumed from a checkpoint continues
exactly as if it had never stopped (on the CPU), and the data order does not depend on workers.
A run folder belongs to one run: a new run refuses a folder that holds another run's checkpoint,
a lock keeps a second process out, and Ctrl-C saves the last finished step (exit code 130).
"""
import argparse
import contextlib
import gc
import json
import math
import os
import signal
import socket
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

import checkpoint
import cli
import data
import pdae
import sample
from diffusion import Diffusion
from encoder import EncoderConfig, PDAEEncoder, PDAEEncoderConfig
from latent_ddim import LatentDDIM, LatentNetConfig
from unet import UNetConfig

# --- presets --------------------------------------------------------------------------------
# The paper's Table 5 (autoencoder / DDIM baseline) and small presets that train on a CPU.
# "images" is the paper's training budget; steps = images / batch_size unless --steps says otherwise.
# grad_clip 1 is the official Diff-AE trainer's; the official PDAE trainer does not clip (see PDAE_HP).
PAPER = dict(lr=1e-4, ema=0.9999, dropout=0.1, embed_dim=512, z_dim=512, num_res_blocks=2, attn_res=(16,),
             grad_clip=1.0)
PRESETS = {
    "celeba64":   dict(PAPER, res=64, batch_size=128, ch=64, ch_mult=(1, 2, 4, 8), enc_ch_mult=(1, 2, 4, 8, 8), images=72_000_000),
    "ffhq64":     dict(PAPER, res=64, batch_size=128, ch=64, ch_mult=(1, 2, 4, 8), enc_ch_mult=(1, 2, 4, 8, 8), images=48_000_000),
    "ffhq128":    dict(PAPER, res=128, batch_size=128, ch=128, ch_mult=(1, 1, 2, 3, 4), enc_ch_mult=(1, 1, 2, 3, 4, 4), images=130_000_000),
    "horse128":   dict(PAPER, res=128, batch_size=128, ch=128, ch_mult=(1, 1, 2, 3, 4), enc_ch_mult=(1, 1, 2, 3, 4, 4), images=130_000_000),
    "bedroom128": dict(PAPER, res=128, batch_size=128, ch=128, ch_mult=(1, 1, 2, 3, 4), enc_ch_mult=(1, 1, 2, 3, 4, 4), images=120_000_000),
    "ffhq256":    dict(PAPER, res=256, batch_size=64, ch=128, ch_mult=(1, 1, 2, 2, 4, 4), enc_ch_mult=(1, 1, 2, 2, 4, 4, 4), images=90_000_000),
    # CPU presets: ~14 minutes on 2 cores (toy32), ~1 minute (tiny16, for smoke tests and classes).
    # toy32's budget is what fits in 15 minutes: 96k images with bf16 autocast, channels-last and the
    # fused Adam on a CPU with native bf16, 48k in float32 elsewhere. Warm-up, cosine decay, larger
    # rates, importance-sampled t, Adam beta2 0.99, a faster encoder lr, EMA warm-up and min-SNR weights
    # did not beat it at equal minutes (docs/RESULTS.md).
    # norm_groups 8: see nn.normalization. input_skip and t_weights "pdae": see unet.UNet's input
    # skip and t_weights below; together they make a 13-minute decoder rely on z_sem (docs/RESULTS.md).
    # t_gamma -0.3 (Diff-AE only): Eq. 10's lambda_t with gamma below 0 grows with t, so the late steps,
    # where z_sem alone decides the image, carry most of the loss; the encoder learns from them (docs/RESULTS.md).
    "toy32":  dict(res=32, batch_size=32, lr=6e-4, ema=0.995, dropout=0.0, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                   attn_res=(8,), enc_ch_mult=(1, 2, 2, 4), embed_dim=128, z_dim=128, norm_groups=8, images=96_000,
                   images_float32=48_000, input_skip=True, t_weights="pdae", t_gamma=-0.3, grad_clip=1.0),
    "tiny16": dict(res=16, batch_size=16, lr=2e-4, ema=0.98, dropout=0.0, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                   attn_res=(), enc_ch_mult=(1, 2, 2), embed_dim=64, z_dim=32, norm_groups=8, images=3_200, grad_clip=1.0),
}
PAPER_BY_RES = {64: "ffhq64", 128: "ffhq128", 256: "ffhq256"}
CPU_PRESETS = ("toy32", "tiny16")

# --model pdae on a paper preset: the official PDAE trainer's settings (no gradient clipping) and
# PDAE's own image budgets, from its released models' names ("FFHQ128-130M-z512-64M": 64M images
# of PDAE training); presets without a released PDAE model take half of Diff-AE's budget (PDAE §4.1).
# The CPU presets keep their own budget and clipping: at 32 px PDAE needs as many images as
# Diff-AE (docs/RESULTS.md, PDAE §4.1), and their 6x larger lr needs the clip.
PDAE_HP = dict(grad_clip=None)
PDAE_IMAGES = {"ffhq128": 64_000_000, "horse128": 64_000_000, "bedroom128": 70_000_000, "celeba64": 38_000_000}
# PDAE's encoder (§3.3): widths per stride-2 conv, as the official FFHQEncoder / CelebA64Encoder
PDAE_ENC_MULT = {64: (1, 2, 2, 2), 128: (1, 2, 4, 4, 4), 256: (1, 2, 4, 4, 4, 4)}

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
LATENT_PDAE_LR = 1e-3  # the official PDAE latent trainer's rate (Diff-AE's Table 6: 1e-4)

# Options that shape what a run is; --resume continues the run as recorded and refuses them.
RECORDED = ("model", "preset", "data", "data_dir", "res", "batch_size", "lr", "ema", "t_weights", "t_gamma", "input_skip",
            "n_train", "seed", "pretrained", "pdae_cond")


# --- configuration --------------------------------------------------------------------------

@dataclass
class Run:
    """Everything a training run is, resolved once from the command line (or a checkpoint)."""
    kind: str           # what is trained: ddim | diffae | pdae (the checkpoint's kind)
    preset: str
    hp: dict            # the preset's hyper-parameters after command-line overrides
    data: str
    data_dir: str
    res: int
    seed: int
    out: str
    steps: int
    n_train: int
    pretrained: str = None
    pdae_cond: str = "image"

    def recorded(self, n_train):
        """The part the checkpoint keeps (config['train'])."""
        return dict(preset=self.preset, hparams=self.hp, data=self.data, data_dir=self.data_dir, res=self.res,
                    seed=self.seed, out=self.out, steps=self.steps, n_train=n_train)


def pick_preset(name, data_name, res):
    if name:
        if name not in PRESETS:
            cli.usage_error(f"unknown --preset {name!r}; choose from {', '.join(PRESETS)}")
        return name
    if data_name == "toyfaces":
        return "tiny16" if res == 16 else "toy32"
    if f"{data_name}{res}" in PRESETS:
        return f"{data_name}{res}"
    if res in PAPER_BY_RES:
        return PAPER_BY_RES[res]
    cli.usage_error(f"no preset for --data {data_name} --res {res}; pass --preset NAME ({', '.join(PRESETS)}) and --res")


def fresh_run(args):
    """A new run: the preset, then the command line's overrides."""
    data_name, kind = args.data or "toyfaces", args.model or "diffae"
    preset = pick_preset(args.preset, data_name, args.res)
    hp = dict(PRESETS[preset])
    if kind == "pdae" and preset not in CPU_PRESETS:
        hp.update(PDAE_HP, images=PDAE_IMAGES.get(preset, hp["images"] // 2))
    for k in ("batch_size", "lr", "ema", "t_weights", "t_gamma"):
        if getattr(args, k) is not None:
            hp[k] = getattr(args, k)
    if args.input_skip:
        hp["input_skip"] = True
    if args.t_gamma is not None and (kind == "pdae" or hp.get("t_weights") != "pdae"):
        cli.usage_error(f"--t-gamma is the gamma of --t-weights pdae (ddim and diffae); PDAE's own lambda_t keeps {pdae.GAMMA}")
    if kind != "diffae" and args.t_gamma is None:
        hp.pop("t_gamma", None)  # the preset's gamma is for z_sem; the DDIM baseline keeps PDAE's
    fp32_images = hp.pop("images_float32", None)  # a CPU preset sized in minutes; float32 steps are ~1.7x slower
    if fp32_images and cli.pick_device(args.device).type == "cpu" and autocast_dtype(torch.device("cpu"), args.amp) is None:
        hp["images"] = fp32_images
    res = args.res or hp["res"]
    check_res(res, hp, kind)
    out = args.out or os.path.join("runs", f"{kind}-{data_name}{res}")
    return Run(kind, preset, hp, data_name, args.data_dir, res, args.seed or 0, out,
               args.steps or max(1, hp["images"] // hp["batch_size"]), args.n_train, args.pretrained, args.pdae_cond)


def check_res(res, hp, kind):
    """The UNet and the encoder halve the image once per level: res must survive every halving."""
    levels = max(len(hp["ch_mult"]), len(hp["enc_ch_mult"]) if kind == "diffae" else 0) - 1
    if res < 2 ** levels * 2 or res % 2 ** levels:
        cli.usage_error(f"--res {res}: this preset halves the image {levels} times; use a multiple of "
                        f"{2 ** levels} of at least {2 ** (levels + 1)} (e.g. {hp['res']})")


def resumed_run(args, ck, path):
    """The run a checkpoint records, continued: only --steps (the new total) and --out may change it."""
    tc = ck["config"]["train"]
    recorded = dict(model=ck["kind"], preset=tc["preset"], data=tc["data"], data_dir=tc.get("data_dir"),
                    res=tc["res"], n_train=tc["n_train"], seed=tc["seed"],
                    pretrained=ck["config"].get("pdae", {}).get("pretrained_path"),
                    pdae_cond=ck["config"].get("pdae", {}).get("condition", "image"),
                    t_gamma=tc["hparams"].get("t_gamma", pdae.GAMMA),
                    **{k: tc["hparams"].get(k) for k in ("batch_size", "lr", "ema", "t_weights", "input_skip")})
    for k in RECORDED:
        given = getattr(args, k)
        if given not in (None, False) and given != recorded[k]:
            cli.usage_error(f"--{k.replace('_', '-')} {given} conflicts with the run being resumed "
                            f"({recorded[k]!r} in {path}); --resume continues a run as it was: start a new "
                            f"run with a new --out to change it")
    steps = args.steps or tc["steps"]
    if steps <= ck["step"]:
        cli.usage_error(f"{path} is at step {ck['step']} already; pass --steps N > {ck['step']} (the new total)")
    out = args.out or os.path.dirname(os.path.abspath(path))  # beside the checkpoint, never its recorded folder
    return Run(ck["kind"], tc["preset"], dict(tc["hparams"]), tc["data"], tc.get("data_dir"), tc["res"], tc["seed"],
               out, steps, tc["n_train"], recorded["pretrained"], recorded["pdae_cond"])


def load_or_fail(path, what):
    try:
        return checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        cli.usage_error(f"{what}: {e}")


def resolve(args):
    """(Run, the checkpoint to resume and its path, or None, None) from the command line; args stays as it is."""
    if not args.resume:
        return fresh_run(args), None, None
    path = args.resume
    if path == "auto":
        if not args.out:
            cli.usage_error("--resume auto continues OUT/ckpt.pt: pass --out OUT (or --resume PATH)")
        path = os.path.join(args.out, "ckpt.pt")
    ck = load_or_fail(path, "--resume")
    if "train" not in ck["config"]:
        cli.usage_error(f"--resume {path}: this checkpoint was not written by train.py (no training record); "
                        f"use it as --pretrained or --ckpt instead")
    return resumed_run(args, ck, path), ck, path


# --- the model ------------------------------------------------------------------------------

def model_configs(kind, p, res, diffusion):
    """The (UNetConfig, EncoderConfig or None) of a preset; the encoder only for Diff-AE."""
    groups = p.get("norm_groups", 32)
    skip = {"T": diffusion.T, "schedule": diffusion.schedule} if p.get("input_skip") else None
    unet = UNetConfig(res=res, ch=p["ch"], ch_mult=tuple(p["ch_mult"]), num_res_blocks=p["num_res_blocks"],
                      attn_res=tuple(p["attn_res"]), dropout=p["dropout"], embed_dim=p["embed_dim"],
                      cond_dim=p["z_dim"] if kind == "diffae" else None, norm_groups=groups, input_skip=skip)
    if kind != "diffae":
        return unet, None
    enc = EncoderConfig(res=res, ch=p["ch"], ch_mult=tuple(p["enc_ch_mult"]), num_res_blocks=p["num_res_blocks"],
                        attn_res=tuple(p["attn_res"]), z_dim=p["z_dim"], norm_groups=groups)
    return unet, enc


def pdae_encoder_config(res, p):
    """PDAE §3.3's encoder for resolution res: stride-2 convs down to 4x4 (official widths where known)."""
    n_down = max(1, int(math.log2(max(res // 4, 1))))
    ch = min(64, p["ch"])
    mult = PDAE_ENC_MULT.get(res, tuple(min(2 ** i, 4) for i in range(n_down)))
    return PDAEEncoderConfig(res=res, ch=ch, ch_mult=mult, attn_res=tuple(p.get("attn_res", ())),
                             num_heads=4 if ch % 4 == 0 else 1, z_dim=p["z_dim"], norm_groups=p.get("norm_groups", 32))


def build_pdae(run, grad_checkpoint):
    """A PDAE around the frozen --pretrained DDIM; the checkpoint keeps the DPM's weights and a sha256."""
    if not run.pretrained:
        cli.usage_error("--model pdae needs --pretrained CKPT: a pre-trained DDIM (train.py --model ddim, or an "
                        "official DDIM baseline). PDAE keeps it frozen and trains only an encoder and G on top of it.")
    ck = load_or_fail(run.pretrained, "--pretrained")
    if ck["kind"] != "ddim":
        cli.usage_error(f"--pretrained {run.pretrained} is a {ck['kind']!r} checkpoint; PDAE needs an unconditional "
                        f"DDIM (kind 'ddim': train.py --model ddim, or an official DDIM baseline)")
    unet_cfg = UNetConfig(**pdae._tuples(ck["config"]["unet"]))
    if run.res != unet_cfg.res:
        cli.usage_error(f"--pretrained {run.pretrained} was trained at {unet_cfg.res}x{unet_cfg.res}; pass --res {unet_cfg.res}")
    unet_cfg.grad_checkpoint = grad_checkpoint  # for G only: the UNet is frozen
    pretrained = checkpoint.build(ck)
    if run.pdae_cond == "label":  # §4.6: G conditioned on the dataset's labels, no image encoder
        names = dataset(run, "train").attr_names
        if not names:
            cli.usage_error(f"dataset {run.data!r} has no labels to condition on (§4.6 needs attributes or classes)")
        encoder = pdae.LabelEmbedding(len(names), run.hp["z_dim"])
    else:
        encoder = PDAEEncoder(pdae_encoder_config(unet_cfg.res, run.hp))
    model = pdae.PDAE(unet_cfg, encoder, checkpoint.diffusion(ck), run.hp.get("gamma", 0.1))
    model.unet.load_state_dict(pretrained.state_dict())
    model.config = dict(model.config, diffusion=dict(ck["config"].get("diffusion", model.config["diffusion"])))
    model.config["pdae"] = dict(model.config["pdae"], pretrained_path=str(run.pretrained),
                                pretrained_sha256=pdae.weights_sha256(pretrained.state_dict()))
    return model


def build_model(run, resume, grad_checkpoint):
    """(model, its checkpoint config): from the preset, from --pretrained (PDAE), or from the resumed file."""
    torch.manual_seed(run.seed)
    if run.kind == "pdae":
        if resume is not None:  # the checkpoint holds the frozen DPM too: no --pretrained needed
            config = {k: v for k, v in resume["config"].items() if k != "train"}
            config["unet"] = {**config["unet"], "grad_checkpoint": grad_checkpoint}
            model = pdae.PDAE.from_config(config)
        else:
            model = build_pdae(run, grad_checkpoint)
        return model, dict(model.config)
    diffusion = Diffusion(T=1000, schedule="linear")
    unet_cfg, enc_cfg = model_configs(run.kind, run.hp, run.res, diffusion)
    unet_cfg.grad_checkpoint = grad_checkpoint
    config = dict(checkpoint.configs(unet=unet_cfg, encoder=enc_cfg), diffusion={"T": diffusion.T, "schedule": diffusion.schedule})
    return checkpoint.make_model({"kind": run.kind, "config": config}), config


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


def t_weights(name, diffusion, gamma=None):
    """Per-t loss weights for the DDIM and Diff-AE losses: None (uniform, Eq. 6) or PDAE's lambda_t.

    "pdae" borrows Eq. 10 of PDAE, scaled to mean 1: it moves weight from the small-t steps, where
    eps is mostly unpredictable pixel noise, to the middle and late ones, where z_sem decides the
    image. A departure from Diff-AE's Eq. 6, on in the toy32 preset only (docs/RESULTS.md, ablation).
    gamma: Eq. 10's (PDAE's 0.1 by default); below 0 the weight grows with t up to t = T - 1.
    """
    if name in (None, "uniform"):
        return None
    if name == "pdae":
        w = pdae.loss_weights(diffusion, pdae.GAMMA if gamma is None else gamma)
        return w / w.mean()
    raise ValueError(f"unknown t weighting {name!r}: use 'uniform' or 'pdae'")


# --- data -----------------------------------------------------------------------------------

def dataset(run, split, n=None):
    try:
        return data.make_dataset(run.data, run.res, data_dir=run.data_dir, split=split, n=n, seed=run.seed)
    except data.DatasetError as e:
        cli.usage_error(str(e))


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


def step_noise(seed, step, batch, shape, rank, world, device):
    """t and noise of global batch `step`, this rank's share: any world size and accumulation
    computes the same step. Dropout is seeded per rank."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    t = torch.randint(0, 1000, (batch,), generator=g)[rank::world].to(device)
    noise = torch.randn((batch,) + tuple(shape), generator=g)[rank::world].to(device)
    torch.manual_seed(seed * 1_000_003 + step * 1009 + rank)
    return t, noise


# --- what every training loop shares: run folder, EMA, progress, loss health, Ctrl-C ---------

class RunFolder:
    """A run folder owned by one run: no overwriting of another run's checkpoint, and an advisory lock
    (flock on OUT/train.lock) while it trains. The kernel drops the lock when its process ends, however
    it ends (kill -9 included), so a killed run never leaves a lock behind, and no window is left
    in which two runs could both hold it. The file itself stays; it names the last holder."""

    def __init__(self, out, ckpt_ok=None):
        self.out, self.lock = out, os.path.join(out, "train.lock")
        self.ckpt_ok = ckpt_ok  # the one checkpoint in `out` this run may replace (the one it resumes)
        self.fd = None

    def __enter__(self):
        try:
            os.makedirs(self.out, exist_ok=True)
            self.fd = os.open(self.lock, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as e:
            cli.usage_error(f"cannot write the run folder {self.out} ({e.strerror}); pass a writable --out")
        try:
            import fcntl
        except ImportError:  # no flock (Windows): runs started at once into one folder are not kept apart
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "unknown"
                self.__exit__()
                cli.usage_error(f"{self.out} is in use by another training process (pid {owner}); wait for it, "
                                f"or pass another --out")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        ck = os.path.join(self.out, "ckpt.pt")
        if os.path.exists(ck) and not (self.ckpt_ok and os.path.samefile(ck, self.ckpt_ok)):
            self.__exit__()
            cli.usage_error(f"{self.out} already holds a run ({ck}); continue it with --resume {ck}, "
                            f"or pass a new --out")
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None


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


class Progress:
    """One line at a steady pace (step, loss, images/s, ETA) and the same figures in OUT/log.jsonl."""

    def __init__(self, out, steps, step0, batch, every, label="step", enabled=True, unit="img"):
        self.steps, self.batch, self.every, self.label, self.enabled = steps, batch, every, label, enabled
        self.unit = unit
        self.f = open(os.path.join(out, "log.jsonl"), "a") if enabled else None
        self.t_start = self.t_last = time.time()
        self.step0 = self.n_last = step0
        self.losses = []

    def update(self, step, loss):
        if not self.enabled:
            return
        self.losses.append(loss)
        now = time.time()
        if not (now - self.t_last >= self.every or step == self.steps or step == self.step0 + 1):
            return
        ips = (step - self.n_last) * self.batch / max(now - self.t_last, 1e-9)
        eta = (self.steps - step) * self.batch / max(ips, 1e-9)
        rec = dict(step=step, loss=sum(self.losses) / len(self.losses), images_per_s=round(ips, 2), eta_s=round(eta),
                   images_seen=step * self.batch, elapsed_s=round(now - self.t_start, 1))
        print(f"{self.label} {step}/{self.steps}  loss {rec['loss']:.4f}  {ips:.1f} {self.unit}/s  ETA {fmt_time(eta)}", flush=True)
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        self.t_last, self.n_last, self.losses = now, step, []

    def pause(self, seconds):
        """Time spent saving does not count against images/s."""
        self.t_last += seconds

    def summary(self, step):
        took = time.time() - self.t_start
        return f"{step} steps, {(step - self.step0) * self.batch / max(took, 1e-9):.1f} {self.unit}/s on average over {fmt_time(took)}"

    def close(self):
        if self.f:
            self.f.close()


class LossHealth:
    """Which checkpoints are worth keeping. Rule: a save is healthy when the mean loss of the steps
    since the last save is finite and at most 10x the reference: the lowest median of the last 64
    step losses seen at a healthy save (at first, the run's first loss). The mean catches a blow-up
    at once; the median keeps one lucky batch from setting the bar. An unhealthy save is not
    written: ckpt.pt always holds the last healthy state, and the run stops there."""

    FACTOR = 10.0

    def __init__(self, ref=None):
        self.ref, self.recent, self.window = ref, deque(maxlen=64), []

    def add(self, loss):
        if self.ref is None:
            self.ref = loss
        self.recent.append(loss)
        self.window.append(loss)

    def healthy(self):
        mean = sum(self.window) / len(self.window) if self.window else self.ref
        if not (math.isfinite(mean) and mean <= self.FACTOR * self.ref):
            return False
        self.ref, self.window = min(self.ref, statistics.median(self.recent)) if self.recent else self.ref, []
        return True

    def describe(self):
        mean = sum(self.window) / max(len(self.window), 1)
        return f"mean loss {mean:.3g} over the last {len(self.window)} steps, more than {self.FACTOR:g}x the run's {self.ref:.3g}"


class CtrlC:
    """The first Ctrl-C asks the loop to stop at the next step boundary (and save); a second one stops at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.old = signal.signal(signal.SIGINT, self._handle) if _main_thread() else None
        return self

    def _handle(self, *_):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\ninterrupt: stopping after this step and saving (Ctrl-C again to stop at once)", flush=True)

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def _main_thread():
    return threading.current_thread() is threading.main_thread()


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --- the loop -------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, choices=["ddim", "diffae", "latent", "pdae"], help="default: diffae")
    ap.add_argument("--data", default=None, help="toyfaces (default), or a folder name under data/ (ffhq, celeba, ...)")
    ap.add_argument("--data-dir", default=None, help="where the images are (default: data/NAME; toyfaces: its cache)")
    ap.add_argument("--res", type=cli.positive_int, default=None, help="image resolution (default: the preset's)")
    ap.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} (default: from --data/--res)")
    ap.add_argument("--steps", type=cli.positive_int, default=None, help="training steps in all (default: the preset's budget)")
    ap.add_argument("--batch-size", type=cli.positive_int, default=None, help="global batch size (default: the preset's)")
    ap.add_argument("--lr", type=cli.positive_float, default=None)
    ap.add_argument("--ema", type=cli.ranged(float, 0, 1, hi_open=True), default=None, help="EMA decay of the weights, in [0, 1)")
    ap.add_argument("--t-weights", default=None, choices=["uniform", "pdae"],
                    help="ddim/diffae: per-t loss weights; uniform is Eq. 6, pdae borrows PDAE's Eq. 10")
    ap.add_argument("--t-gamma", type=cli.ranged(float, -1, 1), default=None,
                    help="gamma of --t-weights pdae, in [-1, 1] (PDAE's 0.1; toy32: -0.3, more weight on large t)")
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
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"],
                    help="autocast dtype (auto: bf16 on CUDA (fp16 with a GradScaler where bf16 is missing), and on a CPU with "
                         "native bf16; float32 elsewhere; off: float32)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the loss (network and all)")
    ap.add_argument("--grad-checkpoint", action="store_true", help="recompute activations in backward (256^2)")
    ap.add_argument("--no-channels-last", action="store_true", help="keep NCHW (default: channels-last)")
    return ap.parse_args(argv)


def setup_distributed(device_arg):
    """torchrun sets RANK/WORLD_SIZE; NCCL on CUDA, Gloo on CPU."""
    device = cli.pick_device(device_arg)
    if "RANK" not in os.environ:
        return 0, 1, device
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, torch.device(f"cuda:{local}") if device.type == "cuda" else device


def autocast_dtype(device, amp):
    """CUDA: bf16 where supported, else fp16 (with a GradScaler). CPU: bf16 where the CPU does bf16 in
    hardware (cli.native_bf16), else float32; the run's first line says which."""
    if device.type == "cuda":
        return {"auto": torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
                "bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    if amp == "fp16":
        cli.usage_error("--amp fp16 needs CUDA (CPU autocast runs bf16 only); use --amp bf16 or off")
    if amp == "auto":
        return torch.bfloat16 if cli.native_bf16() else None
    return torch.bfloat16 if amp == "bf16" else None


def train_step(objective, x0, y, t, noise, accum, amp_dtype, device, scaler, world):
    """Forward and backward over `accum` micro-batches; returns the mean loss (summed over ranks / world)."""
    micro = x0.shape[0] // accum
    loss_val = torch.zeros((), device=device)
    for j in range(accum):
        mb = slice(j * micro, (j + 1) * micro)
        ctx = objective.no_sync() if world > 1 and j < accum - 1 else torch.enable_grad()
        with ctx, torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = objective(x0[mb], y[mb], t[mb], noise[mb]) / accum
        scaler.scale(loss).backward()
        loss_val += loss.detach().float()
    return loss_val


def main(argv=None):
    args = parse_args(argv)
    if args.model == "latent":
        return train_latent(args)
    try:
        return train(args)
    except data.DatasetError as e:  # a file that breaks while training (its header read fine)
        print(f"error: {e}. The last saved checkpoint is intact; resume from it once the data is fixed.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: the last checkpoint on disk is whole (writes are atomic)
        print("\ninterrupted; the last saved checkpoint is intact", file=sys.stderr)
        return 130


def train(args):
    run, resume, resume_path = resolve(args)
    rank, world, device = setup_distributed(args.device)
    master = rank == 0
    amp_dtype = autocast_dtype(device, args.amp)
    if run.hp["batch_size"] % (world * args.grad_accum):
        cli.usage_error(f"batch size {run.hp['batch_size']} is not divisible by world size {world} x --grad-accum {args.grad_accum}")
    ds = dataset(run, "train", run.n_train)
    model, config = build_model(run, resume, args.grad_checkpoint)
    config["train"] = run.recorded(len(ds))
    try:
        with (RunFolder(run.out, resume_path) if master else contextlib.nullcontext()), CtrlC() as ctrl_c:
            return loop(run, args, model, config, ds, resume, rank, world, device, amp_dtype, ctrl_c)
    finally:
        end_distributed(world)




def prepare(run, args, model, config, resume, device, world):
    """The model on its device, its optimizer, EMA and loss health (or the resumed ones), the objective."""
    cuda, hp = device.type == "cuda", run.hp
    # channels-last and the fused Adam pay on a CPU too: oneDNN's NHWC convolutions (above all their
    # backward) and one kernel for the whole update in place of ~10 small ops per tensor (docs/RESULTS.md)
    channels_last = not args.no_channels_last
    model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=hp["lr"], weight_decay=0.0, fused=True)  # Table 5: Adam, no weight decay
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
    ema = EMA(model, hp["ema"], resume["ema"] if resume else None)
    health = LossHealth(resume.get("health", {}).get("ref") if resume else None)
    diffusion = checkpoint.diffusion({"config": config})
    objective = Objective(run.kind, model, diffusion, t_weights(hp.get("t_weights"), diffusion, hp.get("t_gamma")))
    if args.compile:
        objective = torch.compile(objective)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if cuda else None)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return params, opt, ema, health, objective, channels_last


def loop(run, args, model, config, ds, resume, rank, world, device, amp_dtype, ctrl_c):
    """The training loop proper: forward, backward, clip, step, EMA, log, checkpoint."""
    master, hp = rank == 0, run.hp
    log = print if master else (lambda *a, **k: None)
    params, opt, ema, health, objective, channels_last = prepare(run, args, model, config, resume, device, world)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step = resume["step"] if resume else 0
    # --- checkpoints, previews, progress ---
    ck_path = os.path.join(run.out, "ckpt.pt")
    save_every = args.save_every or max(1, run.steps // 10)
    preview = preview_batch(run) if master else None
    progress = Progress(run.out, run.steps, step, hp["batch_size"], args.log_every, enabled=master)
    log(start_line(run, params, device, world, amp_dtype))
    deadline = time.time() + 60 * args.minutes if args.minutes else math.inf

    # --- the steps ---
    model.train()
    workers = args.workers if args.workers is not None else (8 if device.type == "cuda" else 0)
    for x0, y in batches(ds, hp["batch_size"], step, run.steps, run.seed, rank, world, device, workers,
                         flip=run.data != "toyfaces"):
        t, noise = step_noise(run.seed, step, hp["batch_size"], x0.shape[1:], rank, world, device)
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        loss = train_step(objective, x0, y, t, noise, args.grad_accum, amp_dtype, device, scaler, world)
        # every rank stops together, on Ctrl-C or when --minutes have passed
        loss, (stop, out_of_time) = agree(loss, (ctrl_c.requested, time.time() >= deadline), world)
        if not math.isfinite(loss):
            log(f"error: non-finite loss ({loss}) at step {step + 1}; stopping. {last_good(ck_path)} "
                f"Lower --lr{' or use --amp off' if amp_dtype is not None else ''}.")
            return 1
        scaler.unscale_(opt)
        if hp.get("grad_clip", 1.0):
            nn.utils.clip_grad_norm_(params, hp.get("grad_clip", 1.0))
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        ema.update()
        step += 1
        health.add(loss)
        progress.update(step, loss)
        if stop or out_of_time or step % save_every == 0 or step == run.steps or (args.keep_every and step % args.keep_every == 0):
            if not health.healthy():
                log(f"error: the loss diverged at step {step} ({health.describe()}); stopping without saving. "
                    f"{last_good(ck_path)} Lower --lr and resume from it, or start anew.")
                return 1
            if master:
                t_save = time.time()
                save(run.out, args.keep_every, preview, {
                    "kind": run.kind, "config": config, "model": model.state_dict(), "ema": ema.state,
                    "optimizer": opt.state_dict(), "step": step, "images_seen": step * hp["batch_size"],
                    "rng": {"torch": torch.get_rng_state()}, "health": {"ref": health.ref}})
                progress.pause(time.time() - t_save)
        if stop:
            log(f"interrupted: saved step {step} to {ck_path}; continue with python train.py --resume {ck_path}")
            return 130
        if out_of_time and step < run.steps:
            log(f"--minutes {args.minutes:g}: time is up at step {step} of {run.steps}; saved {ck_path}. "
                f"Continue with python train.py --resume {ck_path}")
            break
    check_replicas(model, rank, world)
    progress.close()
    log(f"done: {progress.summary(step)}. Checkpoint {ck_path}, previews and log.jsonl in {run.out}/.\n"
        f"next: python sample.py --ckpt {ck_path} reconstruct   (or eval, interpolate, vary, predict-x0)")
    return 0


def save(out, keep_every, preview, ck):
    """OUT/ckpt.pt, a kept snapshot OUT/ckpt_STEP.pt every keep_every steps, and a preview grid."""
    checkpoint.save(os.path.join(out, "ckpt.pt"), ck)
    if keep_every and ck["step"] % keep_every == 0:
        checkpoint.save(os.path.join(out, f"ckpt_{ck['step']:07d}.pt"), ck)
    if preview is not None:
        write_preview(ck, preview, os.path.join(out, f"preview_{ck['step']:07d}.png"))


def start_line(run, params, device, world, amp_dtype):
    hp = run.hp
    line = (f"{run.kind} on {run.data} {run.res}px, preset {run.preset}, {sum(q.numel() for q in params) / 1e6:.2f}M "
            f"trainable parameters, batch {hp['batch_size']} x {run.steps} steps ({hp['batch_size'] * run.steps:,} images), "
            f"{device}{f' x {world}' if world > 1 else ''}, {'float32' if amp_dtype is None else str(amp_dtype)[6:] + ' autocast'}"
            f"; run folder {run.out}")
    if run.kind in ("diffae", "pdae"):
        line += "\nnote: no loss touches z_sem directly; the encoder learns through the denoising loss (Eq. 6)"
    return line


def agree(loss, flags, world):
    """(mean loss over ranks, for each flag whether any rank raised it), the same on every rank."""
    if world == 1:
        return float(loss), tuple(flags)
    both = torch.cat([loss.detach().float().reshape(1), torch.tensor([float(f) for f in flags], device=loss.device)])
    dist.all_reduce(both)  # SUM: Gloo has no AVG
    return float(both[0]) / world, tuple(bool(f > 0) for f in both[1:])


def last_good(ck_path):
    if not os.path.exists(ck_path):
        return "No checkpoint was saved."
    return f"The last healthy checkpoint is {ck_path} (step {checkpoint.load(ck_path)['step']})."


def check_replicas(model, rank, world):
    """DDP keeps replicas identical; check it rather than trust it."""
    if world == 1:
        return
    flat = torch.cat([v.detach().float().flatten() for v in model.state_dict().values()])
    ref = flat.clone()
    dist.broadcast(ref, 0)
    if rank == 1:
        print(f"rank 1 weights {'match' if torch.equal(flat, ref) else 'DIFFER FROM'} rank 0", flush=True)
    dist.barrier()


def end_distributed(world):
    """Destroy the process group on every way out, once loop() has returned: the DDP wrapper holds the
    group too, and with it gone (gc for any cycle) Gloo's threads are joined here. Destroyed while DDP
    lived, the group's threads could outlive it into interpreter exit, where a rank sometimes aborted
    ("terminate called without an active exception")."""
    if world > 1 and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def preview_batch(run):
    """Fixed held-out images for the reconstruction grids written at each checkpoint."""
    try:
        ds = data.make_dataset(run.data, run.res, data_dir=run.data_dir, split="test", seed=run.seed)
    except data.DatasetError:
        return None
    return torch.stack([ds[i][0] for i in range(min(8, len(ds)))])


def write_preview(ck, x, path):
    if ck["config"].get("pdae", {}).get("condition") == "label":
        return  # a label-conditioned PDAE has no image encoder to reconstruct with
    model = checkpoint.build(ck)
    rows = sample.reconstruction_rows(ck["kind"], model, checkpoint.diffusion(ck), x, steps=20, seed=0)
    sample.save_grid(path, rows)


# --- the second stage: the latent DDIM -------------------------------------------------------

def latent_run(args, ck):
    """The latent DDIM's run, from the autoencoder's record and the command line."""
    for k in ("resume", "pretrained", "pdae_cond", "t_weights", "t_gamma", "input_skip", "res", "grad_accum", "minutes"):
        given = getattr(args, k)
        if given is not None and given is not False and not (k == "grad_accum" and given == 1):
            cli.usage_error(f"--{k.replace('_', '-')} does not apply to --model latent (it trains on the codes of --ckpt)")
    tc = ck["config"].get("train", {})
    res = tc.get("res") or ck["config"]["unet"]["res"]
    preset = args.preset or tc.get("preset") or PAPER_BY_RES.get(res, "ffhq128")
    if preset not in LATENT_PRESETS:
        cli.usage_error(f"no latent DDIM preset {preset!r}; choose from {', '.join(LATENT_PRESETS)}")
    hp = dict(LATENT_PRESETS[preset])
    if ck["kind"] == "pdae":
        hp["lr"] = LATENT_PDAE_LR
    for k in ("batch_size", "lr", "ema"):
        if getattr(args, k) is not None:
            hp[k] = getattr(args, k)
    data_name = args.data or tc.get("data") or "toyfaces"
    out = args.out or os.path.join("runs", f"latent-{data_name}{res}")
    return Run("latent", preset, hp, data_name, args.data_dir or tc.get("data_dir"), res,
               tc.get("seed", 0) if args.seed is None else args.seed, out,
               args.steps or max(1, hp["images"] // hp["batch_size"]), args.n_train or tc.get("n_train"))


def encode_all(model, ds, device, workers):
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


def train_latent(args):
    """Second stage (Diff-AE §4): encode the training set once with the frozen autoencoder, then fit
    the latent DDIM to those codes. The output checkpoint holds both, so sample.py needs only it."""
    if not args.ckpt:
        cli.usage_error("--model latent needs --ckpt AUTOENCODER.pt (a diffae or pdae checkpoint)")
    ck = load_or_fail(args.ckpt, "--ckpt")
    if ck["kind"] not in ("diffae", "pdae") or ck["config"].get("pdae", {}).get("condition") == "label":
        cli.usage_error(f"{args.ckpt} is a {ck['kind']} checkpoint without an image encoder; the latent DDIM "
                        f"needs an autoencoder (diffae or pdae)")
    run, device = latent_run(args, ck), cli.pick_device(args.device)
    with RunFolder(run.out):
        z_all = encode_all(checkpoint.build(ck).to(device), dataset(run, "train", run.n_train), device, args.workers or 0)
        # PDAE's latent sampler clamps its start and clips z0 each step, on the autoencoder's grid
        latent, ema, took = fit_latent(run, z_all.to(device), args.log_every, autocast_dtype(device, args.amp),
                                       clip=ck["kind"] == "pdae", grid=checkpoint.diffusion(ck).grid)
        path = os.path.join(run.out, "ckpt.pt")
        checkpoint.save(path, with_latent(ck, latent, ema, run, args.ckpt))
    print(f"done: {took}. {path} holds the autoencoder and its latent DDIM.\n"
          f"next: python sample.py --ckpt {path} sample   (or manipulate, conditional, eval)")
    return 0


def fit_latent(run, z_all, log_every, amp_dtype=None, clip=False, grid="diffae"):
    """The latent DDIM's loop: Diff-AE Eq. 9 (L1 on eps) over random codes, AdamW (Table 6), EMA."""
    hp, device = run.hp, z_all.device
    torch.manual_seed(run.seed)
    cfg = LatentNetConfig(z_dim=z_all.shape[1], hidden=hp["hidden"], num_layers=hp["num_layers"])
    latent = LatentDDIM(cfg, clip=clip, grid=grid).to(device)
    latent.set_stats(z_all)
    ema = EMA(latent, hp["ema"])
    opt = torch.optim.AdamW(latent.net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"], fused=True)
    print(f"latent DDIM: {sum(q.numel() for q in latent.parameters()) / 1e6:.2f}M parameters, batch {hp['batch_size']} x "
          f"{run.steps} steps, {device}, {'float32' if amp_dtype is None else str(amp_dtype)[6:] + ' autocast'}; "
          f"run folder {run.out}", flush=True)
    progress = Progress(run.out, run.steps, 0, hp["batch_size"], log_every, label="latent step", unit="codes")
    for step in range(1, run.steps + 1):
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
    progress.close()
    return latent, ema, progress.summary(run.steps)


def with_latent(ck, latent, ema, run, source):
    """One file: the autoencoder as it was, plus the latent DDIM under "latent.*"."""
    new = dict(ck)
    new["config"] = dict(ck["config"], latent=latent.config)
    new["config"]["latent_train"] = dict(preset=run.preset, hparams=run.hp, steps=run.steps, source=os.path.abspath(source))
    for key, src in (("ema", ema.state), ("model", latent.state_dict())):
        base = {k: v for k, v in (ck.get(key) or ck["model"]).items() if not k.startswith("latent.")}
        new[key] = dict(base, **{f"latent.{k}": v.detach().cpu() for k, v in src.items()})
    return new


if __name__ == "__main__":
    sys.exit(main())
