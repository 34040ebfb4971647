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

The official config is saved through a JSON filter that drops enums, so some choices (the latent
net's activation, the model's mean type) are not recorded; they are assumed to be the paper's and
the only ones the official templates use: SiLU, no output activation, eps prediction.
"""
from dataclasses import asdict

import torch

from encoder import EncoderConfig
from latent_ddim import LatentNetConfig
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
}

# Official beta_scheduler names -> ours (diffusion.beta_schedule).
SCHEDULES = {"linear": "linear", "cosine": "cosine", "const0.008": "const"}

# Official state-dict prefixes -> ours, first match wins (the Diff-AE model nests the UNet's time MLP).
AUTOENC_PREFIXES = (("encoder.", "encoder."), ("latent_net.", "latent.net."),
                    ("time_embed.time_embed.", "unet.time_embed."), ("", "unet."))
DDIM_PREFIXES = (("", ""),)


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
    if not any(k.startswith("ema_model.") for k in sd):
        raise ConversionError(f"{where}: no 'ema_model.*' weights in its state_dict; is it a Diff-AE checkpoint?")

    mc = hp.get("model_conf") or model_conf_from_train_conf(hp, sd)
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


def model_conf_from_train_conf(hp, sd):
    """The official model_conf rebuilt from the TrainConfig's net_* keys (config.make_model_conf).

    Older checkpoints save the TrainConfig before make_model_conf runs, so model_conf is None. The
    model name is an enum that the saved config drops, so whether there is an encoder (and a latent
    net) is read from which weights the checkpoint holds.
    """
    mc = {"attention_resolutions": hp["net_attn"], "channel_mult": hp["net_ch_mult"], "dropout": hp["dropout"],
          "embed_channels": hp["net_beatgans_embed_channels"], "image_size": hp["img_size"], "in_channels": 3,
          "model_channels": hp["net_ch"], "num_heads": hp["net_beatgans_attn_head"],
          "num_res_blocks": hp["net_num_res_blocks"], "num_input_res_blocks": hp["net_num_input_res_blocks"],
          "out_channels": 3, "resblock_updown": hp["net_resblock_updown"],
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
                "num_time_layers": hp["net_latent_num_time_layers"], "time_last_act": hp["net_latent_time_last_act"]}
    return mc


def refuse_unsupported(hp, mc, autoenc, where):
    """Official options our networks do not implement: fail with the option's name, never load silently."""
    g = mc.get
    ch, nrb = g("model_channels"), g("num_res_blocks")
    rules = [  # (the official option, its value, whether we support it, what we support)
        ("channel_mult", g("channel_mult"), lambda v: v is not None, "a list of multipliers"),
        ("attention_resolutions", g("attention_resolutions"), lambda v: v is not None, "a list of resolutions"),
        ("resblock_updown", g("resblock_updown", True), lambda v: v is True, "True (resampling inside ResBlocks)"),
        ("use_new_attention_order", g("use_new_attention_order", False), lambda v: not v, "False"),
        ("num_head_channels", g("num_head_channels", -1), lambda v: v == -1, "-1 (heads set by num_heads)"),
        ("num_heads_upsample", g("num_heads_upsample", -1), lambda v: v in (-1, g("num_heads", 1)), "-1"),
        ("num_classes", g("num_classes"), lambda v: v is None, "None"),
        ("dims", g("dims", 2), lambda v: v == 2, "2"),
        ("time_embed_channels", g("time_embed_channels"), lambda v: v in (None, ch), "None (= model_channels)"),
        ("num_input_res_blocks", g("num_input_res_blocks"), lambda v: v in (None, nrb), "None (= num_res_blocks)"),
        ("input_channel_mult", g("input_channel_mult"),
         lambda v: v is None or tuple(v) == tuple(g("channel_mult")), "None (= channel_mult)"),
        ("net_autoenc_stochastic", hp.get("net_autoenc_stochastic"), lambda v: not v, "False"),
        ("beatgans_rescale_timesteps", hp.get("beatgans_rescale_timesteps"),
         lambda v: not v or int(hp["T"]) == 1000, "False (or T = 1000)"),
    ]
    if autoenc:
        rules += [
            ("enc_pool", g("enc_pool"), lambda v: v == "adaptivenonzero", "'adaptivenonzero'"),
            ("resnet_two_cond", g("resnet_two_cond"), lambda v: v is True, "True (z_sem scales AdaGN, Eq. 7)"),
            ("enc_out_channels", g("enc_out_channels"),
             lambda v: v == (g("resnet_cond_channels") or g("embed_channels")),
             "resnet_cond_channels or embed_channels (z_sem feeds the ResBlocks directly)"),
        ]
    else:
        rules.append(("resnet_two_cond", g("resnet_two_cond", False), lambda v: not v,
                      "False for the unconditional DDIM baseline"))
    if autoenc and g("latent_net_conf"):
        lc = g("latent_net_conf")
        rules += [
            ("latent_net_conf.activation", str(lc.get("activation", "silu")), lambda v: v.lower().endswith("silu"), "silu"),
            ("latent_net_conf.last_act", str(lc.get("last_act", "none")), lambda v: v.lower().endswith("none"), "none"),
            ("latent_net_conf.num_layers", lc.get("num_layers"), lambda v: v is not None, "an int"),
            ("latent_rescale_timesteps", hp.get("latent_rescale_timesteps"),
             lambda v: not v or int(hp["T"]) == 1000, "False (or T = 1000)"),
        ]
    for name, value, ok, supported in rules:
        if not ok(value):
            raise ConversionError(f"{where}: official option {name}={value!r} is not implemented here "
                                  f"(supported: {supported})")


def schedule(name, key, where):
    if name not in SCHEDULES:
        raise ConversionError(f"{where}: official {key}={name!r} is not implemented here "
                              f"(supported: {', '.join(map(repr, SCHEDULES))})")
    return SCHEDULES[name]


def unet_config(mc, autoenc):
    return UNetConfig(
        res=int(mc["image_size"]), ch=int(mc["model_channels"]), ch_mult=tuple(mc["channel_mult"]),
        num_res_blocks=int(mc["num_res_blocks"]), attn_res=tuple(mc["attention_resolutions"]),
        dropout=float(mc.get("dropout", 0.1)), embed_dim=int(mc["embed_channels"]),
        cond_dim=int(mc.get("resnet_cond_channels") or mc["embed_channels"]) if autoenc else None,
        num_heads=int(mc.get("num_heads", 1)), in_ch=int(mc.get("in_channels", 3)),
        out_ch=int(mc.get("out_channels", 3)))


def encoder_config(mc):
    """BeatGANsAutoencModel's encoder: its own ch. mult. and attention if given, else the UNet's."""
    return EncoderConfig(
        res=int(mc["image_size"]), ch=int(mc["model_channels"]),
        ch_mult=tuple(mc.get("enc_channel_mult") or mc["channel_mult"]),
        num_res_blocks=int(mc.get("enc_num_res_block", 2)),
        attn_res=tuple(mc.get("enc_attn_resolutions") or mc["attention_resolutions"]),
        z_dim=int(mc["enc_out_channels"]), num_heads=int(mc.get("num_heads", 1)), in_ch=int(mc.get("in_channels", 3)))


def latent_config(lc, hp, where):
    """LatentDDIM.config for the official MLPSkipNet and its latent diffusion settings."""
    net = LatentNetConfig(
        z_dim=int(lc["num_channels"]), hidden=int(lc["num_hid_channels"]), num_layers=int(lc["num_layers"]),
        skip_layers=tuple(lc.get("skip_layers") or ()), time_emb_dim=int(lc.get("num_time_emb_channels", 64)),
        num_time_layers=int(lc.get("num_time_layers", 2)), time_last_act=bool(lc.get("time_last_act", False)),
        use_norm=bool(lc.get("use_norm", True)), condition_bias=float(lc.get("condition_bias", 1)),
        dropout=float(lc.get("dropout", 0)))
    return {"net": asdict(net), "T": int(hp["T"]),
            "schedule": schedule(hp["latent_beta_scheduler"], "latent_beta_scheduler", where),
            "znormalize": bool(hp["latent_znormalize"])}


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
