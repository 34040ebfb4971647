"""Import the released Diff-AE checkpoints (github.com/phizaz/diffae) into our checkpoint format.

The official code saves a PyTorch Lightning checkpoint: {"state_dict": {"model.*", "ema_model.*",
"x_T", "conds_mean", "conds_std"}, "hyper_parameters": the TrainConfig as a plain dict, "global_step"}.
Its networks already share our module names, so importing is two steps:
1. read the architecture from the *config* (model_conf, or the net_* keys it was made from);
2. rename prefixes (ema_model.time_embed.time_embed.* -> unet.time_embed.*, latent_net.* -> latent.net.*).
This module is a pure converter (a dict in, our checkpoint dict out): checkpoint.py then builds the
model the config describes and checks every weight's shape against it, naming a disagreeing weight
by its name in the official file (file_key), so that a config we misread fails loudly at load time
instead of as wrong images later.

Every architecture the official config classes can build is imported: heads by count or by channels
per head, attention at any resolutions, resampling inside ResBlocks or by conv / pooling, any channel
multipliers and depths, the latent MLP's options. What the official code itself cannot run (num_classes,
other poolings, 1-D or 3-D convs) and the skip layouts our UNet lacks (num_input_res_blocks,
input_channel_mult) are refused in one line naming the option.

The official config is saved through a JSON filter that drops enums, so some choices (the latent
net's activation and last_act, the model's mean type) are not recorded; unless a file states them
(as strings, e.g. "relu"), they are assumed to be the paper's and the only ones the official templates
use: SiLU, no output activation, eps prediction.

read_classifier() reads the released attribute classifiers (experiment_classifier.py's ClsModel).
"""
import os
from dataclasses import asdict

import torch

from encoder import EncoderConfig
from latent_ddim import ACTIVATIONS, LatentNetConfig
from unet import UNetConfig

# The official TrainConfig defaults (config.py) for the keys read below: older or hand-written
# checkpoints may lack some of them, and the official code would then have used these.
TRAIN_DEFAULTS = {
    "img_size": 64, "T": 1000, "beta_scheduler": "linear", "latent_beta_scheduler": "linear",
    "latent_znormalize": False, "latent_clip_sample": False,
    "beatgans_rescale_timesteps": False, "latent_rescale_timesteps": False,
    "dropout": 0.1, "style_ch": 512, "batch_size": 16, "accum_batches": 1,
    "net_attn": None, "net_beatgans_attn_head": 1, "net_beatgans_embed_channels": 512,
    "net_resblock_updown": True, "net_enc_pool": "adaptivenonzero", "net_beatgans_resnet_two_cond": False,
    "net_beatgans_resnet_cond_channels": None, "net_ch_mult": None, "net_ch": 64, "net_enc_attn": None,
    "net_enc_num_res_blocks": 2, "net_enc_channel_mult": None, "net_autoenc_stochastic": False,
    "net_num_res_blocks": 2, "net_num_input_res_blocks": None,
    "net_latent_condition_bias": 0, "net_latent_dropout": 0, "net_latent_layers": None,
    "net_latent_num_hid_channels": 1024, "net_latent_num_time_layers": 2, "net_latent_skip_layers": None,
    "net_latent_time_emb_channels": 64, "net_latent_use_norm": False, "net_latent_time_last_act": False,
    "net_latent_activation": "silu", "net_latent_net_last_act": "none",  # enums: the saved config drops them
}

# Official beta_scheduler names -> ours (diffusion.beta_schedule).
SCHEDULES = {"linear": "linear", "cosine": "cosine", "const0.008": "const"}

# Official state-dict prefixes -> ours, first match wins (the Diff-AE model nests the UNet's time MLP).
AUTOENC_PREFIXES = (("encoder.", "encoder."), ("latent_net.", "latent.net."),
                    ("time_embed.time_embed.", "unet.time_embed."), ("", "unet."))
DDIM_PREFIXES = (("", ""),)


# CelebA-HQ's 40 attributes in the order of the official classifiers' outputs (dataset.py's id_to_cls;
# PDAE's sampler/manipulation.py lists the same).
CELEBAHQ_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young")


class ConversionError(Exception):
    """An official file that cannot become one of our checkpoints; checkpoint.py re-raises it as CheckpointError."""


def convert(raw, source=""):
    """An official Lightning checkpoint dict -> our checkpoint dict (see checkpoint.py)."""
    where = source or "official checkpoint"
    try:
        return _convert(raw, where, source)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a config of the wrong types or shape
        raise ConversionError(f"{where}: malformed official config ({type(e).__name__}: {e})") from e


def _convert(raw, where, source):
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict) \
            or not isinstance(raw.get("hyper_parameters"), dict):
        raise ConversionError(f"{where}: not an official Diff-AE checkpoint "
                              f"(needs dicts 'state_dict' and 'hyper_parameters')")
    sd, user_hp = raw["state_dict"], raw["hyper_parameters"]
    hp = {**TRAIN_DEFAULTS, **user_hp}
    if "classifier.weight" in sd:
        raise ConversionError(f"{where}: is an official attribute classifier (experiment_classifier.py), not a "
                              f"model: it is read by official.read_classifier (sample.py manipulate --classifier)")
    if not any(k.startswith("ema_model.") for k in sd):
        raise ConversionError(f"{where}: no 'ema_model.*' weights in its state_dict; is it a Diff-AE checkpoint?")

    mc = architecture(hp, user_hp, sd)
    autoenc = "enc_out_channels" in mc  # BeatGANsAutoencConfig; the DDIM baseline is a BeatGANsUNetConfig
    refuse_unsupported(hp, mc, autoenc, where)

    config = {"unet": asdict(unet_config(mc, autoenc)), "encoder": None, "latent": None,
              "diffusion": {"T": int(hp["T"]), "schedule": schedule(hp["beta_scheduler"], "beta_scheduler", where)},
              "train": {"source": "official", "file": str(source), "name": hp.get("name"),
                        "data": hp.get("data_name"), "res": int(hp["img_size"]), "batch_size": hp["batch_size"],
                        "lr": hp.get("lr"), "ema_decay": hp.get("ema_decay")}}
    if autoenc:
        config["encoder"] = asdict(encoder_config(mc))
        if mc.get("latent_net_conf"):
            config["latent"] = latent_config(mc["latent_net_conf"], hp, where)

    prefixes = AUTOENC_PREFIXES if autoenc else DDIM_PREFIXES
    ema, model = rename(sd, "ema_model.", prefixes), rename(sd, "model.", prefixes)
    if not autoenc and mc.get("resnet_two_cond"):  # the DDIM baseline never passes a cond: these layers are unused
        ema, model = (unused_cond_dropped(state) for state in (ema, model))
    if config["latent"] is not None:  # z statistics: the official (1, D) buffers, ours are (D,)
        D = config["latent"]["net"]["z_dim"]
        mean = sd["conds_mean"].reshape(-1) if "conds_mean" in sd else torch.zeros(D)
        std = sd["conds_std"].reshape(-1) if "conds_std" in sd else torch.ones(D)
        for state in (ema, model):
            if state:  # no raw weights in the file: only the EMA is imported
                state["latent.mean"], state["latent.std"] = mean, std

    step = int(raw.get("global_step", 0))
    ck = {"kind": "diffae" if autoenc else "ddim", "config": config, "model": model or None, "ema": ema,
          "optimizer": None, "step": step,
          "images_seen": step * int(hp["batch_size"]) * int(hp["accum_batches"]) if "global_step" in raw else None,
          "rng": None}
    return ck


# model_conf options that make_model_conf fixes whatever the TrainConfig says: only a saved model_conf
# (made by a modified make_model_conf, or by hand) can set them otherwise.
FIXED_BY_MAKE_MODEL_CONF = ("num_head_channels", "num_heads_upsample", "use_new_attention_order", "conv_resample",
                            "dims", "num_classes", "in_channels", "out_channels", "time_embed_channels",
                            "input_channel_mult")


def architecture(hp, user_hp, sd):
    """The official model_conf the file's networks were built with.

    The official LitModel builds its model from conf.make_model_conf(), afresh from the TrainConfig's
    net_* keys, so those are the truth. The saved model_conf is a snapshot from whenever a template last
    called make_model_conf, stale if the template set net_* keys afterwards: the released latent
    checkpoints record latent_net_conf None beside their latent net's weights. It still supplies the
    options make_model_conf fixes, and is the whole answer for a hand-written config without net_* keys.
    """
    saved = hp.get("model_conf") or {}
    if saved and "net_ch" not in user_hp:
        return saved
    mc = model_conf_from_train_conf(hp, sd)
    mc.update({k: saved[k] for k in FIXED_BY_MAKE_MODEL_CONF if k in saved})
    saved_latent = saved.get("latent_net_conf") or {}
    if mc.get("latent_net_conf"):  # enums the saver drops: kept where a file states them
        mc["latent_net_conf"].update({k: saved_latent[k] for k in ("activation", "last_act") if k in saved_latent})
    return mc


def model_conf_from_train_conf(hp, sd):
    """The official model_conf rebuilt from the TrainConfig's net_* keys (config.make_model_conf).

    This is what LitModel builds (see architecture); older checkpoints save no model_conf at all. The
    model name is an enum that the saved config drops, so whether there is an encoder (and a latent
    net) is read from which weights the checkpoint holds.
    """
    mc = {"attention_resolutions": hp["net_attn"], "channel_mult": hp["net_ch_mult"], "dropout": hp["dropout"],
          "embed_channels": hp["net_beatgans_embed_channels"], "image_size": hp["img_size"], "in_channels": 3,
          "model_channels": hp["net_ch"], "num_heads": hp["net_beatgans_attn_head"],
          "num_res_blocks": hp["net_num_res_blocks"], "num_input_res_blocks": hp["net_num_input_res_blocks"],
          "out_channels": 3, "resblock_updown": hp["net_resblock_updown"], "conv_resample": True,
          "resnet_two_cond": hp["net_beatgans_resnet_two_cond"], "num_head_channels": -1,
          "num_heads_upsample": -1, "use_new_attention_order": False}
    if any(k.startswith("ema_model.encoder.") for k in sd):
        mc.update({"enc_out_channels": hp["style_ch"], "enc_pool": hp["net_enc_pool"],
                   "enc_num_res_block": hp["net_enc_num_res_blocks"], "enc_channel_mult": hp["net_enc_channel_mult"],
                   "enc_attn_resolutions": hp["net_enc_attn"],
                   "resnet_cond_channels": hp["net_beatgans_resnet_cond_channels"], "latent_net_conf": None})
        if any(k.startswith("ema_model.latent_net.") for k in sd):
            mc["latent_net_conf"] = {
                "num_channels": hp["style_ch"], "skip_layers": hp["net_latent_skip_layers"],
                "num_hid_channels": hp["net_latent_num_hid_channels"], "num_layers": hp["net_latent_layers"],
                "num_time_emb_channels": hp["net_latent_time_emb_channels"], "use_norm": hp["net_latent_use_norm"],
                "condition_bias": hp["net_latent_condition_bias"], "dropout": hp["net_latent_dropout"],
                "num_time_layers": hp["net_latent_num_time_layers"], "time_last_act": hp["net_latent_time_last_act"],
                "activation": hp["net_latent_activation"], "last_act": hp["net_latent_net_last_act"]}
    return mc


def refuse_unsupported(hp, mc, autoenc, where):
    """Official options our networks cannot build (or the official code cannot run): fail with the option's
    name, never load silently. Everything else the official config classes express is imported."""
    g = mc.get
    mult, attn = g("channel_mult"), g("attention_resolutions")
    decoder_attn = mult is not None and attn is not None and \
        any(int(g("image_size")) // 2 ** level in attn for level in range(len(mult)))
    rules = [  # (the official option, its value, whether we support it, what we support)
        ("channel_mult", mult, lambda v: v is not None, "a list of multipliers"),
        ("attention_resolutions", attn, lambda v: v is not None, "a list of resolutions"),
        ("num_head_channels", g("num_head_channels", -1), lambda v: v == -1 or v > 0, "-1 or a positive int"),
        # the official UNet sets its num_heads_upsample only when it is -1: other values crash its decoder's attention
        ("num_heads_upsample", g("num_heads_upsample", -1), lambda v: v == -1 or not decoder_attn,
         "-1 (the official code builds no other value when the decoder has attention)"),
        ("num_classes", g("num_classes"), lambda v: v is None,
         "None (the official forward raises NotImplementedError for class labels)"),
        ("dims", g("dims", 2), lambda v: v == 2, "2 (images)"),
        ("out_channels", g("out_channels", 3), lambda v: v == g("in_channels", 3), "in_channels (eps prediction)"),
        ("num_input_res_blocks", g("num_input_res_blocks"), lambda v: v in (None, g("num_res_blocks")),
         "None (= num_res_blocks: our UNet pairs every decoder block with one skip)"),
        ("input_channel_mult", g("input_channel_mult"), lambda v: v is None or tuple(v) == tuple(mult or ()),
         "None (= channel_mult: our UNet pairs every decoder block with one skip)"),
        ("beatgans_rescale_timesteps", hp.get("beatgans_rescale_timesteps"),
         lambda v: not v or int(hp["T"]) == 1000, "False (or T = 1000)"),
    ]
    if autoenc:
        rules += [
            ("enc_pool", g("enc_pool"), lambda v: v == "adaptivenonzero",
             "'adaptivenonzero' (the official encoder raises NotImplementedError for the others)"),
            ("resnet_two_cond", g("resnet_two_cond"), lambda v: v is True,
             "True (the official autoencoder's forward raises NotImplementedError otherwise)"),
            ("enc_out_channels", g("enc_out_channels"),
             lambda v: v == (g("resnet_cond_channels") or g("embed_channels")),
             "resnet_cond_channels or embed_channels (z_sem feeds the ResBlocks directly; the official forward "
             "fails otherwise)"),
        ]
    if autoenc and g("latent_net_conf"):
        lc = g("latent_net_conf")
        rules += [
            ("latent_net_conf.activation", activation_name(lc.get("activation", "silu")),
             lambda v: v in ACTIVATIONS, ", ".join(ACTIVATIONS)),
            ("latent_net_conf.last_act", activation_name(lc.get("last_act", "none")),
             lambda v: v in ACTIVATIONS, ", ".join(ACTIVATIONS)),
            ("latent_net_conf.num_layers", lc.get("num_layers"), lambda v: v is not None and v >= 2,
             "an int >= 2 (hidden layers, then the output layer)"),
            ("latent_rescale_timesteps", hp.get("latent_rescale_timesteps"),
             lambda v: not v or int(hp["T"]) == 1000, "False (or T = 1000)"),
        ]
    for name, value, ok, supported in rules:
        if not ok(value):
            raise ConversionError(f"{where}: official option {name}={value!r} is not implemented here "
                                  f"(supported: {supported})")
    refuse_head_channels(mc, autoenc, where)


def refuse_head_channels(mc, autoenc, where):
    """num_head_channels must divide every attention width (the official AttentionBlock asserts it)."""
    hc = mc.get("num_head_channels", -1)
    if hc == -1:
        return
    res, ch = int(mc["image_size"]), int(mc["model_channels"])
    halves = [(mc["channel_mult"], mc["attention_resolutions"])]
    if autoenc:
        halves.append((mc.get("enc_channel_mult") or mc["channel_mult"],
                       mc.get("enc_attn_resolutions") or mc["attention_resolutions"]))
    for mult, attn in halves:
        widths = {ch * m for level, m in enumerate(mult) if res // 2 ** level in attn} | {ch * mult[-1]}
        bad = sorted(w for w in widths if w % hc)
        if bad:
            raise ConversionError(f"{where}: official option num_head_channels={hc} does not divide the attention "
                                  f"width {bad[0]} (the official code fails its assertion)")


def activation_name(value):
    """An official Activation as a name in ACTIVATIONS: 'silu', 'Activation.silu' or its enum value."""
    return str(getattr(value, "value", value)).lower().rsplit(".", 1)[-1]


def resample(mc):
    """Our UNetConfig.resample for the official resblock_updown and conv_resample."""
    if mc.get("resblock_updown", True):
        return "resblock"
    return "conv" if mc.get("conv_resample", True) else "pool"


def schedule(name, key, where):
    if name not in SCHEDULES:
        raise ConversionError(f"{where}: official {key}={name!r} is not implemented here "
                              f"(supported: {', '.join(map(repr, SCHEDULES))})")
    return SCHEDULES[name]


def head_channels(mc):
    return None if mc.get("num_head_channels", -1) == -1 else int(mc["num_head_channels"])


def unet_config(mc, autoenc):
    # The autoencoder replaces the UNet's time embedding by one of model_channels: time_embed_channels is unused there
    time_ch = None if autoenc or mc.get("time_embed_channels") is None else int(mc["time_embed_channels"])
    return UNetConfig(
        res=int(mc["image_size"]), ch=int(mc["model_channels"]), ch_mult=tuple(mc["channel_mult"]),
        num_res_blocks=int(mc["num_res_blocks"]), attn_res=tuple(mc["attention_resolutions"]),
        dropout=float(mc.get("dropout", 0.1)), embed_dim=int(mc["embed_channels"]),
        cond_dim=int(mc.get("resnet_cond_channels") or mc["embed_channels"]) if autoenc else None,
        num_heads=int(mc.get("num_heads", 1)), in_ch=int(mc.get("in_channels", 3)),
        out_ch=int(mc.get("out_channels", 3)), head_ch=head_channels(mc),
        new_attention_order=bool(mc.get("use_new_attention_order", False)), resample=resample(mc),
        time_embed_ch=time_ch)


def encoder_config(mc):
    """BeatGANsAutoencModel's encoder: its own ch. mult. and attention if given, else the UNet's; the UNet's
    heads, attention order and resampling."""
    return EncoderConfig(
        res=int(mc["image_size"]), ch=int(mc["model_channels"]),
        ch_mult=tuple(mc.get("enc_channel_mult") or mc["channel_mult"]),
        num_res_blocks=int(mc.get("enc_num_res_block", 2)),
        attn_res=tuple(mc.get("enc_attn_resolutions") or mc["attention_resolutions"]),
        z_dim=int(mc["enc_out_channels"]), num_heads=int(mc.get("num_heads", 1)), in_ch=int(mc.get("in_channels", 3)),
        head_ch=head_channels(mc), new_attention_order=bool(mc.get("use_new_attention_order", False)),
        resample=resample(mc))


def latent_config(lc, hp, where):
    """LatentDDIM.config for the official MLPSkipNet and its latent diffusion settings."""
    net = LatentNetConfig(
        z_dim=int(lc["num_channels"]), hidden=int(lc["num_hid_channels"]), num_layers=int(lc["num_layers"]),
        skip_layers=tuple(lc.get("skip_layers") or ()), time_emb_dim=int(lc.get("num_time_emb_channels", 64)),
        num_time_layers=int(lc.get("num_time_layers", 2)), time_last_act=bool(lc.get("time_last_act", False)),
        use_norm=bool(lc.get("use_norm", True)), condition_bias=float(lc.get("condition_bias", 1)),
        dropout=float(lc.get("dropout", 0)), activation=activation_name(lc.get("activation", "silu")),
        last_act=activation_name(lc.get("last_act", "none")))
    return {"net": asdict(net), "T": int(hp["T"]),
            "schedule": schedule(hp["latent_beta_scheduler"], "latent_beta_scheduler", where),
            "znormalize": bool(hp["latent_znormalize"])}


def unused_cond_dropped(state):
    """A DDIM baseline built with resnet_two_cond has z layers (cond_emb_layers) its forward never calls."""
    return {k: v for k, v in state.items() if ".cond_emb_layers." not in k}


def rename(sd, prefix, rules):
    """The weights under `prefix` ("ema_model." or "model."), with our names."""
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            rest = k[len(prefix):]
            old, new = next((o, n) for o, n in rules if rest.startswith(o))
            out[new + rest[len(old):]] = v
    return out


def file_key(ck, which, k):
    """Our weight name k (of ck[which], 'ema' or 'model') as the official file spells it, quoted, for messages."""
    if k in ("latent.mean", "latent.std"):
        return repr("conds_" + k.split(".")[1])
    rules = AUTOENC_PREFIXES if ck["kind"] == "diffae" else DDIM_PREFIXES
    old, new = next(((o, n) for o, n in rules if k.startswith(n)), ("", ""))
    return repr(("ema_model." if which == "ema" else "model.") + old + k[len(new):])


# --- the released attribute classifiers ------------------------------------------------------------

def read_classifier(path):
    """An official Diff-AE attribute classifier -> {"names", "weight", "bias", "mean", "std"} (see classifier_from).

    The file is experiment_classifier.py's Lightning checkpoint (ffhq128_autoenc_cls, ffhq256_autoenc_cls),
    read with weights_only=True; anything else is one ConversionError naming the file.
    """
    return classifier_from(load_plain(path), path)


def load_plain(path):
    """torch.load(path, weights_only=True) on the CPU, or one ConversionError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"no file at {path!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unsafe pickle, truncated, or not a torch file at all
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise ConversionError(f"{path!r} is not a torch file of plain tensors and types "
                              f"({type(e).__name__}: {first})") from None


def classifier_from(raw, where):
    """ClsModel's saved state: the linear layer `classifier` (the one the official manipulate notebook uses)
    on z_sem normalised by the buffers conds_mean and conds_std, each (1, D). Without those buffers
    (manipulate_znormalize off, the few-shot classifiers) it reads raw codes: mean 0, std 1."""
    sd = raw.get("state_dict") if isinstance(raw, dict) else None
    if not isinstance(sd, dict) or not isinstance(sd.get("classifier.weight"), torch.Tensor):
        raise ConversionError(f"{where}: not an official Diff-AE attribute classifier (expected a Lightning "
                              f"checkpoint whose state_dict holds 'classifier.weight')")
    weight = sd["classifier.weight"]
    hp = raw.get("hyper_parameters") if isinstance(raw.get("hyper_parameters"), dict) else {}
    D = weight.shape[-1]
    mean = sd.get("conds_mean", torch.zeros(1, D))
    std = sd.get("conds_std", torch.ones(1, D))
    flat = lambda v: v.reshape(-1) if isinstance(v, torch.Tensor) else v
    names = CELEBAHQ_ATTRIBUTES if len(weight) != 1 else (hp.get("manipulate_cls"),)  # few-shot: one class
    return checked_classifier(list(names), weight, sd.get("classifier.bias"), flat(mean), flat(std), where)


def checked_classifier(names, weight, bias, mean, std, where):
    """The classifier dict, after checking every part: weight (A, D) for A names, bias (A,), mean and std (D,),
    all finite floats, std positive. One ConversionError names the first part that is not."""
    parts = {"weight": weight, "bias": bias, "mean": mean, "std": std}
    for name, v in parts.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise ConversionError(f"{where}: the classifier's {name} is {type(v).__name__}, not a float tensor")
        if not bool(torch.isfinite(v).all()):
            raise ConversionError(f"{where}: the classifier's {name} holds NaN or Inf values")
    if weight.dim() != 2 or len(weight) != len(names) or not all(isinstance(n, str) for n in names):
        raise ConversionError(f"{where}: the classifier's weight has shape {tuple(weight.shape)}; expected "
                              f"({len(CELEBAHQ_ATTRIBUTES)}, z_dim) for CelebA-HQ's attributes, or (1, z_dim) "
                              f"with manipulate_cls naming its class")
    A, D = weight.shape
    for name, v, shape in (("bias", bias, (A,)), ("mean", mean, (D,)), ("std", std, (D,))):
        if tuple(v.shape) != shape:
            raise ConversionError(f"{where}: the classifier's {name} has shape {tuple(v.shape)}; its weight "
                                  f"{tuple(weight.shape)} implies {shape}")
    if not bool((std > 0).all()):
        raise ConversionError(f"{where}: the classifier's std has entries <= 0; codes cannot be normalised by it")
    return {"names": names, "weight": weight.float(), "bias": bias.float(), "mean": mean.float(), "std": std.float()}
