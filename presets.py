"""Presets: the papers' Table 5 and 6 as written, the CPU presets, and the rules that pick a preset
for a run and resume one.

A preset is a plain dict of hyper-parameters; "images" is its training budget, and a run takes
images / batch_size steps unless --steps says otherwise. `Run` is everything a training run is,
resolved once from the command line (`fresh_run`), from a checkpoint (`resumed_run`), or from an
autoencoder for the latent DDIM (`latent_run`). The reasons behind the CPU presets' departures
from the papers are one line each here; their measurements are in docs/RESULTS.md.
"""
import math
import os
from dataclasses import dataclass

import cli
import pdae
from encoder import EncoderConfig, PDAEEncoderConfig
from unet import UNetConfig

# --- Diff-AE Table 5: the autoencoder and the DDIM baseline ------------------------------------
# grad_clip 1 is the official Diff-AE trainer's.
PAPER = dict(lr=1e-4, ema=0.9999, dropout=0.1, embed_dim=512, z_dim=512, num_res_blocks=2, attn_res=(16,),
             grad_clip=1.0)
PRESETS = {
    "celeba64":   dict(PAPER, res=64, batch_size=128, ch=64, ch_mult=(1, 2, 4, 8), enc_ch_mult=(1, 2, 4, 8, 8), images=72_000_000),
    "ffhq64":     dict(PAPER, res=64, batch_size=128, ch=64, ch_mult=(1, 2, 4, 8), enc_ch_mult=(1, 2, 4, 8, 8), images=48_000_000),
    "ffhq128":    dict(PAPER, res=128, batch_size=128, ch=128, ch_mult=(1, 1, 2, 3, 4), enc_ch_mult=(1, 1, 2, 3, 4, 4), images=130_000_000),
    "horse128":   dict(PAPER, res=128, batch_size=128, ch=128, ch_mult=(1, 1, 2, 3, 4), enc_ch_mult=(1, 1, 2, 3, 4, 4), images=130_000_000),
    "bedroom128": dict(PAPER, res=128, batch_size=128, ch=128, ch_mult=(1, 1, 2, 3, 4), enc_ch_mult=(1, 1, 2, 3, 4, 4), images=120_000_000),
    "ffhq256":    dict(PAPER, res=256, batch_size=64, ch=128, ch_mult=(1, 1, 2, 2, 4, 4), enc_ch_mult=(1, 1, 2, 2, 4, 4, 4), images=90_000_000),
    # --- CPU presets: toy32 is sized to a class period on 2 cores, tiny16 to a minute ---
    # images: what fits in the class period with bf16 autocast; images_float32 where the CPU has no native bf16.
    # norm_groups 8: 32 groups leave too few channels per group at these widths (nn.normalization).
    # input_skip: the network predicts eps's residual past its closed-form share of x_t (unet.UNet).
    # t_weights "snr" with t_gamma -0.3 (Diff-AE only): the weight grows with t, so the late steps, where
    #   z_sem alone decides the image, carry most of the loss and the encoder learns from them.
    # t_floor 0.03 (Diff-AE only): 3% of the uniform weight on every t, so the small-t steps, which remove
    #   the last of the noise, learn to: without it random-x_T decodings are grainier than the data.
    "toy32":  dict(res=32, batch_size=32, lr=6e-4, ema=0.995, dropout=0.0, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                   attn_res=(8,), enc_ch_mult=(1, 2, 2, 4), embed_dim=128, z_dim=128, norm_groups=8, images=96_000,
                   images_float32=48_000, input_skip=True, t_weights="snr", t_gamma=-0.3, t_floor=0.03, grad_clip=1.0),
    "tiny16": dict(res=16, batch_size=16, lr=2e-4, ema=0.98, dropout=0.0, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                   attn_res=(), enc_ch_mult=(1, 2, 2), embed_dim=64, z_dim=32, norm_groups=8, images=3_200, grad_clip=1.0),
}
PAPER_BY_RES = {64: "ffhq64", 128: "ffhq128", 256: "ffhq256"}
CPU_PRESETS = ("toy32", "tiny16")

# --- PDAE on a paper preset: the official PDAE trainer's settings ------------------------------
# It does not clip gradients. Its budgets come from the released models' names ("FFHQ128-130M-z512-64M":
# 64M images of PDAE training); the others take half of Diff-AE's (PDAE §4.1). The CPU presets keep their
# own budget and clip, which their larger lr needs.
PDAE_HP = dict(grad_clip=None)
PDAE_IMAGES = {"ffhq128": 64_000_000, "horse128": 64_000_000, "bedroom128": 70_000_000, "celeba64": 38_000_000}
PDAE_ENC_MULT = {64: (1, 2, 2, 2), 128: (1, 2, 4, 4, 4), 256: (1, 2, 4, 4, 4, 4)}  # the official encoders' widths

# --- Diff-AE Table 6: the latent DDIM, keyed by the autoencoder's preset ("images" counts codes) ---
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

# Command-line options a preset's value may be overridden by, and the options that shape what a run
# is: --resume continues the run as recorded and refuses a different value of any of these.
OVERRIDES = ("batch_size", "lr", "ema", "t_weights", "t_gamma", "t_floor", "z_dim")
RECORDED = ("model", "preset", "data", "data_dir", "res", "n_train", "seed", "pretrained", "pdae_cond",
            "input_skip") + OVERRIDES
RENAMED_WEIGHTS = {"pdae": "snr"}  # checkpoints written before the weighting was named for what it does


@dataclass
class Run:
    """Everything a training run is, resolved once from the command line (or a checkpoint)."""
    model: str          # what is trained: ddim | diffae | pdae | latent
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


def fresh_run(args, amp_dtype):
    """A new run: the preset, then the command line's overrides. amp_dtype: the run's autocast (None: float32)."""
    data_name, model = args.data or "toyfaces", args.model or "diffae"
    preset = pick_preset(args.preset, data_name, args.res)
    hp = dict(PRESETS[preset])
    if model == "pdae" and preset not in CPU_PRESETS:
        hp.update(PDAE_HP, images=PDAE_IMAGES.get(preset, hp["images"] // 2))
    hp.update({k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None})
    if args.input_skip:
        hp["input_skip"] = True
    for k in ("t_gamma", "t_floor"):
        if getattr(args, k) is not None and (model == "pdae" or hp.get("t_weights") != "snr"):
            cli.usage_error(f"--{k.replace('_', '-')} shapes --t-weights snr (ddim and diffae); PDAE's own lambda_t "
                            f"keeps gamma {pdae.GAMMA}")
        if model != "diffae" and getattr(args, k) is None:
            hp.pop(k, None)  # the preset's shape is there to teach z_sem; the DDIM baseline keeps PDAE's
    fp32_images = hp.pop("images_float32", None)
    if fp32_images and amp_dtype is None:
        hp["images"] = fp32_images
    res = args.res or hp["res"]
    check_res(res, hp, model)
    out = args.out or os.path.join("runs", f"{model}-{data_name}{res}")
    return Run(model, preset, hp, data_name, args.data_dir, res, args.seed or 0, out,
               args.steps or max(1, hp["images"] // hp["batch_size"]), args.n_train, args.pretrained, args.pdae_cond)


def check_res(res, hp, model):
    """The UNet and the encoder halve the image once per level: res must survive every halving."""
    levels = max(len(hp["ch_mult"]), len(hp["enc_ch_mult"]) if model == "diffae" else 0) - 1
    if res < 2 ** levels * 2 or res % 2 ** levels:
        cli.usage_error(f"--res {res}: this preset halves the image {levels} times; use a multiple of "
                        f"{2 ** levels} of at least {2 ** (levels + 1)} (e.g. {hp['res']})")


def resumed_run(args, ck, path):
    """The run a checkpoint records, continued: only --steps (the new total) and --out may change it."""
    tc = ck["config"]["train"]
    hp = dict(tc["hparams"])
    hp["t_weights"] = RENAMED_WEIGHTS.get(hp.get("t_weights"), hp.get("t_weights"))
    pc = ck["config"].get("pdae", {})
    recorded = dict(model=ck["kind"], preset=tc["preset"], data=tc["data"], data_dir=tc.get("data_dir"), res=tc["res"],
                    n_train=tc["n_train"], seed=tc["seed"], pretrained=pc.get("pretrained_path"),
                    pdae_cond=pc.get("condition", "image"), input_skip=hp.get("input_skip"),
                    t_gamma=hp.get("t_gamma", pdae.GAMMA), **{k: hp.get(k) for k in OVERRIDES if k != "t_gamma"})
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
    return Run(ck["kind"], tc["preset"], hp, tc["data"], tc.get("data_dir"), tc["res"], tc["seed"],
               out, steps, tc["n_train"], recorded["pretrained"], recorded["pdae_cond"])


def latent_run(args, ck, state=None):
    """The latent DDIM's run, from the autoencoder's record and the command line; with `state` (a stopped
    latent run being resumed), as that run recorded it, to --steps."""
    tc = ck["config"].get("train", {})
    res = tc.get("res") or ck["config"]["unet"]["res"]
    if state is not None:
        lt = ck["config"]["latent_train"]
        steps = args.steps or lt["steps"]
        if steps <= state["step"]:
            cli.usage_error(f"the latent run is at step {state['step']} already; pass --steps N > {state['step']} (the new total)")
        out = args.out or os.path.dirname(os.path.abspath(args.resume))
        return Run("latent", lt["preset"], dict(lt["hparams"]), lt["data"], lt.get("data_dir"), res, lt["seed"], out,
                   steps, lt.get("n_train"))
    preset = args.preset or tc.get("preset") or PAPER_BY_RES.get(res, "ffhq128")
    if preset not in LATENT_PRESETS:
        cli.usage_error(f"no latent DDIM preset {preset!r}; choose from {', '.join(LATENT_PRESETS)}")
    hp = dict(LATENT_PRESETS[preset])
    if ck["kind"] == "pdae":
        hp["lr"] = LATENT_PDAE_LR
    hp.update({k: getattr(args, k) for k in ("batch_size", "lr", "ema") if getattr(args, k) is not None})
    data_name = args.data or tc.get("data") or "toyfaces"
    out = args.out or os.path.join("runs", f"latent-{data_name}{res}")
    return Run("latent", preset, hp, data_name, args.data_dir or tc.get("data_dir"), res,
               tc.get("seed", 0) if args.seed is None else args.seed, out,
               args.steps or max(1, hp["images"] // hp["batch_size"]), args.n_train or tc.get("n_train"))


# --- from a preset to network configs ----------------------------------------------------------

def model_configs(model, p, res, diffusion):
    """The (UNetConfig, EncoderConfig or None) of a preset; the encoder only for Diff-AE."""
    groups = p.get("norm_groups", 32)
    skip = {"T": diffusion.T, "schedule": diffusion.schedule} if p.get("input_skip") else None
    unet = UNetConfig(res=res, ch=p["ch"], ch_mult=tuple(p["ch_mult"]), num_res_blocks=p["num_res_blocks"],
                      attn_res=tuple(p["attn_res"]), dropout=p["dropout"], embed_dim=p["embed_dim"],
                      cond_dim=p["z_dim"] if model == "diffae" else None, norm_groups=groups, input_skip=skip)
    if model != "diffae":
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
