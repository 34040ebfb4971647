"""Tests for align.py: the FFHQ crop against the official output, the quad's equivariance, the blur,
the optional dlib detector end to end, and the command's exit codes."""

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import align
from align import AlignError, align_face, detect_landmarks, ffhq_quad, gaussian_blur, image_align

FIXTURES = "/work/shared/fixtures/official-align"
HINT = "pip install dlib-bin face-recognition-models"


@pytest.fixture(scope="module")
def ref():
    d = torch.load(os.path.join(FIXTURES, "reference_align.pt"), weights_only=True)
    return {k: v.numpy() for k, v in d.items()}


def photo(name):
    return Image.open(os.path.join(FIXTURES, name + ".png"))


def diff(img, expected):
    """Absolute difference in 0..255 levels of a PIL image and a (H, W, 3) uint8 array."""
    return np.abs(np.asarray(img, dtype=np.int64) - expected.astype(np.int64))


# --- (a) the crop against the official image_align ---------------------------------------------

@pytest.mark.parametrize("res", [128, 256])
def test_astronaut_matches_the_official_crop_exactly(ref, res):
    out = image_align(photo("astronaut"), ref["landmarks_astronaut"], res)
    assert out.size == (res, res) and out.mode == "RGB"
    assert diff(out, ref[f"astronaut_{res}"]).max() == 0


def test_coffee_padding_matches_the_official_blend(ref):
    # tolerance: 1 level on at most 0.05% of the values. Measured: 0 (bit-exact; our blur equals scipy
    # 1.17's gaussian_filter bit for bit on float32). A blur cut at 3 sigma instead of 4 is off by 1 on
    # 0.85% of them, one whose border does not repeat the edge pixel (numpy's 'reflect') on 0.11%.
    d = diff(image_align(photo("coffee"), ref["landmarks_coffee"], 128), ref["coffee_128"])
    assert d.max() <= 1 and (d > 0).mean() <= 0.0005
    # without the padding the crop is far away (26 levels on average), so the padding really runs
    bare = image_align(photo("coffee"), ref["landmarks_coffee"], 128, pad=False)
    assert diff(bare, ref["coffee_128"]).mean() > 20


def test_output_is_res_square_also_above_transform_size(ref):
    assert image_align(photo("astronaut"), ref["landmarks_astronaut"], 40, transform_size=32).size == (40, 40)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # 0/0 on the way to the nan size
def test_degenerate_landmarks_are_an_align_error():
    with pytest.raises(AlignError, match="degenerate"):
        image_align(Image.new("RGB", (64, 64)), np.zeros((68, 2)), 32)


# --- (b) the quad is equivariant ------------------------------------------------------------------

def test_ffhq_quad_is_a_square_that_moves_scales_and_turns_with_the_face():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lm = rng.uniform(0, 500, (68, 2))
        quad, qsize = ffhq_quad(lm)
        assert quad.shape == (4, 2)
        sides = np.hypot(*(np.roll(quad, -1, axis=0) - quad).T)
        assert np.allclose(sides, qsize)  # four equal sides ...
        assert np.isclose(np.hypot(*(quad[2] - quad[0])), qsize * np.sqrt(2))  # ... and a right angle
        t, s, a = rng.uniform(-300, 300, 2), rng.uniform(0.2, 5), rng.uniform(-np.pi, np.pi)
        moved, moved_size = ffhq_quad(lm + t)
        assert np.allclose(moved, quad + t) and np.isclose(moved_size, qsize)
        scaled, scaled_size = ffhq_quad(lm * s)
        assert np.allclose(scaled, quad * s) and np.isclose(scaled_size, qsize * s)
        R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        turned, turned_size = ffhq_quad(lm @ R.T)
        assert np.allclose(turned, quad @ R.T) and np.isclose(turned_size, qsize)


# --- the blur that stands in for scipy.ndimage.gaussian_filter ------------------------------------

def test_gaussian_blur_kernel_and_mirrored_border():
    a = np.zeros((41, 41, 2), np.float32)
    a[20, 20, 1] = 1.0
    out = gaussian_blur(a, 2.0)
    k = np.exp(-0.5 * np.arange(-8, 9) ** 2 / 4.0)  # cut at 4 sigma = 8 pixels
    assert np.allclose(out[12:29, 12:29, 1], np.outer(k, k) / k.sum() ** 2, atol=1e-7)
    assert out[:, :, 0].max() == 0 and out[:11].max() == 0  # channels apart, nothing past 4 sigma
    ramp = np.repeat(np.arange(30, dtype=np.float32), 30).reshape(30, 30, 1)
    mirrored = np.pad(ramp, ((8, 8), (8, 8), (0, 0)), mode="symmetric")  # scipy's 'reflect': edge repeated
    assert np.allclose(gaussian_blur(ramp, 2.0), gaussian_blur(mirrored, 2.0)[8:-8, 8:-8], atol=1e-4)


def test_gaussian_blur_equals_scipy_where_scipy_is_installed():
    ndimage = pytest.importorskip("scipy.ndimage", reason="scipy is not a dependency (the fixtures pin the blur)")
    a = np.random.default_rng(0).uniform(0, 255, (60, 45, 3)).astype(np.float32)
    for sigma in (0.7, 2.1, 9.0):  # 9.0: the kernel (73 taps) is longer than the image
        assert np.abs(gaussian_blur(a, sigma) - ndimage.gaussian_filter(a, [sigma, sigma, 0])).max() <= 1e-4


# --- (c) the optional detector, end to end ----------------------------------------------------------

@pytest.fixture
def detector():
    try:
        align.dlib_models()
    except AlignError as e:
        pytest.skip(str(e))


def test_detected_landmarks_and_aligned_face_match_the_fixture(detector, ref, capsys):
    faces = detect_landmarks(photo("astronaut"))
    assert len(faces) == 2 and all(f.shape == (68, 2) for f in faces)  # the portrait and a small false one
    # dlib-bin 20.0.1 measured: the same landmarks (0 px) and the same image (0 levels)
    assert np.abs(faces[0] - ref["landmarks_astronaut"]).max() <= 1.0
    out = align_face(os.path.join(FIXTURES, "astronaut.png"), 128)
    assert "2 faces found" in capsys.readouterr().err  # the largest is used, and said so
    assert diff(out, ref["astronaut_128"]).mean() < 1.0
    assert np.array_equal(np.asarray(align_face(photo("astronaut"), 128)), np.asarray(out))  # a PIL image: the same


def test_no_face_and_unreadable_file_are_align_errors(detector, tmp_path):
    with pytest.raises(AlignError, match="no face found in .*coffee.png"):
        align_face(os.path.join(FIXTURES, "coffee.png"), 64)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(AlignError, match="cannot read .*bad.png"):
        align_face(tmp_path / "bad.png", 64)


# --- (d) the command ------------------------------------------------------------------------------

def one_line_exit(argv, capsys):
    """Run the command expecting a usage error: its exit code and its stderr."""
    with pytest.raises(SystemExit) as e:
        align.main(argv)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return e.value.code, err


@pytest.mark.parametrize("argv", [["nope.png", "--out", "o"], ["a.png", "--out", "o", "--res", "0"],
                                  ["a.png", "--out", "o", "--res", "x"], ["a.png", "--out", "o", "--res", "5000"],
                                  ["a.png"], []])
def test_usage_errors_exit_2_with_one_line(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save("a.png")
    assert one_line_exit(argv, capsys)[0] == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("missing", ["dlib", "model"])
def test_missing_detector_exits_2_with_the_install_line(missing, monkeypatch, tmp_path, capsys):
    align.dlib_models.cache_clear()
    if missing == "dlib":
        monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` now raises ImportError
    else:
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    try:
        code, err = one_line_exit([os.path.join(FIXTURES, "astronaut.png"), "--out", str(tmp_path / "o")], capsys)
    finally:
        monkeypatch.undo()
        align.dlib_models.cache_clear()
    assert code == 2 and HINT in err and not (tmp_path / "o").exists()


def test_command_aligns_faces_and_skips_the_rest(detector, tmp_path, capsys):
    out = tmp_path / "o"
    assert align.main([FIXTURES, "--out", str(out), "--res", "64"]) == 0  # the folder: astronaut and coffee
    lines = capsys.readouterr().out.splitlines()
    assert sorted(os.listdir(out)) == ["astronaut.png"] and Image.open(out / "astronaut.png").size == (64, 64)
    assert len(lines) == 3 and lines[1].startswith("skipped: no face found") and "aligned 1 of 2" in lines[2]
    assert align.main([os.path.join(FIXTURES, "coffee.png"), "--out", str(out)]) == 1
