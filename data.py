"""
Datasets. Every item is a tuple (image, attrs):
  image  float32 [3, res, res] in [-1, 1]
  attrs  float32 [A] labels (0/1 for binary attributes, any float for continuous ones; A may be 0)
Every dataset has .attr_names (list[str], possibly empty); file-based ones also have .files
(relative names, used to join a user's CSV labels by file stem).

- ToyFaces: the built-in procedural cartoon faces with ground-truth attributes and factors.
- ImageFolder: any folder of images (FFHQ, CelebA-HQ, LSUN exports, your own photos).
- CelebA: aligned CelebA with list_attr_celeba.txt, cropped as the official Diff-AE celeba64.
- LMDBImages: the official Diff-AE LMDBs (ffhq256.lmdb, celebahq256.lmdb, horse256.lmdb, ...).
- make_dataset(name, res, ...): the one entry point the trainer uses.

Real data is split deterministically by sorted order: split="test" holds every 100th item
(index 0, 100, 200, ...), split="train" the other 99%, split="all" everything.

Every file a user brings is read through one checked helper per kind (_text and _table for label
tables, read_label_csv, _open_image and load_rgb, _lmdb_layout): a malformed one is one DatasetError
naming the file, the line or key, and what was expected.
"""

import colorsys
import csv
import math
import os
import re
import sys
import time
import warnings
from functools import lru_cache
from io import BytesIO, StringIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
HOLDOUT_EVERY = 100  # split="test" = every 100th item of a real dataset, by sorted order


class DatasetError(ValueError):
    """A dataset could not be found or read; the message says what to do, in one line. The trainer exits with 2."""

    def __init__(self, message=""):
        # a DataLoader worker's error reaches the trainer rebuilt from its whole traceback: keep the message
        if message.startswith("Caught DatasetError in DataLoader worker"):
            message = message.rstrip().rsplit("DatasetError: ", 1)[-1]
        super().__init__(message)


def _warn(msg):
    print(f"warning: {msg}", file=sys.stderr)


def _split_indices(n, split):
    """The deterministic hold-out rule shared by every real dataset."""
    if split == "train":
        return [i for i in range(n) if i % HOLDOUT_EVERY != 0]
    if split == "test":
        return list(range(0, n, HOLDOUT_EVERY))
    if split == "all":
        return list(range(n))
    raise DatasetError(f"unknown split {split!r}: use 'train', 'test' or 'all'")


def _uint8_to_tensor(a):
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.array(a)).float()  # np.array copies: PIL's arrays are read-only
    return x.movedim(-1, -3) / 127.5 - 1.0


# -----------------------------------------------------------------------------
# ToyFaces: procedural cartoon faces with known attributes and factors

# binary attributes and their base rates (probabilities); names as in CelebA
ATTRIBUTE_RATES = {"Smiling": 0.5, "Eyeglasses": 0.3, "Blond_Hair": 0.2, "Black_Hair": 0.35,
                   "Wearing_Hat": 0.15, "Beard": 0.2, "Bald": 0.1, "Pale_Skin": 0.25}
HAIR_COLOURS = {"blond": (240, 205, 70), "black": (22, 18, 18), "brown": (110, 62, 28), "red": (200, 70, 25)}
PALE_SKIN = (253, 236, 224)
SKIN_TONES = [(212, 156, 116), (178, 122, 84), (138, 92, 60), (98, 64, 42)]  # all much darker than pale
BEARD_COLOUR = (52, 36, 26)
MOUTH_COLOUR = (150, 24, 36)
FRAME_COLOUR = (14, 14, 18)


def sample_face(rng):
    """Draw the parameters of one face (a dict) from a numpy Generator. Binary attributes are
    independent Bernoulli draws with ATTRIBUTE_RATES, except that Bald, Blond_Hair and
    Black_Hair come from one categorical hair draw (so they exclude each other)."""
    p, r = {}, ATTRIBUTE_RATES
    p["Smiling"] = rng.random() < r["Smiling"]
    p["Eyeglasses"] = rng.random() < r["Eyeglasses"]
    # one uniform draw u decides baldness and hair colour, so the marginals are exactly the rates:
    # [0, bald) bald, then blond, then black; the rest is split evenly into brown and red
    u, bald = rng.random(), r["Bald"]
    blond, black = bald + r["Blond_Hair"], bald + r["Blond_Hair"] + r["Black_Hair"]
    p["hair"] = (None if u < bald else "blond" if u < blond else "black" if u < black
                 else "brown" if u < (black + 1) / 2 else "red")
    p["Bald"], p["Blond_Hair"], p["Black_Hair"] = u < bald, p["hair"] == "blond", p["hair"] == "black"
    p["Wearing_Hat"] = rng.random() < r["Wearing_Hat"]
    p["Beard"] = rng.random() < r["Beard"]
    p["Pale_Skin"] = rng.random() < r["Pale_Skin"]
    tone = int(rng.integers(len(SKIN_TONES)))
    p["skin"] = PALE_SKIN if p["Pale_Skin"] else SKIN_TONES[tone]
    # continuous nuisance factors (ToyFaces.FACTOR_NAMES)
    p["x_offset"], p["y_offset"] = rng.uniform(-0.05, 0.05, size=2)  # fraction of the frame
    p["scale"] = rng.uniform(0.9, 1.1)
    p["tilt"] = rng.uniform(-12.0, 12.0)  # degrees, counter-clockwise
    h, s, v = rng.uniform(0, 1), rng.uniform(0.15, 0.45), rng.uniform(0.45, 0.8)
    p["bg"] = np.array(colorsys.hsv_to_rgb(h, s, v))  # muted, mid-bright: hair and hats stand out
    p["bg2"] = np.clip(p["bg"] + rng.uniform(-0.15, 0.15, size=3), 0, 1)  # far side of the gradient
    p["bg_angle"] = rng.uniform(0, 2 * np.pi)
    p["light_x"], p["light_y"] = rng.uniform(-0.25, 0.25, size=2)  # brightness slope per frame width
    p["eye_hue"] = rng.uniform(0, 1)
    p["hat_hue"] = rng.uniform(0.3, 0.85)  # green to purple: never the yellow of blond hair
    p["frown"] = rng.random() < 0.4  # a non-smiling mouth is straight or a small frown
    # fine per-image randomness, for the stochastic code x_T to carry
    p["strands"] = rng.uniform(0, 1, size=(int(rng.integers(3, 8)), 4))  # (angle, radius, dx, dy)
    p["freckles"] = rng.uniform(-1, 1, size=(int(rng.integers(0, 7)), 2))
    p["noise_seed"] = int(rng.integers(2**31))
    return p


@lru_cache(maxsize=8)
def _grid(size):
    """Pixel-centre coordinates in [0, 1], each [size, size]; cached since every image needs them."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(c, c)  # (xx, yy)


def _box(cx, cy, rx, ry):
    return [cx - rx, cy - ry, cx + rx, cy + ry]


def _mix(c1, c2, t):
    return tuple(int(a * (1 - t) + b * t) for a, b in zip(c1, c2))


def draw_face(p, res):
    """Render the face with parameters p (from sample_face) as uint8 [res, res, 3]. The face is
    drawn at a supersampled size and box-downsampled, so edges are antialiased at any res."""
    D = res * max(1, min(4, 512 // res))  # drawing size: 4x supersampling, at most 512 pixels
    # the face is drawn upright on a transparent layer at size D, then tilted about its centre,
    # downsampled and laid over the background (which is smooth, so it is made at res directly)
    layer = Image.new("RGBA", (D, D), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    cx, cy = (0.5 + p["x_offset"]) * D, (0.53 + p["y_offset"]) * D
    a, b = 0.26 * p["scale"] * D, 0.32 * p["scale"] * D  # face half-width and half-height
    w = max(1, round(0.04 * D))  # thick lines stay visible at 16x16
    skin = p["skin"]
    hair = HAIR_COLOURS.get(p["hair"])
    hair_box = _box(cx, cy - 0.12 * b, 1.3 * a, 1.05 * b)

    if hair:  # behind the face: shows as a band at both sides, even under a hat
        d.ellipse(hair_box, fill=hair)
    d.ellipse(_box(cx, cy, a, b), fill=skin)
    if hair:  # fringe over the forehead
        d.chord(hair_box, 200, 340, fill=hair)
        shade = _mix(hair, (128, 128, 128), 0.5)
        for angle, radius, dx, dy in p["strands"]:  # thin strands starting in the upper hair
            angle, radius = np.pi * (1.1 + 0.8 * angle), 0.6 + 0.4 * radius
            x0, y0 = cx + 1.2 * a * radius * np.cos(angle), cy - 0.12 * b + b * radius * np.sin(angle)
            d.line([x0, y0, x0 + (dx - 0.5) * 0.15 * D, y0 + (dy - 0.2) * 0.12 * D],
                   fill=shade, width=max(1, round(D / 160)))
    if p["Beard"]:  # dark region over the lower jaw
        d.chord(_box(cx, cy, a, b), 20, 160, fill=BEARD_COLOUR)
    for fx, fy in p["freckles"]:
        x0, y0 = cx + np.sign(fx) * (0.5 + 0.15 * abs(fx)) * a, cy + (0.15 + 0.12 * fy) * b
        d.ellipse(_box(x0, y0, 0.012 * D, 0.012 * D), fill=_mix(skin, (90, 40, 20), 0.35))

    ey = cy - 0.12 * b
    if p["Eyeglasses"]:  # tinted lenses under the eyes, frames over them
        for ex in (cx - 0.42 * a, cx + 0.42 * a):
            d.ellipse(_box(ex, ey, 0.3 * a, 0.24 * b), fill=_mix(skin, (170, 200, 235), 0.4))
    iris = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(p["eye_hue"], 0.7, 0.6))
    for ex in (cx - 0.42 * a, cx + 0.42 * a):
        d.ellipse(_box(ex, ey, 0.17 * a, 0.11 * b), fill=(250, 250, 250))
        d.ellipse(_box(ex, ey, 0.09 * a, 0.09 * a), fill=iris)
        d.ellipse(_box(ex, ey, 0.04 * a, 0.04 * a), fill=(0, 0, 0))
    if p["Eyeglasses"]:
        for ex in (cx - 0.42 * a, cx + 0.42 * a):
            d.ellipse(_box(ex, ey, 0.3 * a, 0.24 * b), outline=FRAME_COLOUR, width=w)
        d.line([cx - 0.14 * a, ey, cx + 0.14 * a, ey], fill=FRAME_COLOUR, width=w)  # bridge
        d.line([cx - 0.72 * a, ey, cx - 0.98 * a, ey - 0.05 * b], fill=FRAME_COLOUR, width=w)  # arms
        d.line([cx + 0.72 * a, ey, cx + 0.98 * a, ey - 0.05 * b], fill=FRAME_COLOUR, width=w)

    d.ellipse(_box(cx, cy + 0.12 * b, 0.07 * a, 0.06 * b), fill=_mix(skin, (0, 0, 0), 0.25))  # nose
    my = cy + 0.42 * b
    if p["Smiling"]:  # wide open smile: the lower half of an ellipse, with teeth
        d.chord(_box(cx, my, 0.5 * a, 0.22 * b), 0, 180, fill=MOUTH_COLOUR)
        d.rectangle([cx - 0.4 * a, my, cx + 0.4 * a, my + 0.05 * b], fill=(250, 250, 250))
    elif p["frown"]:
        d.arc(_box(cx, my + 0.12 * b, 0.22 * a, 0.1 * b), 200, 340, fill=MOUTH_COLOUR, width=w)
    else:
        d.line([cx - 0.22 * a, my + 0.05 * b, cx + 0.22 * a, my + 0.05 * b], fill=MOUTH_COLOUR, width=w)

    if p["Wearing_Hat"]:  # crown and brim cover the top; the hair still shows at the sides
        hat = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(p["hat_hue"], 0.8, 0.75))
        d.chord(_box(cx, cy - 0.62 * b, 1.02 * a, 0.62 * b), 180, 360, fill=hat)
        d.rounded_rectangle([cx - 1.22 * a, cy - 0.68 * b, cx + 1.22 * a, cy - 0.46 * b],
                            radius=0.05 * b, fill=hat)

    # NEAREST is much faster than BILINEAR here, and the box downsampling below antialiases anyway
    layer = layer.rotate(p["tilt"], resample=Image.NEAREST, center=(cx, cy))
    layer = layer.reduce(D // res)  # box filter on premultiplied alpha: antialiased edges

    # background: a smooth two-colour linear gradient in a random direction
    xx, yy = _grid(res)
    t = 0.5 + (xx - 0.5) * np.cos(p["bg_angle"]) + (yy - 0.5) * np.sin(p["bg_angle"])
    bg = p["bg"] + (p["bg2"] - p["bg"]) * np.clip(t, 0, 1)[..., None]  # (res, res, 3)
    bg = Image.fromarray((bg * 255).astype(np.uint8)).convert("RGBA")
    img = np.asarray(Image.alpha_composite(bg, layer).convert("RGB"), dtype=np.float32)

    # lighting (a smooth brightness slope) and mild pixel noise, applied at the final size
    light = 1.0 + p["light_x"] * (xx - 0.5) * 2 + p["light_y"] * (yy - 0.5) * 2
    noise = np.random.default_rng(p["noise_seed"]).normal(0.0, 3.0, size=img.shape)
    return np.clip(img * light[..., None] + noise, 0, 255).round().astype(np.uint8)


class ToyFaces:
    """Procedural cartoon faces, deterministic per (seed, split, index), at any power-of-two res
    from 16 to 256. Binary attributes (base rates, independent except the hair draw):
      Smiling 0.5, Eyeglasses 0.3, Blond_Hair 0.2, Black_Hair 0.35, Wearing_Hat 0.15,
      Beard 0.2, Bald 0.1, Pale_Skin 0.25
    Bald, Blond_Hair and Black_Hair exclude each other (the rest of the hair is brown or red).
    Continuous factors per image (.factors [n, F], columns FACTOR_NAMES): position, scale, tilt,
    background colour, lighting slope, eye hue. Hair strands, freckles and pixel noise are the
    fine randomness only x_T should carry. All n images are rendered once into memory and cached
    on disk (cache_dir=None: no cache) as <key>.images.npy + <key>.labels.npz."""

    VERSION = 1  # bump whenever the renderer changes: it is part of the cache key
    RATES = ATTRIBUTE_RATES
    ATTRIBUTES = list(ATTRIBUTE_RATES)
    FACTOR_NAMES = ["x_offset", "y_offset", "scale", "tilt", "bg_r", "bg_g", "bg_b", "light_x", "light_y",
                    "eye_hue"]
    SPLITS = {"train": 0, "test": 1}  # separate random streams: image i of train != image i of test

    def __init__(self, res=32, n=10000, seed=0, split="train", cache_dir="data/cache"):
        if res not in (16, 32, 64, 128, 256):
            raise DatasetError(f"toyfaces res must be a power of two from 16 to 256, got {res}")
        if split not in self.SPLITS:
            raise DatasetError(f"toyfaces split must be 'train' or 'test', got {split!r}")
        if n < 1:
            raise DatasetError(f"toyfaces needs n >= 1, got {n}")
        self.res, self.n, self.seed, self.split = res, n, seed, split
        self.attr_names = list(self.ATTRIBUTES)
        key = f"toyfaces-v{self.VERSION}-res{res}-n{n}-seed{seed}-{split}"
        paths = None if cache_dir is None else (os.path.join(cache_dir, key + ".images.npy"),
                                                os.path.join(cache_dir, key + ".labels.npz"))
        if paths and os.path.exists(paths[0]) and os.path.exists(paths[1]):
            self.images = np.load(paths[0])
            with np.load(paths[1]) as f:
                self.attrs, self.factors = f["attrs"], f["factors"]
        else:
            self.images, self.attrs, self.factors = self._render_all()
            if paths:
                self._save(paths)
        self._attrs = torch.from_numpy(self.attrs)

    def params(self, index):
        """The drawing parameters of image `index` (flip an attribute and pass to draw_face
        to get a ground-truth counterfactual)."""
        return sample_face(np.random.default_rng([self.seed, self.SPLITS[self.split], index]))

    def _render_all(self):
        images = np.empty((self.n, self.res, self.res, 3), dtype=np.uint8)
        attrs = np.empty((self.n, len(self.ATTRIBUTES)), dtype=np.float32)
        factors = np.empty((self.n, len(self.FACTOR_NAMES)), dtype=np.float32)
        t0 = t_print = time.time()
        for i in range(self.n):
            p = self.params(i)
            images[i] = draw_face(p, self.res)
            attrs[i] = [p[k] for k in self.ATTRIBUTES]
            factors[i] = [p["x_offset"], p["y_offset"], p["scale"], p["tilt"], *p["bg"],
                          p["light_x"], p["light_y"], p["eye_hue"]]
            if time.time() - t_print > 5:  # only long renders (large n or res) print progress
                t_print, rate = time.time(), (i + 1) / (time.time() - t0)
                print(f"toyfaces: rendered {i + 1}/{self.n} at {self.res}x{self.res}, {rate:.0f} images/s, "
                      f"ETA {(self.n - i - 1) / rate:.0f}s", file=sys.stderr)
        return images, attrs, factors

    def _save(self, paths):
        # temp file + os.replace: a crash or a concurrent run never leaves a half-written cache;
        # labels are written last, and loading needs both files
        # labels are written last, and loading needs both files. The cache only saves time: a folder that
        # cannot take it (read-only, full) costs a render next time, never the run.
        for path, write in ((paths[0], lambda f: np.save(f, self.images)),
                            (paths[1], lambda f: np.savez(f, attrs=self.attrs, factors=self.factors))):
            tmp = f"{path}.tmp{os.getpid()}"
            try:
                os.makedirs(os.path.dirname(paths[0]) or ".", exist_ok=True)
                with open(tmp, "wb") as f:
                    write(f)
                os.replace(tmp, path)
            except OSError as e:
                if os.path.exists(tmp):
                    os.remove(tmp)
                _warn(f"toyfaces: cannot cache the rendered images in {os.path.dirname(path)} ({e.strerror or e}); "
                      f"going on without a cache")
                return

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return _uint8_to_tensor(self.images[i]), self._attrs[i]

    def tensors(self):
        """All images float32 [n, 3, res, res] in [-1, 1] and attrs float32 [n, A], for bulk use."""
        return _uint8_to_tensor(self.images), self._attrs.clone()


# -----------------------------------------------------------------------------
# real images: loading, cropping, labels

CELEBA_CROP = (25, 57, 153, 185)  # official Diff-AE celeba64 (D2C) crop: 128x128 centred at (89, 121)
HOLDOUT_NOTE = f"(every {HOLDOUT_EVERY}th image is held out for testing, starting with the first); add images"


def _reason(e):
    """A short why for an exception raised while reading a file."""
    if isinstance(e, Image.UnidentifiedImageError):  # its own text repeats the path
        return "not an image file Pillow can read"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _open_image(source, name, fix="delete or replace it"):
    """Pillow's image for a path or file object, header parsed, no pixels decoded. DatasetError naming `name`
    (and ending in `fix`) if Pillow cannot parse it, or if it has more pixels than Image.MAX_IMAGE_PIXELS
    (Pillow's guard against decompression bombs, left as it is: no training image comes near it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow only warns up to twice its limit
            return Image.open(source)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        pixels = re.search(r"\d+", str(e))  # Pillow's text: "Image size (N pixels) exceeds limit of ..."
        raise DatasetError(f"cannot read {name}: {pixels.group() if pixels else 'too many'} pixels, over Pillow's "
                           f"limit of {Image.MAX_IMAGE_PIXELS} against decompression bombs "
                           f"(PIL.Image.MAX_IMAGE_PIXELS); {fix}") from None
    except Exception as e:  # any error while parsing the header means the file is no readable image
        raise DatasetError(f"cannot read {name}: {_reason(e)}; {fix}") from e


def load_rgb(path_or_file, min_size=None, name=None):
    """Open any image as 8-bit RGB. Transparency is composited on white (a plain convert
    would show whatever colour hides under alpha 0, often black); 16-bit grey is scaled
    to 8 bits (Pillow's convert would clip it). With min_size, a large JPEG is decoded at a
    reduced scale whose short side is still >= min_size (several times faster, e.g. 1024 -> 128).
    Any failure, in the header or in the pixels, is one DatasetError naming `name` (default: the path)."""
    name = path_or_file if name is None else name
    with _open_image(path_or_file, name) as img:
        try:
            return _to_rgb(img, min_size)
        except Exception as e:  # truncated or corrupt pixel data: only decoding finds it
            raise DatasetError(f"cannot read {name}: {_reason(e)}; delete or replace it") from e


def _to_rgb(img, min_size):
    """The decoding and conversions load_rgb describes."""
    if min_size and img.format == "JPEG":
        img.draft(img.mode, (min_size, min_size))
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(img, dtype=np.float32) / 257.0
        img = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


def square_resize(img, res, box=None):
    """Crop to `box` (default: the centre square) and resize to res x res with LANCZOS, as the
    official Diff-AE exports did (its data_resize_*.py). Returns float32 [3, res, res] in [-1, 1]."""
    w, h = img.size
    if box is None:
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    img = img.crop(box).resize((res, res), Image.LANCZOS)  # crop first: no pixels from outside the box
    return _uint8_to_tensor(np.asarray(img))


def _text(path, kind, expected):
    """The text of a UTF-8 file (a leading BOM dropped: spreadsheet exports start with one); DatasetError
    naming the file, and the line of the first byte that is not UTF-8."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read the {kind} file {path} ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DatasetError(f"{path}, line {line}: the byte 0x{raw[e.start]:02x} is not UTF-8, so this is not a "
                           f"text {kind} file; expected {expected}") from None


def _table(path, lines, start, names, cell, expected):
    """{file stem: [cell(v) per name]} from the rows `FILE v1 ... vN` of a whitespace table (lines[start:],
    blank lines skipped). A row of another width, a value cell() refuses (ValueError) or a file listed
    twice is one DatasetError naming path, the line and what is expected."""
    table, seen = {}, {}
    for lineno, line in enumerate(lines[start:], start=start + 1):
        row = line.split()
        if not row:
            continue
        where = f"{path}, line {lineno}"
        if len(row) != len(names) + 1:
            raise DatasetError(f"{where}: expected {expected}, got {len(row) - 1} value(s) after {row[0]!r}")
        values = []
        for name, v in zip(names, row[1:]):
            try:
                values.append(cell(v))
            except ValueError:
                raise DatasetError(f"{where}: expected {expected}, got {v!r} for {name}") from None
        stem = Path(row[0]).stem
        if stem in seen:
            raise DatasetError(f"{where}: {row[0]} is listed again (first on line {seen[stem]}); "
                               f"expected one row per image")
        seen[stem], table[stem] = lineno, values
    return table


def _binary(v):
    """An attribute value: -1 or 0 -> 0.0, 1 -> 1.0 (CelebA writes -1/1)."""
    x = float(v)
    if x not in (-1, 0, 1):
        raise ValueError(v)
    return float(x > 0)


def _partition(v):
    if v not in ("0", "1", "2"):
        raise ValueError(v)
    return v


def _read_attr_file(path):
    """CelebA-style attribute file: a count line, a line of names, then `file v1 v2 ...` with
    values -1/1 or 0/1. Returns (names, {file stem: [0/1 floats]}); DatasetError naming the line otherwise."""
    layout = "a count line, a line of attribute names, then `FILE v1 ... vN` per image with values -1 or 1"
    lines = _text(path, "attribute", layout).splitlines()
    if len(lines) < 2:
        raise DatasetError(f"{path}: {'empty' if not lines else 'one line only'}; expected {layout}")
    count, names = lines[0].strip(), lines[1].split()
    if not count.isdigit():
        raise DatasetError(f"{path}, line 1: expected the number of images, got {count!r}")
    if not names:
        raise DatasetError(f"{path}, line 2: expected the attribute names, got an empty line")
    row = f"a file name and {len(names)} values -1 or 1 (one per name on line 2)"
    table = _table(path, lines, 2, names, _binary, row)
    if int(count) != len(table):
        raise DatasetError(f"{path}, line 1: says {count} images but {len(table)} rows follow; "
                           f"restore the missing rows or correct the count")
    return names, table


def _read_partition(path):
    """CelebA's list_eval_partition.txt: `file 0|1|2` per image -> {file stem: '0'|'1'|'2'}."""
    expected = "a file name and its partition: 0 (train), 1 (validation) or 2 (test)"
    rows = _table(path, _text(path, "partition", expected).splitlines(), 0, ["partition"], _partition, expected)
    return {stem: values[0] for stem, values in rows.items()}


def read_label_csv(path):
    """A user's labels: CSV with header `file,label1,label2,...` (binary or continuous values).
    Returns (names, {file stem: [floats]}); rows are matched to images by file stem. A row that does
    not fit is one DatasetError naming the file and its line."""
    layout = "a header `file,label1,...`, then one row `FILE,v1,...` of numbers per image"
    reader = csv.reader(StringIO(_text(path, "CSV", layout), newline=""))
    try:
        rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except csv.Error as e:
        raise DatasetError(f"{path}, line {reader.line_num}: {e}, so this is not a text CSV file; "
                           f"expected {layout}") from None
    if len(rows) < 2 or len(rows[0][1]) < 2:
        raise DatasetError(f"{path}: expected {layout}, got {len(rows)} row(s)")
    names, table, seen = [c.strip() for c in rows[0][1][1:]], {}, {}
    for lineno, row in rows[1:]:
        where = f"{path}, line {lineno}"
        if len(row) != len(names) + 1:
            raise DatasetError(f"{where}: {len(row)} cells, the header has {len(names) + 1} (file,{','.join(names)})")
        try:
            values = [float(c) for c in row[1:]]
        except ValueError:
            raise DatasetError(f"{where}: labels must be numbers, got {row[1:]}") from None
        if not all(math.isfinite(v) for v in values):
            raise DatasetError(f"{where}: labels must be finite numbers, got {row[1:]}")
        stem = Path(row[0].strip()).stem
        if stem in seen:
            raise DatasetError(f"{where}: {row[0].strip()} is listed again (first on line {seen[stem]}; rows are "
                               f"matched by file name without extension); expected one row per image")
        seen[stem], table[stem] = lineno, values
    return names, table


def _join_labels(files, table, source):
    """Indices of `files` that have a row in `table` and their labels; warns once about the rest."""
    keep = [i for i, f in enumerate(files) if Path(f).stem in table]
    missing = len(files) - len(keep)
    if not keep:
        raise DatasetError(f"no image matches a row of {source}: rows are matched by file name "
                           f"without extension, e.g. {Path(files[0]).stem if files else 'img001'!r}")
    if missing:
        first = next(f for f in files if Path(f).stem not in table)
        _warn(f"dropped {missing} image(s) without a row in {source} (first: {first})")
    attrs = torch.tensor([table[Path(files[i]).stem] for i in keep], dtype=torch.float32)
    return keep, attrs


def _find_celebahq_anno(root):
    """CelebAMask-HQ's attribute file, if it sits in root or beside it."""
    for folder in (root, os.path.dirname(os.path.abspath(root))):
        path = os.path.join(folder, "CelebAMask-HQ-attribute-anno.txt")
        if os.path.exists(path):
            return path
    return None


def _scan_images(root):
    """Image files under root (recursive, case-insensitive extensions), relative, sorted."""
    found, unreadable = [], []
    for folder, dirs, names in os.walk(root, onerror=unreadable.append):
        dirs.sort()
        for name in names:
            if name.lower().endswith(IMAGE_EXTS):
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    if unreadable:
        _warn(f"skipped {len(unreadable)} folder(s) under {root} that cannot be listed (first: "
              f"{unreadable[0].filename}: {unreadable[0].strerror}); fix their permissions to use their images")
    return sorted(found)


def _readable(root, files, res):
    """(the files whose header Pillow parses, why each other one failed); cheap: no pixel decoding. Warns
    once about the unreadable ones and once about those smaller than res (they are upscaled, hence blurred)."""
    good, bad, small = [], [], []
    for f in files:
        try:
            with _open_image(os.path.join(root, f), f) as img:
                short = min(img.size)
        except DatasetError as e:
            bad.append(str(e))
            continue
        if short == 0:
            bad.append(f"cannot read {f}: it has no pixels; delete or replace it")
            continue
        good.append(f)
        if short < res:
            small.append(f"{f} ({short} px)")
    if bad:
        _warn(f"skipped {len(bad)} unreadable image(s) under {root}; the first: {bad[0]}")
    if small:
        _warn(f"{len(small)} image(s) under {root} are smaller than {res} px on their short side and are "
              f"upscaled (first: {small[0]}); pass a smaller --res or larger images")
    return good, bad


class ImageFolder:
    """All images under root (.png .jpg .jpeg .webp, recursive, sorted), centre-cropped and resized
    to res. If CelebAMask-HQ-attribute-anno.txt lies in root or beside it, its 40 attributes
    become the labels (images without a row are dropped). The header of every file is checked once
    here (unreadable ones are skipped with a warning); a file that is broken further in raises
    DatasetError naming itself when loaded."""

    def __init__(self, root, res, split="train"):
        self.root, self.res = root, res
        files = _scan_images(root)
        self.found, self.split_note = len(files), HOLDOUT_NOTE  # found and split_note explain an empty split
        files = [files[i] for i in _split_indices(len(files), split)]  # before the check: stable split
        self.files, self.unreadable = _readable(root, files, res)
        self.attr_names, self.attrs = [], torch.zeros(len(self.files), 0)
        anno = _find_celebahq_anno(root)
        if anno:
            names, table = _read_attr_file(anno)
            if any(Path(f).stem in table for f in self.files):
                keep, self.attrs = _join_labels(self.files, table, anno)
                self.files, self.attr_names = [self.files[i] for i in keep], names

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = load_rgb(os.path.join(self.root, self.files[i]), min_size=2 * self.res)  # 2x margin keeps LANCZOS quality
        return square_resize(img, self.res), self.attrs[i]


class CelebA:
    """Aligned CelebA: root/img_align_celeba/*.jpg and root/list_attr_celeba.txt (40 attributes,
    -1/1 -> 0/1). Cropped as the official Diff-AE celeba64 (the 128x128 D2C box) and resized
    with LANCZOS. With root/list_eval_partition.txt the official partition is used (train = 0,
    test = 2); without it, the every-100th hold-out rule. Headers are checked as in ImageFolder."""

    def __init__(self, root, res, split="train"):
        self.root, self.res = root, res
        self.attr_names, table = _read_attr_file(os.path.join(root, "list_attr_celeba.txt"))
        folder = os.path.join(root, "img_align_celeba")
        present = {Path(f).stem: f for f in os.listdir(folder)}
        files = sorted(present[s] for s in table if s in present)
        if present and not files:
            raise DatasetError(f"{root}: none of the {len(present)} files in img_align_celeba/ has a row in "
                               f"list_attr_celeba.txt (rows are matched by file name without extension)")
        self.found, self.split_note = len(files), HOLDOUT_NOTE
        partition = os.path.join(root, "list_eval_partition.txt")
        if os.path.exists(partition) and split != "all":
            wanted = {"train": "0", "test": "2"}.get(split)
            if wanted is None:
                raise DatasetError(f"unknown split {split!r}: use 'train', 'test' or 'all'")
            part = _read_partition(partition)
            files = [f for f in files if part.get(Path(f).stem) == wanted]
            self.split_note = f"({partition} puts none of them in partition {wanted}); correct or remove that file"
        else:
            files = [files[i] for i in _split_indices(len(files), split)]
        self.files, self.unreadable = _readable(folder, files, res)
        self.attrs = torch.tensor([table[Path(f).stem] for f in self.files], dtype=torch.float32)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = load_rgb(os.path.join(self.root, "img_align_celeba", self.files[i]))
        box = CELEBA_CROP if img.size == (178, 218) else None  # centre crop for non-standard sizes
        return square_resize(img, self.res, box), self.attrs[i]


_lmdb_envs = {}  # (path, pid) -> open environment: LMDB allows one per path per process
LMDB_LAYOUT = ("an official Diff-AE LMDB: key 'length' holding the image count as text and keys PREFIX-INDEX "
               "(e.g. 256-00000) holding encoded images")


def _lmdb_env(path):
    """The read-only LMDB environment at path, opened once per process (a handle must not cross
    a fork, so DataLoader workers open their own)."""
    key = (os.path.abspath(path), os.getpid())
    if key not in _lmdb_envs:
        try:
            import lmdb
        except ImportError:
            raise DatasetError(f"reading the LMDB at {path} needs the lmdb package: pip install lmdb") from None
        try:
            _lmdb_envs[key] = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False,
                                        max_readers=64)
        except lmdb.Error as e:  # its text starts with the path
            raise DatasetError(f"{os.path.join(path, 'data.mdb')} is not a readable LMDB database "
                               f"({str(e).rsplit(': ', 1)[-1]}); expected {LMDB_LAYOUT}") from None
    return _lmdb_envs[key]


def _lmdb_read(path, read):
    """read(txn) in a read transaction of the LMDB at path; a damaged database is one DatasetError naming it."""
    env = _lmdb_env(path)
    import lmdb  # installed: _lmdb_env needed it
    try:
        with env.begin() as txn:
            return read(txn)
    except lmdb.Error as e:
        raise DatasetError(f"{path}: the LMDB database is damaged ({e}); expected {LMDB_LAYOUT}") from None


def _lmdb_layout(path, txn):
    """(image count, key prefix, index digits) of an official Diff-AE LMDB, with its first and last keys
    and the header of its first image checked; DatasetError naming the folder and what differs otherwise."""
    length = txn.get(b"length")
    first = next((k for k in txn.cursor().iternext(values=False) if k != b"length"), None)
    if length is None or first is None:
        missing = "no 'length' key" if length is None else "no image key"
        raise DatasetError(f"{path}: {missing}; expected {LMDB_LAYOUT}")
    count = length.decode("ascii", "replace").strip()
    if not count.isdigit():
        raise DatasetError(f"{path}: its 'length' key holds {length[:20]!r}, not a count; expected {LMDB_LAYOUT}")
    m = re.fullmatch(rb"([!-~]+)-([0-9]+)", first)  # printable ASCII, a dash, digits
    if m is None:
        raise DatasetError(f"{path}: its first key {first[:40]!r} is not PREFIX-INDEX; expected {LMDB_LAYOUT}")
    prefix, digits = m.group(1).decode(), len(m.group(2))
    for i in sorted({0, int(count) - 1}) if int(count) else []:
        key = f"{prefix}-{str(i).zfill(digits)}"
        value = txn.get(key.encode())
        if value is None:
            raise DatasetError(f"{path}: 'length' says {count} images but the key {key} is missing; "
                               f"expected {LMDB_LAYOUT}")
        if i == 0:
            _open_image(BytesIO(value), f"{path} key {key}", f"expected {LMDB_LAYOUT}").close()
    return int(count), prefix, digits


class LMDBImages:
    """An official Diff-AE LMDB: key b"length" -> count, and f"{prefix}-{index:0{w}d}" -> encoded
    image. The prefix and width differ per export (ffhq256/celebahq256: "256-" and 5 digits;
    horse256/bedroom256: "256-" and 7; celeba: "None-" and 7, holding uncropped aligned CelebA,
    which gets the celeba64 crop), so both are read from the first key. .files are the indices
    as strings, so CelebAMask-HQ-attribute-anno.txt ("0.jpg", ...) or a CSV can label them."""

    def __init__(self, path, res, split="train"):
        self.path, self.res = path, res
        count, self.prefix, self.zfill = _lmdb_read(path, lambda txn: _lmdb_layout(path, txn))
        self.found, self.split_note, self.unreadable = count, HOLDOUT_NOTE, []
        self.indices = _split_indices(count, split)
        self.files = [str(i) for i in self.indices]
        self.attr_names, self.attrs = [], torch.zeros(len(self.files), 0)
        anno = _find_celebahq_anno(path)
        if anno:
            names, table = _read_attr_file(anno)
            if any(f in table for f in self.files):
                keep, self.attrs = _join_labels(self.files, table, anno)
                self.indices, self.files = [self.indices[i] for i in keep], [self.files[i] for i in keep]
                self.attr_names = names

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        key = f"{self.prefix}-{str(self.indices[i]).zfill(self.zfill)}"
        data = _lmdb_read(self.path, lambda txn: txn.get(key.encode()))
        if data is None:
            raise DatasetError(f"{self.path}: key {key} is missing")
        img = load_rgb(BytesIO(data), name=f"{self.path} key {key}")
        box = CELEBA_CROP if self.prefix == "None" and img.size == (178, 218) else None
        return square_resize(img, self.res, box), self.attrs[i]


# -----------------------------------------------------------------------------
# subsets, user labels, and the resolver


class Subset:
    """Some items of a dataset, optionally with new labels (attrs [len, A] and attr_names)."""

    def __init__(self, dataset, indices, attrs=None, attr_names=None):
        self.dataset, self.indices = dataset, list(indices)
        self.attrs = attrs
        self.attr_names = list(attr_names) if attrs is not None else dataset.attr_names
        if hasattr(dataset, "files"):
            self.files = [dataset.files[i] for i in self.indices]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        image, attrs = self.dataset[self.indices[i]]
        return image, (attrs if self.attrs is None else self.attrs[i])


def with_labels(dataset, csv_path):
    """The dataset relabelled with the columns of a user's CSV (see read_label_csv); files
    without a row are dropped with one warning line."""
    if not hasattr(dataset, "files"):
        raise DatasetError("CSV labels are matched by file name; this dataset has no files")
    names, table = read_label_csv(csv_path)
    keep, attrs = _join_labels(dataset.files, table, csv_path)
    return Subset(dataset, keep, attrs, names)


def _why_empty(ds, split, root, expected):
    """Why a real dataset's split came out empty: its files are unreadable, the split holds none, or none exist."""
    if ds.unreadable:
        return f"none of the {len(ds.unreadable)} {split} image(s) in {root} can be read; the first: {ds.unreadable[0]}"
    if ds.found:
        return f"{ds.found} image(s) found in {root}, all of them held out of the {split} split {ds.split_note}"
    return f"no {split} images found in {root}; {expected}"


# --- the order a run reads a dataset in -----------------------------------------------------

def step_indices(n, batch, step, seed):
    """The dataset indices of global batch `step`: epoch-wise permutations seeded by (seed, epoch)."""
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, pos = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out += perm[pos:pos + batch - len(out)].tolist()
    return out


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler for a DataLoader: this rank's share of each global batch from `start` on."""

    def __init__(self, n, batch, start, stop, seed, rank, world):
        self.n, self.batch, self.start, self.stop, self.seed, self.rank, self.world = n, batch, start, stop, seed, rank, world

    def __len__(self):
        return self.stop - self.start

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield step_indices(self.n, self.batch, step, self.seed)[self.rank::self.world]


def make_dataset(name, res, data_dir=None, split="train", n=None, seed=0):
    """The dataset called `name` at resolution res. "toyfaces" is built in (n defaults to 10000
    for train and 1000 for test; data_dir is its cache folder, default data/cache). Any other
    name is read from data_dir or data/<name>: a CelebA folder, an official Diff-AE LMDB, or
    a folder of images. n (optional) keeps the first n items. seed only affects toyfaces."""
    if name == "toyfaces":
        n = n or (10000 if split == "train" else 1000)
        return ToyFaces(res, n, seed, split, cache_dir=data_dir or os.path.join("data", "cache"))
    root = data_dir or os.path.join("data", name)
    expected = ("expected image files (.png/.jpg/.jpeg/.webp, searched recursively), a CelebA folder "
                "(img_align_celeba/ + list_attr_celeba.txt) or an official Diff-AE LMDB (data.mdb)")
    if not os.path.isdir(root):
        raise DatasetError(f"dataset {name!r}: folder {root} does not exist; {expected}")
    if os.path.exists(os.path.join(root, "list_attr_celeba.txt")) and os.path.isdir(
            os.path.join(root, "img_align_celeba")):
        ds = CelebA(root, res, split)
    elif os.path.exists(os.path.join(root, "data.mdb")):
        ds = LMDBImages(root, res, split)
    else:
        ds = ImageFolder(root, res, split)
    if len(ds) == 0:
        raise DatasetError(f"dataset {name!r}: {_why_empty(ds, split, root, expected)}")
    if n is not None and n < len(ds):
        ds = Subset(ds, range(n))
    return ds
