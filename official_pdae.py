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
- trained-models/classifier/NAME/checkpoint.pt: the manipulation trainer's {"ema_classifier", ...}, a
  512-to-40 linear layer on z normalised by the inferred latents' mean and std: read_classifier() reads it.
Config paths are relative to that root. checkpoint.py reads the files (root(), companions());
this module only turns what was read into our checkpoint dict, reading the architecture from the
configs. checkpoint.py then checks every weight against the model the config describes. Every UNet
option of denoise_fn_config is imported (heads by count or by head_channel, either attention order,
any attention factors, multipliers and depths) except learn_sigma and dims (the official diffusion cannot
use them either) and num_class (a class-conditional DPM: our samplers pass no label), which are refused
in one line naming the option.

The official networks map one to one onto ours: the DPM is our UNet with the same key names; the
decoder (ShiftUNet) is our PDAE's frozen .unet plus the gradient estimator .G (label_emb ->
G.z_embed, shift_* -> G.*, emb_z_layers -> z_emb_layers); the encoder's nn.Sequential `encoder` is
our PDAEEncoder's `layers`; MLPSkipNet is our LatentNet. Every imported model samples on PDAE's
own DDIM grid (diffusion.py, grid="pdae"), and its latent DDIM with PDAE's clipping (clip=True).
"""
import os
from dataclasses import asdict

import torch

import official
from encoder import PDAEEncoderConfig
from latent_ddim import LatentNetConfig
from official import ConversionError
from nn import AttentionBlock, weights_sha256
from pdae import GradientEstimator
from unet import UNet, UNetConfig

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
    """An official config.yml as a dict of plain values, read as yaml.safe_load reads it. A syntax error, a
    tag safe loading refuses or an alias inside its own anchor (a recursive structure) is one ConversionError
    naming the file, the line and the key. PyYAML is optional: only this import needs it."""
    try:
        import yaml
    except ImportError:
        raise ConversionError(f"{where}: reading PDAE's config.yml needs PyYAML: pip install pyyaml") from None
    try:
        loader = yaml.SafeLoader(text)  # refuses control characters already
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_yaml_node(node, where, "", 0, set(), set())
            cfg = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = ", ".join(p for p in (e.context, e.problem) if p)
        raise ConversionError(f"{where}{at}: {problem}; expected YAML as the official code writes it") from None
    except yaml.YAMLError as e:  # its text spans lines: joined into one
        raise ConversionError(f"{where}: not a readable YAML file ({' '.join(str(e).split())})") from None
    except RecursionError:
        raise ConversionError(f"{where}: nested too deeply to be a config.yml") from None
    if not isinstance(cfg, dict):
        raise ConversionError(f"{where}: expected a YAML mapping (key: value lines), got {_shown(cfg)}")
    return cfg


def _check_yaml_node(node, where, key, line, open_ids, done_ids):
    """Refuse, by key and line, a tag yaml.safe_load cannot construct and an alias that contains itself;
    done_ids keeps shared aliases from being walked twice (an alias bomb would take exponential time)."""
    import yaml
    name = key or "the top level"
    if id(node) in open_ids:
        raise ConversionError(f"{where}, line {line}: {name} is an alias inside its own anchor (a recursive "
                              f"structure); expected plain values")
    if id(node) in done_ids:
        return
    if node.tag not in yaml.SafeLoader.yaml_constructors:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise ConversionError(f"{where}, line {node.start_mark.line + 1}: {name} has the tag {tag}, which is "
                              f"refused; expected plain values")
    open_ids.add(id(node))
    if node.id == "mapping":
        for k, v in node.value:
            label = k.value if k.id == "scalar" else "?"
            if k.tag != "tag:yaml.org,2002:merge":  # a `<<:` key is resolved by the loader, not constructed
                _check_yaml_node(k, where, f"{key}.{label}".lstrip("."), k.start_mark.line + 1, open_ids, done_ids)
            _check_yaml_node(v, where, f"{key}.{label}".lstrip("."), k.start_mark.line + 1, open_ids, done_ids)
    elif node.id == "sequence":
        for i, v in enumerate(node.value):
            _check_yaml_node(v, where, f"{key}[{i}]", v.start_mark.line + 1, open_ids, done_ids)
    open_ids.discard(id(node))
    done_ids.add(id(node))


# --- reading a config's values: every access names its key and the type it expects -----------------

REQUIRED = object()  # setting()'s default: the key must be there
KINDS = {  # the kinds setting() checks: (test, how a message names it)
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "dict": (lambda v: isinstance(v, dict), "a mapping (indented key: value lines)"),
    "ints": (lambda v: isinstance(v, list) and all(KINDS["int"][0](x) for x in v), "a list of integers"),
    # the official configs write some numbers as strings ("1e-4", "(0.9, 0.999)"), parsed by floats()
    "numbers": (lambda v: isinstance(v, (str, int, float, list)) and not isinstance(v, bool),
                "a number or a string of numbers such as '1e-4' or '(0.9, 0.999)'"),
    "any": (lambda v: True, "any value"),
}


def setting(cfg, key, kind, where, default=REQUIRED):
    """The value at the dotted `key` of a config.yml's dict, checked to be `kind` (a name in KINDS). A missing
    key gives `default` when one is given; otherwise, and for a value of another kind, one ConversionError
    names the file (where), the key and what is expected."""
    value = cfg
    for i, part in enumerate(key.split(".")):
        if not isinstance(value, dict):
            section = ".".join(key.split(".")[:i])
            raise ConversionError(f"{where}: {section} is {_shown(value)}; expected {KINDS['dict'][1]}")
        if part not in value:
            if default is not REQUIRED:
                return default
            raise ConversionError(f"{where}: lacks {key}; expected {KINDS[kind][1]} there")
        value = value[part]
    test, what = KINDS[kind]
    if kind == "ints" and isinstance(value, list) and not test(value):  # name the first item that is no integer
        i = next(i for i, v in enumerate(value) if not KINDS["int"][0](v))
        raise ConversionError(f"{where}: {key}[{i}] is {_shown(value[i])}; expected {what}")
    if not test(value):
        raise ConversionError(f"{where}: {key} is {_shown(value)}; expected {what}")
    return value


def numbers(cfg, key, where):
    """setting(cfg, key, 'numbers') as a list of floats, or None if the key is missing."""
    value = setting(cfg, key, "numbers", where, default=None)
    try:
        return None if value is None else floats(value)
    except (ValueError, TypeError):
        raise ConversionError(f"{where}: {key} is {_shown(value)}; expected {KINDS['numbers'][1]}") from None


def _shown(value):
    """A value for a message: scalars as written (clipped), containers by kind only (they may be huge or recursive)."""
    kinds = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "empty (null)"}
    kind = kinds.get(type(value), f"a {type(value).__name__}")
    if isinstance(value, (dict, list)) or value is None:
        return kind
    text = repr(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({kind})"


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
    # a path that is not a string would fail os.path.join with a TypeError: setting() names it instead
    return {name: os.path.normpath(os.path.join(base, setting(cfg, key, "str", config_path(path))))
            for name, key in keys.items()}


def config_path(source):
    """The config.yml beside an official checkpoint file, which every message about its config names."""
    return os.path.join(os.path.dirname(os.path.abspath(source)), "config.yml")


# --- the three conversions -----------------------------------------------------------------------

def convert_dpm(raw, cfg, source):
    """A pre-trained DPM (raw checkpoint dict + its config.yml dict) -> our 'ddim' checkpoint."""
    where = config_path(source)
    unet = unet_config(cfg, where)
    ck = _checkpoint("ddim", {"unet": asdict(unet), "encoder": None, "latent": None,
                              "diffusion": diffusion_config(cfg, where)}, cfg, source, raw)
    ck["ema"], ck["model"] = dict(raw["ema_denoise_fn"]), _raw(raw, "denoise_fn")
    return ck


def convert_autoencoder(raw, cfg, dpm_cfg, source, dpm_config):
    """A PDAE autoencoder (+ its config, the DPM's config and that config's path) -> our 'pdae' checkpoint."""
    where = config_path(source)
    unet = unet_config(dpm_cfg, dpm_config)
    check_shift_attention(unet, dpm_config)
    enc = encoder_config(cfg, unet.res, where)
    model = setting(cfg, "decoder_config.model", "str", where)
    z_dim = setting(cfg, "decoder_config.latent_dim", "int", where)
    if model not in DECODERS or z_dim != enc.z_dim:
        raise ConversionError(f"{where}: decoder_config model={model!r}, latent_dim={z_dim} is not implemented here "
                              f"(supported: a ShiftUNet, one of {', '.join(DECODERS)}, with the encoder's latent_dim "
                              f"{enc.z_dim})")
    dpm_checkpoint = os.path.join(os.path.dirname(dpm_config), "checkpoint.pt")  # recorded, not read
    ema = {**rename(raw["ema_encoder"], ENCODER_RULES), **rename(raw["ema_decoder"], DECODER_RULES)}
    frozen = {k[len("unet."):]: v for k, v in ema.items() if k.startswith("unet.")}
    config = {"unet": asdict(unet), "encoder": asdict(enc), "latent": None, "diffusion": diffusion_config(cfg, where),
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
    where = config_path(source)
    model = setting(cfg, "latent_denoise_fn_config.model", "str", where)
    if model not in LATENT_NETS:
        raise ConversionError(f"{where}: latent_denoise_fn_config.model={model!r} is not implemented "
                              f"here (supported: {', '.join(LATENT_NETS)}, all MLPSkipNet)")
    if not (isinstance(latents, dict) and "mean" in latents and "std" in latents):
        raise ConversionError(f"{source}: its inferred-latents file holds no 'mean' and 'std'")
    stats = {"latent.mean": latents["mean"].reshape(-1), "latent.std": latents["std"].reshape(-1)}
    ck = dict(autoencoder)
    ck["config"] = dict(autoencoder["config"], latent=latent_config(cfg, where))
    ck["config"]["train"] = dict(autoencoder["config"]["train"], latent_file=str(source))
    ck["ema"] = {**autoencoder["ema"], **rename(raw["ema_latent_denoise_fn"], LATENT_RULES), **stats}
    raw_latent = _raw(raw, "latent_denoise_fn")  # without it (or the raw autoencoder) only the EMA is imported
    ck["model"] = None if raw_latent is None or autoencoder.get("model") is None else \
        {**autoencoder["model"], **rename(raw_latent, LATENT_RULES), **stats}
    return ck


# --- configs -------------------------------------------------------------------------------------

def refuse_unsupported(cfg, where):
    """UNet options that cannot become a noise predictor of ours: fail with the option's name, never load silently."""
    rules = [  # (the official option, its kind, its default, whether we support a value, what we support)
        ("learn_sigma", "bool", False, lambda v: not v,
         "False (eps prediction: the official diffusion reads no learned variance either)"),
        ("num_class", "any", None, lambda v: v is None,
         "None (a class-conditional DPM: our UNet and samplers take no class label)"),
        ("dims", "int", 2, lambda v: v == 2, "2 (images)"),
        ("head_channel", "int", -1, lambda v: v == -1 or v > 0, "-1 (heads set by num_heads) or a positive int"),
    ]
    for name, kind, default, ok, supported in rules:
        value = setting(cfg, f"denoise_fn_config.{name}", kind, where, default)
        if not ok(value):
            raise ConversionError(f"{where}: official option denoise_fn_config.{name}={value!r} is not "
                                  f"implemented here (supported: {supported})")


def unet_config(dpm_cfg, where):
    """Our UNetConfig for the official UNet(**denoise_fn_config) trained at train_dataset_config.image_size."""
    fn = lambda key, kind, *default: setting(dpm_cfg, f"denoise_fn_config.{key}", kind, where, *default)
    refuse_unsupported(dpm_cfg, where)
    res, ch = setting(dpm_cfg, "train_dataset_config.image_size", "int", where), fn("base_channel", "int")
    factors = fn("attention_resolutions", "ints")  # official: downsampling factors
    if not all(f > 0 and res % f == 0 for f in factors):
        raise ConversionError(f"{where}: denoise_fn_config.attention_resolutions={factors} are not all factors of "
                              f"train_dataset_config.image_size={res}; expected the downsampling factors")
    mult, heads = tuple(fn("channel_multiplier", "ints")), fn("num_heads", "int")
    head_ch = fn("head_channel", "int", -1)
    if head_ch != -1:
        widths = {ch * m for level, m in enumerate(mult) if 2 ** level in factors} | {ch * mult[-1]}  # + the middle
        if any(w % head_ch for w in widths):
            raise ConversionError(f"{where}: official option denoise_fn_config.head_channel={head_ch} does not divide "
                                  f"the attention width {min(w for w in widths if w % head_ch)} (the official code "
                                  f"fails its assertion)")
        if len(widths) == 1:  # one width: heads by count say the same, also to G, which reads num_heads alone
            heads = widths.pop() // head_ch
    return UNetConfig(
        res=res, ch=ch, ch_mult=mult, num_res_blocks=fn("num_residual_blocks_of_a_block", "int"),
        attn_res=tuple(res // f for f in factors), dropout=float(fn("dropout", "float", 0.0)), embed_dim=4 * ch,
        cond_dim=None, num_heads=heads, norm_groups=32, in_ch=fn("input_channel", "int"),
        out_ch=fn("input_channel", "int"), head_ch=None if head_ch == -1 else head_ch,
        new_attention_order=fn("use_new_attention_order", "bool", False))


def check_shift_attention(unet, where):
    """The official ShiftUNet's shift blocks copy the UNet's attention settings. Our gradient estimator
    (pdae.GradientEstimator) builds its attention from num_heads alone: refuse a DPM whose decoder
    attention it would not mirror (several widths with head_channel, or the new attention order)."""
    def settings(blocks):
        return [(m.num_heads, m.new_order) for b in blocks for m in b.modules() if isinstance(m, AttentionBlock)]
    with torch.device("meta"):  # shapes only
        frozen, g = UNet(unet), GradientEstimator(unet, 1)
    if settings([frozen.middle_block, frozen.output_blocks]) != settings([g.middle_block, g.output_blocks]):
        cause = "use_new_attention_order=True" if unet.new_attention_order else \
            f"head_channel={unet.head_ch} (other heads at other attention widths)"
        raise ConversionError(f"{where}: a PDAE autoencoder on a DPM with official option denoise_fn_config.{cause} "
                              f"is not implemented here: our gradient estimator (pdae.GradientEstimator) builds "
                              f"its attention from num_heads alone")


def encoder_config(cfg, res, where):
    model = setting(cfg, "encoder_config.model", "str", where)
    if model not in ENCODERS:
        raise ConversionError(f"{where}: encoder_config.model={model!r} is not implemented here "
                              f"(supported: {', '.join(ENCODERS)})")
    enc_res, ch_mult = ENCODERS[model]
    if enc_res != res:
        raise ConversionError(f"{where}: {model} reads {enc_res}x{enc_res} images but its DPM was "
                              f"trained at {res}x{res}")
    return PDAEEncoderConfig(res=enc_res, ch=64, ch_mult=ch_mult, attn_res=(16,), num_heads=4,
                             z_dim=setting(cfg, "encoder_config.latent_dim", "int", where), norm_groups=32, in_ch=3)


def diffusion_config(cfg, where):
    """config['diffusion'] from diffusion_config: the official betas (linear 1e-4 .. 0.02 for any T, or cosine)."""
    T = setting(cfg, "diffusion_config.timesteps", "int", where)
    betas = setting(cfg, "diffusion_config.betas_type", "str", where)
    # our "linear" rescales its ends by 1000 / T; the official one does not, so they agree at T = 1000 only
    if not (betas == "cosine" or (betas == "linear" and T == 1000)):
        raise ConversionError(f"{where}: diffusion_config betas_type={betas!r} with timesteps={T} is not "
                              f"implemented here (supported: 'linear' with 1000 timesteps, 'cosine')")
    return {"T": T, "schedule": betas, "grid": "pdae"}


def latent_config(cfg, where):
    """LatentDDIM.config for MLPSkipNet: the official latent diffusion is fixed in its code (T = 1000,
    constant beta 0.008, normalised z) and samples with clipping on PDAE's grid."""
    lc = lambda key, kind, *default: setting(cfg, f"latent_denoise_fn_config.{key}", kind, where, *default)
    layers = lc("num_layers", "int")
    if layers < 2:  # the official MLPSkipNet's first layer is always a hidden one: its output would not be eps
        raise ConversionError(f"{where}: official option latent_denoise_fn_config.num_layers={layers} is not "
                              f"implemented here (supported: an int >= 2)")
    net = LatentNetConfig(z_dim=lc("input_channel", "int"), hidden=lc("model_channel", "int"), num_layers=layers,
                          skip_layers=tuple(range(1, layers)), time_emb_dim=lc("time_emb_channel", "int"),
                          num_time_layers=2, time_last_act=False, use_norm=lc("use_norm", "bool"),
                          condition_bias=1.0, dropout=float(lc("dropout", "float", 0.0)))
    return {"net": asdict(net), "T": 1000, "schedule": "const", "znormalize": True, "grid": "pdae", "clip": True}


def floats(text):
    """'(0.9, 0.999)' or '1e-4' as YAML gives them (strings) -> a list of floats, parsed without eval."""
    if isinstance(text, (int, float)):
        return [float(text)]
    return [float(s) for s in str(text).strip().strip("()[]").split(",") if s.strip()]


def _checkpoint(kind, config, cfg, source, raw):
    """Our checkpoint dict around `config`, with the training facts the official config records."""
    where = config_path(source)
    first = lambda values: values[0] if values else None
    # "autoencoder-NAME", "pre-trained-dpms-NAME", ...: the DPM and the autoencoder trained on it share NAME
    folder = os.path.dirname(os.path.abspath(source))
    name = f"{os.path.basename(os.path.dirname(folder))}-{os.path.basename(folder)}"
    config["train"] = {"source": "official", "format": "pdae", "file": str(source), "name": name,
                       "data": setting(cfg, "train_dataset_config.name", "str", where, "").lower() or None,
                       "res": config["unet"]["res"],
                       "batch_size": setting(cfg, "dataloader_config.train.batch_size", "int", where, None),
                       "lr": first(numbers(cfg, "optimizer_config.lr", where)),
                       "adam_betas": numbers(cfg, "optimizer_config.adam_betas", where),
                       "ema_decay": first(numbers(cfg, "runner_config.ema_decay", where))}
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


# --- the released manipulation classifier ----------------------------------------------------------

# Where the official sampler (sampler/manipulation.py) reads the latent statistics, relative to the root.
LATENTS_DEFAULT = os.path.join("trained-models", "latents", "celebahq.pt")


def read_classifier(path):
    """An official attribute classifier, PDAE's or Diff-AE's -> {"names", "weight", "bias", "mean", "std"}.

    PDAE's manipulation trainer saves {"ema_classifier", "classifier", ...}: the sampler uses ema_classifier,
    a 512-to-40 linear layer on z normalised by the inferred latents' mean and std. Those live in the
    inferred-latents file that the config.yml beside the checkpoint names (inferred_latents), or, without
    one, where the official sampler looks (trained-models/latents/celebahq.pt). A Diff-AE classifier goes
    to official.read_classifier. Anything malformed is one ConversionError naming the file.
    """
    raw = official.load_plain(path)
    if isinstance(raw, dict) and "state_dict" in raw and "hyper_parameters" in raw:
        return official.classifier_from(raw, path)
    ema = raw.get("ema_classifier") if isinstance(raw, dict) else None
    if not isinstance(ema, dict):
        raise ConversionError(f"{path}: not an official attribute classifier (expected PDAE's checkpoint with "
                              f"'ema_classifier', or Diff-AE's Lightning checkpoint with 'state_dict')")
    latents = latents_path(path)
    if not os.path.isfile(latents):
        raise ConversionError(f"{path}: its inferred latents (the mean and std of z) are expected at {latents!r}, "
                              f"which does not exist; keep the official trained-models/ folder as downloaded")
    stats = official.load_plain(latents)
    if not (isinstance(stats, dict) and isinstance(stats.get("mean"), torch.Tensor)
            and isinstance(stats.get("std"), torch.Tensor)):
        raise ConversionError(f"{latents}: the classifier's inferred-latents file holds no tensors 'mean' and 'std'")
    return official.checked_classifier(list(official.CELEBAHQ_ATTRIBUTES), ema.get("weight"), ema.get("bias"),
                                       stats["mean"].reshape(-1), stats["std"].reshape(-1), path)


def latents_path(path):
    """The inferred-latents file of a PDAE classifier: its config.yml's inferred_latents, else the sampler's default."""
    base = root(path)
    if base is None:
        raise ConversionError(f"{path}: not inside a trained-models/ folder, so its inferred latents (the mean and "
                              f"std of z) cannot be found; keep the official folders as downloaded")
    cfg_path = config_path(path)
    if not os.path.isfile(cfg_path):
        return os.path.join(base, LATENTS_DEFAULT)
    try:
        with open(cfg_path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ConversionError(f"{cfg_path}: cannot be read as UTF-8 text ({type(e).__name__})") from None
    cfg = parse_yaml(text, cfg_path)
    return os.path.normpath(os.path.join(base, setting(cfg, "inferred_latents", "str", cfg_path)))
