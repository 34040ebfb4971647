"""train.py end to end on a tiny preset: exact resume, failure modes, data-parallel equivalence."""
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tmp_path, out, *extra):
    args = ["--preset", "tiny16", "--n-train", "64", "--data-dir", str(tmp_path / "cache"), "--out", str(out),
            "--device", "cpu", "--log-every", "1000", "--batch-size", "8", *extra]
    return train.main(args)


def test_resume_continues_exactly(tmp_path):
    assert run(tmp_path, tmp_path / "a", "--steps", "4") == 0
    assert run(tmp_path, tmp_path / "b", "--steps", "2") == 0
    assert train.main(["--resume", str(tmp_path / "b" / "ckpt.pt"), "--steps", "4", "--log-every", "1000"]) == 0
    a, b = checkpoint.load(tmp_path / "a" / "ckpt.pt"), checkpoint.load(tmp_path / "b" / "ckpt.pt")
    assert a["step"] == b["step"] == 4 and a["images_seen"] == b["images_seen"] == 32
    for key in ("model", "ema"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert os.path.exists(tmp_path / "a" / "preview_0000004.png")
    assert (tmp_path / "a" / "log.jsonl").read_text().count("images_per_s") >= 1


def test_checkpoint_is_plain_and_rebuilds(tmp_path):
    assert run(tmp_path, tmp_path / "r", "--steps", "1") == 0
    ck = torch.load(tmp_path / "r" / "ckpt.pt", weights_only=True)  # plain types only
    assert set(ck) >= {"kind", "config", "model", "ema", "optimizer", "step", "images_seen", "rng"}
    model = checkpoint.build(ck)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck["ema"][k])
    checkpoint.save(tmp_path / "copy.pt", ck)
    again = checkpoint.load(tmp_path / "copy.pt")
    for k in ck["model"]:
        assert torch.equal(ck["model"][k], again["model"][k])


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, capsys):
    rc = run(tmp_path, tmp_path / "nan", "--steps", "6", "--lr", "1e30", "--save-every", "1")
    assert rc == 1
    assert "non-finite loss" in capsys.readouterr().out
    ck = checkpoint.load(tmp_path / "nan" / "ckpt.pt")
    assert 1 <= ck["step"] < 6


def test_missing_dataset_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--data", "nope", "--res", "64", "--data-dir", str(tmp_path / "missing"), "--steps", "1"])
    assert e.value.code == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    checkpoint.save(path, {"kind": "ddim", "config": {}, "step": 1})

    def boom(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, {"kind": "ddim", "config": {}, "step": 2})
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1


def test_two_process_gloo_equals_one_process(tmp_path):
    """torchrun with 2 CPU ranks: identical weights on both ranks, equal to a 1-process run of the same global batch."""
    common = ["--preset", "tiny16", "--model", "ddim", "--n-train", "64", "--data-dir", str(tmp_path / "cache"),
              "--device", "cpu", "--steps", "3", "--batch-size", "8", "--log-every", "1000"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), *common, "--out", str(tmp_path / "ddp")]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert train.main(common + ["--out", str(tmp_path / "one")]) == 0
    ddp, one = checkpoint.load(tmp_path / "ddp" / "ckpt.pt"), checkpoint.load(tmp_path / "one" / "ckpt.pt")
    # Adam divides by sqrt(v) + 1e-8, which amplifies float summation-order noise in tiny gradients
    # to ~1e-6 (the updates themselves are ~lr = 2e-4 per step): compare at 1e-5
    for k in one["model"]:
        assert torch.allclose(ddp["model"][k], one["model"][k], atol=1e-5), k
    assert ddp["step"] == 3
    assert "rank 1 weights match rank 0" in r.stdout + r.stderr


@pytest.mark.parametrize("seed", [0, 3])
def test_pdae_t_weights_scale_each_samples_eq6_loss_by_lambda_t(seed):
    """--t-weights pdae: each sample's Eq. 6 loss times lambda_t / mean(lambda) (PDAE Eq. 10);
    uniform (the default) is Eq. 6 exactly."""
    import pdae
    from diffusion import Diffusion
    d = Diffusion(T=1000)
    w = train.t_weights("pdae", d)
    lam = pdae.loss_weights(d)
    assert torch.allclose(w, lam / lam.mean()) and abs(float(w.mean()) - 1) < 1e-12
    assert train.t_weights("uniform", d) is None and train.t_weights(None, d) is None
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1, torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([5, 400, 990])
    net = lambda x, tt: 0.5 * x
    per = [d.loss(net, x0[i:i + 1], t[i:i + 1], noise[i:i + 1]) for i in range(3)]
    expect = sum(float(w[t[i]]) * per[i] for i in range(3)) / 3
    assert torch.allclose(d.loss(net, x0, t, noise, weights=w).float(), expect.float(), rtol=1e-5)
    assert torch.allclose(d.loss(net, x0, t, noise), sum(per) / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="t weighting"):
        train.t_weights("snr", d)


def test_input_skip_and_t_weights_are_kept_by_the_checkpoint_and_resume(tmp_path):
    assert run(tmp_path, tmp_path / "s", "--steps", "1", "--input-skip", "--t-weights", "pdae") == 0
    ck = checkpoint.load(tmp_path / "s" / "ckpt.pt")
    assert ck["config"]["unet"]["input_skip"] == {"T": 1000, "schedule": "linear"}
    assert ck["config"]["train"]["hparams"]["t_weights"] == "pdae"
    assert checkpoint.build(ck).unet.cfg.input_skip is not None


def test_pdae_resume_continues_exactly_without_pretrained(tmp_path):
    """A PDAE checkpoint holds its frozen DPM, so --resume needs nothing else and matches one long run."""
    assert run(tmp_path, tmp_path / "ddim", "--model", "ddim", "--steps", "1") == 0
    pre = str(tmp_path / "ddim" / "ckpt.pt")
    assert run(tmp_path, tmp_path / "a", "--model", "pdae", "--pretrained", pre, "--steps", "3") == 0
    assert run(tmp_path, tmp_path / "b", "--model", "pdae", "--pretrained", pre, "--steps", "1") == 0
    assert train.main(["--resume", str(tmp_path / "b" / "ckpt.pt"), "--steps", "3", "--log-every", "1000"]) == 0
    a, b = checkpoint.load(tmp_path / "a" / "ckpt.pt"), checkpoint.load(tmp_path / "b" / "ckpt.pt")
    assert a["kind"] == b["kind"] == "pdae" and a["step"] == b["step"] == 3
    assert a["config"]["pdae"]["pretrained_sha256"] == b["config"]["pdae"]["pretrained_sha256"]
    for key in ("model", "ema"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)


def test_keep_every_snapshots_are_the_run_at_that_step(tmp_path):
    """--keep-every 2 keeps ckpt_0000002.pt and ckpt_0000004.pt; the last is the final checkpoint,
    and resuming the first reproduces it (a snapshot is a full checkpoint, as for learning curves)."""
    assert run(tmp_path, tmp_path / "k", "--steps", "4", "--keep-every", "2") == 0
    snaps = sorted(p.name for p in (tmp_path / "k").glob("ckpt_*.pt"))
    assert snaps == ["ckpt_0000002.pt", "ckpt_0000004.pt"]
    final, last = checkpoint.load(tmp_path / "k" / "ckpt.pt"), checkpoint.load(tmp_path / "k" / "ckpt_0000004.pt")
    assert all(torch.equal(final["ema"][k], last["ema"][k]) for k in final["ema"])
    first = checkpoint.load(tmp_path / "k" / "ckpt_0000002.pt")
    assert first["step"] == 2 and not all(torch.equal(first["ema"][k], final["ema"][k]) for k in final["ema"])
    os.makedirs(tmp_path / "r")
    os.replace(tmp_path / "k" / "ckpt_0000002.pt", tmp_path / "r" / "ckpt.pt")
    assert train.main(["--resume", str(tmp_path / "r" / "ckpt.pt"), "--out", str(tmp_path / "r"), "--steps", "4",
                       "--log-every", "1000"]) == 0
    resumed = checkpoint.load(tmp_path / "r" / "ckpt.pt")
    assert all(torch.equal(final["ema"][k], resumed["ema"][k]) for k in final["ema"])


def test_keep_every_must_be_positive(tmp_path):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, tmp_path / "z", "--steps", "1", "--keep-every", "0")
    assert e.value.code == 2
