"""Persistence: atomic save, safe load, rebuilding a model from a checkpoint alone.

A checkpoint is one torch.save file of plain types and tensors:
  {"kind": "ddim" | "diffae" | "pdae", "config": {...}, "model": state_dict, "ema": state_dict,
   "optimizer": state_dict, "step": int, "images_seen": int, "rng": {...}}
config holds the network configs ("unet", "encoder", optionally "latent"), the diffusion
("diffusion": {"T", "schedule"}) and how it was trained ("train": preset, data, res, ...),
so sample.py needs nothing else. Files are always read with weights_only=True: a file that
needs arbitrary unpickling is refused, never executed.
"""
import os
import pickle
import sys
import zipfile
from dataclasses import asdict

import torch

from diffusion import Diffusion

KINDS = ("ddim", "diffae", "pdae")


class CheckpointError(Exception):
    pass


def save(path, ck):
    """Write atomically: a crash mid-write leaves the previous file intact."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(ck, tmp)
    os.replace(tmp, path)


def load(path):
    """Read one of our checkpoints or an official Diff-AE Lightning checkpoint, as our format."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path!r}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not zipfile.is_zipfile(path):  # torch.save writes zip archives; this is something else
            raise CheckpointError(f"{path!r} is not a torch checkpoint (not a torch.save archive)")
        raise CheckpointError(
            f"{path!r} needs arbitrary unpickling to load; it is refused (only plain tensors and "
            f"types are read, with weights_only=True). Re-save it as a plain state dict. Detail: {str(e)[:300]}")
    except Exception as e:  # truncated or not a torch file at all
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path!r} is not a torch checkpoint (not a torch.save archive)")
        raise CheckpointError(f"{path!r} is not a readable torch checkpoint ({type(e).__name__}: {e})")
    if isinstance(raw, dict) and raw.get("kind") in KINDS and "config" in raw:
        return raw
    if isinstance(raw, dict) and "state_dict" in raw and "hyper_parameters" in raw:
        import official  # the import of released Diff-AE checkpoints lives beside us
        return official.convert(raw, source=path)
    keys = list(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
    raise CheckpointError(
        f"{path!r} is neither a checkpoint of this project (keys 'kind', 'config', 'model', 'ema') nor an "
        f"official Diff-AE Lightning checkpoint (keys 'state_dict', 'hyper_parameters'); it has {keys}")


def diffusion(ck):
    return Diffusion(**ck["config"].get("diffusion", {}))


def make_model(ck):
    """The untrained network described by ck['config'] (no weights loaded)."""
    from encoder import EncoderConfig
    from unet import UNet, UNetConfig
    cfg, kind = ck["config"], ck["kind"]
    if kind == "ddim":
        from unet import check_input_skip
        unet_cfg = UNetConfig(**cfg["unet"])
        check_input_skip(unet_cfg, diffusion(ck))
        return UNet(unet_cfg)
    if kind == "diffae":
        from diffae import DiffAE
        model = DiffAE(UNetConfig(**cfg["unet"]), EncoderConfig(**cfg["encoder"]), diffusion(ck))
        if cfg.get("latent") is not None:
            from latent_ddim import LatentDDIM
            model.latent = LatentDDIM.from_config(cfg["latent"])
        return model
    if kind == "pdae":
        import pdae
        return pdae.PDAE.from_config(cfg)
    raise CheckpointError(f"unknown checkpoint kind {kind!r}")


def build(ck, weights="ema"):
    """The model with its EMA weights (or 'model' for the raw ones), in eval mode."""
    model = make_model(ck)
    state = ck.get(weights) or ck["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise CheckpointError(f"checkpoint weights do not fit its config: first disagreeing key {first!r} "
                              f"({len(missing)} missing, {len(unexpected)} unexpected)")
    return model.eval()


def configs(**named):
    """Plain-dict form of network config dataclasses, for the checkpoint's 'config'."""
    return {k: (asdict(v) if v is not None else None) for k, v in named.items()}


def main(argv):
    if len(argv) != 3 or argv[0] != "convert":
        print("usage: python checkpoint.py convert OFFICIAL.ckpt OURS.pt", file=sys.stderr)
        return 2
    try:
        ck = load(argv[1])
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save(argv[2], ck)
    print(f"wrote {argv[2]} (kind {ck['kind']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
