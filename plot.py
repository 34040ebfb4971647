"""Pictures: image grids and a log-scale line plot, drawn with Pillow alone."""
import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8(x):
    """[-1, 1] NCHW -> uint8 NHWC."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_grid(path, rows, pad=2):
    """Save rows of images (a list of [N, 3, H, W] tensors in [-1, 1]) as one PNG grid."""
    n = max(r.shape[0] for r in rows)
    H, W = rows[0].shape[-2:]
    canvas = np.full((len(rows) * (H + pad) + pad, n * (W + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, im in enumerate(to_uint8(r)):
            canvas[pad + i * (H + pad): pad + i * (H + pad) + H, pad + j * (W + pad): pad + j * (W + pad) + W] = im
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    scale = max(1, 256 // H) if H < 128 else 1  # small toy images are upscaled so a person can see them
    img = Image.fromarray(canvas)
    return save_png(img.resize((img.width * scale, img.height * scale), Image.NEAREST), path)


def save_png(img, path):
    """Atomically: a full disk or a kill mid-write leaves no half picture behind."""
    tmp = f"{path}.tmp{os.getpid()}.png"
    try:
        img.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def log_plot(path, ts, curves, t_max, title):
    """Curves {label: values at ts} on a log-10 y axis against t in [0, t_max), as a PNG."""
    W, H, L, R, TOP, BOT = 640, 400, 70, 20, 30, 50
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    logs = {k: [math.log10(max(float(v), 1e-12)) for v in vs] for k, vs in curves.items()}
    lo, hi = min(min(v) for v in logs.values()), max(max(v) for v in logs.values())
    lo, hi = math.floor(lo), max(math.ceil(hi), math.floor(lo) + 1)
    px = lambda t: L + (W - L - R) * t / max(t_max - 1, 1)
    py = lambda v: H - BOT - (H - TOP - BOT) * (v - lo) / (hi - lo)
    dr.rectangle([L, TOP, W - R, H - BOT], outline="black")
    for e in range(lo, hi + 1):
        dr.line([L - 4, py(e), L, py(e)], fill="black")
        dr.text((5, py(e) - 6), f"1e{e}", fill="black")
    for t in range(0, t_max, max(1, t_max // 5)):
        dr.line([px(t), H - BOT, px(t), H - BOT + 4], fill="black")
        dr.text((px(t) - 8, H - BOT + 8), str(t), fill="black")
    dr.text((W // 2 - 10, H - 20), "t", fill="black")
    for row, (k, colour) in enumerate(zip(logs, ((40, 90, 200), (210, 40, 40), (40, 160, 60)))):
        dr.line([(px(t), py(v)) for t, v in zip(ts, logs[k])], fill=colour, width=2)
        dr.text((L + 10, TOP + 8 + 14 * row), k, fill=colour)
    dr.text((L, 8), title, fill="black")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return save_png(img, path)
