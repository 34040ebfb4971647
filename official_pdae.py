"""Import PDAE's released models (github.com/ckczzj/PDAE) into our checkpoint format.

The official code keeps each model as a folder with a checkpoint.pt and the config.yml it was
trained with, under one root (its repository) that holds `pre-trained-dpms/` and `trained-models/`:
- pre-trained-dpms/NAME/checkpoint.pt: {"ema_denoise_fn"} (or a whole training checkpoint); its
  config's denoise_fn_config holds the UNet's keyword arguments. Imported as kind "ddim".
- trained-models/autoencoder/NAME/checkpoint.pt: {"ema_encoder", "ema_decoder", ...}; its config
  names the encoder and decoder classes and points at the DPM's config, from which the decoder's
  frozen UNet is built. Imported as kind "pdae".
- trained-models/latent_denoise_fn/NAME/checkpoint.pt: {"ema_latent_denoise_fn", ...}; its config
  points at the autoencoder and at the inferred-latents file (the mean and std of z). Imported as
  kind "pdae" with the latent DDIM under latent.* and config["latent"].
Config paths are relative to that root. checkpoint.py reads the files (root(), companions());
this module only turns what was read into our checkpoint dict, reading the architecture from the
configs. checkpoint.py then checks every weight against the model the config describes.

The official networks map one to one onto ours: the DPM is our UNet with the same key names; the
decoder (ShiftUNet) is our PDAE's frozen .unet plus the gradient estimator .G (label_emb ->
G.z_embed, shift_* -> G.*, emb_z_layers -> z_emb_layers); the encoder's nn.Sequential `encoder` is
our PDAEEncoder's `layers`; MLPSkipNet is our LatentNet. Every imported model samples on PDAE's
own DDIM grid (diffusion.py, grid="pdae"), and its latent DDIM with PDAE's clipping (clip=True).
"""
import os
from dataclasses import asdict

from encoder import PDAEEncoderConfig
from latent_ddim import LatentNetConfig
from official import ConversionError
from pdae import weights_sha256
from unet import UNetConfig

FOLDERS = ("pre-trained-dpms", "trained-models")

# The official encoder classes: each a fixed layout (only latent_dim is configurable), as
# (image size, channel multipliers of its stride-2 convs on 64 channels); attention at 16 x 16, 4 heads.
ENCODERS = {"FFHQEncoder": (128, (1, 2, 4, 4, 4)), "CELEBAHQEncoder": (128, (1, 2, 4, 4, 4)),
            "BEDROOMEncoder": (128, (1, 2, 4, 4, 4)), "HORSEEncoder": (128, (1, 2, 4, 4, 4)),
            "CELEBA64Encoder": (64, (1, 2, 2, 2))}
DECODERS = ("FFHQDecoder", "CELEBAHQDecoder", "BEDROOMDecoder", "HORSEDecoder", "CELEBA64Decoder")  # all ShiftUNet
LATENT_NETS = ("FFHQLatentDenoiseFn", "CELEBA64LatentDenoiseFn", "HORSELatentDenoiseFn",
               "BEDROOMLatentDenoiseFn")  # all MLPSkipNet

# (official state-dict prefix, ours), first match wins, per official state dict.
DPM_RULES = (("", ""),)
ENCODER_RULES = (("encoder.", "encoder.layers."),)
DECODER_RULES = (("label_emb.", "G.z_embed."), ("shift_middle_block.", "G.middle_block."),
                 ("shift_output_blocks.", "G.output_blocks."), ("shift_out.", "G.out."), ("", "unet."))
LATENT_RULES = (("", "latent.net."),)
GROUPS = {"ddim": (("denoise_fn", DPM_RULES),),  # the state dict's name without "ema_", and its rules
          "pdae": (("encoder", ENCODER_RULES), ("decoder", DECODER_RULES), ("latent_denoise_fn", LATENT_RULES))}


# --- reading the official layout ---------------------------------------------------------------

def parse_yaml(text, where):
    """An official config.yml as a dict. PyYAML is optional: only this import needs it."""
    try:
        import yaml
    except ImportError:
        raise ConversionError(f"{where}: reading PDAE's config.yml needs PyYAML: pip install pyyaml") from None
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConversionError(f"{where}: not a readable YAML file ({e})") from e
    if not isinstance(cfg, dict):
        raise ConversionError(f"{where}: expected a YAML mapping, got {type(cfg).__name__}")
    return cfg


def role(raw):
    """Which official PDAE file a loaded dict is: 'latent', 'autoencoder', 'dpm', or None."""
    if not isinstance(raw, dict):
        return None
    if isinstance(raw.get("ema_latent_denoise_fn"), dict):
        return "latent"
    if isinstance(raw.get("ema_encoder"), dict) and isinstance(raw.get("ema_decoder"), dict):
        return "autoencoder"
    if isinstance(raw.get("ema_denoise_fn"), dict):
        return "dpm"
    return None


def root(path):
    """The folder that holds pre-trained-dpms/ and trained-models/: the nearest ancestor of path with one of them."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in FOLDERS:
            return os.sep.join(parts[:i]) or os.sep
    return None


def companions(kind, cfg, path):
    """The other files a PDAE file's config points at: {name: absolute path}, resolved against root(path)."""
    keys = {"dpm": {}, "autoencoder": {"dpm_config": "trained_ddpm_config"},
            "latent": {"autoencoder": "trained_representation_learning_checkpoint", "latents": "inferred_latents"}}[kind]
    base = root(path)
    if keys and base is None:
        raise ConversionError(f"{path}: not inside a pre-trained-dpms/ or trained-models/ folder, so the paths its "
                              f"config.yml names cannot be resolved; keep the official folders as downloaded")
    out = {}
    for name, key in keys.items():
        if not isinstance(cfg.get(key), str):
            raise ConversionError(f"{path}: its config.yml lacks {key!r} (the path of its {name.replace('_', ' ')})")
        out[name] = os.path.normpath(os.path.join(base, cfg[key]))
    return out


# --- the three conversions -----------------------------------------------------------------------

def convert_dpm(raw, cfg, source):
    """A pre-trained DPM (raw checkpoint dict + its config.yml dict) -> our 'ddim' checkpoint."""
    unet = unet_config(cfg, source)
    ck = _checkpoint("ddim", {"unet": asdict(unet), "encoder": None, "latent": None,
                              "diffusion": diffusion_config(cfg, source)}, cfg, source, raw)
    ck["ema"], ck["model"] = dict(raw["ema_denoise_fn"]), _raw(raw, "denoise_fn")
    return ck


def convert_autoencoder(raw, cfg, dpm_cfg, source, dpm_checkpoint):
    """A PDAE autoencoder (+ its config and the DPM's config) -> our 'pdae' checkpoint."""
    unet = unet_config(dpm_cfg, source)
    enc = encoder_config(cfg, unet.res, source)
    dec = _section(cfg, "decoder_config", source)
    if dec.get("model") not in DECODERS or int(dec.get("latent_dim", -1)) != enc.z_dim:
        raise ConversionError(f"{source}: decoder_config {dec} is not implemented here (supported: a ShiftUNet, "
                              f"one of {', '.join(DECODERS)}, with the encoder's latent_dim {enc.z_dim})")
    ema = {**rename(raw["ema_encoder"], ENCODER_RULES), **rename(raw["ema_decoder"], DECODER_RULES)}
    frozen = {k[len("unet."):]: v for k, v in ema.items() if k.startswith("unet.")}
    config = {"unet": asdict(unet), "encoder": asdict(enc), "latent": None, "diffusion": diffusion_config(cfg, source),
              "pdae": {"condition": "image", "gamma": 0.1,  # the official loss weight's gamma is fixed in its code
                       "pretrained_path": dpm_checkpoint, "pretrained_sha256": weights_sha256(frozen)}}
    ck = _checkpoint("pdae", config, cfg, source, raw)
    ck["ema"] = ema
    if isinstance(raw.get("encoder"), dict) and isinstance(raw.get("decoder"), dict):
        ck["model"] = {**rename(raw["encoder"], ENCODER_RULES), **rename(raw["decoder"], DECODER_RULES)}
    return ck


def convert_latent(raw, cfg, autoencoder, latents, source):
    """A latent DPM (+ its config, our import of its autoencoder, the inferred-latents dict) -> our 'pdae'
    checkpoint with config['latent'] and the latent DDIM's weights under latent.*."""
    lc = _section(cfg, "latent_denoise_fn_config", source)
    if lc.get("model") not in LATENT_NETS:
        raise ConversionError(f"{source}: latent_denoise_fn_config.model={lc.get('model')!r} is not implemented "
                              f"here (supported: {', '.join(LATENT_NETS)}, all MLPSkipNet)")
    if not (isinstance(latents, dict) and "mean" in latents and "std" in latents):
        raise ConversionError(f"{source}: its inferred-latents file holds no 'mean' and 'std'")
    stats = {"latent.mean": latents["mean"].reshape(-1), "latent.std": latents["std"].reshape(-1)}
    ck = dict(autoencoder)
    ck["config"] = dict(autoencoder["config"], latent=latent_config(lc))
    ck["config"]["train"] = dict(autoencoder["config"]["train"], latent_file=str(source))
    ck["ema"] = {**autoencoder["ema"], **rename(raw["ema_latent_denoise_fn"], LATENT_RULES), **stats}
    raw_latent = _raw(raw, "latent_denoise_fn")  # without it (or the raw autoencoder) only the EMA is imported
    ck["model"] = None if raw_latent is None or autoencoder.get("model") is None else \
        {**autoencoder["model"], **rename(raw_latent, LATENT_RULES), **stats}
    return ck


# --- configs -------------------------------------------------------------------------------------

def _section(cfg, key, source):
    if not isinstance(cfg.get(key), dict):
        raise ConversionError(f"{source}: its config.yml lacks the section {key!r}")
    return cfg[key]


def refuse_unsupported(fn, source):
    """UNet options our networks do not implement: fail with the option's name, never load silently."""
    rules = [  # (the official option, its value, whether we support it, what we support)
        ("learn_sigma", fn.get("learn_sigma", False), lambda v: not v, "False (eps prediction only)"),
        ("num_class", fn.get("num_class"), lambda v: v is None, "None (unconditional)"),
        ("dims", fn.get("dims", 2), lambda v: v == 2, "2"),
        ("use_new_attention_order", fn.get("use_new_attention_order", False), lambda v: not v, "False"),
        ("head_channel", fn.get("head_channel", -1), lambda v: v == -1, "-1 (heads set by num_heads)"),
    ]
    for name, value, ok, supported in rules:
        if not ok(value):
            raise ConversionError(f"{source}: official option denoise_fn_config.{name}={value!r} is not "
                                  f"implemented here (supported: {supported})")


def unet_config(dpm_cfg, source):
    """Our UNetConfig for the official UNet(**denoise_fn_config) trained at train_dataset_config.image_size."""
    fn = _section(dpm_cfg, "denoise_fn_config", source)
    refuse_unsupported(fn, source)
    res = int(_section(dpm_cfg, "train_dataset_config", source)["image_size"])
    ch = int(fn["base_channel"])
    return UNetConfig(
        res=res, ch=ch, ch_mult=tuple(int(m) for m in fn["channel_multiplier"]),
        num_res_blocks=int(fn["num_residual_blocks_of_a_block"]),
        attn_res=tuple(res // int(ds) for ds in fn["attention_resolutions"]),  # official: downsampling factors
        dropout=float(fn.get("dropout", 0.0)), embed_dim=4 * ch, cond_dim=None, num_heads=int(fn["num_heads"]),
        norm_groups=32, in_ch=int(fn["input_channel"]), out_ch=int(fn["input_channel"]))


def encoder_config(cfg, res, source):
    ec = _section(cfg, "encoder_config", source)
    if ec.get("model") not in ENCODERS:
        raise ConversionError(f"{source}: encoder_config.model={ec.get('model')!r} is not implemented here "
                              f"(supported: {', '.join(ENCODERS)})")
    enc_res, ch_mult = ENCODERS[ec["model"]]
    if enc_res != res:
        raise ConversionError(f"{source}: {ec['model']} reads {enc_res}x{enc_res} images but its DPM was "
                              f"trained at {res}x{res}")
    return PDAEEncoderConfig(res=enc_res, ch=64, ch_mult=ch_mult, attn_res=(16,), num_heads=4,
                             z_dim=int(ec["latent_dim"]), norm_groups=32, in_ch=3)


def diffusion_config(cfg, source):
    """config['diffusion'] from diffusion_config: the official betas (linear 1e-4 .. 0.02 for any T, or cosine)."""
    dc = _section(cfg, "diffusion_config", source)
    T, betas = int(dc["timesteps"]), dc.get("betas_type")
    # our "linear" rescales its ends by 1000 / T; the official one does not, so they agree at T = 1000 only
    if not (betas == "cosine" or (betas == "linear" and T == 1000)):
        raise ConversionError(f"{source}: diffusion_config betas_type={betas!r} with timesteps={T} is not "
                              f"implemented here (supported: 'linear' with 1000 timesteps, 'cosine')")
    return {"T": T, "schedule": betas, "grid": "pdae"}


def latent_config(lc):
    """LatentDDIM.config for MLPSkipNet: the official latent diffusion is fixed in its code (T = 1000,
    constant beta 0.008, normalised z) and samples with clipping on PDAE's grid."""
    layers = int(lc["num_layers"])
    net = LatentNetConfig(z_dim=int(lc["input_channel"]), hidden=int(lc["model_channel"]), num_layers=layers,
                          skip_layers=tuple(range(1, layers)), time_emb_dim=int(lc["time_emb_channel"]),
                          num_time_layers=2, time_last_act=False, use_norm=bool(lc["use_norm"]),
                          condition_bias=1.0, dropout=float(lc.get("dropout", 0.0)))
    return {"net": asdict(net), "T": 1000, "schedule": "const", "znormalize": True, "grid": "pdae", "clip": True}


def floats(text):
    """'(0.9, 0.999)' or '1e-4' as YAML gives them (strings) -> a list of floats, parsed without eval."""
    if isinstance(text, (int, float)):
        return [float(text)]
    return [float(s) for s in str(text).strip().strip("()[]").split(",") if s.strip()]


def _checkpoint(kind, config, cfg, source, raw):
    """Our checkpoint dict around `config`, with the training facts the official config records."""
    data = cfg.get("train_dataset_config") or {}
    opt, run = cfg.get("optimizer_config") or {}, cfg.get("runner_config") or {}
    # "autoencoder-NAME", "pre-trained-dpms-NAME", ...: the DPM and the autoencoder trained on it share NAME
    folder = os.path.dirname(os.path.abspath(source))
    name = f"{os.path.basename(os.path.dirname(folder))}-{os.path.basename(folder)}"
    config["train"] = {"source": "official", "format": "pdae", "file": str(source), "name": name,
                       "data": str(data.get("name", "")).lower() or None, "res": config["unet"]["res"],
                       "batch_size": (cfg.get("dataloader_config") or {}).get("train", {}).get("batch_size"),
                       "lr": floats(opt["lr"])[0] if "lr" in opt else None,
                       "adam_betas": floats(opt["adam_betas"]) if "adam_betas" in opt else None,
                       "ema_decay": floats(run["ema_decay"])[0] if "ema_decay" in run else None}
    step = raw.get("step")
    # images_seen is unknown: the official batch size is per process and the number of processes is not saved
    return {"kind": kind, "config": config, "model": None, "ema": None, "optimizer": None,
            "step": int(step) if isinstance(step, int) else 0, "images_seen": None, "rng": None}


# --- weight names --------------------------------------------------------------------------------

def _raw(raw, name):
    return dict(raw[name]) if isinstance(raw.get(name), dict) else None


def rename(sd, rules):
    """An official state dict with our names (the first rule whose official prefix matches)."""
    out = {}
    for k, v in sd.items():
        old, new = next((o, n) for o, n in rules if k.startswith(o))
        ours = new + k[len(old):]
        out[ours.replace(".emb_z_layers.", ".z_emb_layers.") if ours.startswith("G.") else ours] = v
    return out


def file_key(ck, which, k):
    """Our weight name k (of ck[which], 'ema' or 'model') as the official files spell it, for messages."""
    if k in ("latent.mean", "latent.std"):
        return f"{k.split('.')[1]!r} of the inferred-latents file"
    for group, rules in GROUPS[ck["kind"]]:
        for old, new in rules:
            if k.startswith(new):
                name = old + k[len(new):]
                if group == "decoder":
                    name = name.replace(".z_emb_layers.", ".emb_z_layers.")
                return f"{name!r} of {'ema_' if which == 'ema' else ''}{group}"
    return f"{k!r} (our name)"
