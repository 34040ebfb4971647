"""Tests for data.py: toyfaces properties, real-image loading, labels, the resolver."""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

import data
from data import (CelebA, DatasetError, ImageFolder, LMDBImages, ToyFaces, draw_face, make_dataset,
                  read_label_csv, with_labels)

# -----------------------------------------------------------------------------
# toyfaces


@pytest.fixture(scope="module")
def faces16():
    return ToyFaces(res=16, n=2000, seed=0, cache_dir=None)


def test_toyfaces_deterministic_and_streams_differ():
    a = ToyFaces(16, 8, seed=0, cache_dir=None)
    b = ToyFaces(16, 8, seed=0, cache_dir=None)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.attrs, b.attrs)
    assert np.array_equal(a.factors, b.factors)
    other_seed = ToyFaces(16, 8, seed=1, cache_dir=None)
    test = ToyFaces(16, 8, seed=0, split="test", cache_dir=None)
    for other in (other_seed, test):
        assert all(not np.array_equal(a.images[i], other.images[i]) for i in range(8))


@pytest.mark.parametrize("res", [16, 32, 64])
def test_toyfaces_shapes_and_range(res):
    ds = ToyFaces(res, 4, cache_dir=None)
    assert len(ds) == 4 and ds.attr_names == ToyFaces.ATTRIBUTES
    image, attrs = ds[3]
    assert image.shape == (3, res, res) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1 and image.std() > 0.1
    assert attrs.shape == (8,) and attrs.dtype == torch.float32 and set(attrs.tolist()) <= {0.0, 1.0}
    assert ds.factors.shape == (4, len(ToyFaces.FACTOR_NAMES))
    X, A = ds.tensors()
    assert X.shape == (4, 3, res, res) and A.shape == (4, 8)
    assert torch.equal(X[3], image) and torch.equal(A[3], attrs)


@pytest.mark.parametrize("res", [8, 20, 48, 512])
def test_toyfaces_invalid_res(res):
    with pytest.raises(ValueError):
        ToyFaces(res, 4, cache_dir=None)


def test_toyfaces_rates(faces16):
    rates = faces16.attrs.mean(0)
    for k, name in enumerate(ToyFaces.ATTRIBUTES):
        assert abs(rates[k] - ToyFaces.RATES[name]) < 0.04, (name, rates[k])
    hair = faces16.attrs[:, [ToyFaces.ATTRIBUTES.index(n) for n in ("Bald", "Blond_Hair", "Black_Hair")]]
    assert hair.sum(1).max() == 1  # one hair draw: these exclude each other
    f = dict(zip(ToyFaces.FACTOR_NAMES, faces16.factors.T))
    assert np.abs(f["tilt"]).max() <= 12 and np.abs(f["tilt"]).max() > 10
    assert f["scale"].min() >= 0.9 and f["scale"].max() <= 1.1


def test_toyfaces_attributes_linearly_visible_at_16(faces16):
    # even a linear classifier on raw 16x16 pixels recovers every attribute
    X, Y = faces16.tensors()
    A = torch.cat([X.flatten(1), torch.ones(len(X), 1)], 1).double()
    tr, te = slice(0, 1500), slice(1500, None)
    W = torch.linalg.solve(A[tr].T @ A[tr] + 10 * torch.eye(A.shape[1], dtype=torch.double),
                           A[tr].T @ (2 * Y[tr].double() - 1))
    pred, y = (A[te] @ W) > 0, Y[te] > 0
    balanced = 0.5 * ((pred & y).sum(0) / y.sum(0) + (~pred & ~y).sum(0) / (~y).sum(0))
    assert balanced.min() > 0.85, dict(zip(ToyFaces.ATTRIBUTES, balanced.tolist()))


def test_toyfaces_distinct_images(faces16):
    flat = faces16.images[:200].reshape(200, -1)
    assert len(np.unique(flat, axis=0)) == 200


def test_toyfaces_counterfactual_changes_image():
    ds = ToyFaces(32, 1, cache_dir=None)
    p = ds.params(0)
    assert np.array_equal(draw_face(p, 32), ds.images[0])
    flipped = draw_face({**p, "Smiling": not p["Smiling"]}, 32)
    changed = np.abs(flipped.astype(int) - ds.images[0]).sum(-1) > 0
    assert 0 < changed.mean() < 0.1  # only the mouth changes


def test_toyfaces_cache_round_trip(tmp_path, monkeypatch):
    a = ToyFaces(16, 8, seed=3, cache_dir=str(tmp_path))
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and all("v%d" % ToyFaces.VERSION in f for f in files)  # no temp files left
    monkeypatch.setattr(data, "draw_face", lambda *a: pytest.fail("rendered again instead of loading"))
    b = ToyFaces(16, 8, seed=3, cache_dir=str(tmp_path))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.attrs, b.attrs)
    assert np.array_equal(a.factors, b.factors)


def test_make_dataset_toyfaces(tmp_path):
    ds = make_dataset("toyfaces", 16, data_dir=str(tmp_path), n=5, split="test")
    assert isinstance(ds, ToyFaces) and len(ds) == 5 and ds.split == "test"


# -----------------------------------------------------------------------------
# image folders


def _save(path, img, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, **kw)


def _thirds(w=90, h=30):
    """Left third red, middle green, right third blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 3, 0] = a[:, w // 3: 2 * w // 3, 1] = a[:, 2 * w // 3:, 2] = 255
    return Image.fromarray(a)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    _save(root / "a.png", rgb)
    _save(root / "sub" / "b.jpg", rgb, quality=95)
    _save(root / "sub" / "deeper" / "c.webp", rgb)
    _save(root / "d.PNG", Image.new("RGBA", (20, 20), (0, 0, 0, 0)))  # fully transparent
    _save(root / "e.png", rgb.convert("P"))
    _save(root / "f.jpeg", rgb.convert("L"))
    _save(root / "g.png", Image.fromarray(np.full((8, 8), 65535, np.uint16)))  # 16-bit grey
    _save(root / "h.jpg", rgb.convert("CMYK"))
    _save(root / "wide.png", _thirds())
    (root / "bad.png").write_bytes(b"this is not an image")
    (root / "notes.txt").write_text("ignored")
    return root


def test_image_folder_modes_crop_and_skip(folder, capsys):
    ds = ImageFolder(str(folder), 16, split="all")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "skipped 1 unreadable image(s)" in err[0] and str(folder) in err[0]
    assert "bad.png" in err[0]
    assert "1 image(s)" in err[1] and "g.png (8 px)" in err[1] and "upscaled" in err[1]  # 8 px < res 16
    assert len(ds) == 9 and ds.attr_names == [] and "sub/deeper/c.webp" in ds.files
    for i in range(len(ds)):
        image, attrs = ds[i]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and attrs.shape == (0,)
        assert image.min() >= -1 and image.max() <= 1
    image = dict(zip(ds.files, (ds[i][0] for i in range(len(ds)))))
    assert image["d.PNG"].min() > 0.99  # transparency composited on white
    assert image["g.png"].min() > 0.99  # 16-bit white stays white
    wide = image["wide.png"]  # centre crop keeps the green middle third only
    assert wide[1].mean() > 0.95 and wide[0].max() < -0.8 and wide[2].max() < -0.8


def test_image_folder_split(tmp_path):
    for i in range(205):
        _save(tmp_path / f"{i:03d}.png", Image.new("RGB", (4, 4)))
    train, test = ImageFolder(str(tmp_path), 8, "train"), ImageFolder(str(tmp_path), 8, "test")
    assert test.files == ["000.png", "100.png", "200.png"]
    assert len(train) == 202 and not set(train.files) & set(test.files)


@pytest.mark.parametrize("make", [lambda p: p / "nope", lambda p: p])
def test_make_dataset_missing_or_empty(tmp_path, make):
    root = make(tmp_path)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError) as e:
        make_dataset("mine", 16, data_dir=str(root))
    assert str(root) in str(e.value) and "img_align_celeba" in str(e.value)


def test_make_dataset_folder_with_n(folder):
    ds = make_dataset("mine", 8, data_dir=str(folder), split="all", n=4)
    assert len(ds) == 4 and ds[3][0].shape == (3, 8, 8) and ds.files == sorted(ds.files)


def test_labels_csv_joined(folder, capsys):
    ds = ImageFolder(str(folder), 8, split="all")
    csv = folder.parent / "labels.csv"
    csv.write_text("file,Smiling,yaw\na.png,1,0.25\nsub/b.jpg,0,-3.5\nmissing.png,1,1\n")
    names, table = read_label_csv(str(csv))
    assert names == ["Smiling", "yaw"] and table["b"] == [0.0, -3.5]
    capsys.readouterr()
    labeled = with_labels(ds, str(csv))
    assert "dropped 7 image(s)" in capsys.readouterr().err
    assert labeled.attr_names == ["Smiling", "yaw"] and labeled.files == ["a.png", "sub/b.jpg"]
    assert labeled[1][1].tolist() == [0.0, -3.5] and labeled[1][0].shape == (3, 8, 8)
    csv.write_text("file,Smiling\na.png,yes\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_label_csv(str(csv))


def test_celebahq_attribute_file_beside_folder(tmp_path):
    root = tmp_path / "CelebA-HQ-img"
    for i in range(3):
        _save(root / f"{i}.jpg", Image.new("RGB", (32, 32), (i * 80, 0, 0)))
    (tmp_path / "CelebAMask-HQ-attribute-anno.txt").write_text(
        "2\nSmiling Bald\n0.jpg  1 -1\n2.jpg  -1 1\n")
    ds = ImageFolder(str(root), 8, split="all")
    assert ds.attr_names == ["Smiling", "Bald"] and ds.files == ["0.jpg", "2.jpg"]
    assert ds[0][1].tolist() == [1.0, 0.0] and ds[1][1].tolist() == [0.0, 1.0]


# -----------------------------------------------------------------------------
# CelebA and LMDB

NAMES = [f"attr{k}" for k in range(38)] + ["Smiling", "Young"]


def _celeba_image(value):
    """178x218 aligned-CelebA-sized: green inside the official crop box, red outside."""
    a = np.zeros((218, 178, 3), np.uint8)
    a[..., 0] = 255
    l, t, r, b = data.CELEBA_CROP
    a[t:b, l:r] = (0, 255, value)
    return Image.fromarray(a)


def test_celeba_layout(tmp_path):
    rows = []
    for i in range(3):
        _save(tmp_path / "img_align_celeba" / f"{i + 1:06d}.jpg", _celeba_image(i * 100), quality=95)
        rows.append(f"{i + 1:06d}.jpg " + " ".join(["-1"] * 38 + ["1" if i == 1 else "-1", " 1"]))
    (tmp_path / "list_attr_celeba.txt").write_text("3\n" + " ".join(NAMES) + "\n" + "\n".join(rows) + "\n")
    ds = make_dataset("celeba", 16, data_dir=str(tmp_path), split="all")
    assert isinstance(ds, CelebA) and len(ds) == 3 and ds.attr_names == NAMES
    assert ds.attrs[:, -2].tolist() == [0, 1, 0] and ds.attrs[:, -1].tolist() == [1, 1, 1]
    image = ds[2][0]
    assert image.shape == (3, 16, 16) and image[0].max() < -0.6 and image[1].min() > 0.6  # the crop
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n")
    assert CelebA(str(tmp_path), 16, "train").files == ["000001.jpg"]
    assert CelebA(str(tmp_path), 16, "test").files == ["000003.jpg"]


@pytest.mark.parametrize("prefix,width", [("256", 5), ("None", 7)])
def test_lmdb_round_trip(tmp_path, prefix, width):
    lmdb = pytest.importorskip("lmdb")
    path = tmp_path / "ffhq256.lmdb"
    images = [Image.new("RGB", (64, 48), (200, 10 * i, 0)) for i in range(3)]
    if prefix == "None":  # the official celeba LMDB holds uncropped aligned images
        images = [_celeba_image(0)] * 3
    with lmdb.open(str(path), map_size=2**24) as env, env.begin(write=True) as txn:
        for i, img in enumerate(images):
            buf = io.BytesIO()
            img.save(buf, format="webp" if prefix == "None" else "jpeg", quality=100, lossless=True)
            txn.put(f"{prefix}-{str(i).zfill(width)}".encode(), buf.getvalue())
        txn.put(b"length", b"3")
    ds = make_dataset("ffhq", 16, data_dir=str(path), split="all")
    assert isinstance(ds, LMDBImages) and len(ds) == 3 and ds.files == ["0", "1", "2"]
    image, attrs = ds[2]
    assert image.shape == (3, 16, 16) and attrs.shape == (0,)
    if prefix == "256":
        expect = torch.tensor([200, 20, 0]) / 127.5 - 1
        assert torch.allclose(image.mean((1, 2)), expect, atol=0.05)
    else:
        assert image[1].min() > 0.9 and image[0].max() < -0.9  # celeba64 crop applied
    assert len(LMDBImages(str(path), 16, "test")) == 1


# -----------------------------------------------------------------------------
# malformed files: each is one DatasetError naming the file and the line (or key)

CELEBA_NAMES = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
                "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
                "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
                "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
                "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()


@pytest.fixture(scope="module")
def toy_jpegs():
    """Three 178x218 JPEGs (aligned CelebA's size) of toyfaces, as bytes, with their attributes."""
    faces = ToyFaces(128, 3, cache_dir=None)
    out = []
    for image, attrs in zip(faces.images, faces.attrs):
        buf = io.BytesIO()
        Image.fromarray(image).resize((178, 218)).save(buf, format="jpeg", quality=90)
        row = {n: v for n, v in zip(ToyFaces.ATTRIBUTES, attrs)}
        out.append((buf.getvalue(), [1 if row.get(n) else -1 for n in CELEBA_NAMES]))
    return out


def _attr_text(rows):
    """An attribute file as CelebA writes it: the count, the 40 names, then `FILE v1 ... v40`."""
    return f"{len(rows)}\n{' '.join(CELEBA_NAMES)} \n" + "".join(
        f"{name} " + " ".join(f"{v:2d}" for v in values) + "\n" for name, values in rows)


@pytest.fixture
def celeba(tmp_path, toy_jpegs):
    """A CelebA-shaped folder: img_align_celeba/00000N.jpg, list_attr_celeba.txt, list_eval_partition.txt."""
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(toy_jpegs))]
    for name, (jpeg, _) in zip(names, toy_jpegs):
        (root / "img_align_celeba" / name).write_bytes(jpeg)
    (root / "list_attr_celeba.txt").write_text(_attr_text([(n, v) for n, (_, v) in zip(names, toy_jpegs)]))
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, "012")))
    return root


@pytest.fixture
def celebahq(tmp_path, toy_jpegs):
    """CelebAMask-HQ: CelebA-HQ-img/N.jpg with CelebAMask-HQ-attribute-anno.txt beside the folder."""
    for i, (jpeg, _) in enumerate(toy_jpegs):
        _save(tmp_path / "CelebA-HQ-img" / f"{i}.jpg", Image.open(io.BytesIO(jpeg)))
    (tmp_path / "CelebAMask-HQ-attribute-anno.txt").write_text(
        _attr_text([(f"{i}.jpg", v) for i, (_, v) in enumerate(toy_jpegs)]))
    return tmp_path / "CelebA-HQ-img"


def _edit_line(path, lineno, edit):
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = edit(lines[lineno - 1])
    path.write_bytes(b"\n".join(lines))


ROW = 4  # the line of the second image's row in an attribute file
TABLE_CASES = {  # case -> (the file, how it is broken, what the message must say besides the file's name)
    "attr short row": ("list_attr_celeba.txt", lambda p: _edit_line(p, ROW, lambda l: l.rsplit(b" ", 1)[0]),
                       ["line 4", "40 values -1 or 1", "got 39 value(s)"]),
    "attr not a number": ("list_attr_celeba.txt", lambda p: _edit_line(p, ROW, lambda l: l.replace(b" 1", b" x", 1)),
                          ["line 4", "got 'x' for"]),
    "attr not -1/1/0": ("list_attr_celeba.txt", lambda p: _edit_line(p, ROW, lambda l: l[:-2] + b" 2"),
                        ["line 4", "got '2' for Young"]),
    "attr count disagrees": ("list_attr_celeba.txt", lambda p: _edit_line(p, 1, lambda l: b"202599"),
                             ["line 1", "says 202599 images but 3 rows follow"]),
    "attr empty": ("list_attr_celeba.txt", lambda p: p.write_bytes(b""), ["empty", "expected a count line"]),
    "attr no count line": ("list_attr_celeba.txt", lambda p: _edit_line(p, 1, lambda l: b""),
                           ["line 1", "expected the number of images"]),
    "attr twice": ("list_attr_celeba.txt", lambda p: _edit_line(p, ROW, lambda l: l.replace(b"000002", b"000001")),
                   ["line 4", "000001.jpg is listed again (first on line 3)"]),
    "attr not UTF-8": ("list_attr_celeba.txt", lambda p: _edit_line(p, ROW, lambda l: l + b"\xe9"),
                       ["line 4", "0xe9 is not UTF-8", "not a text attribute file"]),
    "hq attr short row": ("CelebAMask-HQ-attribute-anno.txt", lambda p: _edit_line(p, 3, lambda l: l.rsplit(b" ", 2)[0]),
                          ["line 3", "got 38 value(s) after '0.jpg'"]),
    "partition bad value": ("list_eval_partition.txt", lambda p: _edit_line(p, 2, lambda l: b"000002.jpg valid"),
                            ["line 2", "0 (train), 1 (validation) or 2 (test)", "got 'valid' for partition"]),
    "partition no value": ("list_eval_partition.txt", lambda p: _edit_line(p, 3, lambda l: b"000003.jpg"),
                           ["line 3", "got 0 value(s)"]),
    "csv wrong cells": ("labels.csv", lambda p: _edit_line(p, 3, lambda l: l + b",1"),
                        ["line 3", "3 cells, the header has 2 (file,Smiling)"]),
    "csv not a number": ("labels.csv", lambda p: _edit_line(p, 2, lambda l: b"000001.jpg,yes"),
                         ["line 2", "labels must be numbers"]),
    "csv twice": ("labels.csv", lambda p: _edit_line(p, 3, lambda l: b"000001.png,0"),
                  ["line 3", "000001.png is listed again (first on line 2"]),
    "csv not UTF-8": ("labels.csv", lambda p: _edit_line(p, 3, lambda l: b"caf\xe9.jpg,1"),
                      ["line 3", "0xe9 is not UTF-8", "not a text CSV file"]),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_a_malformed_label_table_names_its_line(celeba, celebahq, case):
    name, damage, says = TABLE_CASES[case]
    (celeba / "labels.csv").write_text("file,Smiling\n000001.jpg,1\n000002.jpg,0\n000003.jpg,1\n")
    load = {"CelebAMask-HQ-attribute-anno.txt": lambda: make_dataset("celebahq", 16, data_dir=str(celebahq)),
            "labels.csv": lambda: with_labels(make_dataset("celeba", 16, data_dir=str(celeba)), str(celeba / "labels.csv"))
            }.get(name, lambda: make_dataset("celeba", 16, data_dir=str(celeba)))
    ds = load()  # the valid files load
    assert len(ds) > 0 and ds[0][0].shape == (3, 16, 16)
    path = celebahq.parent / name if name.startswith("CelebAMask") else celeba / name
    damage(path)
    with pytest.raises(DatasetError) as e:
        load()
    message = str(e.value)
    assert "\n" not in message and str(path) in message, message
    assert all(s in message for s in says), message


BOMB_LIMIT = 100_000  # Pillow's limit, lowered for the test: it warns above it and raises above twice it
IMAGE_CASES = {  # case -> (how the second image is broken, when it is found, what the message must say)
    "truncated JPEG": (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "load", "truncated"),
    "not an image": (lambda p: p.write_bytes(b"GIF89a, or so it says"), "scan", "not an image file Pillow can read"),
    "empty file": (lambda p: p.write_bytes(b""), "scan", "not an image file Pillow can read"),
    "bomb (warned)": (lambda p: Image.new("L", (400, 400)).save(p, format="png"), "scan",
                      "160000 pixels, over Pillow's limit of 100000"),
    "bomb (refused)": (lambda p: Image.new("L", (600, 600)).save(p, format="png"), "scan",
                       "360000 pixels, over Pillow's limit of 100000"),
}


@pytest.mark.parametrize("layout", ["celeba", "folder"])
@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_a_broken_image_is_named_when_scanned_or_loaded(celeba, monkeypatch, capsys, layout, case):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    damage, found, says = IMAGE_CASES[case]
    root = celeba / "img_align_celeba"
    if layout == "folder":  # a plain image folder: no attribute file
        root = celeba.parent / "photos"
        os.rename(celeba / "img_align_celeba", root)
    path = root / "000002.jpg"
    damage(path)
    capsys.readouterr()
    ds = make_dataset("mine", 16, data_dir=str(root if layout == "folder" else celeba), split="all")
    err = capsys.readouterr().err
    if found == "scan":  # the header check at construction skips it, with one warning that says why
        assert "000002.jpg" not in ds.files and len(ds) == 2
        assert err.count("\n") == 1 and "skipped 1 unreadable image(s)" in err and says in err and "000002.jpg" in err
        assert ds[1][0].shape == (3, 16, 16)
    else:  # only decoding finds it: loading that item raises, naming the file
        assert ds.files[1] == "000002.jpg" and err == ""
        with pytest.raises(DatasetError) as e:
            ds[1]
        assert "\n" not in str(e.value) and str(path) in str(e.value) and says in str(e.value)
    with pytest.raises(DatasetError) as e:  # and any direct load, e.g. sample.py --images
        data.load_rgb(path)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"cannot read {path}: ") and says in str(e.value)


def _lmdb(path, items):
    lmdb = pytest.importorskip("lmdb")
    with lmdb.open(str(path), map_size=2**24) as env, env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v)
    return path


def _jpeg(shade=0):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (shade, 0, 0)).save(buf, format="jpeg")
    return buf.getvalue()


LMDB_CASES = {  # case -> (the database's items or raw data.mdb bytes, when it is found, what the message must say)
    "garbage data.mdb": (np.random.default_rng(0).bytes(8192), "open", "is not a readable LMDB database"),
    "empty data.mdb": (b"", "open", "is not a readable LMDB database"),
    "no length": ({b"256-00000": _jpeg()}, "open", "no 'length' key"),
    "length not a count": ({b"length": b"three", b"256-00000": _jpeg()}, "open", "its 'length' key holds b'three'"),
    "keys not official": ({b"length": b"1", b"img_0.png": _jpeg()}, "open",
                          "its first key b'img_0.png' is not PREFIX-INDEX"),
    "length too large": ({b"length": b"5", b"256-00000": _jpeg(), b"256-00001": _jpeg()}, "open",
                         "'length' says 5 images but the key 256-00004 is missing"),
    "values not images": ({b"length": b"1", b"256-00000": b"\x00" * 64}, "open", "key 256-00000: not an image file"),
    "a truncated value": ({b"length": b"2", b"256-00000": _jpeg(), b"256-00001": _jpeg()[:300]}, "load",
                          "key 256-00001: truncated"),
}


@pytest.mark.parametrize("case", list(LMDB_CASES))
def test_a_broken_lmdb_is_named(tmp_path, case):
    pytest.importorskip("lmdb")
    content, found, says = LMDB_CASES[case]
    path = tmp_path / f"{case.replace(' ', '_')}.lmdb"
    if isinstance(content, bytes):
        path.mkdir()
        (path / "data.mdb").write_bytes(content)
    else:
        _lmdb(path, content)
    if found == "open":
        with pytest.raises(DatasetError) as e:
            make_dataset("ffhq", 16, data_dir=str(path), split="all")
        assert "expected an official Diff-AE LMDB" in str(e.value)
    else:
        ds = make_dataset("ffhq", 16, data_dir=str(path), split="all")
        assert ds[0][0].shape == (3, 16, 16)
        with pytest.raises(DatasetError) as e:
            ds[1]
    assert "\n" not in str(e.value) and str(path) in str(e.value) and says.lower() in str(e.value).lower(), str(e.value)


EMPTY_CASES = {  # case -> (how a valid CelebA folder is cut down, the split, what the message must say)
    "one image, held out": ("folder", lambda root: [os.remove(root / f"00000{i}.jpg") for i in (2, 3)], "train",
                            "1 image(s) found in {root}, all of them held out of the train split (every 100th image "
                            "is held out for testing, starting with the first); add images"),
    "all unreadable": ("folder", lambda root: [(root / f"00000{i}.jpg").write_bytes(b"x") for i in (2, 3)], "train",
                       "none of the 2 train image(s) in {root} can be read; the first: cannot read 000002.jpg: not an "
                       "image file Pillow can read; delete or replace it"),
    "partition without train": ("celeba", lambda root: (root / "list_eval_partition.txt").write_text(
        "000001.jpg 2\n000002.jpg 1\n000003.jpg 2\n"), "train", "3 image(s) found in {root}, all of them held out of "
        "the train split ({root}/list_eval_partition.txt puts none of them in partition 0); correct or remove that file"),
}


@pytest.mark.parametrize("case", list(EMPTY_CASES))
def test_an_empty_split_says_why(celeba, case):
    layout, cut, split, says = EMPTY_CASES[case]
    root = celeba / "img_align_celeba" if layout == "folder" else celeba
    if layout == "folder":
        os.remove(celeba / "list_attr_celeba.txt")  # a plain image folder
    assert len(make_dataset("mine", 16, data_dir=str(root), split=split)) > 0
    cut(root if layout == "celeba" else root)
    with pytest.raises(DatasetError) as e:
        make_dataset("mine", 16, data_dir=str(root), split=split)
    assert str(e.value) == f"dataset 'mine': {says.format(root=root)}", str(e.value)


def test_a_broken_image_in_a_dataloader_worker_is_still_one_line(celeba):
    path = celeba / "img_align_celeba" / "000002.jpg"
    path.write_bytes(path.read_bytes()[:1000])
    ds = make_dataset("celeba", 16, data_dir=str(celeba), split="all")
    with pytest.raises(DatasetError) as e:  # the worker's traceback becomes the message it carried
        list(torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1))
    assert str(e.value).startswith(f"cannot read {path}: ") and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("n, batch", [(10, 3), (7, 7), (5, 8)])
def test_a_runs_data_order_visits_every_item_once_per_epoch_and_splits_over_ranks(n, batch):
    """step_indices: consecutive batches walk epoch-wise permutations of the dataset; any world size
    takes disjoint shares of the same global batch, so the order does not depend on how a run is split."""
    from data import StepBatches, step_indices
    order = [i for step in range(3 * n) for i in step_indices(n, batch, step, seed=4)]
    for epoch in range(3):
        assert sorted(order[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert order[:n] != sorted(order[:n]) or n < 3  # shuffled
    assert step_indices(n, batch, 5, seed=4) == step_indices(n, batch, 5, seed=4) != step_indices(n, batch, 5, seed=5)
    shares = [list(StepBatches(n, batch, 2, 4, 4, r, 2)) for r in range(2)]
    for k, step in enumerate(range(2, 4)):
        whole = step_indices(n, batch, step, 4)
        assert shares[0][k] == whole[0::2] and shares[1][k] == whole[1::2]
