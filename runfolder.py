"""What a training run writes, and who owns it.

    OUT/train.lock        the lock: one training process per folder
    OUT/ckpt.pt           the last healthy checkpoint (written atomically: a crash never leaves half a file)
    OUT/ckpt_STEP.pt      kept snapshots (--keep-every)
    OUT/preview_STEP.png  reconstructions of fixed held-out images at each save
    OUT/log.jsonl         the progress lines' figures

A run folder belongs to one run: a new run refuses a folder that holds another run's checkpoint or
snapshots, and a lock keeps a second process out. Every way a run is told to stop (Ctrl-C, SIGTERM
from `kill`, `timeout` or a cluster's preemption, SIGHUP from a closed terminal) asks the loop to save
at the next step boundary. A save that fails (disk full, folder gone read-only) leaves the last good
checkpoint in place and says so.
"""
import glob
import json
import math
import os
import signal
import socket
import statistics
import threading
import time
from collections import deque

import checkpoint
import cli
import codes
from plot import save_grid


class RunFolder:
    """A run folder owned by one run: an advisory lock (flock on OUT/train.lock) while it trains, and no
    overwriting of another run's files. The kernel drops the lock when its process ends, however it ends
    (kill -9 included), so no stale lock is ever left; the file stays and names the last holder."""

    def __init__(self, out, resumes=None, keep_every=None, preview=None):
        self.out, self.lock = out, os.path.join(out, "train.lock")
        self.resumes = resumes  # the one checkpoint in `out` this run may replace (the one it resumes)
        self.keep_every, self.preview = keep_every, preview
        self.ckpt = os.path.join(out, "ckpt.pt")
        self.fd = None

    def __enter__(self):
        try:
            os.makedirs(self.out, exist_ok=True)
            self.fd = os.open(self.lock, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as e:
            cli.usage_error(f"cannot write the run folder {self.out} ({e.strerror}); pass a writable --out")
        self._take_lock()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._refuse_foreign_run()
        return self

    def _take_lock(self):
        try:
            import fcntl
        except ImportError:  # no flock (Windows): runs started at once into one folder are not kept apart
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "unknown"
            self.__exit__()
            cli.usage_error(f"{self.out} is in use by another training process (pid {owner}); wait for it, or pass another --out")

    def _refuse_foreign_run(self):
        """Another run's files: a ckpt.pt this run does not resume, and snapshots unless it resumes in this folder
        (resuming an earlier snapshot here would overwrite the later ckpt.pt: refused too)."""
        resumes = self.resumes and os.path.abspath(self.resumes)
        theirs = [self.ckpt] if os.path.exists(self.ckpt) and not (resumes and os.path.samefile(self.ckpt, resumes)) else []
        if not (resumes and os.path.samefile(os.path.dirname(resumes), self.out)):
            theirs += sorted(glob.glob(os.path.join(glob.escape(self.out), "ckpt_*.pt")))
        if theirs:
            self.__exit__()
            more = f" and {len(theirs) - 1} more" if len(theirs) > 1 else ""
            cli.usage_error(f"{self.out} already holds a run ({theirs[0]}{more}); continue it with --resume {theirs[0]}, "
                            f"or pass a new --out")

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None

    def save(self, ck):
        """OUT/ckpt.pt, a kept snapshot every keep_every steps, and a preview grid. A failed write leaves
        the last good checkpoint whole and raises OSError naming it."""
        try:
            checkpoint.save(self.ckpt, ck)
            if self.keep_every and ck["step"] % self.keep_every == 0:
                checkpoint.save(os.path.join(self.out, f"ckpt_{ck['step']:07d}.pt"), ck)
            if self.preview is not None:
                write_preview(ck, self.preview, os.path.join(self.out, f"preview_{ck['step']:07d}.png"))
        except OSError as e:
            raise OSError(e.errno, f"{e.strerror or e} while saving step {ck['step']}. {self.last_good()}",
                          e.filename) from None

    def last_good(self):
        return last_good(self.ckpt)


def last_good(ckpt):
    """What is kept: one phrase naming the last good checkpoint and its step."""
    if not os.path.exists(ckpt):
        return "No checkpoint was saved"
    try:
        return f"The last healthy checkpoint is {ckpt} (step {checkpoint.read(ckpt)['step']})"
    except checkpoint.CheckpointError:
        return f"{ckpt} cannot be read back"


def write_preview(ck, x, path):
    """Input | reconstruction from inferred x_T | from random x_T of fixed held-out images, at T = 20."""
    if ck["config"].get("pdae", {}).get("condition") == "label":
        return  # a label-conditioned PDAE has no image encoder to reconstruct with
    model = checkpoint.build(ck)
    save_grid(path, codes.reconstruction_rows(ck["kind"], model, checkpoint.diffusion(ck), x, steps=20, seed=0))


class StopSignals:
    """SIGINT (Ctrl-C), SIGTERM and SIGHUP ask the loop to stop at the next step boundary and save;
    a second Ctrl-C stops at once (the last checkpoint on disk is whole)."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self):
        self.requested, self.old = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for name in self.SIGNALS:
                if hasattr(signal, name):
                    sig = getattr(signal, name)
                    self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame):
        self.requested = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print(f"\n{self.requested}: stopping after this step and saving (Ctrl-C again to stop at once)", flush=True)

    def exit_code(self):
        """The shell's convention for a process ended by a signal: 128 + its number (Ctrl-C: 130)."""
        return 128 + int(getattr(signal, self.requested, signal.SIGINT)) if self.requested else 0

    def __exit__(self, *exc):
        for sig, old in self.old.items():
            signal.signal(sig, old)
        self.old = {}


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


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
