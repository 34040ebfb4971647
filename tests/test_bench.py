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
