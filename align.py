"""FFHQ's face alignment of a user's photo, so that it matches what the released FFHQ models saw.

The released Diff-AE and PDAE FFHQ models were trained on FFHQ-aligned faces: a square, tilted
crop placed by the eyes and the mouth, its corners padded by reflection and blurred where the
crop leaves the photo. `image_align` redoes that crop from 68 facial landmarks, as the FFHQ tool
(NVlabs/ffhq-dataset, also Diff-AE's align.py) does it. The landmarks come from dlib, optional
and offline (`pip install dlib-bin face-recognition-models`): `detect_landmarks`, `align_face`.

    python align.py SRC... --out DIR [--res 256]     # SRC: image files or folders of them
"""
import argparse
import functools
import importlib.util
import os
import sys

import numpy as np
from PIL import Image, ImageOps

import cli

INSTALL = "pip install dlib-bin face-recognition-models"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


class AlignError(ValueError):
    """An image that cannot be aligned (no face, unreadable, degenerate landmarks) or a missing detector."""


def ffhq_quad(landmarks):
    """The FFHQ crop of a face from its 68 dlib landmarks (x, y): the quad's 4 corners (4, 2), in the
    order top-left, bottom-left, bottom-right, top-right of the aligned image, and its side length."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right = np.mean(lm[36:42], axis=0), np.mean(lm[42:48], axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5  # the outer mouth corners
    eye_to_mouth = mouth_avg - eye_avg
    # the crop's x axis: the eye line plus the eye-to-mouth line turned a quarter to point along it
    x = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)  # half the side
    y = np.array([-x[1], x[0]])  # x turned +90 degrees: down the face
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, np.hypot(*x) * 2


def bounds(quad):
    """The integer box (left, top, right, bottom) around a quad."""
    return (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
            int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))


def gaussian_blur(a, sigma, truncate=4.0):
    """Blur a float32 (H, W, C) array over H and W as scipy.ndimage.gaussian_filter(a, [sigma, sigma, 0])
    does: a separable kernel cut at `truncate` sigmas, the border repeated mirror-wise (scipy's 'reflect',
    numpy's 'symmetric'), float64 sums rounded to float32 after each axis."""
    r = int(truncate * sigma + 0.5)
    k = np.exp(-0.5 / sigma**2 * np.arange(-r, r + 1) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        p = np.pad(a, [(r, r) if i == axis else (0, 0) for i in range(a.ndim)], mode="symmetric").astype(np.float64)
        a = sum(k[j] * np.take(p, range(j, j + a.shape[axis]), axis=axis) for j in range(2 * r + 1)).astype(np.float32)
    return a


def edge_mask(h, w, pad):
    """(H, W, 1): 1 on the padded image's outer edge, falling linearly to 0 where the photo begins."""
    y, x = np.ogrid[:h, :w]
    x, y = np.float32(x), np.float32(y)
    mx = 1.0 - np.minimum(x / pad[0], (w - 1 - x) / pad[2])
    my = 1.0 - np.minimum(y / pad[1], (h - 1 - y) / pad[3])
    return np.maximum(mx, my)[..., None]


def pad_and_blend(img, quad, qsize, border):
    """Extend the photo where the crop leaves it (FFHQ's padding): reflect it, blur the reflection more
    the farther out it lies, and fade the outermost part to the median colour. Returns (img, quad)."""
    left, top, right, bottom = bounds(quad)
    pad = (max(border - left, 0), max(border - top, 0),
           max(right - img.size[0] + border, 0), max(bottom - img.size[1] + border, 0))
    if max(pad) <= border - 4:  # the crop (nearly) fits: nothing to pad
        return img, quad
    pad = np.maximum(pad, max(int(np.rint(qsize * 0.3)), 1))  # pad generously, so the blend has room
    a = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), mode="reflect")
    mask = edge_mask(a.shape[0], a.shape[1], pad)
    a += (gaussian_blur(a, qsize * 0.02) - a) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    a += (np.median(a, axis=(0, 1)) - a) * np.clip(mask, 0.0, 1.0)
    img = Image.fromarray(np.uint8(np.clip(np.rint(a), 0, 255)), "RGB")
    return img, quad + pad[:2]


def image_align(img, landmarks, res, transform_size=4096, pad=True):
    """The FFHQ-aligned res x res RGB crop of the face with these 68 landmarks (the FFHQ tool's maths:
    shrink, crop, pad, quad transform at transform_size, resize). pad=False leaves the part of the
    crop outside the photo black, as the official code's enable_padding=False."""
    quad, qsize = ffhq_quad(landmarks)
    if not np.isfinite(qsize) or qsize < 1:
        raise AlignError(f"degenerate landmarks: the crop would be {qsize:.3g} pixels wide")
    img = img.convert("RGB")
    shrink = int(np.floor(qsize / res * 0.5))
    if shrink > 1:  # a much larger crop than res: downsample first, so the transform does not alias
        size = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        img = img.resize(size, Image.Resampling.LANCZOS)
        quad, qsize = quad / shrink, qsize / shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    left, top, right, bottom = bounds(quad)
    box = (max(left - border, 0), max(top - border, 0),
           min(right + border, img.size[0]), min(bottom + border, img.size[1]))
    if box[2] - box[0] < img.size[0] or box[3] - box[1] < img.size[1]:
        img, quad = img.crop(box), quad - box[:2]
    if pad:
        img, quad = pad_and_blend(img, quad, qsize, border)
    size = max(transform_size, res)  # the transform at high resolution, then one antialiased resize
    img = img.transform((size, size), Image.Transform.QUAD, (quad + 0.5).flatten(), Image.Resampling.BILINEAR)
    return img.resize((res, res), Image.Resampling.LANCZOS) if res < size else img


@functools.lru_cache(maxsize=1)
def dlib_models():
    """dlib's frontal face detector and its 68-point shape predictor, loaded once; AlignError if missing."""
    try:
        import dlib
    except ImportError:
        raise AlignError(f"face detection needs dlib and its landmark model: {INSTALL}") from None
    # find the model file without importing the package: its __init__ needs pkg_resources
    spec = importlib.util.find_spec("face_recognition_models")
    folders = (spec.submodule_search_locations or []) if spec else []
    paths = [os.path.join(f, "models", "shape_predictor_68_face_landmarks.dat") for f in folders]
    path = next((p for p in paths if os.path.isfile(p)), None)
    if path is None:
        raise AlignError(f"face detection needs dlib's 68-point landmark model: {INSTALL}")
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(path)


def detect_landmarks(img):
    """The 68 dlib landmarks (68, 2) float64, x and y in pixels, of each face dlib finds in a PIL image
    (its frontal detector with one upsampling, as the FFHQ and Diff-AE tools run it)."""
    detector, predictor = dlib_models()
    a = np.array(img.convert("RGB"))
    return [np.array([(p.x, p.y) for p in predictor(a, box).parts()], dtype=np.float64) for box in detector(a, 1)]


def align_face(img, res, transform_size=4096):
    """The FFHQ-aligned res x res crop of the face in `img` (a path or a PIL image).

    A path is opened with its EXIF rotation applied (as a phone shows the photo). With several faces
    the largest (by FFHQ crop size) is aligned and a one-line note goes to stderr; no face, or an
    unreadable file, is an AlignError.
    """
    name = "the image"
    if not isinstance(img, Image.Image):
        name = os.fspath(img)
        try:
            with Image.open(name) as f:
                img = ImageOps.exif_transpose(f).convert("RGB")
        except OSError as e:
            raise AlignError(f"cannot read {name}: {getattr(e, 'strerror', None) or e}") from None
    faces = detect_landmarks(img)
    if not faces:
        raise AlignError(f"no face found in {name} (dlib's detector finds frontal, upright faces of ~40 px or more)")
    if len(faces) > 1:
        faces.sort(key=lambda lm: -ffhq_quad(lm)[1])
        print(f"note: {len(faces)} faces found in {name}; aligning the largest", file=sys.stderr)
    return image_align(img, faces[0], res, transform_size)


def image_files(srcs):
    """The image files named by SRC arguments (files, or folders read one level deep, sorted)."""
    files = []
    for src in srcs:
        if os.path.isdir(src):
            files += sorted(os.path.join(src, f) for f in os.listdir(src) if f.lower().endswith(IMAGE_EXTS))
        elif os.path.isfile(src):
            files.append(src)
        else:
            cli.usage_error(f"{src}: no such file or folder")
    return files


@cli.entry
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="+", help="image files, or folders of them")
    ap.add_argument("--out", required=True, help="folder for the aligned images (NAME.png)")
    ap.add_argument("--res", type=cli.ranged(int, 1, 4096), default=256, help="side of the aligned image (default 256)")
    ap.error = cli.usage_error  # one line instead of argparse's usage block
    args = ap.parse_args(argv)
    files = image_files(args.src)
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    dup = next((s for s in stems if stems.count(s) > 1), None)
    if dup is not None:
        cli.usage_error(f"two sources are named {dup}.*: both would be written to {dup}.png; rename one")
    try:
        dlib_models()
    except AlignError as e:
        cli.usage_error(str(e))
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        cli.usage_error(f"cannot create --out {args.out}: {e.strerror or e}")
    done = 0
    for f, stem in zip(files, stems):
        dst = os.path.join(args.out, stem + ".png")
        try:
            align_face(f, args.res).save(dst)
        except AlignError as e:
            print(f"skipped: {e}")
            continue
        print(f"{f} -> {dst}")
        done += 1
    print(f"aligned {done} of {len(files)} images at {args.res}x{args.res} into {args.out}")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
