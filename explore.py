"""Explore a diffusion autoencoder live, in the browser: one local page, the model behind it.

    python explore.py --ckpt runs/diffae-toyfaces32/ckpt.pt      # then open the URL it prints

Pick a held-out image (or upload one) and see it come back from its inferred x_T and from a
random one; move one slider per attribute (Diff-AE §5.3), interpolate between two images
(§5.2), watch the predicted x0 along the DDIM run (Fig. 6), draw new faces from the latent DDIM
(§4) and, for PDAE, scale its gradient estimator G (PDAE Fig. 9). Every image is made by the
functions `sample.py` calls (`codes`, `classifier`, the model's own `decode`), so what the page
shows is what the figures show.

The server is the standard library's, on 127.0.0.1 only unless --host says otherwise. It serves
one static page, explore.html, and a JSON API (images come back as PNG data URLs):

    GET  /api/info          the checkpoint, its images (thumbnails), attributes and what it can do
    POST /api/upload        the bytes of a PNG or JPEG photo -> {index, thumb}
    POST /api/reconstruct   {image, steps, seed} -> {input, inferred, random}
    POST /api/edit          {image, steps, scales: {attr: scale}, xT, seed} -> {image}
    POST /api/interpolate   {a, b, alpha, steps} -> {image}
    POST /api/trajectory    {image, steps, xT, seed} -> {t, frames}
    POST /api/sample        {n, steps, seed} -> {images}             (with a latent DDIM)
    POST /api/guidance      {image, steps, g, xT, seed} -> {image}   (PDAE)

A refusal is a 4xx with {"error": one line}; 409 means a newer request superseded this one (see
Explorer). It writes nothing but the attribute directions, cached beside the checkpoint where
`sample.py manipulate` caches them; uploads stay in memory.
"""
import argparse
import base64
import collections
import contextlib
import io
import json
import math
import os
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import torch
from PIL import Image, ImageOps

import align
import checkpoint
import classifier
import cli
import codes
import data
from diffusion import lerp, slerp
from plot import to_uint8

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "explore.html")
MAX_UPLOAD = 10 * 2**20   # bytes of one uploaded photo
MAX_JSON = 2**16          # bytes of one JSON request
MAX_UPLOADS = 8           # uploads kept in memory; the ninth takes the first one's place
MAX_CODES = 32            # (z, x_T) pairs kept: one per (image, T)
MAX_SCALE = 2.0           # |attribute scale|, in units of sqrt(z_dim) (official edits stay within 0.5)
MAX_G = 5.0               # PDAE's G scale (Fig. 9 goes to 3)
MAX_SAMPLES = 16          # new faces per request
MAX_FRAMES = 100          # trajectory frames sent back (a T = 1000 run shows every tenth)
MAX_SEED = 2**53 - 1      # the largest integer a browser's JSON keeps exact


class RequestError(Exception):
    """A request the server will not do: answered with `status` and a one-line JSON reason."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status


class Superseded(Exception):
    """A newer request arrived on the same channel: this one's answer would only be thrown away."""


# --- reading a request ------------------------------------------------------------------------

def number(body, name, kind, lo, hi, default=None):
    """body[name] as an int or float in [lo, hi]; RequestError(400) naming the field otherwise."""
    v = body.get(name, default)
    if v is None:
        raise RequestError(400, f"missing field {name!r}")
    ok = isinstance(v, int) if kind is int else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not math.isfinite(v):
        raise RequestError(400, f"{name} must be {'an integer' if kind is int else 'a finite number'}, got {v!r}")
    if not lo <= v <= hi:
        raise RequestError(400, f"{name} = {v} is out of range [{lo}, {hi}]")
    return kind(v)


def choice(body, name, options, default):
    v = body.get(name, default)
    if v not in options:
        raise RequestError(400, f"{name} must be one of {', '.join(options)}, got {v!r}")
    return v


def png(x):
    """Images [N, 3, H, W] in [-1, 1] as PNG data URLs (the page sets them as <img> sources)."""
    urls = []
    for a in to_uint8(x):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return urls


# --- the model side: codes, edits and the one-at-a-time rule ---------------------------------------

class Explorer:
    """A checkpoint's model, its images and their cached codes, behind one lock.

    The model runs one request at a time (one lock). Each request names a channel (edit, interp,
    ...) and carries the page's sequence number on it: a request that is no longer the newest of its
    channel is dropped when it gets the lock, and a decode under way stops at its next DDIM step
    once a newer one arrives. So a slider dragged across 50 values costs a decode or two, not 50.
    """

    def __init__(self, ck, ckpt_path, model, device, amp, src, n_images=8, seed=0, steps=10, aligns=False, align_note=None):
        self.ck, self.ckpt_path, self.model, self.device, self.amp, self.src = ck, ckpt_path, model, device, amp, src
        self.kind, self.d, self.res, self.seed = ck["kind"], checkpoint.diffusion(ck), codes.resolution(ck), seed
        if not 1 <= steps <= self.d.T:
            cli.usage_error(f"--steps {steps}: this model has T = {self.d.T} timesteps; use 1 to {self.d.T}")
        self.start_steps = steps
        x, _, _ = codes.held_out(ck, n_images, src)
        self.images = list(x)            # [3, H, W] on the CPU; held-out first, then uploads
        self.n_held, self.n_uploads = len(x), 0
        self.thumbs = png(x)
        self.attrs, self.attrs_note = labelled_attributes(ck, src)
        self.aligns, self.align_note = aligns, align_note  # whether uploads are FFHQ-aligned; if not, why
        self.codes = collections.OrderedDict()  # (image, T) -> (z, x_T), least recently used first
        self.directions = {}                     # attr -> (direction, mean, std) on the device
        self.lock, self.seq_lock, self.latest = threading.Lock(), threading.Lock(), {}

    @property
    def has_latent(self):
        return getattr(self.model, "latent", None) is not None

    def info(self):
        return {"checkpoint": os.path.basename(self.ckpt_path), "kind": self.kind, "res": self.res, "T": self.d.T,
                "grid": self.d.grid, "steps": self.start_steps, "seed": self.seed, "latent": self.has_latent,
                "pdae": self.kind == "pdae", "attrs": self.attrs, "attrs_note": self.attrs_note, "trained": list(self.directions),
                "align": self.aligns, "align_note": self.align_note, "n_held": self.n_held, "images": self.thumbs}

    # --- one request at a time, the newest of each channel ---

    @contextlib.contextmanager
    def turn(self, channel, body):
        """Hold the model for one request; Superseded as soon as a newer one arrives on its channel.

        Yields `live(*_)`, an on_step callback that raises Superseded mid-decode."""
        seq, client = body.get("seq"), body.get("client", "")
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 0):
            raise RequestError(400, f"seq must be a non-negative integer, got {seq!r}")
        if not isinstance(client, str) or len(client) > 64:
            raise RequestError(400, "client must be a string of at most 64 characters")
        channel = f"{client}/{channel}"  # each open page has its own channels: a reload starts at seq 0
        with self.seq_lock:
            if seq is not None:
                self.latest[channel] = max(seq, self.latest.get(channel, seq))

        def live(*_):
            if seq is not None and self.latest[channel] > seq:
                raise Superseded()
        with self.lock:
            live()
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                                                        enabled=self.amp is not None):
                yield live

    # --- codes ---

    def image_index(self, body, name="image"):
        return number(body, name, int, 0, len(self.images) - 1)

    def steps(self, body):
        return number(body, "steps", int, 1, self.d.T)

    def codes_of(self, i, steps):
        """(z_sem, x_T) of image i inverted in `steps` steps, computed once: a slider move is then one decode."""
        key = (i, steps)
        if key not in self.codes:
            self.codes[key] = codes.encode(self.kind, self.model, self.d, self.images[i][None].to(self.device), steps)
            while len(self.codes) > MAX_CODES:
                self.codes.popitem(last=False)
        self.codes.move_to_end(key)
        return self.codes[key]

    def noise(self, seed):
        return codes.random_x_T((1, 3, self.res, self.res), seed, self.device)

    def which_x_T(self, body):
        """The request's x_T: None for the image's inferred one, else the seed of a random one (`xT`, `seed`)."""
        if choice(body, "xT", ("inferred", "random"), "inferred") == "inferred":
            return None
        return number(body, "seed", int, 0, MAX_SEED, self.seed)

    def code_pair(self, i, steps, seed):
        """(z, x_T) of image i: its inferred x_T (seed None) or a random one."""
        z, x_T = self.codes_of(i, steps)
        return z, (x_T if seed is None else self.noise(seed))

    def decode(self, z, x_T, steps, live):
        return codes.decode(self.kind, self.model, self.d, z, x_T, steps, on_step=live)

    # --- the requests: body (a dict) in, answer (a dict) out ---

    def reconstruct(self, body):
        """The input, its reconstruction from inferred x_T and from random x_T (Diff-AE Fig. 3)."""
        i, steps, seed = self.image_index(body), self.steps(body), number(body, "seed", int, 0, MAX_SEED, self.seed)
        with self.turn("recon", body) as live:
            z, x_T = self.codes_of(i, steps)
            inferred, random = self.decode(z, x_T, steps, live), self.decode(z, self.noise(seed), steps, live)
        return {"input": png(self.images[i][None])[0], "inferred": png(inferred)[0], "random": png(random)[0]}

    def edit(self, body):
        """Diff-AE §5.3: move z_sem along each attribute's direction by its scale, decode with the same x_T."""
        i, steps, seed, scales = self.image_index(body), self.steps(body), self.which_x_T(body), self.scales(body)
        with self.turn("edit", body) as live:
            z, x_T = self.code_pair(i, steps, seed)
            for attr, s in scales.items():
                direction, mean, std = self.direction(attr)
                z = classifier.manipulate(z, direction, s, mean, std)
            x = self.decode(z, x_T, steps, live)
        return {"image": png(x)[0], "trained": list(scales)}

    def scales(self, body):
        """{attr: scale} of the request's nonzero scales, each attribute one of the data's labels."""
        given = body.get("scales", {})
        if not isinstance(given, dict):
            raise RequestError(400, "scales must be an object {attribute: scale}")
        if given and not self.attrs:
            raise RequestError(422, f"no attribute directions for this checkpoint: {self.attrs_note}")
        for attr in given:
            if attr not in self.attrs:
                raise RequestError(400, f"unknown attribute {attr!r}; this checkpoint's are: {', '.join(self.attrs)}")
        scales = {a: number(given, a, float, -MAX_SCALE, MAX_SCALE) for a in given}
        return {a: s for a, s in scales.items() if s != 0}  # a zero move needs no direction, trained or not

    def direction(self, attr):
        """An attribute's direction, trained on first use and cached on disk exactly as sample.py manipulate does."""
        if attr not in self.directions:
            with torch.inference_mode(False):  # the probe is fitted by gradient descent
                found = codes.direction_for(self.model, self.ck, self.ckpt_path, attr, self.src, seed=self.seed,
                                            device=self.device)
            self.directions[attr] = tuple(t.to(self.device) for t in found)
        return self.directions[attr]

    def interpolate(self, body):
        """Diff-AE §5.2: Lerp between the two z_sem, Slerp between the two inferred x_T."""
        a, b, steps = self.image_index(body, "a"), self.image_index(body, "b"), self.steps(body)
        alpha = number(body, "alpha", float, 0.0, 1.0)
        with self.turn("interp", body) as live:
            (za, xa), (zb, xb) = self.codes_of(a, steps), self.codes_of(b, steps)
            x = self.decode(lerp(za, zb, alpha), slerp(xa, xb, alpha), steps, live)
        return {"image": png(x)[0]}

    def trajectory(self, body):
        """Diff-AE Fig. 6: the x0 the decoder predicts at each DDIM step (at most MAX_FRAMES of them)."""
        i, steps, seed, frames = self.image_index(body), self.steps(body), self.which_x_T(body), []

        def keep(t, x_t, x0):
            live()
            frames.append((t, x0))
        with self.turn("traj", body) as live:
            z, x_T = self.code_pair(i, steps, seed)
            self.decode(z, x_T, steps, keep)
        pick = sorted({round(k * (len(frames) - 1) / max(MAX_FRAMES - 1, 1)) for k in range(MAX_FRAMES)})
        frames = [frames[k] for k in pick] if len(frames) > MAX_FRAMES else frames
        return {"t": [int(t) for t, _ in frames], "frames": png(torch.cat([x0 for _, x0 in frames]))}

    def sample(self, body):
        """Diff-AE §4: new z_sem from the latent DDIM, decoded from random x_T (the order of sample.py's draws)."""
        if not self.has_latent:
            raise RequestError(422, "this checkpoint has no latent DDIM: train one with python train.py --model latent "
                                    "--ckpt THIS.pt")
        n, steps = number(body, "n", int, 1, MAX_SAMPLES, 8), self.steps(body)
        g = torch.Generator().manual_seed(number(body, "seed", int, 0, MAX_SEED, self.seed))
        with self.turn("sample", body) as live:
            x_T = torch.randn((n, 3, self.res, self.res), generator=g).to(self.device)
            z = self.model.latent.sample(n, steps, generator=g, device=self.device)
            if self.kind == "pdae":  # PDAE §4.8: no shift in the last 30% of steps for a sampled z
                x = self.model.decode(z, x_T, steps, shift_until=0.3)
            else:
                x = self.decode(z, x_T, steps, live)
        return {"images": png(x)}

    def guidance(self, body):
        """PDAE Fig. 9: the image's z with G scaled by g (0: the pre-trained DPM alone)."""
        if self.kind != "pdae":
            raise RequestError(422, "the G scale is PDAE's: this is a Diff-AE checkpoint")
        i, steps, seed, g = self.image_index(body), self.steps(body), self.which_x_T(body), number(body, "g", float, 0.0, MAX_G)
        with self.turn("guidance", body):
            z, x_T = self.code_pair(i, steps, seed)
            x = self.model.decode(z, x_T, steps, scale=g)
        return {"image": png(x)[0]}

    def upload(self, raw):
        """A PNG or JPEG photo, square-cropped (FFHQ-aligned with --align) to the model's resolution, kept in memory."""
        if not raw.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
            raise RequestError(415, "the upload is not a PNG or JPEG image")
        try:
            img = data.load_rgb(io.BytesIO(raw), name="the upload")
        except data.DatasetError as e:
            raise RequestError(415, str(e).split(";")[0])
        img = ImageOps.exif_transpose(img)  # as a phone shows the photo
        if self.aligns:
            try:
                img = align.align_face(img, self.res)
            except align.AlignError as e:
                raise RequestError(422, str(e))
        x = data.square_resize(img, self.res)
        with self.lock:  # the images and their codes change together
            i = self.n_held + self.n_uploads % MAX_UPLOADS
            self.images[i:i + 1], self.thumbs[i:i + 1] = [x], png(x[None])
            self.n_uploads += 1
            for key in [k for k in self.codes if k[0] == i]:
                del self.codes[key]
        return {"index": i, "thumb": self.thumbs[i]}


def labelled_attributes(ck, src):
    """The label names of the training data the directions are fitted on, or ([], why there are none)."""
    try:
        names = list(codes.dataset_of(ck, src, "train").attr_names)
    except cli.UsageError as e:  # a released model whose dataset is not on this machine
        return [], f"{e}; pass --data NAME [--data-dir DIR] to train directions"
    return names, None if names else "the training data has no labels"


# --- the HTTP side ---------------------------------------------------------------------------------

JSON_ROUTES = {"/api/reconstruct": "reconstruct", "/api/edit": "edit", "/api/interpolate": "interpolate",
               "/api/trajectory": "trajectory", "/api/sample": "sample", "/api/guidance": "guidance"}
ROUTES = {"/": "GET", "/api/info": "GET", "/api/upload": "POST", **{p: "POST" for p in JSON_ROUTES}}


class Handler(BaseHTTPRequestHandler):
    """Routes a request to the Explorer and turns every refusal into a status and a one-line JSON reason."""

    explorer = None  # set by serve()
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PUT(self):
        self.route("PUT")

    def do_DELETE(self):
        self.route("DELETE")

    def do_PATCH(self):
        self.route("PATCH")

    def route(self, method):
        path = urlparse(self.path).path
        try:
            if path not in ROUTES:
                raise RequestError(404, f"no such page: {path}")
            if method != ROUTES[path]:
                raise RequestError(405, f"{path} takes {ROUTES[path]}, not {method}")
            self.answer(*self.dispatch(path))
        except RequestError as e:
            self.answer(e.status, {"error": one_line(e)})
        except Superseded:
            self.answer(409, {"error": "superseded by a newer request on this channel", "superseded": True})
        except cli.UsageError as e:  # the project's own refusals (a direction that cannot be trained, ...)
            self.answer(422, {"error": one_line(e)})
        except Exception as e:  # a bug: the traceback goes to the terminal, the page gets one line
            traceback.print_exc()
            self.answer(500, {"error": f"{type(e).__name__}: {one_line(e)}"})

    def dispatch(self, path):
        ex = self.explorer
        if path == "/":
            with open(PAGE, "rb") as f:  # read on each request: an edited page shows on reload
                return 200, f.read(), "text/html; charset=utf-8"
        if path == "/api/info":
            return 200, ex.info()
        if path == "/api/upload":
            return 200, ex.upload(self.body(MAX_UPLOAD))
        try:
            body = json.loads(self.body(MAX_JSON))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(400, f"the body is not JSON: {e}")
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        return 200, getattr(ex, JSON_ROUTES[path])(body)

    def body(self, cap):
        """The request's bytes; refused unread (413) when it says it is larger than `cap`."""
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(411, "a POST needs a Content-Length") from None
        if n > cap or n < 0:
            raise RequestError(413, f"the body has {n} bytes; at most {cap} are accepted")
        return self.rfile.read(n)

    def answer(self, status, payload, ctype="application/json"):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        if status >= 400:  # a refused request's body may be unread: it must not be taken for the next request
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass  # a slider drag would print a line per move; errors reach the page and bugs the terminal


def one_line(e):
    return " ".join(str(e).split())


def serve(explorer, host="127.0.0.1", port=0):
    """A started-but-not-serving server for `explorer` (call serve_forever); port 0 picks a free port."""
    handler = type("ExploreHandler", (Handler,), {"explorer": explorer})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True  # Ctrl-C does not wait for a decode under way
    return server


def url_of(server):
    host, port = server.server_address[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


# --- the command line ---------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="our checkpoint, an official Diff-AE .ckpt or an official PDAE checkpoint.pt")
    ap.add_argument("--port", type=cli.ranged(int, 0, 65535), default=8000, help="port (default 8000; 0: any free port)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ap.add_argument("--align", action="store_true", help="FFHQ-align uploaded faces (needs dlib: " + align.INSTALL + ")")
    ap.add_argument("--n", type=cli.ranged(int, 2, 64), default=8, help="held-out images to pick from (default 8)")
    ap.add_argument("--steps", type=cli.positive_int, default=10, help="DDIM steps T the page starts with (default 10)")
    ap.add_argument("--images", nargs="+", default=None, help="your own image files to pick from, instead of held-out ones")
    ap.add_argument("--data", default=None, help="dataset of the images and labels (default: the checkpoint's)")
    ap.add_argument("--data-dir", default=None, help="where that dataset lies")
    ap.add_argument("--seed", type=cli.seed_int, default=0, help="seed of the random x_T the page starts with and of "
                                                                 "the directions' training codes")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--amp", type=cli.one_of(*cli.AMP_CHOICES), default=None,
                    help="autocast, as sample.py's (default: whichever of auto and off decodes one image faster "
                         "here, timed at start: at batch 1 bf16's casts can cost more than they save)")
    ap.error = cli.usage_error  # one line instead of argparse's usage block
    return ap.parse_args(argv)


def load(args):
    """The checkpoint's Explorer; UsageError for what it cannot show."""
    try:
        ck = checkpoint.load(args.ckpt)
    except checkpoint.CheckpointError as e:
        cli.usage_error(str(e))
    if ck["kind"] == "ddim":
        cli.usage_error("explore needs a semantic code: pass a Diff-AE or PDAE checkpoint, not the DDIM baseline")
    if ck["config"].get("pdae", {}).get("condition") == "label":
        cli.usage_error("this PDAE is conditioned on labels, not images: explore needs an image encoder")
    device = cli.pick_device(args.device)
    aligns, note = align_uploads(args.align)
    model = checkpoint.build(ck).to(device)
    amp = cli.autocast_dtype(device, args.amp) if args.amp else faster_precision(model, checkpoint.diffusion(ck), device)
    return Explorer(ck, args.ckpt, model, device, amp, codes.Source(args.data, args.data_dir, args.images), args.n,
                    args.seed, args.steps, aligns, note)


def faster_precision(model, d, device):
    """None (float32) or the device's bf16/fp16, whichever decodes one image faster: a page decodes one
    image at a time, where small networks spend more on bf16's casts than they save and large ones gain."""
    res = model.unet.cfg.res
    x, timings = torch.zeros(1, 3, res, res, device=device), {}
    for amp in {None, cli.autocast_dtype(device, "auto")}:
        with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            z = model.encode(x)
            for _ in range(2):  # the first run warms up; the second is timed
                t0 = time.perf_counter()
                d.ddim_sample(model.eps_fn(z), x, 2)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                timings[amp] = time.perf_counter() - t0
    return min(timings, key=timings.get)


def align_uploads(asked):
    """(whether uploads are FFHQ-aligned, the page's one line saying why not): dlib is optional."""
    if not asked:
        return False, "uploads are centre-cropped (start explore.py with --align to FFHQ-align faces)"
    try:
        align.dlib_models()
    except align.AlignError as e:
        return False, f"uploads are centre-cropped, not aligned: {e}"
    return True, None


@cli.entry
def main(argv=None):
    args = parse_args(argv)
    ex = load(args)
    try:
        server = serve(ex, args.host, args.port)
    except OSError as e:
        cli.usage_error(f"cannot listen on {args.host}:{args.port}: {e.strerror or e} (--port 0 picks a free port)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}: anyone who can reach it can use this page (there is no login)")
    print(f"exploring {args.ckpt} ({ex.kind}, {ex.res}px, {ex.device}, {cli.precision(ex.amp)}) at {url_of(server)}  "
          f"(Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped: the server is closed")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
