"""sample.py: every subcommand runs from a checkpoint alone and writes its figure or table."""
import json
import os
import sys
import types

import numpy as np
import pytest
import torch

import checkpoint
import classifier
import codes
import sample
import train
from data import ToyFaces


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    os.chdir(tmp)  # data/cache lands here
    common = ["--preset", "tiny16", "--n-train", "256", "--device", "cpu", "--log-every", "1000", "--batch-size", "8"]
    assert train.main(common + ["--steps", "3", "--out", str(tmp / "ae")]) == 0
    assert train.main(common + ["--steps", "3", "--out", str(tmp / "ddim"), "--model", "ddim"]) == 0
    assert train.main(["--model", "latent", "--ckpt", str(tmp / "ae" / "ckpt.pt"), "--steps", "20",
                       "--out", str(tmp / "lat"), "--log-every", "1000"]) == 0
    assert train.main(common + ["--steps", "2", "--out", str(tmp / "pdae"), "--model", "pdae",
                                "--pretrained", str(tmp / "ddim" / "ckpt.pt")]) == 0
    return tmp


@pytest.mark.parametrize("cmd", [["reconstruct"], ["interpolate", "--frames", "3"], ["vary", "--frames", "2"],
                                 ["predict-x0"], ["sample"], ["manipulate", "--attr", "Smiling", "--probe-train", "64"]])
def test_figures(ckpts, cmd):
    out = ckpts / "figs"
    assert sample.main(["--ckpt", str(ckpts / "lat" / "ckpt.pt"), *cmd, "--steps", "3", "--n", "2", "--out", str(out)]) == 0
    assert any(f.endswith(".png") for f in os.listdir(out))


@pytest.mark.parametrize("cmd", [["reconstruct"], ["gap", "--steps", "4"], ["denoise-one-step", "--frames", "3"],
                                 ["reconstruct-ddpm"], ["interpolate-g", "--frames", "3"]])
def test_pdae_figures(ckpts, cmd, quick_judge):  # interpolate-g asks the judge for its attribute path
    out = ckpts / "pdae_figs" / cmd[0]
    args = ["--ckpt", str(ckpts / "pdae" / "ckpt.pt"), *cmd, "--n", "2", "--out", str(out)]
    if "--steps" not in cmd:
        args += ["--steps", "3"]
    assert sample.main(args) == 0
    assert any(f.endswith(".png") for f in os.listdir(out))


def test_gap_for_diffae_compares_own_and_another_z(ckpts):
    out = ckpts / "gap_ae"
    assert sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "gap", "--steps", "4", "--n", "3",
                        "--batch-size", "2", "--out", str(out)]) == 0
    res = json.load(open(out / "gap.json"))
    own, other = torch.tensor(res["own_z"]), torch.tensor(res["other_z"])
    assert res["t"] == [0, 250, 500, 750] and (own > 0).all() and (other > 0).all()
    assert torch.allclose(torch.tensor(res["ratio_per_t"]), own / other, rtol=1e-4)
    assert res["mean_ratio"] == pytest.approx(sum(res["ratio_per_t"]) / 4)
    with pytest.raises(SystemExit) as e:  # the DDIM baseline has no code to compare
        sample.main(["--ckpt", str(ckpts / "ddim" / "ckpt.pt"), "gap", "--n", "2", "--out", str(out)])
    assert e.value.code == 2


@pytest.fixture
def quick_judge(monkeypatch):
    """An untrained judge: these tests check the plumbing, not the judge (tests/test_judge.py does)."""
    import judge
    torch.manual_seed(0)
    monkeypatch.setattr(judge, "attribute_judge", lambda res, **kw: judge.AttributeNet(work_res=16, attributes=ToyFaces.ATTRIBUTES).eval())


def test_sample_quality_rows(ckpts, quick_judge):
    for name in ("lat", "ddim"):
        out = ckpts / f"evs_{name}"
        assert sample.main(["--ckpt", str(ckpts / name / "ckpt.pt"), "eval-samples", "--T", "2,3", "--n", "6",
                            "--out", str(out)]) == 0
        rows = json.load(open(out / "eval_samples.json"))["rows"]
        assert [r["T"] for r in rows] == [2, 3] and all(r["toy_fd"] >= 0 for r in rows)


@pytest.mark.parametrize("labels", ["binary", "pu"])
def test_conditional_and_measured_manipulation(ckpts, quick_judge, labels):
    out = ckpts / f"cond_{labels}"
    assert sample.main(["--ckpt", str(ckpts / "lat" / "ckpt.pt"), "conditional", "--attr", "Eyeglasses",
                        "--labels", labels, "--n", "3", "--steps", "2", "--out", str(out), "--probe-train", "300"]) == 0
    res = json.load(open(out / f"conditional_Eyeglasses_{labels}.json"))
    assert 0 <= res["fraction_with_attr"] <= 1 and res["rejection"]["accepted"] >= 3
    assert sample.main(["--ckpt", str(ckpts / "lat" / "ckpt.pt"), "manipulate", "--measure", "--attr", "Smiling",
                        "--scale", "0,0.5", "--n", "6", "--steps", "2", "--out", str(out), "--probe-train", "64"]) == 0
    rows = json.load(open(out / "manipulate_Smiling.json"))["rows"]
    assert rows[0]["scale"] == 0 and 0 <= rows[1]["flipped"] <= 1


def test_eval_writes_table2_rows(ckpts):
    out = ckpts / "eval"
    assert sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "eval", "--T", "2,3", "--n", "4", "--out", str(out),
                        "--no-judge", "--probe-train", "64", "--amp", "off"]) == 0  # float32, as the probe below
    res = json.load(open(out / "eval.json"))
    assert [(r["T"], r["x_T"]) for r in res["rows"]] == [(2, "inferred"), (2, "random"), (3, "inferred"), (3, "random")]
    assert all(0 <= r["mse"] and -1 <= r["ssim"] <= 1 and r["grain_ratio"] > 0 for r in res["rows"])
    assert 0 <= res["probe"]["mean"] <= 1
    # the control probe: an untrained encoder of the same architecture, seeded, so it is the same every time
    control = res["probe"]["untrained_encoder"]
    assert 0 <= control["mean"] <= 1 and len(control["per_attribute"]) == len(res["probe"]["per_attribute"])
    ck = checkpoint.load(ckpts / "ae" / "ckpt.pt")
    args = types.SimpleNamespace(probe_train=64, device=torch.device("cpu"), src=codes.Source())
    torch.manual_seed(123)
    fresh = checkpoint.make_model({"kind": ck["kind"], "config": ck["config"]}).eval()  # another random init
    assert sample.probe(fresh, ck, args)["untrained_encoder"] == control
    assert sample.main(["--ckpt", str(ckpts / "ddim" / "ckpt.pt"), "eval", "--T", "2", "--n", "4", "--out",
                        str(ckpts / "eval_ddim")]) == 0
    assert [r["x_T"] for r in json.load(open(ckpts / "eval_ddim" / "eval.json"))["rows"]] == ["inferred"]
    # --x-T inferred: the same inferred rows alone (a learning curve needs no random-x_T decodings)
    assert sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "eval", "--T", "2,3", "--n", "4", "--out",
                        str(ckpts / "eval_inf"), "--x-T", "inferred", "--no-probe", "--amp", "off"]) == 0
    inf = json.load(open(ckpts / "eval_inf" / "eval.json"))["rows"]
    assert [(r["T"], r["x_T"], r["mse"]) for r in inf] == [(r["T"], r["x_T"], r["mse"]) for r in res["rows"][::2]]
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "eval", "--x-T", "inverted", "--out", str(ckpts / "x")])
    assert e.value.code == 2


def test_manipulation_with_scale_zero_is_the_plain_reconstruction(ckpts):
    ck = checkpoint.load(ckpts / "lat" / "ckpt.pt")
    model, d = checkpoint.build(ck), checkpoint.diffusion(ck)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    direction = torch.nn.functional.normalize(torch.randn(model.latent.mean.shape[0]), dim=0)
    with torch.inference_mode():
        z, x_T = codes.encode("diffae", model, d, x, 4)
        moved = classifier.manipulate(z, direction, 0.0, model.latent.mean, model.latent.std)
        assert torch.equal(codes.decode("diffae", model, d, moved, x_T, 4), model.reconstruct(x, 4))


def test_direction_is_cached_per_l2_strength(ckpts):
    out, lat = ckpts / "dir_l2", ckpts / "lat" / "ckpt.pt"
    for wd in ("0.1", "0.001"):
        assert sample.main(["--ckpt", str(lat), "manipulate", "--attr", "Beard", "--scale", "0,0.3", "--n", "2",
                            "--steps", "2", "--direction-l2", wd, "--out", str(out)]) == 0
    a, b = (torch.load(next((ckpts / "lat" / "directions").glob(f"toyfaces_Beard_wd{wd}_*.pt")), weights_only=True)["direction"]
            for wd in ("0.1", "0.001"))
    assert abs(float(a.norm()) - 1) < 1e-5 and not torch.allclose(a, b)
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(lat), "manipulate", "--direction-l2", "0", "--out", str(out)])
    assert e.value.code == 2


def test_reconstruct_works_on_an_official_checkpoint_as_is(tmp_path, monkeypatch):
    official = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "official-diffae",
                            "diffae_autoenc_tiny.ckpt")
    if not os.path.exists(official):
        pytest.skip("official fixtures not found beside the repository")
    monkeypatch.chdir(tmp_path)
    assert sample.main(["--ckpt", official, "reconstruct", "--steps", "3", "--n", "2"]) == 0
    assert os.path.exists(tmp_path / "runs" / "samples" / "tiny_autoenc_latent" / "reconstruct_T3.png")  # its config names it


def test_bad_checkpoint_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(bad), "reconstruct"])
    assert e.value.code == 2
    assert "not a torch checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["reconstruct", "--steps", "0"], ["conditional", "--labels", "weird"], ["--grid", "cosine", "reconstruct"], ["reconstruct", "--steps", "2000"], ["reconstruct", "--n", "-1"],
                                 ["eval", "--T", "abc"], ["eval", "--T", "5,0"], ["manipulate", "--scale", "nan,inf"],
                                 ["manipulate", "--scale", "abc"], ["interpolate", "--frames", "0"], ["reconstruct", "--batch-size", "0"],
                                 ["reconstruct", "--device", "cuda:3"], ["reconstruct", "--frames", "3"]])
def test_bad_flags_are_one_line_usage_errors(ckpts, capsys, bad):
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), *bad, "--out", str(ckpts / "bad")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error" in err and "Traceback" not in err
    assert not os.path.exists(ckpts / "bad")


def test_interpolating_one_image_is_refused(ckpts, capsys):
    img = ckpts / "one.png"
    from PIL import Image
    Image.new("RGB", (16, 16), (200, 100, 50)).save(img)
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "interpolate", "--images", str(img), "--out", str(ckpts / "one")])
    assert e.value.code == 2 and "two" in capsys.readouterr().err


def test_each_subcommand_lists_only_its_own_flags(capsys):
    with pytest.raises(SystemExit):
        sample.main(["--ckpt", "x", "reconstruct", "--help"])
    text = capsys.readouterr().out
    assert "--steps" in text and "--scale" not in text and "--labels-csv" not in text


def test_direction_cache_is_keyed_by_the_weights(ckpts, tmp_path):
    """A further-trained model never reuses a stale direction: other weights, another cache file."""
    lat = checkpoint.load(ckpts / "lat" / "ckpt.pt")
    moved = dict(lat, ema={k: v + 1e-3 if v.is_floating_point() else v for k, v in lat["ema"].items()})
    cache = lambda ck, src: codes.direction_cache(ck, str(tmp_path / "c.pt"), "Beard", src, 0.1)
    assert cache(lat, codes.Source()) != cache(moved, codes.Source())
    assert cache(lat, codes.Source()) == cache(dict(lat), codes.Source())
    csv = tmp_path / "labels.csv"
    csv.write_text("file,Beard\na.png,1\n")
    one = cache(lat, codes.Source(labels_csv=str(csv)))
    csv.write_text("file,Beard\na.png,0\n")
    assert one != cache(lat, codes.Source(labels_csv=str(csv)))


@pytest.mark.parametrize("content, says", [(None, "cannot read"), (b"\xff\xfe\x00\x89PNG\x00\xff", "not a text CSV"),
                                           (b"file,Smiling\na.png,nan\n", "finite"), (b"file,Smiling\na.png,x\n", "numbers")])
def test_bad_label_files_are_refused(tmp_path, content, says):
    import data
    path = tmp_path / "labels.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(data.DatasetError, match=says):
        data.read_label_csv(str(path))


class FakeLPIPS(torch.nn.Module):
    """Stands in for lpips.LPIPS (whose AlexNet weights need a download): mean |a - b| per image."""
    calls = []

    def __init__(self, net, verbose=True):
        super().__init__()
        assert net == "alex"  # the official Diff-AE evaluation's backbone

    def forward(self, a, b):
        assert a.min() >= -1 - 1e-4 and a.max() <= 1 + 1e-4 and b.min() >= -1 - 1e-4  # lpips takes [-1, 1]
        d = (a - b).abs().mean((1, 2, 3), keepdim=True)
        FakeLPIPS.calls.append(d.flatten())
        return d


@pytest.mark.parametrize("installed", [True, False])
def test_eval_reports_lpips_where_the_package_is_installed(ckpts, monkeypatch, capsys, installed):
    FakeLPIPS.calls = []
    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPS) if installed else None)
    out = ckpts / f"eval_lpips_{installed}"
    assert sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "eval", "--T", "2", "--x-T", "inferred", "--n", "5",
                        "--batch-size", "2", "--out", str(out), "--no-judge", "--no-probe"]) == 0
    row = json.load(open(out / "eval.json"))["rows"][0]
    text = capsys.readouterr().out
    if installed:  # the mean over all images, every batch counted
        assert len(FakeLPIPS.calls) == 3 and row["lpips"] == pytest.approx(float(torch.cat(FakeLPIPS.calls).mean()))
        assert row["lpips"] > 0 and "LPIPS" in text
    else:
        assert row["lpips"] is None and "LPIPS: skipped (pip install lpips" in text


def test_manipulate_inverts_with_invert_steps_and_renders_with_steps(ckpts, monkeypatch):
    seen = {"encode": [], "decode": []}
    encode, decode = codes.encode, codes.decode
    monkeypatch.setattr(sample, "encode", lambda k, m, d, x, steps: seen["encode"].append(steps) or encode(k, m, d, x, steps))
    monkeypatch.setattr(sample, "decode", lambda k, m, d, z, x, steps: seen["decode"].append(steps) or decode(k, m, d, z, x, steps))
    lat, out = str(ckpts / "lat" / "ckpt.pt"), ckpts / "inv"
    args = ["manipulate", "--scale", "0,0.3", "--n", "2", "--probe-train", "64", "--out", str(out)]
    assert sample.main(["--ckpt", lat, *args, "--invert-steps", "4", "--steps", "3"]) == 0
    assert seen == {"encode": [4], "decode": [3, 3]}
    seen["encode"].clear()
    assert sample.main(["--ckpt", lat, *args, "--steps", "3"]) == 0  # our models: --steps for both
    assert seen["encode"] == [3]
    # a released model: the official notebook's 250-step inversion, whatever --steps renders with
    ck = checkpoint.load(lat)
    ck["config"]["train"]["source"] = "official"
    monkeypatch.setattr(checkpoint, "load", lambda path: ck)
    seen["encode"].clear()
    assert sample.main(["--ckpt", lat, *args, "--steps", "3"]) == 0
    assert seen["encode"] == [250]


def test_grid_pdae_samples_our_checkpoints_on_pdaes_timesteps(ckpts):
    """--grid pdae: PDAE's linspace grid, the image at timestep 0, for a checkpoint trained here."""
    rows = {}
    for grid in ("diffae", "pdae"):
        out = ckpts / f"grid_{grid}"
        assert sample.main(["--ckpt", str(ckpts / "pdae" / "ckpt.pt"), "--grid", grid, "eval", "--T", "3", "--x-T", "inferred",
                            "--n", "2", "--out", str(out), "--no-judge", "--no-probe"]) == 0
        res = json.load(open(out / "eval.json"))
        assert res["grid"] == grid
        rows[grid] = res["rows"][0]["mse"]
    assert rows["diffae"] != rows["pdae"]
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(ckpts / "pdae" / "ckpt.pt"), "--grid", "cosine", "reconstruct"])
    assert e.value.code == 2


def test_manipulate_with_a_missing_labels_file_is_a_usage_error(ckpts, capsys):
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(ckpts / "lat" / "ckpt.pt"), "manipulate", "--labels-csv", str(ckpts / "nope.csv"),
                     "--out", str(ckpts / "m")])
    assert e.value.code == 2 and "--labels-csv" in capsys.readouterr().err


def test_diagnose_writes_its_measures_and_one_verdict(ckpts, capsys):
    out = ckpts / "diag"
    assert sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "diagnose", "--n", "3", "--steps", "3", "--out", str(out)]) == 0
    res = json.load(open(out / "diagnose.json"))
    assert res["verdict"] in capsys.readouterr().out and len(res["t"]) == 3 and 0 <= res["gap_ratio"]
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(ckpts / "ddim" / "ckpt.pt"), "diagnose", "--n", "3", "--out", str(out)])
    assert e.value.code == 2


def test_align_puts_the_users_photos_through_ffhq_alignment(ckpts, tmp_path, monkeypatch, capsys):
    import align
    from PIL import Image
    Image.new("RGB", (50, 40), (0, 0, 255)).save(tmp_path / "me.png")
    seen = []
    monkeypatch.setattr(align, "align_face", lambda f, res: seen.append((f, res)) or Image.new("RGB", (res, res), (255, 0, 0)))
    out = tmp_path / "o"
    assert sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "reconstruct", "--images", str(tmp_path / "me.png"),
                        "--align", "--steps", "2", "--out", str(out)]) == 0
    assert seen == [(str(tmp_path / "me.png"), 16)] and (out / "reconstruct_T2.png").exists()
    monkeypatch.setattr(align, "align_face", lambda f, res: (_ for _ in ()).throw(align.AlignError(f"no face found in {f}")))
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "reconstruct", "--images", str(tmp_path / "me.png"), "--align"])
    assert e.value.code == 2 and "no face found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "reconstruct", "--align"])
    assert e.value.code == 2


def test_manipulate_with_a_released_classifier_needs_no_dataset(ckpts, tmp_path, monkeypatch):
    """--classifier: the file's row for --attr as a unit direction, with its own code statistics (the official edit)."""
    g = torch.Generator().manual_seed(0)
    z_dim = checkpoint.load(ckpts / "ae" / "ckpt.pt")["config"]["encoder"]["z_dim"]
    c = {"names": ["Smiling", "Bald"], "weight": torch.randn(2, z_dim, generator=g), "bias": torch.zeros(2),
         "mean": torch.randn(z_dim, generator=g), "std": torch.rand(z_dim, generator=g) + 0.5}
    monkeypatch.setattr(checkpoint, "read_classifier", lambda path: c)
    direction, mean, std = codes.released_direction("cls.ckpt", "Bald")
    assert torch.allclose(direction, c["weight"][1] / c["weight"][1].norm()) and torch.equal(mean, c["mean"])
    from PIL import Image
    Image.new("RGB", (16, 16), (10, 200, 30)).save(tmp_path / "me.png")
    out = tmp_path / "m"
    assert sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "manipulate", "--classifier", "cls.ckpt", "--attr", "Bald",
                        "--images", str(tmp_path / "me.png"), "--scale", "0,0.3", "--steps", "2", "--out", str(out),
                        "--data", "nowhere"]) == 0  # no dataset is read
    assert (out / "manipulate_Bald_T2.png").exists()
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "manipulate", "--classifier", "cls.ckpt", "--attr", "Young",
                     "--images", str(tmp_path / "me.png"), "--out", str(out)])
    assert e.value.code == 2


def test_vary_writes_the_mean_and_std_maps_of_fig_10(ckpts):
    out = ckpts / "vary"
    assert sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "vary", "--n", "2", "--frames", "3", "--steps", "2",
                        "--out", str(out)]) == 0
    assert (out / "vary_T2.png").exists() and (out / "vary_mean_std_T2.png").exists()


def test_ood_rows_and_statistics(ckpts, tmp_path):
    from PIL import Image
    Image.new("RGB", (24, 24), (200, 10, 10)).save(tmp_path / "red.png")
    out = tmp_path / "ood"
    assert sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "ood", "--n", "3", "--shift", "2", "--steps", "3",
                        "--images", str(tmp_path / "red.png"), "--out", str(out)]) == 0
    res = json.load(open(out / "ood.json"))
    assert list(res["sets"]) == ["held-out", "shifted 2px", "--images"]
    assert all(set(r) >= {"mse", "mean", "std", "skew", "excess_kurtosis", "adjacent_correlation"} for r in res["sets"].values())


def test_neighbours_of_latent_samples(ckpts, monkeypatch):
    out = ckpts / "nn"
    assert sample.main(["--ckpt", str(ckpts / "lat" / "ckpt.pt"), "neighbours", "--n", "3", "--k", "2", "--steps", "2",
                        "--search", "50", "--out", str(out)]) == 0
    res = json.load(open(out / "neighbours.json"))
    assert res["n_train"] == 50 and len(res["sample_to_train_mse_q10_50_90"]) == 3 and (out / "neighbours_T2.png").exists()
    lpips_fake = lambda a, b: (a - b).abs().mean((1, 2, 3), keepdim=True)  # the lpips package's [B, 1, 1, 1]
    monkeypatch.setattr(sample.metrics, "lpips_model", lambda device: (lpips_fake, None))
    assert sample.main(["--ckpt", str(ckpts / "lat" / "ckpt.pt"), "neighbours", "--n", "3", "--k", "2", "--steps", "2",
                        "--search", "50", "--out", str(out / "lp")]) == 0
    res = json.load(open(out / "lp" / "neighbours.json"))
    assert len(res["sample_to_train_lpips_q10_50_90"]) == 3 and len(res["heldout_to_train_lpips_q10_50_90"]) == 3
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "neighbours", "--out", str(out)])
    assert e.value.code == 2


def test_an_eval_that_fails_midway_keeps_the_rows_it_finished(ckpts, monkeypatch):
    out = ckpts / "eval_partial"

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sample, "probe", broken)
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(ckpts / "ae" / "ckpt.pt"), "eval", "--T", "2", "--n", "3", "--no-judge", "--probe-train", "16",
                     "--out", str(out)])
    assert e.value.code == 1
    rows = json.load(open(out / "eval.json"))["rows"]
    assert [(r["T"], r["x_T"]) for r in rows] == [(2, "inferred"), (2, "random")]


def test_path_smoothness_of_an_even_straight_path_is_one_and_a_jump_shows():
    """A straight path at even steps moves by (b - a)^2 / (frames - 1)^2 per frame and its largest step is its
    mean step; a path that stands still and then jumps scores frames - 1."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 3, 8, 8, generator=g), torch.rand(1, 3, 8, 8, generator=g)
    even = torch.cat([a + (b - a) * k / 4 for k in range(5)])
    r = sample.path_smoothness([even])
    assert r["evenness"] == pytest.approx(1, abs=1e-5)
    assert r["step_mse"] == pytest.approx(float((b - a).square().mean()) / 16, rel=1e-5)
    jump = torch.cat([a, a, a, a, b])
    assert sample.path_smoothness([jump])["evenness"] == pytest.approx(4, rel=1e-5)


def test_pdae_interpolation_guidance_and_the_30_percent_rule_are_measured(ckpts, quick_judge):
    pd = str(ckpts / "pdae" / "ckpt.pt")
    out = ckpts / "pdae_measures"
    assert sample.main(["--ckpt", pd, "interpolate-g", "--frames", "3", "--n", "2", "--steps", "3", "--out", str(out)]) == 0
    res = json.load(open(out / "interpolate_g.json"))
    assert res["pairs"] == 2 and res["codes"]["evenness"] >= 1 and res["trajectories"]["extra_flips"] >= 0
    assert res["codes_vs_trajectories_mse"] >= 0
    assert sample.main(["--ckpt", pd, "guidance", "--n", "3", "--steps", "2", "--out", str(out)]) == 0
    rows = json.load(open(out / "guidance.json"))["rows"]
    assert [r["scale"] for r in rows] == [0.5 * i for i in range(7)]
    assert all(r["diversity_mse"] > 0 and 0 <= r["agreement"] <= 1 for r in rows)
    assert train.main(["--model", "latent", "--ckpt", pd, "--steps", "5", "--out", str(ckpts / "pdae_lat"), "--log-every", "1000"]) == 0
    gaps = []
    for until in ("0", "0.3"):
        assert sample.main(["--ckpt", str(ckpts / "pdae_lat" / "ckpt.pt"), "eval-samples", "--T", "4", "--n", "4",
                            "--shift-until", until, "--out", str(out / until)]) == 0
        res = json.load(open(out / until / "eval_samples.json"))
        assert res["shift_until"] == float(until)
        gaps.append(res["rows"][0]["toy_fd"])
    assert gaps[0] != gaps[1]  # the last step of four runs with the shift in one and without it in the other


@pytest.mark.parametrize("name", ["lat", "pdae"])
def test_compile_samples_what_eager_samples(ckpts, monkeypatch, name):
    """--compile: the denoising networks compiled in place (here dynamo with its eager backend, not inductor:
    the graph capture under inference mode and autocast, in seconds); the figure is the same image."""
    from PIL import Image
    compiled, original = [], torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(type(self).__name__) or
                        original(self, backend="eager"))
    pngs = []
    for flags in ([], ["--compile"]):
        out = ckpts / f"compile_{name}_{len(flags)}"
        assert sample.main(["--ckpt", str(ckpts / name / "ckpt.pt"), *flags, "reconstruct", "--steps", "3", "--n", "2",
                            "--out", str(out)]) == 0
        pngs.append(np.asarray(Image.open(out / next(f for f in os.listdir(out) if f.endswith(".png")))))
    assert compiled == (["UNet"] if name == "lat" else ["UNet", "GradientEstimator"])
    assert np.array_equal(pngs[0], pngs[1])
    torch._dynamo.reset()
