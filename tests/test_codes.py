"""codes.py: the images a command is asked about, their codes, and cached attribute directions."""
import os

import pytest
import torch
from PIL import Image

import cli
import codes
import data


class Projector(torch.nn.Module):
    """A stand-in autoencoder: z is a fixed random projection of the pixels (enough to train directions on)."""

    def __init__(self, res, z_dim=16):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3 * res * res, z_dim, generator=torch.Generator().manual_seed(0)))
        self.latent = None

    def encode(self, x):
        return x.flatten(1) @ self.w


def toy_ck(tmp_path, res=16):
    return {"kind": "diffae", "config": {"train": {"res": res, "data": "toyfaces", "data_dir": str(tmp_path / "c"), "seed": 0},
                                         "unet": {"res": res}}, "ema": {"w": torch.ones(3)}}


class NoTensors:
    """A dataset seen only through __getitem__, as real folders are."""

    def __init__(self, ds):
        self.ds, self.attr_names = ds, ds.attr_names

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def test_items_are_the_same_through_tensors_and_through_getitem(tmp_path):
    ds = data.make_dataset("toyfaces", 16, data_dir=str(tmp_path / "c"), split="test", n=20)
    idx = torch.tensor([3, 0, 17])
    (a, ya), (b, yb) = codes.items(ds, idx), codes.items(NoTensors(ds), idx)
    assert torch.equal(a, b) and torch.equal(ya, yb) and a.shape == (3, 3, 16, 16)


def test_held_out_reads_the_checkpoints_data_or_the_users_images(tmp_path):
    ck = toy_ck(tmp_path)
    x, y, names = codes.held_out(ck, 5, codes.Source())
    assert x.shape == (5, 3, 16, 16) and y.shape == (5, len(names)) and "Smiling" in names
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "me.png")
    x, y, names = codes.held_out(ck, 5, codes.Source(images=[str(tmp_path / "me.png")]))
    assert x.shape == (1, 3, 16, 16) and names == [] and torch.allclose(x[0, 0], torch.ones(16, 16))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(cli.UsageError, match="bad.jpg"):
        codes.held_out(ck, 5, codes.Source(images=[str(tmp_path / "bad.jpg")]))


def test_a_direction_is_trained_once_cached_and_a_broken_cache_is_rebuilt(tmp_path, capsys):
    ck, model = toy_ck(tmp_path), Projector(16)
    path = str(tmp_path / "ckpt.pt")
    first = codes.direction_for(model, ck, path, "Eyeglasses", codes.Source())
    cache = codes.direction_cache(ck, path, "Eyeglasses", codes.Source(), 0.1)
    assert os.path.exists(cache) and "trained a logistic probe" in capsys.readouterr().out
    again = codes.direction_for(model, ck, path, "Eyeglasses", codes.Source())
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and "trained" not in capsys.readouterr().out
    assert abs(float(first[0].norm()) - 1) < 1e-5
    open(cache, "wb").write(b"garbage")
    rebuilt = codes.direction_for(model, ck, path, "Eyeglasses", codes.Source())
    assert "cannot be read" in capsys.readouterr().out and torch.allclose(rebuilt[0], first[0])
    with pytest.raises(cli.UsageError, match="unknown --attr"):
        codes.direction_for(model, ck, path, "Wings", codes.Source())


class Oracle:
    """z is the image itself and eps is exact given it (a decoder that relies on z_sem entirely), or, with
    ignore=True, eps = sqrt(1 - alphabar_t) x_t whatever z says (a decoder that ignores z_sem)."""

    def __init__(self, d, ignore):
        self.d, self.ignore = d, ignore

    def encode(self, x):
        return x.flatten(1)

    def eps_fn(self, z):
        ab = self.d.alphas_cumprod.float()

        def eps(x_t, t):
            a = ab[t].view(-1, 1, 1, 1)
            if self.ignore:
                return (1 - a).sqrt() * x_t
            return (x_t - a.sqrt() * z.view(x_t.shape)) / (1 - a).sqrt()
        return eps


@pytest.mark.parametrize("seed", [0, 1])
def test_the_z_usage_diagnosis_tells_a_decoder_that_uses_z_from_one_that_ignores_it(seed):
    from diffusion import Diffusion
    d = Diffusion(T=1000)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8
    used = codes.z_usage(Oracle(d, ignore=False), d, x, steps=10, seed=seed)
    ignored = codes.z_usage(Oracle(d, ignore=True), d, x, steps=10, seed=seed)
    assert used["gap_ratio"] < 1e-6 and used["agreement"] > 0.999
    assert ignored["gap_ratio"] == pytest.approx(1) and ignored["agreement"] == pytest.approx(0, abs=1e-6)
    assert codes.z_usage_verdict(used).startswith("z_sem is used:")
    assert codes.z_usage_verdict(ignored).startswith("z_sem carries nothing")
