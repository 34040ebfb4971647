"""Importing the released Diff-AE checkpoints: official.py against the official code's own outputs.

Fixtures (README beside them): tiny checkpoints in the official Lightning layout with random
weights, and reference_tiny.pt, what the official code computes from them.
"""
import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import official
from checkpoint import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "..", "shared", "fixtures", "official-diffae")
AUTOENC = os.path.join(FIXTURES, "diffae_autoenc_tiny.ckpt")
DDPM = os.path.join(FIXTURES, "diffae_ddpm_tiny.ckpt")

pytestmark = pytest.mark.skipif(not os.path.exists(AUTOENC),
                                reason="official fixtures not found beside the repository")


def rel(a, b):
    return float((a - b).norm() / b.norm())



@pytest.fixture(scope="module")
def ref():
    return torch.load(os.path.join(FIXTURES, "reference_tiny.pt"), weights_only=True)


@pytest.fixture(scope="module")
def raw():
    return {"autoenc": torch.load(AUTOENC, weights_only=True), "ddpm": torch.load(DDPM, weights_only=True)}


@pytest.fixture(scope="module")
def cks():
    return {"autoenc": checkpoint.load(AUTOENC), "ddpm": checkpoint.load(DDPM)}


@pytest.fixture(scope="module")
def models(cks):
    return {k: checkpoint.build(ck) for k, ck in cks.items()}


def test_load_detects_kind_and_reads_the_config(cks):
    ae, dd = cks["autoenc"], cks["ddpm"]
    assert ae["kind"] == "diffae" and dd["kind"] == "ddim"
    c = ae["config"]
    assert c["unet"]["ch"] == 32 and tuple(c["unet"]["ch_mult"]) == (1, 1, 2) and c["unet"]["cond_dim"] == 64
    assert tuple(c["encoder"]["ch_mult"]) == (1, 1, 2, 2) and c["encoder"]["z_dim"] == 64
    assert c["latent"]["net"]["num_layers"] == 10 and c["latent"]["net"]["skip_layers"] == tuple(range(1, 10))
    assert c["latent"]["schedule"] == "const" and c["diffusion"] == {"T": 1000, "schedule": "linear"}
    assert c["train"]["source"] == "official" and c["train"]["data"] == "ffhqlmdb256" and c["train"]["res"] == 32
    assert ae["step"] == 1234 and ae["images_seen"] == 1234 * 128 and ae["optimizer"] is None
    assert dd["config"]["encoder"] is None and dd["config"]["latent"] is None and dd["config"]["unet"]["cond_dim"] is None


def test_networks_reproduce_the_official_outputs(models, ref):
    ae, dd = models["autoenc"], models["ddpm"]
    with torch.no_grad():
        errs = {"z": rel(ae.encoder(ref["x0"]), ref["z"]),
                "eps_autoenc": rel(ae.unet(ref["x_t"], ref["t"], ref["z"]), ref["eps_autoenc"]),
                "eps_latent": rel(ae.latent.net(ref["z_norm"], ref["t_latent"]), ref["eps_latent"]),
                "eps_ddpm": rel(dd(ref["x_t"], ref["t"]), ref["eps_ddpm"])}
    assert all(e < 1e-5 for e in errs.values()), errs


def official_ddim_timesteps(T, N):
    """The official sampler's respacing, space_timesteps(T, f"ddim{N}"): the smallest integer stride giving N steps."""
    for stride in range(1, T):
        if len(range(0, T, stride)) == N:
            return list(range(0, T, stride))


@pytest.mark.parametrize("N", [10, 20])
def test_ddim_loops_reproduce_the_official_sampler(cks, models, ref, N):
    d = checkpoint.diffusion(cks["autoenc"])
    assert d.respace(N).tolist() == official_ddim_timesteps(1000, N), \
        "Diffusion.respace must follow the official Diff-AE sampler's 'ddimN' rule to reproduce its loops"
    ae, dd = models["autoenc"], models["ddpm"]
    eps = lambda x, t: ae.unet(x, t, ref["z"])
    with torch.no_grad():
        errs = {"xT_inverted": rel(d.ddim_invert(eps, ref["x0"], N), ref[f"xT_inverted_{N}"]),
                "x0_from_inverted": rel(d.ddim_sample(eps, ref[f"xT_inverted_{N}"], N), ref[f"x0_from_inverted_{N}"]),
                "ddpm_ddim_sample": rel(checkpoint.diffusion(cks["ddpm"]).ddim_sample(dd, ref["noise"], N),
                                        ref[f"ddpm_ddim_sample_{N}"])}
    assert all(e < 1e-4 for e in errs.values()), errs


def test_build_carries_the_latent_statistics(models, raw):
    lat = models["autoenc"].latent
    sd = raw["autoenc"]["state_dict"]
    assert torch.equal(lat.mean, sd["conds_mean"][0]) and torch.equal(lat.std, sd["conds_std"][0])
    assert lat.znormalize is False  # the fixture's latent_znormalize: the official sampler then skips un-normalising


def test_converted_file_round_trips_bit_exactly(cks, tmp_path):
    for name, ck in cks.items():
        path = tmp_path / f"{name}.pt"
        checkpoint.save(path, ck)
        back = checkpoint.load(path)
        assert back["kind"] == ck["kind"] and back["config"] == ck["config"] and back["step"] == ck["step"]
        for which in ("ema", "model"):
            assert back[which].keys() == ck[which].keys()
            assert all(torch.equal(back[which][k], v) for k, v in ck[which].items())


def test_config_without_model_conf_gives_the_same_import(raw, cks):
    """Older checkpoints save model_conf = None: the architecture comes from the net_* keys instead."""
    for name in ("autoenc", "ddpm"):
        hp = dict(raw[name]["hyper_parameters"])
        del hp["model_conf"]
        ck = official.convert({**raw[name], "hyper_parameters": hp})
        assert ck["kind"] == cks[name]["kind"]
        assert {k: v for k, v in ck["config"].items() if k != "train"} == \
               {k: v for k, v in cks[name]["config"].items() if k != "train"}


def test_a_tensor_of_the_wrong_shape_is_named(raw, tmp_path):
    key = "ema_model.input_blocks.1.0.in_layers.2.weight"
    sd = dict(raw["autoenc"]["state_dict"])
    sd[key] = torch.zeros(7, 32, 3, 3)
    path = tmp_path / "tampered.ckpt"
    torch.save({**raw["autoenc"], "state_dict": sd}, path)
    shapes = r".*\(7, 32, 3, 3\).*\(32, 32, 3, 3\)"  # the file's shape, then the config's
    with pytest.raises(CheckpointError, match=r"'ema_model\.input_blocks\.1\.0\.in_layers\.2\.weight'" + shapes):
        checkpoint.load(path)


def test_a_config_that_disagrees_with_the_weights_is_refused(raw):
    hp = raw["ddpm"]["hyper_parameters"]
    mc = {**hp["model_conf"], "model_channels": 64}
    with pytest.raises(CheckpointError, match="shape"):
        checkpoint.convert({**raw["ddpm"], "hyper_parameters": {**hp, "model_conf": mc}})
    sd = {k: v for k, v in raw["autoenc"]["state_dict"].items() if not k.startswith("ema_model.latent_net.layers.9")}
    with pytest.raises(CheckpointError, match=r"ema_model\.latent_net\.layers\.9\..*lacks"):
        checkpoint.convert({**raw["autoenc"], "state_dict": sd})


@pytest.mark.parametrize("key,value", [
    ("resblock_updown", False), ("use_new_attention_order", True), ("num_head_channels", 32),
    ("enc_pool", "depthconv"), ("num_input_res_blocks", 1), ("resnet_two_cond", False)])
def test_unimplemented_official_options_are_refused(raw, key, value):
    hp = raw["autoenc"]["hyper_parameters"]
    mc = {**hp["model_conf"], key: value}
    with pytest.raises(CheckpointError, match=f"{key}={value!r} is not implemented"):
        checkpoint.convert({**raw["autoenc"], "hyper_parameters": {**hp, "model_conf": mc}})
    with pytest.raises(CheckpointError, match="net_autoenc_stochastic=True"):
        checkpoint.convert({**raw["autoenc"], "hyper_parameters": {**hp, "net_autoenc_stochastic": True}})
    with pytest.raises(CheckpointError, match="latent_beta_scheduler='const0.01'"):
        checkpoint.convert({**raw["autoenc"], "hyper_parameters": {**hp, "latent_beta_scheduler": "const0.01"}})


class Payload:
    """Unpickling this would create a file: a stand-in for code a malicious checkpoint runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unsafe_pickle_is_refused_without_running_it(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.load(path)
    assert not marker.exists()


def test_other_files_are_refused(tmp_path):
    cases = {"random.pt": {"foo": torch.zeros(3), "bar": 1},
             "no_weights.ckpt": {"state_dict": {"x_T": torch.zeros(1)}, "hyper_parameters": {}},
             "bad_hp.ckpt": {"state_dict": {}, "hyper_parameters": [1, 2]},
             "bad_conf.ckpt": {"state_dict": {"ema_model.x": torch.zeros(1)}, "hyper_parameters": {"net_attn": 16}}}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError):
            checkpoint.load(tmp_path / name)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path / "text.pt")


def test_cli_converts(tmp_path):
    out = tmp_path / "x.pt"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "checkpoint.py"), "convert", AUTOENC, str(out)],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "kind diffae" in r.stdout and checkpoint.load(out)["kind"] == "diffae"
