"""Importing the released Diff-AE checkpoints: official.py against the official code's own outputs.

Fixtures (README beside them): tiny checkpoints in the official Lightning layout with random
weights, and reference_tiny.pt, what the official code computes from them. tests/fixtures/official-diffae
(made by tests/fixtures/make_official.py) adds one file per option combination of the official configs,
and an attribute classifier.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import classifier
import official
from checkpoint import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "..", "shared", "fixtures", "official-diffae")
AUTOENC = os.path.join(FIXTURES, "diffae_autoenc_tiny.ckpt")
DDPM = os.path.join(FIXTURES, "diffae_ddpm_tiny.ckpt")
OPTIONS = os.path.join(ROOT, "tests", "fixtures", "official-diffae")  # kept in the repository
CLASSIFIER = os.path.join(OPTIONS, "ffhq_autoenc_cls_tiny.ckpt")

needs_shared = pytest.mark.skipif(not os.path.exists(AUTOENC), reason="official fixtures not found beside the repository")


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


@needs_shared
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


@needs_shared
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


@needs_shared
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


@needs_shared
def test_build_carries_the_latent_statistics(models, raw):
    lat = models["autoenc"].latent
    sd = raw["autoenc"]["state_dict"]
    assert torch.equal(lat.mean, sd["conds_mean"][0]) and torch.equal(lat.std, sd["conds_std"][0])
    assert lat.znormalize is False  # the fixture's latent_znormalize: the official sampler then skips un-normalising


@needs_shared
def test_converted_file_round_trips_bit_exactly(cks, tmp_path):
    for name, ck in cks.items():
        path = tmp_path / f"{name}.pt"
        checkpoint.save(path, ck)
        back = checkpoint.load(path)
        assert back["kind"] == ck["kind"] and back["config"] == ck["config"] and back["step"] == ck["step"]
        for which in ("ema", "model"):
            assert back[which].keys() == ck[which].keys()
            assert all(torch.equal(back[which][k], v) for k, v in ck[which].items())


@needs_shared
def test_config_without_model_conf_gives_the_same_import(raw, cks):
    """Older checkpoints save model_conf = None: the architecture comes from the net_* keys instead."""
    for name in ("autoenc", "ddpm"):
        hp = dict(raw[name]["hyper_parameters"])
        del hp["model_conf"]
        ck = official.convert({**raw[name], "hyper_parameters": hp})
        assert ck["kind"] == cks[name]["kind"]
        assert {k: v for k, v in ck["config"].items() if k != "train"} == \
               {k: v for k, v in cks[name]["config"].items() if k != "train"}


@needs_shared
def test_a_tensor_of_the_wrong_shape_is_named(raw, tmp_path):
    key = "ema_model.input_blocks.1.0.in_layers.2.weight"
    sd = dict(raw["autoenc"]["state_dict"])
    sd[key] = torch.zeros(7, 32, 3, 3)
    path = tmp_path / "tampered.ckpt"
    torch.save({**raw["autoenc"], "state_dict": sd}, path)
    shapes = r".*\(7, 32, 3, 3\).*\(32, 32, 3, 3\)"  # the file's shape, then the config's
    with pytest.raises(CheckpointError, match=r"'ema_model\.input_blocks\.1\.0\.in_layers\.2\.weight'" + shapes):
        checkpoint.load(path)


@needs_shared
def test_a_config_that_disagrees_with_the_weights_is_refused(raw):
    hp = raw["ddpm"]["hyper_parameters"]
    with pytest.raises(CheckpointError, match="shape"):  # LitModel builds from the net_* keys: they decide
        checkpoint.convert({**raw["ddpm"], "hyper_parameters": {**hp, "net_ch": 64}})
    sd = {k: v for k, v in raw["autoenc"]["state_dict"].items() if not k.startswith("ema_model.latent_net.layers.9")}
    with pytest.raises(CheckpointError, match=r"ema_model\.latent_net\.layers\.9\..*lacks"):
        checkpoint.convert({**raw["autoenc"], "state_dict": sd})


# --- every option of the official configs: one file per combination (tests/fixtures/README.md) -----------

OPTION_FILES = {  # file -> what its import must say (kind, then config entries by path)
    "autoenc_head_channels": ("diffae", {"unet.head_ch": 2, "encoder.head_ch": 2, "unet.attn_res": (16, 8),
                                         "unet.cond_dim": 12, "encoder.attn_res": (16, 8)}),
    "autoenc_conv_resample": ("diffae", {"unet.resample": "conv", "encoder.resample": "conv", "unet.num_heads": 2,
                                         "unet.ch_mult": (1, 2, 2), "encoder.ch_mult": (1, 1, 2, 2),
                                         "encoder.attn_res": (4,), "unet.dropout": 0.0}),
    "ddim_pool_new_order": ("ddim", {"unet.resample": "pool", "unet.new_attention_order": True,
                                     "unet.time_embed_ch": 6, "unet.num_res_blocks": 2, "unet.cond_dim": None}),
    "autoenc_latent_options": ("diffae", {"latent.net.num_layers": 3, "latent.net.skip_layers": (1,),
                                          "latent.net.hidden": 24, "latent.net.time_emb_dim": 16,
                                          "latent.net.num_time_layers": 3, "latent.net.time_last_act": True,
                                          "latent.net.activation": "relu", "latent.net.last_act": "tanh",
                                          "latent.net.use_norm": False, "latent.net.condition_bias": 0.5,
                                          "latent.net.dropout": 0.1, "latent.znormalize": True,
                                          "latent.schedule": "const"}),
    "autoenc_cond_channels_no_model_conf": ("diffae", {"unet.cond_dim": 4, "unet.embed_dim": 8, "encoder.z_dim": 4,
                                                       "encoder.attn_res": (8,), "unet.attn_res": (16,)}),
    "ddim_head_channels_two_cond": ("ddim", {"unet.head_ch": 2, "unet.ch_mult": (1, 1, 2), "unet.cond_dim": None}),
}


@pytest.fixture(scope="module")
def option_ref():
    return torch.load(os.path.join(OPTIONS, "reference.pt"), weights_only=True)


def entry(config, path):
    for part in path.split("."):
        config = config[part]
    return tuple(config) if isinstance(config, list) else config


@pytest.mark.parametrize("name", list(OPTION_FILES))
def test_each_option_combination_reproduces_the_official_outputs(name, option_ref):
    ck = checkpoint.load(os.path.join(OPTIONS, f"{name}.ckpt"))
    kind, expected = OPTION_FILES[name]
    assert ck["kind"] == kind and {p: entry(ck["config"], p) for p in expected} == expected
    ref, x_t, t = option_ref[name], option_ref["x_t"], option_ref["t"]
    for weights, tag in (("ema", ""), ("model", "_raw")):
        m = checkpoint.build(ck, weights)
        with torch.no_grad():
            if kind == "ddim":
                errs = {"eps": rel(m(x_t, t), ref["eps" + tag])}
            else:
                errs = {"z": rel(m.encoder(option_ref["x0"]), ref["z" + tag]),
                        "eps": rel(m.unet(x_t, t, ref["z"]), ref["eps" + tag])}
            if "eps_latent" in ref:
                errs["eps_latent"] = rel(m.latent.net(ref["z_norm"], ref["t_latent"]), ref["eps_latent" + tag])
        assert all(e < 1e-5 for e in errs.values()), (weights, errs)


def test_the_net_keys_decide_when_the_saved_model_conf_is_a_stale_snapshot():
    """The released latent checkpoints save model_conf from before their latent net was configured."""
    raw = torch.load(os.path.join(OPTIONS, "autoenc_latent_options.ckpt"), weights_only=True)
    assert raw["hyper_parameters"]["model_conf"]["latent_net_conf"] is None
    assert any(k.startswith("ema_model.latent_net.") for k in raw["state_dict"])
    ck = official.convert(raw)
    assert ck["config"]["latent"]["net"]["num_layers"] == 3
    hp = {k: v for k, v in raw["hyper_parameters"].items() if k not in ("net_latent_activation", "net_latent_net_last_act")}
    unrecorded = official.convert({**raw, "hyper_parameters": hp})["config"]["latent"]["net"]  # enums the saver drops
    assert (unrecorded["activation"], unrecorded["last_act"]) == ("silu", "none")


def test_unused_z_layers_of_a_ddim_baseline_are_left_out():
    raw = torch.load(os.path.join(OPTIONS, "ddim_head_channels_two_cond.ckpt"), weights_only=True)
    assert any(".cond_emb_layers." in k for k in raw["state_dict"])
    ck = official.convert(raw)
    assert not any(".cond_emb_layers." in k for k in ck["ema"]) and len(ck["ema"]) == len(ck["model"])


REFUSED = [  # (where the option is set, key, value, what the message names)
    ("model_conf", "num_classes", 10, "num_classes=10"),
    ("model_conf", "dims", 3, "dims=3"),
    ("model_conf", "out_channels", 6, "out_channels=6"),
    ("model_conf", "input_channel_mult", (1, 1), "input_channel_mult=(1, 1)"),
    ("model_conf", "num_heads_upsample", 2, "num_heads_upsample=2"),
    ("model_conf", "num_head_channels", 3, "num_head_channels=3 does not divide the attention width 8"),
    ("hp", "net_num_input_res_blocks", 2, "num_input_res_blocks=2"),
    ("hp", "net_enc_pool", "depthconv", "enc_pool='depthconv'"),
    ("hp", "net_beatgans_resnet_two_cond", False, "resnet_two_cond=False"),
    ("hp", "style_ch", 16, "enc_out_channels=16"),
    ("hp", "net_latent_activation", "gelu", "latent_net_conf.activation='gelu'"),
    ("hp", "net_latent_layers", 1, "latent_net_conf.num_layers=1"),
    ("hp", "latent_beta_scheduler", "const0.01", "latent_beta_scheduler='const0.01'"),
]


@pytest.mark.parametrize("where,key,value,says", REFUSED, ids=[r[1] for r in REFUSED])
def test_what_cannot_be_built_is_refused_in_one_line_naming_it(where, key, value, says):
    raw = torch.load(os.path.join(OPTIONS, "autoenc_latent_options.ckpt"), weights_only=True)
    hp = dict(raw["hyper_parameters"])
    if where == "model_conf":
        hp["model_conf"] = {**hp["model_conf"], key: value}
    else:
        hp[key] = value
    with pytest.raises(CheckpointError) as e:
        checkpoint.convert({**raw, "hyper_parameters": hp}, "x.ckpt")
    assert str(e.value).startswith("x.ckpt: ") and says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_options_the_official_code_ignores_are_accepted():
    raw = torch.load(os.path.join(OPTIONS, "autoenc_head_channels.ckpt"), weights_only=True)
    hp = {**raw["hyper_parameters"], "net_autoenc_stochastic": True}  # read by nothing in the official model code
    hp["model_conf"] = {**hp["model_conf"], "time_embed_channels": 5}  # the autoencoder replaces that embedding
    assert official.convert({**raw, "hyper_parameters": hp})["config"] == official.convert(raw)["config"]


# --- the released attribute classifier -----------------------------------------------------------------

def test_read_classifier_returns_exactly_the_file_s_weights_and_statistics():
    c = official.read_classifier(CLASSIFIER)
    sd = torch.load(CLASSIFIER, weights_only=True)["state_dict"]
    assert set(c) == {"names", "weight", "bias", "mean", "std"}
    assert c["names"] == list(official.CELEBAHQ_ATTRIBUTES) and len(c["names"]) == 40
    assert c["names"][31] == "Smiling" and c["names"][15] == "Eyeglasses"  # the official order
    assert torch.equal(c["weight"], sd["classifier.weight"]) and torch.equal(c["bias"], sd["classifier.bias"])
    assert torch.equal(c["mean"], sd["conds_mean"][0]) and torch.equal(c["std"], sd["conds_std"][0])


def test_the_official_manipulation_equals_classifier_manipulate(option_ref):
    """The official notebook: denormalize(normalize(z) + scale sqrt(512) F.normalize(classifier.weight[attr]))."""
    c, ref = official.read_classifier(CLASSIFIER), option_ref["classifier"]
    ours = torch.stack([classifier.manipulate(z, F.normalize(c["weight"][int(a)], dim=0), float(s), c["mean"], c["std"])
                        for z, a, s in zip(ref["z"], ref["attr"], ref["scale"])])
    assert rel(ours - ref["z"], ref["z_manipulated"] - ref["z"]) < 1e-5  # the step itself, not only z
    assert torch.allclose(ours, ref["z_manipulated"], atol=1e-5)


def _tampered(sd=None, **hp):
    raw = torch.load(CLASSIFIER, weights_only=True)
    return {**raw, "state_dict": {**raw["state_dict"], **(sd or {})}, "hyper_parameters": {**raw["hyper_parameters"], **hp}}


CLASSIFIER_CASES = {  # case -> (the file's content, what the one-line message says)
    "not a classifier": ({"state_dict": {}, "hyper_parameters": {}}, "not an official Diff-AE attribute classifier"),
    "wrong width": (_tampered({"classifier.weight": torch.zeros(7, 512)}), "weight has shape (7, 512)"),
    "short mean": (_tampered({"conds_mean": torch.zeros(1, 511)}), "mean has shape (511,)"),
    "negative std": (_tampered({"conds_std": -torch.ones(1, 512)}), "std has entries <= 0"),
    "NaN weight": (_tampered({"classifier.weight": torch.full((40, 512), float("nan"))}), "weight holds NaN"),
    "int bias": (_tampered({"classifier.bias": torch.zeros(40, dtype=torch.long)}), "bias is Tensor, not a float"),
    "a model": ("model", "not an official Diff-AE attribute classifier"),
}


@pytest.mark.parametrize("case", list(CLASSIFIER_CASES))
def test_a_malformed_classifier_is_one_line(tmp_path, case):
    content, says = CLASSIFIER_CASES[case]
    path = tmp_path / "cls.ckpt"
    torch.save(torch.load(os.path.join(OPTIONS, "ddim_pool_new_order.ckpt"), weights_only=True)
               if content == "model" else content, path)
    with pytest.raises(official.ConversionError) as e:
        official.read_classifier(path)
    assert says in str(e.value) and "\n" not in str(e.value) and str(path) in str(e.value), str(e.value)


def test_unreadable_classifier_files_are_one_line(tmp_path):
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    marker = tmp_path / "ran"
    torch.save({"state_dict": Payload(str(marker))}, tmp_path / "evil.ckpt")
    for name in ("missing.ckpt", "text.ckpt", "evil.ckpt"):
        with pytest.raises(official.ConversionError) as e:
            official.read_classifier(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_a_classifier_given_as_a_model_says_what_it_is():
    with pytest.raises(CheckpointError, match="attribute classifier .* official.read_classifier"):
        checkpoint.load(CLASSIFIER)


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


@needs_shared
def test_cli_converts(tmp_path):
    out = tmp_path / "x.pt"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "checkpoint.py"), "convert", AUTOENC, str(out)],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "kind diffae" in r.stdout and checkpoint.load(out)["kind"] == "diffae"
