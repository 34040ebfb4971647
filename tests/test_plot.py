"""plot.py: the uint8 mapping, the grid's geometry, atomic PNGs."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from plot import log_plot, save_grid, to_uint8


def test_to_uint8_maps_the_image_range_onto_bytes_and_clamps():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(x).shape == (1, 1, 5, 3) and to_uint8(x).dtype == np.uint8


@pytest.mark.parametrize("seed", [0, 1])
def test_a_grid_holds_each_image_at_its_place(tmp_path, seed):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.rand(3, 3, 8, 8, generator=g) * 2 - 1, torch.rand(2, 3, 8, 8, generator=g) * 2 - 1]
    path = save_grid(str(tmp_path / "sub" / "g.png"), rows, pad=2)
    img = np.asarray(Image.open(path))
    scale = 256 // 8  # small images are upscaled by an integer factor
    assert img.shape == (scale * (2 * 10 + 2), scale * (3 * 10 + 2), 3)
    small = img[::scale, ::scale]
    assert np.array_equal(small[2 + 10:2 + 10 + 8, 2 + 10:2 + 10 + 8], to_uint8(rows[1])[1])  # row 1, column 1
    assert (small[12:20, 22:30] == 255).all()  # the short row's missing image is blank
    assert [f for f in os.listdir(tmp_path / "sub")] == ["g.png"]  # no temporary left


def test_log_plot_writes_a_picture_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    path = log_plot(str(tmp_path / "p.png"), [0, 10, 20], {"a": [1e-3, 1e-2, 1e-1], "b": [1, 2, 3]}, 30, "t")
    assert Image.open(path).size == (640, 400)

    def full(self, fp, *a, **k):
        with open(fp, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OSError):
        save_grid(str(tmp_path / "q.png"), [torch.zeros(1, 3, 8, 8)])
    assert sorted(os.listdir(tmp_path)) == ["p.png"]
