"""train.py end to end on a tiny preset: exact resume, failure modes, data-parallel equivalence."""
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import cli
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
    assert checkpoint.read(path)["step"] == 1  # the file as written (read: CRC-checked, weights_only)


def test_two_process_gloo_equals_one_process(tmp_path):
    """torchrun with 2 CPU ranks: identical weights on both ranks, equal to a 1-process run of the same global batch."""
    common = ["--preset", "tiny16", "--model", "ddim", "--n-train", "64", "--data-dir", str(tmp_path / "cache"),
              "--device", "cpu", "--steps", "3", "--batch-size", "8", "--log-every", "1000", "--amp", "off"]
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


def test_input_skip_and_t_weights_are_kept_by_the_checkpoint_and_resume(tmp_path):
    assert run(tmp_path, tmp_path / "s", "--steps", "1", "--input-skip", "--t-weights", "snr") == 0
    ck = checkpoint.load(tmp_path / "s" / "ckpt.pt")
    assert ck["config"]["unet"]["input_skip"] == {"T": 1000, "schedule": "linear"}
    assert ck["config"]["train"]["hparams"]["t_weights"] == "snr"
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


def test_minutes_stops_saves_and_resumes_to_the_full_run(tmp_path, capsys):
    """--minutes: past the deadline the run saves and ends (exit 0) at that step, the checkpoint is the
    --steps 4 run's at that step, and --resume carries it on to the same weights as one unbroken run."""
    assert run(tmp_path, tmp_path / "full", "--steps", "4") == 0
    assert run(tmp_path, tmp_path / "m", "--steps", "4", "--minutes", "1e-9") == 0
    assert "time is up at step 1 of 4" in capsys.readouterr().out
    cut = checkpoint.load(tmp_path / "m" / "ckpt.pt")
    assert cut["step"] == 1
    assert train.main(["--resume", str(tmp_path / "m" / "ckpt.pt"), "--log-every", "1000"]) == 0
    full, resumed = checkpoint.load(tmp_path / "full" / "ckpt.pt"), checkpoint.load(tmp_path / "m" / "ckpt.pt")
    assert resumed["step"] == 4
    assert all(torch.equal(full["ema"][k], resumed["ema"][k]) for k in full["ema"])


@pytest.mark.parametrize("flag", [["--minutes", "1"], ["--t-gamma", "0"], ["--grad-accum", "2"]])
def test_latent_refuses_the_autoencoders_flags(tmp_path, flag, capsys):
    """Flags of the image run are refused by --model latent, whatever their value (0 and 1 included)."""
    assert run(tmp_path, tmp_path / "ae", "--steps", "1") == 0
    with pytest.raises(SystemExit) as e:
        train.main(["--model", "latent", "--ckpt", str(tmp_path / "ae" / "ckpt.pt"), "--out", str(tmp_path / "lat"), *flag])
    assert e.value.code == 2 and "does not apply to --model latent" in capsys.readouterr().err


def test_keep_every_must_be_positive(tmp_path):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, tmp_path / "z", "--steps", "1", "--keep-every", "0")
    assert e.value.code == 2


# --- PDAE's training set-up (train.build_pdae) ------------------------------------------------

def test_build_pdae_from_a_ddim_checkpoint(tmp_path, capsys):
    import pdae
    assert run(tmp_path, tmp_path / "ddim", "--model", "ddim", "--steps", "1") == 0
    pre = tmp_path / "ddim" / "ckpt.pt"
    ddim = checkpoint.build(checkpoint.load(pre))
    args = train.parse_args(["--model", "pdae", "--pretrained", str(pre), "--preset", "tiny16", "--n-train", "8",
                             "--data-dir", str(tmp_path / "cache")])
    r, _, _ = train.resolve(args, None)
    model = train.build_pdae(r, grad_checkpoint=False)
    assert model.config["pdae"]["pretrained_sha256"] == pdae.weights_sha256(ddim.state_dict()) == model.pretrained_sha256()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 95])
    with torch.no_grad():
        assert torch.equal(model.unet(x, t), ddim(x, t))
    again = checkpoint.build({"kind": "pdae", "config": model.config, "ema": model.state_dict()})
    assert again.pretrained_sha256() == model.config["pdae"]["pretrained_sha256"]
    for bad, says in ((None, "--pretrained"), (str(tmp_path / "nope.pt"), "no checkpoint")):
        r.pretrained = bad
        with pytest.raises(cli.UsageError, match=says):
            train.build_pdae(r, grad_checkpoint=False)


# --- run folders are owned; nothing is lost --------------------------------------------------

def test_a_new_run_refuses_a_folder_that_holds_another_run(tmp_path, capsys):
    assert run(tmp_path, tmp_path / "a", "--steps", "1") == 0
    before = (tmp_path / "a" / "ckpt.pt").read_bytes()
    with pytest.raises(SystemExit) as e:
        run(tmp_path, tmp_path / "a", "--steps", "1", "--model", "ddim")
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err
    assert (tmp_path / "a" / "ckpt.pt").read_bytes() == before


def test_resume_writes_beside_the_checkpoint_not_its_recorded_folder(tmp_path):
    import shutil
    assert run(tmp_path, tmp_path / "src", "--steps", "1") == 0
    before = (tmp_path / "src" / "ckpt.pt").read_bytes()
    shutil.copytree(tmp_path / "src", tmp_path / "copy")
    assert train.main(["--resume", str(tmp_path / "copy" / "ckpt.pt"), "--steps", "2", "--log-every", "1000"]) == 0
    assert (tmp_path / "src" / "ckpt.pt").read_bytes() == before
    assert checkpoint.load(tmp_path / "copy" / "ckpt.pt")["step"] == 2
    # a snapshot resumed into its own folder would overwrite the later ckpt.pt: refused
    assert run(tmp_path, tmp_path / "k", "--steps", "2", "--keep-every", "1") == 0
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(tmp_path / "k" / "ckpt_0000001.pt"), "--steps", "3"])
    assert e.value.code == 2


def test_a_held_lock_keeps_a_second_run_out_and_a_killed_runs_lock_is_free(tmp_path, capsys):
    out = tmp_path / "l"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242 host'); print('held', flush=True); time.sleep(60)",
                               str(out / "train.lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(SystemExit) as e:
        run(tmp_path, out, "--steps", "1")
    assert e.value.code == 2 and "in use by another training process (pid 4242 host)" in capsys.readouterr().err
    assert not (out / "ckpt.pt").exists()
    holder.kill()  # kill -9: the kernel releases its lock, nothing stale is left to recognise
    holder.wait()
    assert run(tmp_path, out, "--steps", "1") == 0
    assert (out / "train.lock").read_text().split()[0] == str(os.getpid())


@pytest.mark.parametrize("sig, code", [("SIGTERM", 143)])
def test_a_stop_signal_saves_the_last_step_and_resume_continues_exactly(tmp_path, monkeypatch, capsys, sig, code):
    """kill / timeout / preemption (SIGTERM) saves at the step boundary; resumed, the run ends with the weights of
    a run never stopped. Ctrl-C and SIGHUP take the same path (StopSignals, tests/test_runfolder.py)."""
    import signal
    real, calls = train.train_step, []

    def stopped_at_step_2(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), getattr(signal, sig))  # arrives mid-step: the step finishes, then the loop saves
        return real(*a, **k)

    monkeypatch.setattr(train, "train_step", stopped_at_step_2)
    assert run(tmp_path, tmp_path / "c", "--steps", "4") == code
    assert f"{sig}: saved step 2" in capsys.readouterr().out
    monkeypatch.undo()
    assert checkpoint.load(tmp_path / "c" / "ckpt.pt")["step"] == 2
    assert train.main(["--resume", str(tmp_path / "c" / "ckpt.pt"), "--log-every", "1000"]) == 0
    assert run(tmp_path, tmp_path / "d", "--steps", "4") == 0
    a, b = checkpoint.load(tmp_path / "c" / "ckpt.pt"), checkpoint.load(tmp_path / "d" / "ckpt.pt")
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# --- every flag validated where it is parsed ---------------------------------------------------

@pytest.mark.parametrize("bad", [["--steps", "0"], ["--steps", "-5"], ["--res", "0"], ["--res", "17"], ["--res", "-8"],
                                 ["--grad-accum", "0"], ["--grad-accum", "-1"], ["--ema", "1.5"], ["--lr", "nan"],
                                 ["--lr", "0"], ["--seed", "-1"], ["--batch-size", "0"], ["--amp", "fp16"],
                                 ["--device", "cuda:7"], ["--n-train", "0"], ["--batch-size", "6", "--grad-accum", "4"]])
def test_bad_numbers_are_usage_errors_before_any_work(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, tmp_path / "v", *bad)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error" in err and "Traceback" not in err
    assert not (tmp_path / "v" / "ckpt.pt").exists()


def test_resume_refuses_options_it_cannot_change(tmp_path, capsys):
    assert run(tmp_path, tmp_path / "r", "--steps", "2") == 0
    path = str(tmp_path / "r" / "ckpt.pt")
    for extra in (["--lr", "0.5"], ["--model", "ddim"], ["--batch-size", "4"], ["--data", "ffhq"], ["--res", "32"]):
        with pytest.raises(SystemExit) as e:
            train.main(["--resume", path, "--steps", "3", *extra])
        assert e.value.code == 2 and "conflicts with the run being resumed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # --steps is the new total: at or below the checkpoint's step is nothing to do
        train.main(["--resume", path, "--steps", "2"])
    assert e.value.code == 2 and "at step 2 already" in capsys.readouterr().err
    assert train.main(["--resume", path, "--steps", "3", "--lr", "2e-4", "--log-every", "1000"]) == 0  # same value: fine


def test_divergence_keeps_the_last_healthy_checkpoint(tmp_path, monkeypatch, capsys):
    """A loss that blows up (finite, 1e14) after step 12: the step-20 save is refused, ckpt.pt stays at step 10."""
    real, calls = train.train_step, []

    def blowing_up(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * 1e14 if len(calls) > 12 else loss

    monkeypatch.setattr(train, "train_step", blowing_up)
    rc = run(tmp_path, tmp_path / "dv", "--steps", "40", "--save-every", "10")
    out = capsys.readouterr().out
    assert rc == 1 and "diverged at step 20" in out and "step 10" in out
    assert checkpoint.load(tmp_path / "dv" / "ckpt.pt")["step"] == 10


def test_broken_image_folder_warns_and_stops_with_one_line(tmp_path, capsys):
    """A small image is upscaled with a warning; a file truncated past its header stops the run (rc 1), one line."""
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        a = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(a).save(folder / f"{i}.png")
    Image.fromarray(a[:8, :8]).save(folder / "small.png")
    whole = (folder / "7.png").read_bytes()
    (folder / "7.png").write_bytes(whole[: len(whole) // 2])
    rc = train.main(["--preset", "tiny16", "--data", "mine", "--data-dir", str(folder), "--res", "16", "--out",
                     str(tmp_path / "o"), "--device", "cpu", "--batch-size", "9", "--steps", "2", "--log-every", "1000"])
    err = capsys.readouterr().err
    assert rc == 1 and "small.png" in err and "upscaled" in err and "7.png" in err and "Traceback" not in err


@pytest.mark.parametrize("what", ["missing", "not-torch"])
def test_resume_of_a_bad_file_is_a_usage_error(tmp_path, capsys, what):
    path = tmp_path / "x.pt"
    if what == "not-torch":
        path.write_bytes(b"hello")
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(path), "--steps", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--resume" in err and "Traceback" not in err


def test_the_latent_stage_saves_on_sigterm_and_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    import signal
    assert run(tmp_path, tmp_path / "ae", "--steps", "1") == 0
    latent = ["--model", "latent", "--ckpt", str(tmp_path / "ae" / "ckpt.pt"), "--steps", "6", "--batch-size", "8",
              "--log-every", "1000", "--data-dir", str(tmp_path / "cache"), "--n-train", "64"]
    assert train.main(latent + ["--out", str(tmp_path / "full")]) == 0
    assert "latent_state" not in checkpoint.load(tmp_path / "full" / "ckpt.pt")  # finished: nothing to resume
    real, calls = train.Progress.update, []

    def stopped_at_step_3(self, step, loss):
        calls.append(step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, step, loss)

    monkeypatch.setattr(train.Progress, "update", stopped_at_step_3)
    assert train.main(latent + ["--out", str(tmp_path / "cut")]) == 143
    monkeypatch.undo()
    cut = checkpoint.load(tmp_path / "cut" / "ckpt.pt")
    assert cut["latent_state"]["step"] == 3 and "--resume" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # its folder is the stopped run's own
        train.main(latent + ["--out", str(tmp_path / "cut")])
    assert e.value.code == 2
    assert train.main(["--model", "latent", "--resume", str(tmp_path / "cut" / "ckpt.pt"), "--log-every", "1000"]) == 0
    a, b = checkpoint.load(tmp_path / "full" / "ckpt.pt"), checkpoint.load(tmp_path / "cut" / "ckpt.pt")
    assert "latent_state" not in b
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key] if k.startswith("latent."))


@pytest.mark.parametrize("what", ["latent stage", "optimizer stripped", "released"])
def test_resume_refuses_what_is_not_a_resumable_run_in_one_line(tmp_path, capsys, what):
    assert run(tmp_path, tmp_path / "ae", "--steps", "1") == 0
    ck = checkpoint.load(tmp_path / "ae" / "ckpt.pt")
    if what == "latent stage":
        ck["config"]["latent"] = {"net": {}}
    elif what == "optimizer stripped":
        ck.pop("optimizer")
    else:
        ck["config"]["train"]["source"] = "official"
    torch.save(ck, tmp_path / "x.pt")
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(tmp_path / "x.pt"), "--steps", "3", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --resume") and err.count("\n") == 1
