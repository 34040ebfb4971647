"""Benchmark: how long explore.py's page waits for an edited image after a slider move.

    python bench_explore.py --ckpt runs/diffae-toyfaces32/ckpt.pt    # end to end over HTTP, T = 10 and 20
    python bench_explore.py --arch ffhq128                            # one edit of the released FFHQ-128 architecture

--ckpt starts `explore.py` on that checkpoint (its own process, a free port), moves one attribute
slider --moves times through the JSON API, one request after the other as the page sends them, and
prints the p50 and p95 of request-to-image, at each T. The image's codes and the direction are made
once before timing: a slider move on a picked image is one decode (manipulate, DDIM, PNG, HTTP).
--arch builds the untrained network of a preset (random weights time the same as trained ones) and
times that decode directly: z moved along a random direction, then a T-step DDIM at batch 1.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import torch

import checkpoint
import classifier
import cli
import codes
import presets
from diffusion import Diffusion


def percentiles(seconds):
    """(p50, p95) in milliseconds (p95: the nearest-rank value, so 30 moves have a real one)."""
    s = sorted(seconds)
    return statistics.median(s) * 1e3, s[min(len(s) - 1, round(0.95 * len(s)) - 1)] * 1e3


def post(url, path, body):
    req = urllib.request.Request(url + path.lstrip("/"), json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def start_server(args):
    """explore.py on the checkpoint, in its own process; returns (process, URL) once it listens."""
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "explore.py"), "--ckpt", args.ckpt,
           "--port", "0"] + (["--amp", args.amp] if args.amp else []) + (["--device", args.device] if args.device else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = "no output"
    for line in proc.stdout:  # notes may come first; the URL line says the server listens
        if line.startswith("exploring "):
            print(line.strip())
            # what it prints later (a direction trained) is drained, so a full pipe never blocks it
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, line.split(" at ")[1].split()[0]
        last = line.strip()
    proc.wait()
    cli.usage_error(f"explore.py did not start: {last}")


def bench_http(args):
    proc, url = start_server(args)
    try:
        with urllib.request.urlopen(url + "api/info", timeout=60) as r:
            info = json.loads(r.read())
        attr = args.attr or (info["attrs"][0] if info["attrs"] else None)
        if attr is not None and attr not in info["attrs"]:
            cli.usage_error(f"--attr {attr}: this checkpoint's attributes are {', '.join(info['attrs']) or '(none)'}")
        scale = lambda s: {attr: s} if attr else {}
        for i, steps in enumerate(args.T):
            what = "inverts the image" + (" and loads or trains the direction" if attr and i == 0 else "")
            t0 = time.perf_counter()
            post(url, "/api/edit", {"image": 0, "steps": steps, "scales": scale(0.05)})  # codes (and the direction) once
            first = time.perf_counter() - t0
            times = []
            for k in range(args.moves):  # each move a new scale: a new image, as a dragged slider makes
                t0 = time.perf_counter()
                post(url, "/api/edit", {"image": 0, "steps": steps, "scales": scale(-0.5 + k / max(args.moves - 1, 1))})
                times.append(time.perf_counter() - t0)
            p50, p95 = percentiles(times)
            print(f"T={steps}: slider move -> edited image over HTTP, {info['kind']} {info['res']}px"
                  f"{' along ' + attr if attr else ' (no attribute: scale 0)'}: p50 {p50:.0f} ms, p95 {p95:.0f} ms "
                  f"over {args.moves} moves (the first request, which {what}: {first * 1e3:.0f} ms)", flush=True)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def bench_arch(args):
    """One edit of a preset's untrained Diff-AE: manipulate z, then decode at T (batch 1), timed directly, in
    --amp's precision or in both (explore.py picks the faster at start)."""
    device = cli.pick_device(args.device)
    for amp in [cli.autocast_dtype(device, a) for a in ([args.amp] if args.amp else ["off", "auto"])]:
        time_edits(args, device, amp)


def time_edits(args, device, amp):
    p, d = presets.PRESETS[args.arch], Diffusion()
    unet_cfg, enc_cfg = presets.model_configs("diffae", p, p["res"], d)
    ck = {"kind": "diffae", "config": dict(checkpoint.configs(unet=unet_cfg, encoder=enc_cfg), diffusion=d.config())}
    torch.manual_seed(0)
    model = checkpoint.make_model(ck).to(device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, p["res"], p["res"], generator=g).clamp(-1, 1).to(device)
    direction = torch.randn(enc_cfg.z_dim, generator=g)
    direction = (direction / direction.norm()).to(device)
    print(f"{args.arch}: untrained Diff-AE, {sum(t.numel() for t in model.parameters()) / 1e6:.1f}M parameters, "
          f"{p['res']}px, batch 1, {device}, {cli.precision(amp)}", flush=True)
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        z = model.encode(x)
        mean, std = torch.zeros_like(z[0]), torch.ones_like(z[0])
        codes.decode("diffae", model, d, z, torch.randn(x.shape, generator=g).to(device), 1)  # warm-up: kernels, caches
        for steps in args.T:
            x_T = torch.randn(x.shape, generator=g).to(device)
            times, budget = [], time.perf_counter() + args.max_seconds / len(args.T)
            while not times or (len(times) < args.reps and time.perf_counter() < budget):
                t0 = time.perf_counter()
                moved = classifier.manipulate(z, direction, 0.3, mean, std)
                codes.decode("diffae", model, d, moved, x_T, steps).float().cpu()  # .cpu(): waits for the device
                times.append(time.perf_counter() - t0)
            print(f"T={steps}: one edit (manipulate + {steps}-step DDIM decode): median {statistics.median(times):.2f} s "
                  f"over {len(times)} run(s) ({', '.join(f'{t:.2f}' for t in times)} s)", flush=True)


@cli.entry
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--ckpt", help="time slider moves through explore.py's HTTP API on this checkpoint")
    what.add_argument("--arch", choices=[k for k in presets.PRESETS if "ch" in presets.PRESETS[k]],
                      help="time one edit of this preset's untrained Diff-AE directly (e.g. ffhq128)")
    ap.add_argument("--T", type=cli.number_list(int, 1), default="10,20", help="DDIM steps to time (default 10,20)")
    ap.add_argument("--moves", type=cli.ranged(int, 2), default=30, help="--ckpt: slider moves per T (default 30)")
    ap.add_argument("--attr", default=None, help="--ckpt: the attribute slider to move (default: the first)")
    ap.add_argument("--reps", type=cli.positive_int, default=3, help="--arch: edits per T, within --max-seconds")
    ap.add_argument("--max-seconds", type=cli.positive_float, default=120, help="--arch: time budget (at least one edit per T)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--amp", type=cli.one_of(*cli.AMP_CHOICES), default=None, help="autocast (default: explore.py's)")
    ap.error = cli.usage_error
    args = ap.parse_args(argv)
    bench_http(args) if args.ckpt else bench_arch(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
