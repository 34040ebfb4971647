"""Command-line plumbing shared by the scripts: the usage error and the argparse value types.

Every numeric flag is checked where it is parsed, so a bad value stops the command with exit
code 2 and one line naming the flag and the allowed range, before any work starts or any file
is touched. Only scripts (train.py, sample.py, bench.py, checkpoint.py's `convert`) import this.
"""
import argparse
import math
import sys


def usage_error(msg):
    """Print `error: msg` and exit with code 2 (a usage error: nothing was run, nothing written)."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _number(text, kind):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def ranged(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    """An argparse type: a number of `kind` (int or float) in [lo, hi] (or open at an end), finite."""
    def check(text):
        v = _number(text, kind)
        bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
        bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
        if bad_lo or bad_hi:
            left = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            right = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {' and '.join(s for s in (left, right) if s)}")
        return v
    check.__name__ = f"{kind.__name__} in range"  # argparse names the type in some messages
    return check


def one_of(*names):
    """An argparse type for a flag whose FLAGS-table spec cannot carry `choices`: one of `names`."""
    def check(text):
        if text not in names:
            raise argparse.ArgumentTypeError(f"{text!r}: use {' or '.join(names)}")
        return text
    check.__name__ = "choice"
    return check


def number_list(kind, lo=None, hi=None, lo_open=False):
    """An argparse type: a comma-separated list of numbers, each as `ranged` checks it."""
    one = ranged(kind, lo, hi, lo_open)

    def check(text):
        parts = [s.strip() for s in str(text).split(",") if s.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"{text!r} holds no numbers (give a comma-separated list)")
        return [one(s) for s in parts]
    check.__name__ = f"list of {kind.__name__}"
    return check


positive_int = ranged(int, 1)
nonnegative_int = ranged(int, 0)
positive_float = ranged(float, 0, lo_open=True)
finite_float = ranged(float)
seed_int = ranged(int, 0, 2**63 - 1)


def native_bf16():
    """Whether this CPU does bf16 arithmetic in hardware (x86 AVX512-BF16 or AMX, Arm BF16).

    Only there is CPU bf16 autocast faster than float32; elsewhere it is emulated, and slower.
    """
    import platform
    import torch
    cpu = torch.cpu
    if platform.machine() in ("x86_64", "AMD64"):
        return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("Features") and " bf16" in line for line in f)
    except OSError:
        return False


def pick_device(name):
    """--device: None means CUDA when there is one, else the CPU; a device that is not there is a usage error."""
    import torch
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        usage_error(f"--device {name!r} is not a device name (use cpu, cuda or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        usage_error(f"--device {name}: this machine has no CUDA device (torch {torch.__version__}); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        usage_error(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type not in ("cpu", "cuda"):
        usage_error(f"--device {name}: only cpu and cuda are supported")
    return dev
