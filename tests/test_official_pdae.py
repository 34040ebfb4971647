"""Importing PDAE's released models: official_pdae.py against the official code's own outputs.

Fixtures (README beside them): a tiny pre-trained DPM, PDAE autoencoder and latent DPM in the
official folder layout with random weights, and reference.pt, what the official code computes from
them. The property tests at the end need no fixtures: they export a model of ours with another
architecture under the official names and configs, and import it back. tests/fixtures/official-pdae
(made by tests/fixtures/make_official.py) adds a DPM with other UNet options and the manipulation
classifier.
"""
import os
import shutil
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import classifier
import official
import official_pdae
import pdae
from checkpoint import CheckpointError
from diffusion import Diffusion
from encoder import PDAEEncoder, PDAEEncoderConfig
from latent_ddim import LatentDDIM, LatentNetConfig
from nn import AttentionBlock
from unet import UNet, UNetConfig

yaml = pytest.importorskip("yaml")  # reading the official config.yml files needs PyYAML

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "..", "shared", "fixtures", "official-pdae")
DPM = os.path.join(FIXTURES, "pre-trained-dpms", "ffhq128_tiny", "checkpoint.pt")
AUTOENC = os.path.join(FIXTURES, "trained-models", "autoencoder", "ffhq128_tiny", "checkpoint.pt")
LATENT = os.path.join(FIXTURES, "trained-models", "latent_denoise_fn", "ffhq128_tiny", "checkpoint.pt")

needs_fixtures = pytest.mark.skipif(not os.path.exists(LATENT), reason="official PDAE fixtures not found beside the repository")


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def ref():
    return torch.load(os.path.join(FIXTURES, "reference.pt"), weights_only=True)


@pytest.fixture(scope="module")
def cks():
    return {"dpm": checkpoint.load(DPM), "autoenc": checkpoint.load(AUTOENC), "latent": checkpoint.load(LATENT)}


@pytest.fixture(scope="module")
def models(cks):
    return {"dpm": checkpoint.build(cks["dpm"]), "dpm_diffusion": checkpoint.diffusion(cks["dpm"]),
            "pdae": checkpoint.build(cks["latent"])}


# --- the fixtures: what the official code computed ------------------------------------------------

@needs_fixtures
def test_load_recognises_each_file_and_follows_its_config(cks):
    dpm, ae, lat = cks["dpm"], cks["autoenc"], cks["latent"]
    assert (dpm["kind"], ae["kind"], lat["kind"]) == ("ddim", "pdae", "pdae")
    u = ae["config"]["unet"]
    assert (u["ch"], tuple(u["ch_mult"]), u["num_res_blocks"], tuple(u["attn_res"]), u["embed_dim"]) == \
           (32, (1, 1, 1, 2), 1, (16,), 128)  # attention_resolutions [8] is a factor: 128 / 8 = 16 pixels
    assert dpm["config"]["unet"] == u and u["cond_dim"] is None
    assert ae["config"]["diffusion"] == {"T": 1000, "schedule": "linear", "grid": "pdae"}
    assert ae["config"]["encoder"]["z_dim"] == 32 and ae["config"]["latent"] is None
    lc = lat["config"]["latent"]
    assert (lc["net"]["z_dim"], lc["net"]["hidden"], lc["net"]["num_layers"], lc["net"]["time_emb_dim"]) == (32, 128, 4, 64)
    assert (lc["schedule"], lc["grid"], lc["clip"], lc["znormalize"]) == ("const", "pdae", True, True)
    assert ae["step"] == 30000 and dpm["model"] is None  # the DPM file holds only ema_denoise_fn
    raw_dpm = torch.load(DPM, weights_only=True)["ema_denoise_fn"]
    assert ae["config"]["pdae"]["pretrained_sha256"] == pdae.weights_sha256(raw_dpm)
    assert ae["config"]["train"]["lr"] == 1e-4 and ae["config"]["train"]["adam_betas"] == [0.9, 0.999]


@needs_fixtures
def test_networks_and_one_step_predictions_reproduce_the_official_outputs(models, ref):
    m, dpm, d = models["pdae"], models["dpm"], models["pdae"].diffusion
    x_t, t, z = ref["x_t"], ref["t"], ref["z"]
    with torch.no_grad():
        eps, G = m.predict(x_t, t, z)
        shifted_train = m.eps_fn(z, kind="ddpm")(x_t, t)
        errs = {"x_t": rel(d.q_sample(ref["x0"], t, ref["noise"]), ref["x_t"]),
                "z": rel(m.encode(ref["x0"]), ref["z"]), "eps_dpm": rel(dpm(x_t, t), ref["eps_dpm"]),
                "decoder_eps": rel(eps, ref["decoder_eps"]), "decoder_gradient": rel(G, ref["decoder_gradient"]),
                "eps_shifted_ddim": rel(m.eps_fn(z)(x_t, t), ref["eps_shifted_ddim"]),
                "eps_shifted_train": rel(shifted_train, ref["eps_shifted_train"]),
                "train_loss": rel(m.loss(ref["x0"], t=t, noise=ref["noise"]), ref["train_loss"]),
                "pred_x0_dpm": rel(d.predict_x0(x_t, t, eps), ref["pred_x0_dpm"]),
                "pred_x0_pdae": rel(d.predict_x0(x_t, t, shifted_train), ref["pred_x0_pdae"]),
                "latent_eps": rel(m.latent.net(ref["latent_z_in"], ref["latent_t"]), ref["latent_eps"])}
    assert all(e < 1e-5 for e in errs.values()), errs


@needs_fixtures
def test_schedules_timesteps_and_latent_statistics(models, ref):
    m = models["pdae"]
    errs = {"alphas_cumprod": rel(m.diffusion.alphas_cumprod, ref["alphas_cumprod"]),
            "shift_coef": rel(-m.ddpm_coef, ref["shift_coef"]),  # official sign convention: -c_t
            "loss_weight": rel(m.weights, ref["loss_weight"]),
            "latent_alphas_cumprod": rel(m.latent.diffusion.alphas_cumprod, ref["latent_alphas_cumprod"])}
    assert all(e < 1e-6 for e in errs.values()), errs
    for N in (10, 20, 100, 1000):
        assert m.diffusion.respace(N).tolist() == ref[f"timesteps_ddim{N}"].tolist()
        assert len(m.diffusion.ddim_moves(N)) == len(ref[f"timesteps_ddim{N}"]) - 1  # N network calls (999 at N = T)
    assert torch.equal(m.latent.mean, ref["latents_mean"]) and torch.equal(m.latent.std, ref["latents_std"])


# ddim_sample_10 is left out for time: it is x0_decoded_10's call (decode) from another x_T, and
# ddim_sample_stop30_10 shares its first seven steps.
LOOPS = {  # reference key -> how our samplers make it from the stored inputs
    "xT_encoded_10": lambda m, ms, r: m.encode_stochastic(r["x0"], r["z"], 10),
    "x0_decoded_10": lambda m, ms, r: m.decode(r["z"], r["xT_encoded_10"], 10),
    "ddim_sample_stop30_10": lambda m, ms, r: m.decode(r["z"], r["noise"], 10, shift_until=0.3),
    "dpm_ddim_sample_10": lambda m, ms, r: ms["dpm_diffusion"].ddim_sample(ms["dpm"], r["noise"], 10),
    "trajectory_interpolation_10": lambda m, ms, r: m.diffusion.ddim_sample(
        m.eps_fn_lerp_g(r["z"], r["z"].flip(0), 0.25), r["noise"], 10),
    "latent_ddim_10": lambda m, ms, r: m.latent.diffusion.ddim_sample(m.latent.net, r["latent_z_T"], 10, clip=m.latent.clip),
    "latent_ddim_20": lambda m, ms, r: m.latent.diffusion.ddim_sample(m.latent.net, r["latent_z_T"], 20, clip=m.latent.clip),
    "latent_sample_10": lambda m, ms, r: m.decode(m.latent.denormalize(r["latent_ddim_10"]), r["noise"], 10, shift_until=0.3),
}


@needs_fixtures
@pytest.mark.parametrize("key", list(LOOPS))
def test_sampler_loops_reproduce_the_official_sampler(models, ref, key):
    with torch.no_grad():
        out = LOOPS[key](models["pdae"], models, ref)
    assert rel(out, ref[key]) < 1e-4


@needs_fixtures
def test_autoencoding_enc20_dec10(models, ref):
    m = models["pdae"]
    with torch.no_grad():
        z = m.encode(ref["x0"])
        out = m.decode(z, m.encode_stochastic(ref["x0"], z, 20), 10)
    assert rel(out, ref["autoencoding_enc20_dec10"]) < 2e-3  # x_T's rounding is amplified ~1/sqrt(abar_999)


@needs_fixtures
def test_latent_sample_starts_clamped_and_clips_every_step(models):
    lat = models["pdae"].latent
    z = lat.sample(3, 10, generator=torch.Generator().manual_seed(5))
    z_T = torch.randn(3, 32, generator=torch.Generator().manual_seed(5)).clamp(-1, 1)
    with torch.no_grad():
        expected = lat.denormalize(lat.diffusion.ddim_sample(lat.net, z_T, 10, clip=True))
    assert torch.equal(z, expected)


@needs_fixtures
def test_converted_file_round_trips_and_the_cli_writes_it(cks, tmp_path, capsys):
    out = tmp_path / "pdae_latent.pt"
    assert checkpoint.main(["convert", LATENT, str(out)]) == 0
    assert "kind pdae, with a latent DDIM" in capsys.readouterr().out
    back, ck = checkpoint.load(out), cks["latent"]
    assert back["kind"] == "pdae" and back["config"] == ck["config"]
    assert back["ema"].keys() == ck["ema"].keys() and all(torch.equal(back["ema"][k], v) for k, v in ck["ema"].items())


@needs_fixtures
def test_sample_py_works_on_the_released_files_as_they_are(tmp_path, monkeypatch):
    import sample
    monkeypatch.chdir(tmp_path)  # no data/ffhq here: held-out toyfaces stand in, with a note
    assert sample.main(["--ckpt", AUTOENC, "reconstruct", "--steps", "3", "--n", "2"]) == 0
    assert sample.main(["--ckpt", LATENT, "sample", "--steps", "3", "--n", "2"]) == 0
    assert sample.main(["--ckpt", DPM, "reconstruct", "--steps", "3", "--n", "2"]) == 0  # the DDIM baseline
    pngs = sorted(str(p.relative_to(tmp_path / "runs" / "samples")) for p in (tmp_path / "runs" / "samples").rglob("*.png"))
    assert pngs == ["autoencoder-ffhq128_tiny/reconstruct_T3.png", "autoencoder-ffhq128_tiny/sample_T3.png",
                    "pre-trained-dpms-ffhq128_tiny/reconstruct_T3.png"]  # one folder per file: nothing overwritten


@needs_fixtures
def test_a_missing_companion_file_is_named(tmp_path):
    folder = tmp_path / "trained-models" / "autoencoder" / "x"
    folder.mkdir(parents=True)
    os.symlink(AUTOENC, folder / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="needs its config.yml"):
        checkpoint.load(folder / "checkpoint.pt")
    shutil.copy(os.path.join(os.path.dirname(AUTOENC), "config.yml"), folder / "config.yml")
    with pytest.raises(CheckpointError, match=r"pre-trained-dpms/ffhq128_tiny/config\.yml.*does not exist"):
        checkpoint.load(folder / "checkpoint.pt")


# --- property tests: the import follows the configs, whatever the architecture ---------------------

UNET = UNetConfig(res=64, ch=32, ch_mult=(1, 2), num_res_blocks=2, attn_res=(32,), dropout=0.1, embed_dim=128,
                  num_heads=2, norm_groups=32)
DPM_YAML = {"denoise_fn_config": {"model": "CELEBA64DenoiseFn", "input_channel": 3, "base_channel": 32,
                                  "channel_multiplier": [1, 2], "num_residual_blocks_of_a_block": 2,
                                  "attention_resolutions": [2], "num_heads": 2, "head_channel": -1,
                                  "use_new_attention_order": False, "dropout": 0.1, "dims": 2},
            "diffusion_config": {"timesteps": 1000, "betas_type": "linear"},
            "train_dataset_config": {"name": "CELEBA64", "image_size": 64}}
AE_YAML = {"encoder_config": {"model": "CELEBA64Encoder", "latent_dim": 16},
           "decoder_config": {"model": "CELEBA64Decoder", "latent_dim": 16},
           "diffusion_config": {"timesteps": 1000, "betas_type": "linear"},
           "optimizer_config": {"lr": "1e-4", "adam_betas": "(0.9, 0.999)"},
           "trained_ddpm_config": "./pre-trained-dpms/tiny64/config.yml",
           "trained_ddpm_checkpoint": "./pre-trained-dpms/tiny64/checkpoint.pt"}
LATENT_YAML = {"latent_denoise_fn_config": {"model": "CELEBA64LatentDenoiseFn", "input_channel": 16, "model_channel": 48,
                                            "num_layers": 3, "time_emb_channel": 32, "use_norm": True, "dropout": 0.0},
               "inferred_latents": "./trained-models/latents/tiny64.pt",
               "trained_representation_learning_checkpoint": "./trained-models/autoencoder/tiny64/checkpoint.pt",
               "trained_representation_learning_config": "./trained-models/autoencoder/tiny64/config.yml"}


def ours_model():
    """A PDAE of ours with another architecture than the fixtures' (64 px, CelebA-64 encoder, z of 16), random weights."""
    torch.manual_seed(0)
    enc = PDAEEncoder(PDAEEncoderConfig(res=64, ch=64, ch_mult=(1, 2, 2, 2), attn_res=(16,), num_heads=4, z_dim=16))
    model = pdae.PDAE(UNET, enc, Diffusion(1000, "linear", grid="pdae"))
    model.latent = LatentDDIM(LatentNetConfig(z_dim=16, hidden=48, num_layers=3, time_emb_dim=32),
                              grid="pdae", clip=True)
    with torch.no_grad():
        for v in model.state_dict().values():
            v.add_(0.05 * torch.randn(v.shape))  # no layer keeps its zero init
        model.latent.std.abs_().add_(0.5)
    return model.eval()


def to_official(sd):
    """Our PDAE state dict -> the official (ema_denoise_fn, ema_encoder, ema_decoder, ema_latent_denoise_fn)."""
    dpm, enc, dec, lat = {}, {}, {}, {}
    shift = {"G.z_embed.": "label_emb.", "G.middle_block.": "shift_middle_block.",
             "G.output_blocks.": "shift_output_blocks.", "G.out.": "shift_out."}
    for k, v in sd.items():
        if k.startswith("unet."):
            dpm[k[5:]] = dec[k[5:]] = v
        elif k.startswith("encoder.layers."):
            enc["encoder." + k[len("encoder.layers."):]] = v
        elif k.startswith("latent.net."):
            lat[k[len("latent.net."):]] = v
        elif k.startswith("G."):
            old = next(p for p in shift if k.startswith(p))
            dec[(shift[old] + k[len(old):]).replace(".z_emb_layers.", ".emb_z_layers.")] = v
    return dpm, enc, dec, lat


def write(folder, ck, cfg):
    os.makedirs(folder, exist_ok=True)
    torch.save(ck, os.path.join(folder, "checkpoint.pt"))
    with open(os.path.join(folder, "config.yml"), "w") as f:
        yaml.safe_dump(cfg, f)
    return os.path.join(folder, "checkpoint.pt")


def export(model, root, dpm_yaml=DPM_YAML, tamper=None):
    """Write `model` in the official layout under root, each file in its training-checkpoint form."""
    dpm, enc, dec, lat = to_official({k: v.clone() for k, v in model.state_dict().items()})
    if tamper:
        tamper(dec)
    paths = {"dpm": write(os.path.join(root, "pre-trained-dpms", "tiny64"),
                          {"step": 7, "denoise_fn": dpm, "ema_denoise_fn": dpm, "optimizer": {}, "scaler": {}}, dpm_yaml),
             "autoenc": write(os.path.join(root, "trained-models", "autoencoder", "tiny64"),
                              {"step": 9, "encoder": enc, "ema_encoder": enc, "decoder": dec, "ema_decoder": dec,
                               "optimizer": {"state": {}, "param_groups": []}, "scaler": {}}, AE_YAML),
             "latent": write(os.path.join(root, "trained-models", "latent_denoise_fn", "tiny64"),
                             {"step": 3, "encoder": enc, "decoder": dec, "latent_denoise_fn": lat,
                              "ema_latent_denoise_fn": lat, "optimizer": {}, "scaler": {}}, LATENT_YAML)}
    torch.save({"mean": model.latent.mean.clone(), "std": model.latent.std.clone()},
               os.path.join(root, "trained-models", "latents", "tiny64.pt"))
    return paths


def test_import_follows_the_configs_for_another_architecture(tmp_path):
    model = ours_model()
    os.makedirs(tmp_path / "trained-models" / "latents")
    paths = export(model, str(tmp_path))
    ck = checkpoint.load(paths["latent"])
    assert ck["config"]["unet"] == {**vars(UNET), "cond_dim": None} and ck["config"]["encoder"]["ch_mult"] == (1, 2, 2, 2)
    back = checkpoint.build(ck)
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    x, t, z = torch.rand(2, 3, 64, 64) * 2 - 1, torch.tensor([3, 800]), torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(back.eps_fn(z)(x, t), model.eps_fn(z)(x, t))
        assert torch.equal(back.encode(x), model.encode(x))
        assert torch.equal(back.latent.net(z, t), model.latent.net(z, t))
    dpm = checkpoint.build(checkpoint.load(paths["dpm"]))
    assert all(torch.equal(v, ours["unet." + k]) for k, v in dpm.state_dict().items())
    assert checkpoint.load(paths["autoenc"])["config"]["train"]["lr"] == 1e-4  # "1e-4" parsed without eval


def test_a_tensor_of_the_wrong_shape_is_named_by_its_official_key(tmp_path):
    key = "shift_output_blocks.1.0.emb_z_layers.1.weight"
    os.makedirs(tmp_path / "trained-models" / "latents")
    paths = export(ours_model(), str(tmp_path), tamper=lambda dec: dec.__setitem__(key, torch.zeros(7, 128)))
    with pytest.raises(CheckpointError, match=r"'shift_output_blocks\.1\.0\.emb_z_layers\.1\.weight' of ema_decoder "
                                              r"has shape \(7, 128\)"):
        checkpoint.load(paths["autoenc"])


def test_a_config_that_disagrees_with_the_weights_names_the_first_key(tmp_path):
    os.makedirs(tmp_path / "trained-models" / "latents")
    wide = {**DPM_YAML, "denoise_fn_config": {**DPM_YAML["denoise_fn_config"], "base_channel": 64}}
    paths = export(ours_model(), str(tmp_path), dpm_yaml=wide)
    with pytest.raises(CheckpointError, match=r"'time_embed\.0\.weight' of ema_denoise_fn has shape \(128, 32\) "
                                              r"but its config implies \(256, 64\)"):
        checkpoint.load(paths["dpm"])
    paths = export(ours_model(), str(tmp_path), tamper=lambda dec: dec.pop("shift_out.2.bias"))
    with pytest.raises(CheckpointError, match=r"'shift_out\.2\.bias' of ema_decoder .* lacks"):
        checkpoint.load(paths["autoenc"])


REFUSED = [  # (config.yml, option, value, what the one-line message names)
    ("dpm", "learn_sigma", True, "denoise_fn_config.learn_sigma=True is not implemented"),
    ("dpm", "num_class", 10, "denoise_fn_config.num_class=10 is not implemented"),
    ("dpm", "dims", 3, "denoise_fn_config.dims=3 is not implemented"),
    ("dpm", "head_channel", 24, "denoise_fn_config.head_channel=24 does not divide the attention width 64"),
    ("latent", "num_layers", 1, "latent_denoise_fn_config.num_layers=1 is not implemented"),
]


@pytest.mark.parametrize("which,option,value,says", REFUSED, ids=[r[1] for r in REFUSED])
def test_what_cannot_be_built_is_refused_in_one_line_naming_it(tmp_path, which, option, value, says):
    os.makedirs(tmp_path / "trained-models" / "latents")
    section = {"dpm": "denoise_fn_config", "latent": "latent_denoise_fn_config"}[which]
    base = {"dpm": DPM_YAML, "latent": LATENT_YAML}[which]
    edited = {**base, section: {**base[section], option: value}}
    paths = export(ours_model(), str(tmp_path), **({"dpm_yaml": edited} if which == "dpm" else {}))
    if which == "latent":
        write(os.path.dirname(paths["latent"]), torch.load(paths["latent"], weights_only=True), edited)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(paths["latent"])
    assert says in str(e.value) and "\n" not in str(e.value) and "config.yml" in str(e.value), str(e.value)


def test_head_channel_on_one_attention_width_imports_the_autoencoder_too(tmp_path):
    """heads = width // head_channel: 64 // 32 = 2, what ours_model has; G reads the same."""
    os.makedirs(tmp_path / "trained-models" / "latents")
    cfg = {**DPM_YAML, "denoise_fn_config": {**DPM_YAML["denoise_fn_config"], "num_heads": 1, "head_channel": 32}}
    model = ours_model()
    ck = checkpoint.load(export(model, str(tmp_path), dpm_yaml=cfg)["autoenc"])
    assert (ck["config"]["unet"]["num_heads"], ck["config"]["unet"]["head_ch"]) == (2, 32)
    back, x, t, z = checkpoint.build(ck), torch.rand(2, 3, 64, 64) * 2 - 1, torch.tensor([3, 800]), torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(back.eps_fn(z)(x, t), model.eps_fn(z)(x, t))


def attention_settings(*blocks):
    return [(m.num_heads, m.new_order) for b in blocks for m in b.modules() if isinstance(m, AttentionBlock)]


@pytest.mark.parametrize("edit", [{"attn_res": (64, 32), "head_ch": 32}, {"new_attention_order": True}],
                         ids=["head_ch at two widths", "new attention order"])
def test_an_autoencoder_s_gradient_estimator_mirrors_the_frozen_attention_or_is_refused(edit):
    """The official ShiftUNet copies the UNet's attention into its shift blocks: ours must too, or refuse."""
    cfg = replace(UNET, **edit)
    unet, G = UNet(cfg), pdae.GradientEstimator(cfg, 16)
    mirrors = attention_settings(unet.middle_block, unet.output_blocks) == attention_settings(G.middle_block,
                                                                                               G.output_blocks)
    if mirrors:
        official_pdae.check_shift_attention(cfg, "config.yml")
    else:
        with pytest.raises(official_pdae.ConversionError, match=r"config\.yml: a PDAE autoencoder on a DPM with official option denoise_fn_config\."):
            official_pdae.check_shift_attention(cfg, "config.yml")


# --- more official files: tests/fixtures/official-pdae (tests/fixtures/README.md) ------------------------

OPTIONS = os.path.join(ROOT, "tests", "fixtures", "official-pdae")
DPM_OPTIONS = os.path.join(OPTIONS, "pre-trained-dpms", "dpm_head_channel", "checkpoint.pt")
CLASSIFIER = os.path.join(OPTIONS, "trained-models", "classifier", "celebahq_tiny", "checkpoint.pt")


@pytest.fixture(scope="module")
def option_ref():
    return torch.load(os.path.join(OPTIONS, "reference.pt"), weights_only=True)


def test_a_dpm_with_head_channel_two_attention_factors_and_the_new_order(option_ref):
    ck = checkpoint.load(DPM_OPTIONS)
    u = ck["config"]["unet"]
    assert (ck["kind"], u["ch"], tuple(u["ch_mult"]), tuple(u["attn_res"]), u["in_ch"]) == ("ddim", 8, (4, 4), (16, 8), 1)
    assert (u["head_ch"], u["num_heads"], u["new_attention_order"], u["embed_dim"]) == (8, 4, True, 32)
    with torch.no_grad():
        eps = checkpoint.build(ck)(option_ref["x_t"], option_ref["t"])
    assert rel(eps, option_ref["dpm_head_channel"]["eps"]) < 1e-5


# --- the released manipulation classifier ----------------------------------------------------------------

def test_read_classifier_returns_the_ema_classifier_and_the_inferred_latents_statistics():
    c = official_pdae.read_classifier(CLASSIFIER)
    raw = torch.load(CLASSIFIER, weights_only=True)
    stats = torch.load(os.path.join(OPTIONS, "trained-models", "latents", "celebahq_tiny.pt"), weights_only=True)
    assert set(c) == {"names", "weight", "bias", "mean", "std"} and c["names"][24] == "No_Beard" and len(c["names"]) == 40
    assert torch.equal(c["weight"], raw["ema_classifier"]["weight"]) and torch.equal(c["bias"], raw["ema_classifier"]["bias"])
    assert not torch.equal(c["weight"], raw["classifier"]["weight"])  # the sampler's EMA, not the raw layer
    assert torch.equal(c["mean"], stats["mean"]) and torch.equal(c["std"], stats["std"])


def test_the_official_manipulation_equals_classifier_manipulate(option_ref):
    """GaussianDiffusion.manipulation_sample: z_norm + scale sqrt(512) F.normalize(weight[attr]), denormalised."""
    c, ref = official_pdae.read_classifier(CLASSIFIER), option_ref["classifier"]
    ours = torch.stack([classifier.manipulate(z, F.normalize(c["weight"][int(a)], dim=0), float(s), c["mean"], c["std"])
                        for z, a, s in zip(ref["z"], ref["attr"], ref["scale"])])
    assert rel(ours - ref["z"], ref["z_manipulated"] - ref["z"]) < 1e-5
    assert torch.allclose(ours, ref["z_manipulated"], atol=1e-5)


def test_one_reader_takes_either_repository_s_classifier():
    diffae_file = os.path.join(ROOT, "tests", "fixtures", "official-diffae", "ffhq_autoenc_cls_tiny.ckpt")
    a, b = official_pdae.read_classifier(diffae_file), official.read_classifier(diffae_file)
    assert a["names"] == b["names"] and all(torch.equal(a[k], b[k]) for k in ("weight", "bias", "mean", "std"))


def classifier_copy(root, config=True, stats=True):
    folder = root / "trained-models" / "classifier" / "x"
    folder.mkdir(parents=True)
    shutil.copy(CLASSIFIER, folder / "checkpoint.pt")
    if config:
        shutil.copy(os.path.join(os.path.dirname(CLASSIFIER), "config.yml"), folder / "config.yml")
    if stats:
        (root / "trained-models" / "latents").mkdir()
        shutil.copy(os.path.join(OPTIONS, "trained-models", "latents", "celebahq_tiny.pt"),
                    root / "trained-models" / "latents" / ("celebahq_tiny.pt" if config else "celebahq.pt"))
    return folder / "checkpoint.pt"


def test_without_a_config_the_statistics_are_where_the_official_sampler_reads_them(tmp_path):
    c = official_pdae.read_classifier(classifier_copy(tmp_path, config=False))
    assert torch.equal(c["mean"], official_pdae.read_classifier(CLASSIFIER)["mean"])


def _written(tmp_path, content):
    path = tmp_path / "trained-models" / "classifier" / "x" / "checkpoint.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)
    return path


def _stats_only_mean(root):
    path = classifier_copy(root)
    torch.save({"mean": torch.zeros(512)}, root / "trained-models" / "latents" / "celebahq_tiny.pt")
    return path


CLASSIFIER_CASES = {  # case -> (how the file or its folder is made, what the one-line message says)
    "no statistics": (lambda p: classifier_copy(p, stats=False), "latents/celebahq_tiny.pt', which does not exist"),
    "statistics without std": (_stats_only_mean, "holds no tensors 'mean' and 'std'"),
    "outside trained-models": (lambda p: shutil.copy(CLASSIFIER, p / "c.pt"), "not inside a trained-models/ folder"),
    "no ema_classifier": (lambda p: _written(p, {"classifier": {}}), "not an official attribute classifier"),
    "wrong shape": (lambda p: _written(p, {"ema_classifier": {"weight": torch.zeros(40, 7), "bias": torch.zeros(40)}}),
                    "mean has shape (512,); its weight (40, 7) implies (7,)"),
    "no bias": (lambda p: _written(p, {"ema_classifier": {"weight": torch.zeros(40, 512)}}), "bias is NoneType"),
}


@pytest.mark.parametrize("case", list(CLASSIFIER_CASES))
def test_a_malformed_classifier_is_one_line(tmp_path, case):
    make, says = CLASSIFIER_CASES[case]
    path = make(tmp_path)
    if case not in ("no statistics", "statistics without std", "outside trained-models"):
        (tmp_path / "trained-models" / "latents").mkdir()
        shutil.copy(os.path.join(OPTIONS, "trained-models", "latents", "celebahq_tiny.pt"),
                    tmp_path / "trained-models" / "latents" / "celebahq.pt")
    with pytest.raises(official_pdae.ConversionError) as e:
        official_pdae.read_classifier(path)
    assert says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_yaml_numbers_are_parsed_by_hand():
    assert official_pdae.floats("(0.9, 0.999)") == [0.9, 0.999]
    assert official_pdae.floats("1e-4") == [1e-4] and official_pdae.floats(0.01) == [0.01]
    with pytest.raises(ValueError):
        official_pdae.floats("__import__('os')")


# --- a malformed config.yml: one CheckpointError line naming the file and the key -------------------

@pytest.fixture(scope="module")
def dpm_weights():
    """The EMA weights of an official pre-trained DPM that DPM_YAML describes."""
    from unet import UNet
    torch.manual_seed(0)
    return {"ema_denoise_fn": UNet(UNET).state_dict()}


def _sub(old, new):
    """An edit of DPM_YAML's text as yaml.safe_dump writes it (sorted keys, two-space indents)."""
    def edit(text):
        assert old in text
        return text.replace(old, new)
    return edit


CONFIG_CASES = {  # case -> (how the DPM's config.yml text is changed, what the one-line message must say)
    "valid": (lambda text: text, None),
    "missing key": (_sub("  base_channel: 32\n", ""),
                    "config.yml: lacks denoise_fn_config.base_channel; expected an integer there"),
    "string for an int": (_sub("num_heads: 2", "num_heads: 'two'"),
                          "config.yml: denoise_fn_config.num_heads is 'two' (a string); expected an integer"),
    "list for a dict": (_sub("diffusion_config:\n  betas_type: linear\n  timesteps: 1000\n",
                             "diffusion_config:\n- linear\n"),
                        "config.yml: diffusion_config is a list; expected a mapping"),
    "list of strings": (_sub("channel_multiplier:\n  - 1\n  - 2\n", "channel_multiplier: ['1', '2']\n"),
                        "config.yml: denoise_fn_config.channel_multiplier[0] is '1' (a string); "
                        "expected a list of integers"),
    "not UTF-8": (lambda text: text.replace("name: CELEBA64", "name: CELEBA64\xe9").encode("latin-1"),
                  "config.yml, line 21: the byte 0xe9 is not UTF-8"),
    "recursive alias": (lambda text: text.replace("denoise_fn_config:", "denoise_fn_config: &cfg").replace(
                            "base_channel: 32", "base_channel: *cfg"),
                        "config.yml, line 4: denoise_fn_config.base_channel is an alias inside its own anchor"),
    "python tag": (_sub("num_heads: 2", "num_heads: !!python/object/apply:os.system ['echo hi']"),
                   "config.yml, line 13: denoise_fn_config.num_heads has the tag "
                   "!!python/object/apply:os.system, which is refused"),
    "syntax error": (_sub("dims: 2", "dims: 2: 3"), "config.yml, line 8, column 10: mapping values are not allowed here"),
    "zero attention factor": (_sub("attention_resolutions:\n  - 2\n", "attention_resolutions: [0]\n"),
                              "config.yml: denoise_fn_config.attention_resolutions=[0] are not all factors"),
    "not a mapping": (lambda text: "- 1\n- 2\n", "config.yml: expected a YAML mapping (key: value lines), got a list"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_a_malformed_config_is_one_line_naming_its_key(tmp_path, dpm_weights, case):
    edit, says = CONFIG_CASES[case]
    folder = tmp_path / "pre-trained-dpms" / "tiny64"
    folder.mkdir(parents=True)
    torch.save(dpm_weights, folder / "checkpoint.pt")
    text = edit(yaml.safe_dump(DPM_YAML))
    (folder / "config.yml").write_bytes(text if isinstance(text, bytes) else text.encode())
    if says is None:  # the valid config loads
        assert checkpoint.load(folder / "checkpoint.pt")["config"]["unet"] == {**vars(UNET), "cond_dim": None}
        return
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(folder / "checkpoint.pt")
    assert "\n" not in str(e.value) and str(e.value).startswith(str(folder / says.split(":")[0])), str(e.value)
    assert says in str(e.value), str(e.value)


@pytest.mark.parametrize("value, says", [(None, "lacks trained_ddpm_config; expected a string there"),
                                         ("7", "trained_ddpm_config is 7 (an integer); expected a string")])
def test_a_config_path_of_the_wrong_kind_is_named(tmp_path, value, says):
    folder = tmp_path / "trained-models" / "autoencoder" / "x"
    folder.mkdir(parents=True)
    torch.save({"ema_encoder": {}, "ema_decoder": {}}, folder / "checkpoint.pt")
    cfg = {k: v for k, v in AE_YAML.items() if k != "trained_ddpm_config"}
    (folder / "config.yml").write_text(yaml.safe_dump(cfg if value is None else {**cfg, "trained_ddpm_config": int(value)}))
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(folder / "checkpoint.pt")
    assert str(e.value) == f"{folder / 'config.yml'}: {says}"
