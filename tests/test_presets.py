"""presets.py: the papers' tables as written, and the rules that pick, override and resume a preset."""
import pytest
import torch

import cli
import presets
import train
from diffusion import Diffusion


def test_t_gamma_belongs_to_diffae_and_ddim_and_is_refused_where_it_does_nothing(tmp_path, capsys):
    def resolved(*extra):
        args = train.parse_args(["--preset", "toy32", "--data-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o"), *extra])
        return train.resolve(args, None)[0]
    assert resolved().hp["t_gamma"] == -0.3 and resolved().hp["t_floor"] == 0.03   # toy32's Diff-AE
    assert not {"t_gamma", "t_floor"} & set(resolved("--model", "ddim").hp)       # its DDIM baseline keeps PDAE's λ_t
    assert resolved("--model", "ddim", "--t-gamma", "0.5").hp["t_gamma"] == 0.5
    with pytest.raises(cli.UsageError, match="gamma"):
        resolved("--t-weights", "uniform", "--t-gamma", "0.2")
    with pytest.raises(SystemExit) as e:  # out of range: refused where parsed
        resolved("--t-gamma", "2")
    assert e.value.code == 2 and "gamma" in capsys.readouterr().err
    assert resolved("--t-floor", "0.3").hp["t_floor"] == 0.3
    for bad in (("--model", "pdae", "--t-floor", "0.3"), ("--t-weights", "uniform", "--t-floor", "0.3")):
        with pytest.raises(cli.UsageError, match="t-floor"):
            resolved(*bad)



def test_the_paper_presets_are_tables_5_and_6_as_written():
    ffhq128 = presets.PRESETS["ffhq128"]
    assert (ffhq128["batch_size"], ffhq128["lr"], ffhq128["ch"], ffhq128["ch_mult"], ffhq128["z_dim"]) == \
        (128, 1e-4, 128, (1, 1, 2, 3, 4), 512)
    assert ffhq128["images"] == 130_000_000 and presets.PRESETS["ffhq256"]["batch_size"] == 64
    assert presets.LATENT_PRESETS["ffhq128"]["hidden"] == 2048 and presets.LATENT_PRESETS["ffhq128"]["num_layers"] == 10
    assert presets.LATENT_PRESETS["horse128"]["num_layers"] == 20 and presets.LATENT_PRESETS["horse128"]["batch_size"] == 2048


def test_z_dim_overrides_the_preset_and_reaches_both_networks(tmp_path):
    args = train.parse_args(["--preset", "tiny16", "--z-dim", "24", "--data-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")])
    run = train.resolve(args, None)[0]
    assert run.hp["z_dim"] == 24
    unet, enc = presets.model_configs("diffae", run.hp, run.res, Diffusion())
    assert unet.cond_dim == enc.z_dim == 24
    assert presets.pdae_encoder_config(16, run.hp).z_dim == 24


@pytest.mark.parametrize("amp, images", [(None, 48_000), (torch.bfloat16, 96_000)])
def test_toy32_is_sized_by_the_precision_it_runs_in(tmp_path, amp, images):
    args = train.parse_args(["--data-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")])
    run = presets.fresh_run(args, amp)
    assert run.preset == "toy32" and run.steps * run.hp["batch_size"] == images and "images_float32" not in run.hp


@pytest.mark.parametrize("data, res, expect", [("toyfaces", 16, "tiny16"), ("toyfaces", None, "toy32"),
                                               ("celeba", 64, "celeba64"), ("mine", 128, "ffhq128")])
def test_pick_preset(data, res, expect):
    assert presets.pick_preset(None, data, res) == expect
