"""Benchmark: training step, DDIM sampling and inversion, FLOPs and memory, for any preset.

    python bench.py                                  # toy32 Diff-AE on this machine's CPU
    python bench.py --preset ffhq128 --device cuda --peak-tflops 800 --json bench.json
    python bench.py --official /path/to/diffae       # also time the official Diff-AE model, same architecture
    python bench.py --preset ffhq128 --model pdae    # PDAE around a frozen DDIM of that preset (§4.1's throughput)
    python bench.py --compile --profile 5            # eager and compiled step, and where each one's time goes

Times are medians over --iters synchronised repetitions after --warmup. FLOPs are counted once
with torch.utils.flop_counter (forward + backward of one training step). --official takes a
checkout of github.com/phizaz/diffae (nothing of it is part of this repository) and times its
BeatGANs UNet / autoencoder built with the same hyper-parameters, in the same process.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import checkpoint
import cli
import pdae
import presets
from diffusion import Diffusion
from encoder import PDAEEncoder
from objective import Objective, run_weights, step_noise


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup, iters):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def official_model(path, kind, p, res):
    """The official BeatGANs network with our preset's hyper-parameters (imported from a user's checkout)."""
    sys.path.insert(0, os.path.abspath(path))
    try:
        from model.unet import BeatGANsUNetConfig
        from model.unet_autoenc import BeatGANsAutoencConfig
    except Exception as e:  # not a checkout, a broken one, or one missing its own dependencies
        cli.usage_error(f"cannot import the official model from {path} ({type(e).__name__}: {e}); "
                        f"pass a checkout of github.com/phizaz/diffae with its requirements installed")
    common = dict(image_size=res, in_channels=3, model_channels=p["ch"], out_channels=3, num_res_blocks=p["num_res_blocks"],
                  embed_channels=p["embed_dim"], attention_resolutions=tuple(p["attn_res"]), dropout=p["dropout"],
                  channel_mult=tuple(p["ch_mult"]), resblock_updown=True, num_heads=1)
    if kind == "ddim":
        model = BeatGANsUNetConfig(**common).make_model()
        eps = lambda x, t, x0: model(x, t).pred
    else:
        cfg = BeatGANsAutoencConfig(**common, resnet_two_cond=True, enc_out_channels=p["z_dim"], enc_pool="adaptivenonzero",
                                    enc_num_res_block=p["num_res_blocks"], enc_channel_mult=tuple(p["enc_ch_mult"]),
                                    enc_attn_resolutions=tuple(p["attn_res"]))
        model = cfg.make_model()
        eps = lambda x, t, x0: model(x, t, x_start=x0).pred
    d = Diffusion()
    return model, lambda x0, y, t, noise: (eps(d.q_sample(x0, t, noise), t, x0).float() - noise).square().mean()


def make_model(kind, unet_cfg, enc_cfg, p, res):
    """An untrained model of the preset: weights do not change the timings."""
    if kind == "pdae":
        return pdae.PDAE(unet_cfg, PDAEEncoder(presets.pdae_encoder_config(res, p)), Diffusion(), pdae.GAMMA)
    ck = {"kind": kind, "config": dict(checkpoint.configs(unet=unet_cfg, encoder=enc_cfg), diffusion=Diffusion().config())}
    return checkpoint.make_model(ck)


def noise_predictor(model, kind, x0):
    """eps(x_t, t) of each model for the images x0 (for sampling): the DDIM ignores them, the autoencoders encode them."""
    if kind == "ddim":
        return lambda x, t: model(x, t)
    return model.eps_fn(model.encode(x0))


def bench_train(model, loss_fn, args, device, amp_dtype, res, B, tuned=True, profile=0):
    """Median seconds of one training step (loss forward and backward, clip, Adam), its FLOPs, the
    first step's seconds, and (profile > 0) the ops that take its time over that many more steps.

    tuned: channels-last (unless --no-channels-last) and fused Adam, as train.py runs; the official
    code gets them on CUDA only (its own trainer on a CPU runs NCHW and the unfused Adam).
    """
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4, fused=tuned)
    x0 = (torch.rand(B, 3, res, res, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    t, noise = step_noise(0, 0, B, x0.shape[1:], 1000, device=device)  # as train.py draws them: noise stays NCHW
    y = torch.zeros(B, 0, device=device)
    if tuned and args.channels_last:  # train.py makes the batch channels-last, not the noise
        x0 = x0.contiguous(memory_format=torch.channels_last)

    def step(fn=loss_fn):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = fn(x0, y, t, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    step()  # the first step compiles (with --compile): timed once, apart
    first = time.perf_counter() - t0
    # FLOPs of the same math, eager: the counter's module hooks would make a compiled objective recompile
    # with a graph break at every module, and the timing below would run that slower graph
    with FlopCounterMode(display=False) as fc:
        step(getattr(loss_fn, "_orig_mod", loss_fn))
    sec = timed(step, device, args.warmup, args.iters)
    return sec, fc.get_total_flops(), first, profile_step(step, device, profile) if profile else None


def profile_step(step, device, n):
    """[(op, share of the steps' self time, ms per step)] of every op, largest first, by torch.profiler over n steps."""
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(n):
            step()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ops = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in ops)
    return [(e.key, getattr(e, key) / total, getattr(e, key) / n / 1e3) for e in ops if getattr(e, key) > 0]


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="toy32", choices=list(presets.PRESETS))
    ap.add_argument("--model", default="diffae", choices=["ddim", "diffae", "pdae"],
                    help="pdae: an encoder and G_psi trained around a frozen (here untrained) DDIM of the preset")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=cli.positive_int, default=None, help="default: the preset's")
    ap.add_argument("--warmup", type=cli.nonnegative_int, default=3)
    ap.add_argument("--iters", type=cli.positive_int, default=10)
    ap.add_argument("--amp", default="auto", choices=cli.AMP_CHOICES, help="as train.py's --amp")
    ap.add_argument("--compile", action="store_true", help="torch.compile the objective, as train.py --compile")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument("--grad-checkpoint", action="store_true")
    ap.add_argument("--sample-T", type=cli.number_list(int, 1, 1000), default=[20, 100],
                    help="DDIM step counts to time sampling and inversion at (default 20,100)")
    ap.add_argument("--sample-batch", type=cli.positive_int, default=None, help="images per sampling batch (default: the training batch)")
    ap.add_argument("--peak-tflops", type=cli.positive_float, default=None, help="the device's peak, for the achieved fraction (MFU)")
    ap.add_argument("--official", default=None, help="a checkout of phizaz/diffae to time beside ours")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--rounds", type=cli.positive_int, default=3, help="with --official: alternating timing rounds")
    ap.add_argument("--profile", type=cli.nonnegative_int, default=0, metavar="N",
                    help="also profile N more training steps of each and print the ops that take their time "
                         "(with --compile, inductor's kernels record themselves: that compiles anew)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.official and args.model == "pdae":
        cli.usage_error("--official times phizaz/diffae, which has no PDAE: drop --official or use --model ddim|diffae")
    return args


def report(name, model, loss_fn, args, device, amp, res, B, tuned=True):
    """Time one training step of `model` and print and return its row."""
    model.to(device).train()
    if tuned and args.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sec, flops, first, ops = bench_train(model, loss_fn, args, device, amp, res, B, tuned, args.profile)
    row = dict(name=name, preset=args.preset, model=args.model, device=str(device), batch=B, precision=cli.precision(amp),
               train_step_s=sec, train_images_per_s=B / sec, first_step_s=first, gflop_per_image=flops / B / 1e9,
               achieved_tflops=flops / sec / 1e12, peak_memory_mb=peak_memory_mb(device),
               params_m=sum(q.numel() for q in model.parameters()) / 1e6,
               trained_params_m=sum(q.numel() for q in model.parameters() if q.requires_grad) / 1e6)
    if args.peak_tflops:
        row["mfu"] = row["achieved_tflops"] / args.peak_tflops
    print(f"{name:>10s}: train {B / sec:8.1f} img/s  ({sec * 1e3:.0f} ms/step, batch {B}, {row['precision']})  "
          f"{row['gflop_per_image']:.1f} GFLOP/img  {row['achieved_tflops']:.2f} TFLOP/s"
          + (f"  MFU {row['mfu']:.1%}" if args.peak_tflops else "") + f"  peak mem {row['peak_memory_mb']:.0f} MB"
          + (f"  first step {first:.1f} s" if first > 5 * sec else ""), flush=True)
    if ops:
        row["profile"] = [dict(op=op, share=share, ms_per_step=ms) for op, share, ms in ops]
        top = 15
        print(f"{'':>10s}  where {args.profile} steps' time goes (self time per step, the largest of {len(ops)} ops):")
        for op, share, ms in ops[:top]:
            print(f"{'':>12s}{share:6.1%} {ms:8.2f} ms  {op}")
        if len(ops) > top:
            print(f"{'':>12s}{sum(o[1] for o in ops[top:]):6.1%} {sum(o[2] for o in ops[top:]):8.2f} ms  the other {len(ops) - top} ops")
    return row


def our_model(args, p, res):
    """(model, train.py's objective for it) of the preset, with its per-t weights."""
    d = Diffusion()
    unet_cfg, enc_cfg = presets.model_configs(args.model, p, res, d)
    unet_cfg.grad_checkpoint = args.grad_checkpoint
    if args.official:  # the official code: 32 GroupNorm groups, no eps input skip; time the same architecture
        unet_cfg.norm_groups, unet_cfg.input_skip = 32, None
        if enc_cfg is not None:
            enc_cfg.norm_groups = 32
    model = make_model(args.model, unet_cfg, enc_cfg, p, res)
    weights = run_weights(p, d) if args.model != "pdae" else None
    return model, Objective(args.model, model, d, weights)


def bench_sampling(model, row, args, device, amp_dtype, res, SB):
    """Sampling and inversion throughput, in inference mode with the same autocast."""
    model.eval()
    d = Diffusion()
    x0 = torch.rand(SB, 3, res, res, generator=torch.Generator().manual_seed(1)).to(device) * 2 - 1
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        f = noise_predictor(model, args.model, x0)
        for T in args.sample_T:
            s_sample = timed(lambda: d.ddim_sample(f, torch.randn_like(x0), T), device, 1, max(1, args.iters // 3))
            s_invert = timed(lambda: d.ddim_invert(f, x0, T), device, 1, max(1, args.iters // 3))
            row[f"ddim{T}_sample_images_per_s"] = SB / s_sample
            row[f"ddim{T}_invert_images_per_s"] = SB / s_invert
            print(f"{'':>10s}  DDIM T={T}: sample {SB / s_sample:8.1f} img/s, invert {SB / s_invert:8.1f} img/s "
                  f"(batch {SB})", flush=True)


def alternate_rounds(a, b, rows, args, device, amps, res, B, tuned=(True, True)):
    """More rounds of a and b, alternating, so that a busy machine slows both alike; medians decide.
    rows: the two rows a and b reported; b's speed relative to a's goes into b's row."""
    t_a, t_b = [rows[0]["train_step_s"]], [rows[1]["train_step_s"]]
    for _ in range(args.rounds - 1):
        t_a.append(bench_train(a[0].train(), a[1], args, device, amps[0], res, B, tuned[0])[0])
        t_b.append(bench_train(b[0].train(), b[1], args, device, amps[1], res, B, tuned[1])[0])
    ratio = statistics.median(t_a) / statistics.median(t_b)
    rows[0]["train_step_s_rounds"], rows[1]["train_step_s_rounds"] = t_a, t_b
    rows[1][f"speed_vs_{rows[0]['name']}"] = ratio
    print(f"{rows[1]['name']} / {rows[0]['name']} training throughput: {ratio:.2f}x (medians of {args.rounds} alternating rounds)")


@cli.entry
def main(argv=None):
    args = parse_args(argv)
    device = cli.pick_device(args.device)
    p = presets.PRESETS[args.preset]
    res, B = p["res"], args.batch_size or p["batch_size"]
    cuda = device.type == "cuda"
    amp_dtype = cli.autocast_dtype(device, args.amp)
    if args.json:  # fail before the timing, not after it
        check_writable(args.json)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    rows, ours = [], None
    official = official_model(args.official, args.model, p, res) if args.official else None  # fail before timing
    if not args.skip_ours:
        ours = our_model(args, p, res)
        rows.append(report("ours", *ours, args, device, amp_dtype, res, B))
        bench_sampling(ours[0], rows[-1], args, device, amp_dtype, res, args.sample_batch or B)
        if args.compile:  # train.py --compile: the same objective through torch.compile, beside eager
            if args.profile:  # name each fused kernel in the profile, not only the compiled region around them
                torch._inductor.config.cpp.enable_kernel_profile = True
            compiled = (ours[0], torch.compile(ours[1]))
            rows.append(report("compiled", *compiled, args, device, amp_dtype, res, B))
            alternate_rounds(ours, compiled, rows[-2:], args, device, (amp_dtype, amp_dtype), res, B)
    if official is not None:
        off_amp = amp_dtype if cuda else None  # the official code autocasts only on CUDA
        rows.append(report("official", *official, args, device, off_amp, res, B, tuned=cuda))
        if ours is not None:
            alternate_rounds(official, ours, [rows[-1], rows[0]], args, device, (off_amp, amp_dtype), res, B, (cuda, True))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


def check_writable(path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        cli.usage_error(f"--json {path}: {folder} is not a writable folder; create it or choose another path")


if __name__ == "__main__":
    sys.exit(main())
