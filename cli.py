"""Command-line plumbing shared by the scripts: the usage error, the entry-point wrapper, the
argparse value types, and the device and precision rules.

Every numeric flag is checked where it is parsed, so a bad value stops the command with exit
code 2 and one line naming the flag and the allowed range, before any work starts or any file
is touched. Modules raise `UsageError`; only a script's `main`, wrapped by `entry`, turns it
(and every other way a command can end badly) into one line and an exit code.
"""
import argparse
import errno
import functools
import math
import sys


class UsageError(Exception):
    """The command was used wrongly: nothing was run, nothing written (exit code 2)."""


class Failure(Exception):
    """Work that started and could not finish, for a reason the message names (exit code 1)."""


def usage_error(msg):
    raise UsageError(msg)


def entry(main):
    """A script's main: UsageError -> one line, exit 2; Ctrl-C -> exit 130; a failed read or write of a
    file mid-work (disk full, read-only folder) -> one line naming the file, exit 1. Other exceptions
    are bugs and keep their traceback."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2)
        except Failure as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1)
        except KeyboardInterrupt:
            print("\ninterrupted: files written so far are whole (every write is atomic)", file=sys.stderr)
            raise SystemExit(130)
        except OSError as e:
            print(f"error: {describe_os_error(e)}", file=sys.stderr)
            raise SystemExit(1)
    return run


def describe_os_error(e):
    """One line for a failed file operation, with what to do where the cause is common."""
    where = f" {e.filename}" if getattr(e, "filename", None) else ""
    hint = {errno.ENOSPC: "the disk is full: free space and run again",
            errno.EROFS: "the folder is read-only: pass a writable --out",
            errno.EACCES: "permission denied: pass a folder you can write to",
            errno.ENOTDIR: "a path component is a file, not a folder"}.get(e.errno, "")
    return f"cannot access{where}: {e.strerror or e}" + (f" ({hint})" if hint else "")


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


def autocast_dtype(device, amp):
    """The one precision rule of every entry point (`--amp auto|bf16|fp16|off`): the dtype the
    networks autocast to, or None for float32. auto: bf16 on CUDA (fp16 where bf16 is missing) and
    on a CPU with native bf16 (elsewhere CPU bf16 is emulated and slower than float32)."""
    import torch
    if device.type == "cuda":
        return {"auto": torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16,
                "bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    if amp == "fp16":
        usage_error("--amp fp16 needs CUDA (CPU autocast runs bf16 only); use --amp bf16 or off")
    if amp == "auto":
        return torch.bfloat16 if native_bf16() else None
    return torch.bfloat16 if amp == "bf16" else None


# A CPU run this long repays inductor's first (cold-cache) compile of the toy32 objective within the run;
# shorter ones pay only once the cache is warm (docs/RESULTS.md, "--compile"), so they ask with --compile.
COMPILE_MIN_IMAGES = 150_000


def compiles(flag, device, images, world=1):
    """Whether train.py compiles its objective: --compile / --no-compile decide; unset, on CUDA, and on a CPU
    run of at least COMPILE_MIN_IMAGES images in one process (DDP over gloo with compile is not measured)."""
    if flag is not None:
        return flag
    return device.type == "cuda" or (world == 1 and images >= COMPILE_MIN_IMAGES)


def precision(amp_dtype):
    """How a run's first line names its precision."""
    return "float32" if amp_dtype is None else f"{str(amp_dtype)[6:]} autocast"


AMP_CHOICES = ("auto", "bf16", "fp16", "off")


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
