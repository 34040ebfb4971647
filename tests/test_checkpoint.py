"""checkpoint.py: atomic saves, loads that verify the file (CRC, finite weights, fit to the config),
refusal of code-running pickles, the convert command, and the one-way imports."""
import ast
import os
import subprocess
import sys
import zipfile

import pytest
import torch

import checkpoint
import pdae
from checkpoint import CheckpointError
from diffusion import Diffusion
from encoder import PDAEEncoder, PDAEEncoderConfig
from latent_ddim import LatentDDIM, LatentNetConfig
from unet import UNet, UNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UC = UNetConfig(res=16, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_res=(), embed_dim=32, norm_groups=8)


def ddim_ck(fill=None):
    torch.manual_seed(0)
    unet = UNet(UC)
    sd = unet.state_dict()
    if fill is not None:
        sd["out.2.weight"] = torch.full(sd["out.2.weight"].shape, fill)
    return {"kind": "ddim", "config": {**checkpoint.configs(unet=UC), "diffusion": {"T": 100, "schedule": "linear"}},
            "model": sd, "ema": sd, "optimizer": None, "step": 0, "images_seen": 0, "rng": None}


# --- saving -----------------------------------------------------------------------------------------

def test_save_writes_through_a_synced_temporary(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", os.path.basename(a))), real_replace(a, b))[1])
    path = tmp_path / "ck.pt"
    checkpoint.save(path, ddim_ck())
    assert calls[0] == "fsync" and calls[1] == ("replace", f"ck.pt.tmp{os.getpid()}")
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"] and checkpoint.load(path)["kind"] == "ddim"


def test_save_removes_temporaries_of_dead_saves_only(tmp_path):
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()  # its PID now names no process
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = tmp_path / "ck.pt"
        for suffix in (done.pid, alive.pid, "x"):
            (tmp_path / f"ck.pt.tmp{suffix}").write_bytes(b"partial")
        (tmp_path / f"other.pt.tmp{done.pid}").write_bytes(b"another checkpoint's")
        checkpoint.save(path, ddim_ck())
        left = sorted(os.listdir(tmp_path))
    finally:
        alive.kill()
        alive.wait()
    assert left == sorted(["ck.pt", f"ck.pt.tmp{alive.pid}", "ck.pt.tmpx", f"other.pt.tmp{done.pid}"])


# --- verified loading --------------------------------------------------------------------------------

def test_a_flipped_byte_is_caught_by_the_crc(tmp_path):
    ck = ddim_ck(fill=0.25)
    path = tmp_path / "ck.pt"
    checkpoint.save(path, ck)
    data = bytearray(path.read_bytes())
    at = data.find(torch.full((64,), 0.25).numpy().tobytes())  # inside out.2.weight's stored bytes
    assert at > 0
    data[at + 3] ^= 0x01  # 0.25 -> a nearby finite float: only the CRC can tell
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt.*CRC"):
        checkpoint.load(path)


def test_truncated_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "ck.pt"
    checkpoint.save(path, ddim_ck())
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError):
        checkpoint.load(path)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        checkpoint.load(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "missing.pt")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_name(tmp_path, bad):
    ck = ddim_ck()
    ck["ema"] = dict(ck["ema"])
    w = ck["ema"]["input_blocks.1.0.in_layers.2.weight"].clone()
    w[0, 0, 0, 0] = bad
    ck["ema"]["input_blocks.1.0.in_layers.2.weight"] = w
    torch.save(ck, tmp_path / "ck.pt")
    with pytest.raises(CheckpointError, match=r"ema / input_blocks\.1\.0\.in_layers\.2\.weight holds NaN or Inf"):
        checkpoint.load(tmp_path / "ck.pt")


def test_missing_config_parts_and_wrong_shapes_are_checkpoint_errors(tmp_path):
    """Our own files are verified when loaded (and again when built), naming the first key that disagrees."""
    ck = ddim_ck()
    cases = {"no_unet": ({**ck, "config": {"diffusion": ck["config"]["diffusion"]}}, r"kind 'ddim'.*lacks 'unet'"),
             "no_encoder": ({**ck, "kind": "diffae"}, r"kind 'diffae'.*encoder"),
             "bad_unet": ({**ck, "config": {**ck["config"], "unet": {"ch": 16, "colour": 3}}}, "colour"),
             "no_weights": ({**ck, "ema": None, "model": None}, "holds no weights"),
             "shape": ({**ck, "ema": {**ck["ema"], "out.2.weight": torch.zeros(3, 8, 3, 3)}},
                       r"'out\.2\.weight' of 'ema' has shape \(3, 8, 3, 3\) but its config implies \(3, 16, 3, 3\)"),
             "missing": ({**ck, "ema": {k: v for k, v in ck["ema"].items() if k != "out.0.bias"}},
                         r"'out\.0\.bias' of 'ema' of shape \(16,\) that the checkpoint lacks"),
             "extra": ({**ck, "model": {**ck["model"], "spare.weight": torch.zeros(1)}}, r"'spare\.weight' of 'model' has no place")}
    for name, (bad, message) in cases.items():
        torch.save(bad, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match=message):
            checkpoint.load(tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match=message):
            checkpoint.build(bad)
    with pytest.raises(CheckpointError, match="'config' is not a dict"):
        torch.save({**ck, "config": [1]}, tmp_path / "list.pt")
        checkpoint.load(tmp_path / "list.pt")


class Payload:
    """Unpickling this would create a file: a stand-in for code a malicious checkpoint runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_code_running_pickle_is_refused_without_torchs_advice(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"kind": "ddim", "config": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(path)
    msg = str(e.value)
    assert "refused" in msg and "open" in msg  # names what it would run (io.open)
    assert "weights_only=False" not in msg and "weights_only" not in msg
    assert not marker.exists()
    with zipfile.ZipFile(tmp_path / "odd.pt", "w") as z:  # a torch.save-like archive with an opcode weights_only refuses
        z.writestr("ck/data.pkl", b"\x80\x02n\x00garbage.")
        z.writestr("ck/version", b"3\n")
    with pytest.raises(CheckpointError, match="refused") as e:
        checkpoint.load(tmp_path / "odd.pt")
    assert "weights_only" not in str(e.value)


def test_a_pdae_with_a_latent_ddim_builds_with_it(tmp_path):
    torch.manual_seed(0)
    enc = PDAEEncoder(PDAEEncoderConfig(res=16, ch=16, ch_mult=(1, 2), attn_res=(), num_heads=1, z_dim=8, norm_groups=8))
    model = pdae.PDAE(UC, enc, Diffusion(100))
    model.latent = LatentDDIM(LatentNetConfig(z_dim=8, hidden=16, num_layers=3), clip=True)
    config = {**model.config, "latent": model.latent.config}
    checkpoint.save(tmp_path / "ck.pt", {"kind": "pdae", "config": config, "ema": model.state_dict(), "model": None})
    back = checkpoint.build(checkpoint.load(tmp_path / "ck.pt"))
    assert back.latent is not None and back.latent.clip is True
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in back.state_dict().items())


# --- the convert command -------------------------------------------------------------------------------

def test_convert_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    for argv in ([], ["convert", "a.pt"], ["copy", "a.pt", "b.pt"], ["convert", str(tmp_path / "no.pt"), str(tmp_path / "b.pt")]):
        with pytest.raises(SystemExit) as e:
            checkpoint.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "b.pt").exists()


def test_convert_writes_ours(tmp_path, capsys):
    checkpoint.save(tmp_path / "a.pt", ddim_ck())
    assert checkpoint.main(["convert", str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]) == 0
    assert "kind ddim" in capsys.readouterr().out and checkpoint.load(tmp_path / "b.pt")["kind"] == "ddim"


@pytest.mark.parametrize("dst", ["a.pt", "b.pt"])
def test_convert_writes_over_nothing_its_source_included(tmp_path, capsys, dst):
    """A release converted onto itself, or onto a file already there (a run's ckpt.pt), is refused untouched."""
    checkpoint.save(tmp_path / "a.pt", ddim_ck())
    (tmp_path / "b.pt").write_bytes(b"someone else's")
    before = {p: open(tmp_path / p, "rb").read() for p in ("a.pt", "b.pt")}
    with pytest.raises(SystemExit) as e:
        checkpoint.main(["convert", str(tmp_path / "a.pt"), str(tmp_path / dst)])
    assert e.value.code == 2 and "exists already" in capsys.readouterr().err
    assert {p: open(tmp_path / p, "rb").read() for p in ("a.pt", "b.pt")} == before


# --- imports point one way -----------------------------------------------------------------------------

def imports(module, top_level_only=True):
    """The project modules that `module`.py imports (at the top of the file, or anywhere)."""
    tree = ast.parse(open(os.path.join(ROOT, module + ".py")).read())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    ours = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    return names & ours - {module}


def test_converters_do_not_import_checkpoint_and_checkpoint_imports_at_the_top():
    for converter in ("official", "official_pdae"):
        assert "checkpoint" not in imports(converter, top_level_only=False)
    assert {"official", "official_pdae", "pdae", "diffae", "unet", "latent_ddim"} <= imports("checkpoint")
    assert imports("checkpoint") == imports("checkpoint", top_level_only=False)  # no function-level imports


def test_no_import_cycles_among_top_level_imports():
    ours = [f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")]
    graph = {m: imports(m) for m in ours}

    def reach(start):
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph.get(m, ())
        return seen

    cycles = [m for m in ours if m in reach(m)]
    assert not cycles, cycles


def test_a_released_classifier_is_read_or_refused_in_one_line(tmp_path):
    import os
    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "official-diffae", "ffhq_autoenc_cls_tiny.ckpt")
    c = checkpoint.read_classifier(fixture)
    assert len(c["names"]) == c["weight"].shape[0] == c["bias"].shape[0] and c["weight"].shape[1] == c["mean"].shape[0]
    (tmp_path / "junk.ckpt").write_bytes(b"junk")
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.read_classifier(str(tmp_path / "junk.ckpt"))
