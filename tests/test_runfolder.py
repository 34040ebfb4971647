"""runfolder.py: the lock, the owned folder, the stop signals, the loss-health rule, saves that fail cleanly."""
import os
import signal

import pytest
import torch

import checkpoint
import cli
from runfolder import LossHealth, RunFolder, StopSignals, last_good


# --- loss health: which checkpoint survives a divergence ----------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_loss_health_rule(seed):
    g = torch.Generator().manual_seed(seed)
    h = LossHealth()
    for v in (0.3 + 0.2 * torch.rand(200, generator=g)).tolist():  # noisy but steady: always healthy
        h.add(v)
        assert h.healthy()
    assert 0.3 <= h.ref <= 0.5
    spike = LossHealth(h.ref)
    for v in [h.ref] * 10 + [1e14] * 60:  # a run blowing up: the median crosses 10x the reference
        spike.add(v)
    assert not spike.healthy()
    nan = LossHealth(0.1)
    nan.add(float("nan"))
    assert not nan.healthy()



def test_a_folder_with_another_runs_snapshots_is_refused(tmp_path):
    (tmp_path / "r").mkdir()
    checkpoint.save(tmp_path / "r" / "ckpt_0000100.pt", {"step": 100})  # ckpt.pt moved away, snapshots left
    with pytest.raises(cli.UsageError, match="already holds a run"):
        with RunFolder(str(tmp_path / "r")):
            pass
    with RunFolder(str(tmp_path / "fresh")) as f:  # an empty folder is taken, and its lock names this process
        assert open(f.lock).read().split()[0] == str(os.getpid())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_failed_save_keeps_the_last_good_checkpoint_and_says_so(tmp_path):
    out = tmp_path / "r"
    with RunFolder(str(out)) as f:
        f.save({"step": 1, "w": torch.ones(2)})
        os.chmod(out, 0o500)
        try:
            with pytest.raises(OSError, match="while saving step 2.*step 1"):
                f.save({"step": 2, "w": torch.zeros(2)})
        finally:
            os.chmod(out, 0o700)
    assert checkpoint.read(str(out / "ckpt.pt"))["step"] == 1 and not [p for p in os.listdir(out) if ".tmp" in p]


def test_a_failed_save_as_root_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """The same, with the failure injected where torch writes (disk full), for machines where chmod binds no one."""
    out = tmp_path / "r"
    with RunFolder(str(out)) as f:
        f.save({"step": 1, "w": torch.ones(2)})
        def full(*a, **k):  # what torch.save raises on a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        monkeypatch.setattr(torch, "save", full)
        with pytest.raises(OSError, match="writing failed.*step 2.*step 1"):
            f.save({"step": 2, "w": torch.zeros(2)})
    monkeypatch.undo()
    assert checkpoint.read(str(out / "ckpt.pt"))["step"] == 1 and not [p for p in os.listdir(out) if ".tmp" in p]
    assert "step 1" in last_good(str(out / "ckpt.pt")) and "No checkpoint" in last_good(str(tmp_path / "none.pt"))


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_stop_signals_are_requests_and_their_handlers_are_restored(sig, code):
    before = signal.getsignal(getattr(signal, sig))
    with StopSignals() as stop:
        assert stop.requested is None and stop.exit_code() == 0
        os.kill(os.getpid(), getattr(signal, sig))
        assert stop.requested == sig and stop.exit_code() == code
    assert signal.getsignal(getattr(signal, sig)) == before
