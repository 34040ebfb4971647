"""The code paths a CUDA run takes, checked on the CPU against the plain path: gradient
checkpointing, gradient accumulation, channels-last, bf16 autocast, torch.compile, DDP with
accumulation and resume onto another world size, and the GPU figure script at a tiny size."""
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import presets
import train
from diffusion import Diffusion
from objective import Objective, t_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# float32: these compare two arithmetic paths, which bf16 rounding would blur (bf16 has its own test)
COMMON = ["--preset", "tiny16", "--n-train", "64", "--device", "cpu", "--batch-size", "8", "--log-every", "1000",
          "--amp", "off"]


def tiny_objective(seed, grad_checkpoint=False):
    """A tiny16 Diff-AE loss module and one batch, all seeded."""
    torch.manual_seed(seed)
    d = Diffusion()
    unet_cfg, enc_cfg = presets.model_configs("diffae", presets.PRESETS["tiny16"], 16, d)
    unet_cfg.grad_checkpoint = grad_checkpoint
    model = checkpoint.make_model({"kind": "diffae", "config": dict(checkpoint.configs(unet=unet_cfg, encoder=enc_cfg),
                                                                     diffusion={"T": 1000, "schedule": "linear"})})
    g = torch.Generator().manual_seed(seed + 1)
    batch = (torch.rand(4, 3, 16, 16, generator=g) * 2 - 1, torch.zeros(4, 0),
             torch.randint(0, 1000, (4,), generator=g), torch.randn(4, 3, 16, 16, generator=g))
    return Objective("diffae", model.train(), d, t_weights("snr", d)), batch


def grads(obj, batch, **autocast):
    obj.zero_grad()
    with torch.autocast("cpu", **autocast) if autocast else torch.enable_grad():
        loss = obj(*batch)
    loss.backward()
    return loss.detach().float(), {k: p.grad.clone() for k, p in obj.named_parameters() if p.grad is not None}


def close(a, b, rtol):
    return float((a - b).norm() / b.norm().clamp_min(1e-12)) < rtol


@pytest.mark.parametrize("seed", [0, 1])
def test_grad_checkpoint_gives_the_same_gradients(seed):
    plain, batch = tiny_objective(seed)
    ckpt, _ = tiny_objective(seed, grad_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    (la, ga), (lb, gb) = grads(plain, batch), grads(ckpt, batch)
    assert torch.equal(la, lb) and ga.keys() == gb.keys()
    assert all(close(gb[k], ga[k], 1e-5) for k in ga)


@pytest.mark.parametrize("seed", [0, 1])
def test_channels_last_gives_the_same_loss_and_gradients(seed):
    obj, batch = tiny_objective(seed)
    la, ga = grads(obj, batch)
    obj.to(memory_format=torch.channels_last)
    x0 = batch[0].contiguous(memory_format=torch.channels_last)
    lb, gb = grads(obj, (x0,) + batch[1:])
    assert close(lb, la, 1e-5) and all(close(gb[k], ga[k], 1e-4) for k in ga)


def test_bf16_autocast_stays_near_float32():
    obj, batch = tiny_objective(0)
    la, ga = grads(obj, batch)
    lb, gb = grads(obj, batch, dtype=torch.bfloat16)
    assert close(lb, la, 3e-2)
    total = torch.cat([g.flatten() for g in ga.values()])
    assert close(torch.cat([gb[k].flatten() for k in ga]), total, 0.1)


def test_compiled_objective_matches_eager():
    obj, batch = tiny_objective(0)
    la, ga = grads(obj, batch)
    compiled = torch.compile(obj, backend="aot_eager")  # the graph capture and autograd split; inductor is CUDA's
    obj.zero_grad()
    lb = compiled(*batch)
    lb.backward()  # the gradients land on obj's own parameters
    gb = {k: p.grad for k, p in obj.named_parameters() if p.grad is not None}
    assert gb.keys() == ga.keys()
    assert close(lb.detach(), la, 1e-5) and all(close(gb[k], ga[k], 1e-4) for k in ga)


def test_grad_accum_is_the_same_step_as_one_big_batch(tmp_path):
    assert train.main(COMMON + ["--data-dir", str(tmp_path / "c"), "--steps", "2", "--out", str(tmp_path / "one")]) == 0
    assert train.main(COMMON + ["--data-dir", str(tmp_path / "c"), "--steps", "2", "--out", str(tmp_path / "acc"),
                                "--grad-accum", "4"]) == 0
    a, b = checkpoint.load(tmp_path / "one" / "ckpt.pt"), checkpoint.load(tmp_path / "acc" / "ckpt.pt")
    # Adam's 1/sqrt(v) amplifies summation-order noise of tiny gradients; updates are ~lr = 2e-4
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=1e-5) for k in a["model"])


def test_ddp_with_accumulation_then_resume_on_one_process(tmp_path):
    """2 Gloo ranks x --grad-accum 2 for 2 steps, resumed by 1 process for a 3rd = 1 process for 3 steps."""
    cache = ["--data-dir", str(tmp_path / "c"), "--model", "ddim"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), *COMMON, *cache, "--steps", "2", "--grad-accum", "2", "--out", str(tmp_path / "ddp")]
    r = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[:2000] + "\n...\n" + r.stderr[-1000:]  # a rank's own error comes first
    assert train.main(["--resume", str(tmp_path / "ddp" / "ckpt.pt"), "--steps", "3", "--log-every", "1000", "--amp", "off"]) == 0
    assert train.main(COMMON + cache + ["--steps", "3", "--out", str(tmp_path / "one")]) == 0
    a, b = checkpoint.load(tmp_path / "ddp" / "ckpt.pt"), checkpoint.load(tmp_path / "one" / "ckpt.pt")
    assert a["step"] == b["step"] == 3
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=1e-5) for k in b["model"])


def test_gpu_figure_script_runs_at_a_tiny_size(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), BENCH_TINY="1", OMP_NUM_THREADS="1")
    r = subprocess.run(["bash", os.path.join(ROOT, "bench_gpu.sh")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    assert (tmp_path / "bench_tiny16_diffae_bf16.json").exists()
