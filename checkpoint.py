"""Persistence: atomic save, verified safe load, rebuilding a model from a checkpoint alone.

A checkpoint is one torch.save file of plain types and tensors:
  {"kind": "ddim" | "diffae" | "pdae", "config": {...}, "model": state_dict, "ema": state_dict,
   "optimizer": state_dict, "step": int, "images_seen": int, "rng": {...}}
config holds the network configs ("unet", "encoder", optionally "latent"), the diffusion
("diffusion": {"T", "schedule"[, "grid"]}) and how it was trained ("train": preset, data, res, ...),
so sample.py needs nothing else. Files are always read with weights_only=True: a file that
needs arbitrary unpickling is refused, never executed.

load() also reads the official releases (official.py: Diff-AE's Lightning checkpoints;
official_pdae.py: PDAE's DPMs, autoencoders and latent DPMs). Every file is verified before use:
load() checks the archive's CRCs and that every floating tensor is finite; verify() checks that
the config describes a model and that every weight fits it, naming the first that does not. It
runs in load() for every file, so no command starts on a checkpoint it cannot build.
"""
import errno
import glob
import os
import shutil
import re
import sys
import zipfile
from dataclasses import asdict

import torch

import cli
import official
import official_pdae
from diffae import DiffAE
from diffusion import Diffusion
from encoder import EncoderConfig
from latent_ddim import LatentDDIM
from pdae import PDAE
from unet import UNet, UNetConfig, check_input_skip

KINDS = ("ddim", "diffae", "pdae")


class CheckpointError(Exception):
    """A file that cannot become a model: missing, corrupt, unsafe, of another format, or not fitting its config."""


# --- writing -------------------------------------------------------------------------------------

def save(path, ck):
    """Write atomically: a crash mid-write leaves the previous file intact (and its temporary file behind,
    which the next save to the same path removes once the process that wrote it is gone)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        try:
            torch.save(ck, tmp)
        except RuntimeError as e:  # torch reports a failed write (a full disk) as its own error: name the cause
            raise OSError(errno.ENOSPC if shutil.disk_usage(folder).free < 2**20 else errno.EIO,
                          f"writing failed ({str(e).splitlines()[0][:80]})", path) from None
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_folder(folder)


def remove_stale_temporaries(path):
    """Delete {path}.tmp{PID} files left by saves that were killed, whose process no longer runs."""
    for tmp in glob.glob(glob.escape(path) + ".tmp*"):
        pid = tmp[len(path) + len(".tmp"):]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                os.remove(tmp)
            except OSError:
                pass  # another process got there first


def _alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's), or we cannot tell: keep its file
    return True


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- reading ---------------------------------------------------------------------------------------

def read(path):
    """A torch file's contents, verified: it exists, its archive is intact, it needs no code to unpickle,
    and every floating tensor in it is finite. Raises CheckpointError otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path!r}")
    if zipfile.is_zipfile(path):
        check_archive(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unsafe pickle, truncated, or not a torch file at all
        raise CheckpointError(_load_failure(path, e)) from None
    bad = first_non_finite(raw)
    if bad is not None:
        raise CheckpointError(f"{path!r}: tensor {' / '.join(map(str, bad))} holds NaN or Inf values; "
                              f"the checkpoint is corrupt or its training diverged")
    return raw


def check_archive(path):
    """torch.save writes a zip archive: compare every member with its CRC-32 (reads the file once)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as e:  # damaged headers
        raise CheckpointError(f"{path!r} is a damaged archive ({type(e).__name__}: {e}); the file is corrupt") from None
    if bad is not None:
        raise CheckpointError(f"{path!r} is corrupt: its member {bad!r} does not match its CRC-32 "
                              f"(a changed byte, or an incomplete copy)")


def _load_failure(path, e):
    """The message for a file torch.load refused. torch's own advice (to unpickle anyway) is not repeated."""
    msg = str(e)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
    if found:
        return (f"{path!r} needs code to run to unpickle it (it references {found.group(1)}), so it is refused: only "
                f"plain tensors and types are read. If you trust its source, re-save its weights as a plain state dict.")
    if not zipfile.is_zipfile(path):
        return f"{path!r} is not a torch checkpoint (not a torch.save archive, or a truncated one)"
    if "Weights only load failed" in msg:
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", msg)
        return (f"{path!r} holds more than plain tensors and types ({detail.group(1) if detail else 'unpicklable'}), "
                f"so it is refused")
    return f"{path!r} is not a readable torch checkpoint ({type(e).__name__}: {msg.splitlines()[0][:200] if msg else ''})"


def first_non_finite(obj, where=()):
    """The key path of the first floating tensor with a NaN or Inf in nested dicts and lists, or None."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel() and not bool(torch.isfinite(obj).all()):
            return where
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        bad = first_non_finite(v, where + (k,))
        if bad is not None:
            return bad
    return None


def load(path):
    """Read a checkpoint of ours or an official release (Diff-AE, PDAE), verified, as our format.

    path may also be an official PDAE model folder (the one holding checkpoint.pt and config.yml).
    """
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "checkpoint.pt")):
        path = os.path.join(path, "checkpoint.pt")
    return convert(read(path), path)


def convert(raw, source=""):
    """A loaded dict -> our checkpoint dict. source: the file it came from (PDAE files need it to find
    their config.yml). Every checkpoint is verified here (and again when built)."""
    where = source or "checkpoint"
    try:
        if isinstance(raw, dict) and raw.get("kind") in KINDS and "config" in raw:
            if not isinstance(raw["config"], dict):
                raise CheckpointError(f"{where}: its 'config' is not a dict")
            verify(raw, where)
            return raw
        if isinstance(raw, dict) and "state_dict" in raw and "hyper_parameters" in raw:
            ck = official.convert(raw, source=source)
            key = lambda which, k: official.file_key(ck, which, k)
        elif official_pdae.role(raw) is not None:
            ck = _convert_pdae(raw, source)
            key = lambda which, k: official_pdae.file_key(ck, which, k)
        else:
            keys = list(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
            raise CheckpointError(
                f"{where!r} is none of: a checkpoint of this project (keys 'kind', 'config', 'model', 'ema'), an "
                f"official Diff-AE Lightning checkpoint ('state_dict', 'hyper_parameters'), an official PDAE "
                f"checkpoint ('ema_denoise_fn', 'ema_encoder' + 'ema_decoder', or 'ema_latent_denoise_fn'); it has {keys}")
    except official.ConversionError as e:
        raise CheckpointError(str(e)) from None
    verify(ck, where, key)  # a config we misread fails here, not as wrong images later
    return ck


def _convert_pdae(raw, path):
    """An official PDAE file and the files its config.yml points at -> our checkpoint."""
    kind = official_pdae.role(raw)
    cfg = read_yaml(os.path.join(os.path.dirname(os.path.abspath(path)), "config.yml"), path)
    files = official_pdae.companions(kind, cfg, path)
    for name, f in files.items():
        if not os.path.isfile(f):
            raise CheckpointError(f"{path}: its config.yml names its {name.replace('_', ' ')} {f!r}, which does not "
                                  f"exist; keep the official pre-trained-dpms/ and trained-models/ folders side by "
                                  f"side, as downloaded")
    if kind == "dpm":
        return official_pdae.convert_dpm(raw, cfg, path)
    if kind == "autoencoder":
        dpm_cfg = read_yaml(files["dpm_config"], path)
        return official_pdae.convert_autoencoder(raw, cfg, dpm_cfg, path, files["dpm_config"])
    return official_pdae.convert_latent(raw, cfg, load(files["autoencoder"]), read(files["latents"]), path)


def read_yaml(path, owner):
    """An official config.yml as a dict; a file that is missing, unreadable or not UTF-8 text is one
    CheckpointError naming it (and the line), its YAML is checked by official_pdae.parse_yaml."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{owner}: an official PDAE checkpoint needs its config.yml, expected at {path!r}")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise CheckpointError(f"{path}, line {line}: the byte 0x{raw[e.start]:02x} is not UTF-8; expected the "
                              f"config.yml as the official code writes it (UTF-8 text)") from None
    return official_pdae.parse_yaml(text, path)


# --- verifying and building -------------------------------------------------------------------------

def verify(ck, where="checkpoint", file_key=None):
    """The config describes a model, and every weight of 'ema' and 'model' exists there with its shape.

    A disagreement names the first key, as the file spells it (file_key(which, our_key) -> text).
    """
    name = file_key or (lambda which, k: f"{k!r} of '{which}'")
    with torch.device("meta"):  # shapes only: no memory, no init time, whatever the model's size
        expected = make_model(ck, where).state_dict()
    if not isinstance(ck.get("ema"), dict) and not isinstance(ck.get("model"), dict):
        raise CheckpointError(f"{where}: holds no weights (neither 'ema' nor 'model' is a state dict)")
    for which in ("ema", "model"):
        if isinstance(ck.get(which), dict):
            _check_weights(ck[which], expected, which, where, name)


def _check_weights(got, expected, which, where, name):
    for k, v in expected.items():
        if k not in got:
            raise CheckpointError(f"{where}: its config implies a weight {name(which, k)} of shape "
                                  f"{tuple(v.shape)} that the checkpoint lacks (our key {k!r})")
        if not isinstance(got[k], torch.Tensor) or tuple(got[k].shape) != tuple(v.shape):
            shape = tuple(got[k].shape) if isinstance(got[k], torch.Tensor) else type(got[k]).__name__
            raise CheckpointError(f"{where}: weight {name(which, k)} has shape {shape} but its "
                                  f"config implies {tuple(v.shape)} (our key {k!r})")
    extra = [k for k in got if k not in expected]
    if extra:
        raise CheckpointError(f"{where}: weight {name(which, extra[0])} has no place in the model its config "
                              f"describes ({len(extra)} such weights; our key {extra[0]!r})")


def read_classifier(path):
    """A released attribute classifier (Diff-AE's *_autoenc_cls, PDAE's manipulation classifier) as
    {"names", "weight" [A, z_dim], "bias" [A], "mean", "std" [z_dim]}: a linear layer on normalised z_sem."""
    try:
        return official_pdae.read_classifier(path)
    except official.ConversionError as e:
        raise CheckpointError(str(e)) from None


def diffusion(ck):
    return Diffusion(**ck["config"].get("diffusion", {}))


def make_model(ck, where="checkpoint"):
    """The untrained network described by ck['config'] (no weights loaded); CheckpointError if it describes none."""
    try:
        return _make_model(ck["config"], ck["kind"], ck)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a config part missing or of the wrong form
        detail = f"lacks {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{where}: its config (kind {ck.get('kind')!r}) does not describe a model: {detail}") from None


def _make_model(cfg, kind, ck):
    if kind == "ddim":
        unet_cfg = UNetConfig(**cfg["unet"])
        check_input_skip(unet_cfg, diffusion(ck))
        return UNet(unet_cfg)
    if kind == "diffae":
        model = DiffAE(UNetConfig(**cfg["unet"]), EncoderConfig(**cfg["encoder"]), diffusion(ck))
    elif kind == "pdae":
        model = PDAE.from_config(cfg)
    else:
        raise CheckpointError(f"unknown checkpoint kind {kind!r}")
    if cfg.get("latent") is not None:  # the optional second stage, trained on the frozen autoencoder's z
        model.latent = LatentDDIM.from_config(cfg["latent"])
    return model


def build(ck, weights="ema"):
    """The model with its EMA weights (or 'model' for the raw ones), in eval mode; CheckpointError naming the
    first disagreeing key if the weights do not fit the config."""
    where = ((ck.get("config") or {}).get("train") or {}).get("file") or "checkpoint"
    verify(ck, where)
    model = make_model(ck, where)
    model.load_state_dict(ck.get(weights) or ck["model"])
    return model.eval()


def configs(**named):
    """Plain-dict form of network config dataclasses, for the checkpoint's 'config'."""
    return {k: (asdict(v) if v is not None else None) for k, v in named.items()}


@cli.entry
def main(argv):
    if len(argv) != 3 or argv[0] != "convert":
        cli.usage_error("usage: python checkpoint.py convert SRC DST (SRC: an official Diff-AE .ckpt or PDAE "
                        "checkpoint.pt, or one of ours; DST: our checkpoint)")
    if os.path.lexists(argv[2]):  # never over a release, a run's ckpt.pt or anything else already there
        cli.usage_error(f"{argv[2]} exists already; convert writes a new file only: choose another DST "
                        f"(or remove it yourself first)")
    try:
        ck = load(argv[1])
    except CheckpointError as e:
        cli.usage_error(str(e))
    try:
        save(argv[2], ck)
    except (OSError, RuntimeError) as e:  # torch.save reports an unopenable file as a RuntimeError
        cli.usage_error(f"cannot write {argv[2]}: {getattr(e, 'strerror', None) or e}; choose a writable DST")
    print(f"wrote {argv[2]} (kind {ck['kind']}{', with a latent DDIM' if ck['config'].get('latent') else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
