import json

import pytest

import bench


@pytest.mark.parametrize("model", ["ddim", "diffae", "pdae"])
def test_bench_runs_every_model_and_counts_what_it_trains(tmp_path, model):
    out = tmp_path / "bench.json"
    assert bench.main(["--preset", "tiny16", "--model", model, "--batch-size", "2", "--warmup", "0",
                       "--iters", "1", "--sample-T", "2", "--json", str(out)]) == 0
    row, = json.loads(out.read_text())
    assert row["model"] == model and row["train_images_per_s"] > 0 and row["gflop_per_image"] > 0
    assert row["ddim2_sample_images_per_s"] > 0 and row["ddim2_invert_images_per_s"] > 0
    if model == "pdae":  # the frozen DPM is part of the model but not of what the step trains
        assert 0 < row["trained_params_m"] < row["params_m"]
    else:
        assert row["trained_params_m"] == row["params_m"]


def test_bench_pdae_has_no_official_counterpart():
    with pytest.raises(SystemExit) as e:
        bench.main(["--model", "pdae", "--official", "/nonexistent"])
    assert e.value.code == 2


def test_bench_refuses_before_timing_a_json_it_could_not_write_and_a_broken_official_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--preset", "tiny16", "--json", str(tmp_path / "missing" / "b.json")])
    assert e.value.code == 2 and "not a writable folder" in capsys.readouterr().err
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "__init__.py").write_text("")
    (tmp_path / "model" / "unet.py").write_text("syntax error(")
    with pytest.raises(SystemExit) as e:
        bench.main(["--preset", "tiny16", "--official", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "SyntaxError" in err and err.count("\n") == 1


def test_bench_compile_times_trains_own_objective_beside_eager(tmp_path, monkeypatch):
    """--compile: the same objective through torch.compile, in alternating rounds with the eager one
    (torch.compile is replaced by the identity here: this checks the plumbing, not inductor)."""
    import torch
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    out = tmp_path / "b.json"
    assert bench.main(["--preset", "tiny16", "--compile", "--batch-size", "2", "--warmup", "0", "--iters", "1",
                       "--rounds", "2", "--sample-T", "2", "--json", str(out)]) == 0
    eager, compiled = json.loads(out.read_text())
    assert (eager["name"], compiled["name"]) == ("ours", "compiled") and compiled["speed_vs_ours"] > 0
    assert len(compiled["train_step_s_rounds"]) == 2 and compiled["first_step_s"] > 0


def test_bench_profile_lists_the_ops_of_a_step_largest_first(tmp_path, monkeypatch):
    import torch
    import torch._inductor.config as inductor_config
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    monkeypatch.setattr(inductor_config.cpp, "enable_kernel_profile", False)  # restored after the test
    out = tmp_path / "b.json"
    assert bench.main(["--preset", "tiny16", "--compile", "--profile", "2", "--batch-size", "2", "--warmup", "0",
                       "--iters", "1", "--rounds", "1", "--sample-T", "2", "--json", str(out)]) == 0
    assert inductor_config.cpp.enable_kernel_profile  # compiled kernels name themselves in the profile
    for row in json.loads(out.read_text()):
        shares = [op["share"] for op in row["profile"]]
        assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 1) < 1e-6  # every op, once
        assert any("convolution" in op["op"] for op in row["profile"]) and all(op["ms_per_step"] >= 0 for op in row["profile"])
