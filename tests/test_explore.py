"""explore.py: its JSON API on a tiny checkpoint, the supersession of stale requests, and the page itself
in a real headless browser (Chromium over the DevTools protocol, from the standard library alone)."""
import base64
import contextlib
import http.client
import io
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from PIL import Image

import align
import classifier
import codes
import explore
import plot
import train


def flags(tmp):
    return ["--preset", "tiny16", "--n-train", "64", "--batch-size", "8", "--amp", "off", "--device", "cpu",
            "--log-every", "1000", "--data-dir", str(tmp / "cache")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-step tiny16 Diff-AE and its 2-step latent DDIM: untrained, but every path of the page runs.

    Without EMA and at a high learning rate, so that z_sem moves the decoder's output visibly after
    4 steps (ADM's zero init keeps it out of the output for the first two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions gain nothing from threads, and the machine is shared
    tmp = tmp_path_factory.mktemp("explore")
    assert train.main(flags(tmp) + ["--steps", "4", "--lr", "3e-3", "--ema", "0", "--out", str(tmp / "ae")]) == 0
    assert train.main(["--model", "latent", "--ckpt", str(tmp / "ae" / "ckpt.pt"), "--steps", "2",
                       "--out", str(tmp / "lat"), "--log-every", "1000"]) == 0
    yield tmp
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pdae_ckpt(tiny):
    """A 1-step DDIM baseline and a 4-step PDAE around it."""
    assert train.main(flags(tiny) + ["--model", "ddim", "--steps", "1", "--out", str(tiny / "ddim")]) == 0
    assert train.main(flags(tiny) + ["--model", "pdae", "--pretrained", str(tiny / "ddim" / "ckpt.pt"), "--steps", "4",
                                     "--lr", "3e-3", "--ema", "0", "--out", str(tiny / "pdae")]) == 0
    return tiny / "pdae" / "ckpt.pt"


def start(ckpt, *flags):
    ex = explore.load(explore.parse_args(["--ckpt", str(ckpt), "--device", "cpu", "--amp", "off", *flags]))
    server = explore.serve(ex, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return ex, server


@pytest.fixture(scope="module")
def server(tiny):
    ex, srv = start(tiny / "lat" / "ckpt.pt", "--n", "4", "--steps", "3")
    yield ex, explore.url_of(srv)
    srv.shutdown()
    srv.server_close()


def call(url, path, body=None, method="POST", raw=None, headers=None, timeout=60):
    """(status, answer) of one request; body is sent as JSON, raw as bytes."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, body=data, headers=headers or {})
        r = conn.getresponse()
        text = r.read()
        return r.status, (json.loads(text) if r.getheader("Content-Type", "").startswith("application/json") else text)
    finally:
        conn.close()


def pixels(data_url):
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def same(a, b):
    return np.array_equal(pixels(a), pixels(b))


# --- the JSON API --------------------------------------------------------------------------------

def test_info_and_the_page(server):
    ex, url = server
    status, info = call(url, "/api/info", method="GET")
    assert status == 200 and info["kind"] == "diffae" and info["latent"] and not info["pdae"]
    assert len(info["images"]) == 4 and info["steps"] == 3 and "Smiling" in info["attrs"]
    status, page = call(url, "/", method="GET")
    assert status == 200 and b"<script>" in page and b"http://" not in page and b"https://" not in page  # nothing external


def test_reconstruction_is_codes_reconstruction_rows(server):
    ex, url = server
    status, a = call(url, "/api/reconstruct", {"image": 1, "steps": 3, "seed": 5})
    assert status == 200
    with torch.inference_mode():
        rows = codes.reconstruction_rows(ex.kind, ex.model, ex.d, ex.images[1][None], 3, seed=5)
    for key, row in zip(("input", "inferred", "random"), rows):
        assert np.abs(pixels(a[key]).astype(int) - plot.to_uint8(row)[0].astype(int)).max() <= 1, key


def test_an_edit_moves_with_its_scale_and_is_one_decode(server, monkeypatch):
    ex, url = server
    ask = lambda s: call(url, "/api/edit", {"image": 0, "steps": 3, "scales": {"Smiling": s}})
    (s0, zero), (s1, plus), (s2, minus) = ask(0.0), ask(1.0), ask(-1.0)
    assert s0 == s1 == s2 == 200
    assert not same(plus["image"], minus["image"]) and not same(plus["image"], zero["image"])
    # scale 0 is the reconstruction from inferred x_T, bit for bit: the same codes, the same decode
    assert same(zero["image"], call(url, "/api/reconstruct", {"image": 0, "steps": 3})[1]["inferred"])
    # the direction is cached where sample.py manipulate caches it, beside the checkpoint
    cache = codes.direction_cache(ex.ck, ex.ckpt_path, "Smiling", ex.src, classifier.DIRECTION_WEIGHT_DECAY)
    assert os.path.exists(cache) and "Smiling" in call(url, "/api/info", method="GET")[1]["trained"]
    # a slider move on a cached image is one decode: no encoding, no inversion
    monkeypatch.setattr(codes, "encode", lambda *a, **k: pytest.fail("a slider move encoded again"))
    assert ask(0.3)[0] == 200


def test_interpolation_ends_at_the_two_reconstructions(server):
    ex, url = server
    rec = {i: call(url, "/api/reconstruct", {"image": i, "steps": 3})[1]["inferred"] for i in (0, 2)}
    ends = {al: call(url, "/api/interpolate", {"a": 0, "b": 2, "alpha": al, "steps": 3})[1]["image"] for al in (0, 0.5, 1)}
    assert same(ends[0], rec[0]) and same(ends[1], rec[2]) and not same(ends[0.5], rec[0])


def test_trajectory_has_a_frame_per_step(server):
    status, a = call(server[1], "/api/trajectory", {"image": 0, "steps": 4, "xT": "random", "seed": 1})
    assert status == 200 and len(a["frames"]) == 4 and a["t"] == sorted(a["t"], reverse=True)


def test_latent_samples_are_deterministic_in_the_seed(server):
    ask = lambda seed: call(server[1], "/api/sample", {"n": 3, "steps": 3, "seed": seed})[1]["images"]
    a, b, c = ask(1), ask(1), ask(2)
    assert len(a) == 3 and a == b and a != c


def test_upload_a_png_and_a_jpeg(server):
    ex, url = server
    img = Image.fromarray(plot.to_uint8(ex.images[0][None])[0]).resize((40, 30))
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        status, a = call(url, "/api/upload", raw=buf.getvalue())
        assert status == 200 and a["index"] >= ex.n_held, a
        assert call(url, "/api/reconstruct", {"image": a["index"], "steps": 2})[0] == 200


ROUTE_ERRORS = [  # (method, path, JSON body or raw bytes, status, a word of the reason)
    ("POST", "/api/edit", {"image": 99, "steps": 3}, 400, "image"),
    ("POST", "/api/edit", {"image": -1, "steps": 3}, 400, "image"),
    ("POST", "/api/edit", {"image": "0", "steps": 3}, 400, "integer"),
    ("POST", "/api/edit", {"image": 0, "steps": 0}, 400, "steps"),
    ("POST", "/api/edit", {"image": 0, "steps": 1001}, 400, "steps"),
    ("POST", "/api/edit", {"image": 0}, 400, "missing"),
    ("POST", "/api/edit", {"image": 0, "steps": 3, "scales": {"Smiling": 9}}, 400, "range"),
    ("POST", "/api/edit", {"image": 0, "steps": 3, "scales": {"Smiling": "big"}}, 400, "number"),
    ("POST", "/api/edit", b'{"image": 0, "steps": 3, "scales": {"Smiling": NaN}}', 400, "finite"),
    ("POST", "/api/edit", {"image": 0, "steps": 3, "scales": {"Grumpy": 0.1}}, 400, "unknown attribute"),
    ("POST", "/api/edit", {"image": 0, "steps": 3, "xT": "mine"}, 400, "xT"),
    ("POST", "/api/edit", {"image": 0, "steps": 3, "seq": -2}, 400, "seq"),
    ("POST", "/api/edit", b"{not json", 400, "JSON"),
    ("POST", "/api/edit", b"[1, 2]", 400, "object"),
    ("POST", "/api/interpolate", {"a": 0, "b": 1, "alpha": 1.5, "steps": 3}, 400, "alpha"),
    ("POST", "/api/sample", {"n": 1000, "steps": 3}, 400, "n"),
    ("POST", "/api/guidance", {"image": 0, "g": 1, "steps": 3}, 422, "PDAE"),
    ("POST", "/api/upload", b"hello, not an image", 415, "PNG or JPEG"),
    ("POST", "/api/upload", b"\x89PNG\r\n\x1a\n but broken", 415, "cannot read"),
    ("POST", "/api/upload", None, 413, "bytes"),  # claims 11 MB and sends nothing
    ("GET", "/api/nothing", None, 404, "no such page"),
    ("GET", "/../explore.py", None, 404, "no such page"),
    ("GET", "/api/edit", None, 405, "POST"),
    ("DELETE", "/", None, 405, "GET"),
]


@pytest.mark.parametrize("method,path,body,status,word", ROUTE_ERRORS)
def test_a_bad_request_gets_a_4xx_and_one_line(server, method, path, body, status, word):
    headers = {"Content-Length": str(explore.MAX_UPLOAD + 1)} if status == 413 else None
    if status == 413:  # a client that announces too much is refused before anything is read
        u = urlparse(server[1])
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        conn.putrequest(method, path)
        conn.putheader("Content-Length", headers["Content-Length"])
        conn.endheaders()
        r = conn.getresponse()
        got, answer = r.status, json.loads(r.read())
        conn.close()
    else:
        got, answer = call(server[1], path, raw=body if isinstance(body, bytes) else None,
                           body=body if isinstance(body, dict) else None, method=method)
    assert got == status and word in answer["error"] and "\n" not in answer["error"], answer


def test_a_plain_diffae_and_a_pdae_show_what_they_have(tiny, pdae_ckpt):
    """No latent DDIM: no new faces (422), the rest works; PDAE: its G scale, where scale 1 is the plain decode."""
    for ckpt in (tiny / "ae" / "ckpt.pt", pdae_ckpt):
        ex, srv = start(ckpt, "--n", "2", "--steps", "3")
        url = explore.url_of(srv)
        try:
            info = call(url, "/api/info", method="GET")[1]
            assert not info["latent"] and info["pdae"] == (ex.kind == "pdae")
            status, a = call(url, "/api/sample", {"n": 1, "steps": 3})
            assert status == 422 and "latent" in a["error"]
            assert call(url, "/api/edit", {"image": 0, "steps": 3, "scales": {"Smiling": 0.5}})[0] == 200
            if ex.kind == "pdae":
                g = {s: call(url, "/api/guidance", {"image": 0, "steps": 3, "g": s})[1]["image"] for s in (0, 1, 3)}
                assert same(g[1], call(url, "/api/edit", {"image": 0, "steps": 3})[1]["image"]) and not same(g[0], g[3])
        finally:
            srv.shutdown()
            srv.server_close()


def test_align_refuses_a_photo_without_a_face_or_says_in_a_line_why_it_is_off(tiny, monkeypatch):
    ex, srv = start(tiny / "lat" / "ckpt.pt", "--n", "2", "--align")
    try:
        if ex.aligns:  # dlib is installed: a blank photo holds no face
            buf = io.BytesIO()
            Image.new("RGB", (64, 48), (128, 128, 128)).save(buf, "PNG")
            status, a = call(explore.url_of(srv), "/api/upload", raw=buf.getvalue())
            assert status == 422 and "no face" in a["error"]
    finally:
        srv.shutdown()
        srv.server_close()

    def missing():
        raise align.AlignError(f"face detection needs dlib and its landmark model: {align.INSTALL}")
    monkeypatch.setattr(align, "dlib_models", missing)
    ex = explore.load(explore.parse_args(["--ckpt", str(tiny / "lat" / "ckpt.pt"), "--device", "cpu", "--n", "2", "--align"]))
    assert not ex.aligns and "pip install" in ex.info()["align_note"] and "\n" not in ex.align_note


def test_refuses_the_ddim_baseline_and_a_busy_port(tiny, pdae_ckpt, capsys):
    with pytest.raises(SystemExit) as e:
        explore.main(["--ckpt", str(tiny / "ddim" / "ckpt.pt"), "--port", "0"])
    assert e.value.code == 2 and "semantic code" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(SystemExit) as e:
            explore.main(["--ckpt", str(tiny / "ae" / "ckpt.pt"), "--device", "cpu", "--port", str(busy.getsockname()[1])])
    assert e.value.code == 2 and "--port 0" in capsys.readouterr().err


def test_ctrl_c_stops_the_server_with_one_line(tiny):
    """explore.py in its own process: it prints its URL, answers, and stops on SIGINT with exit code 0."""
    # SIGINT may be ignored where the tests run (a background job): give the child Python's own handler back
    run = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", run, explore.__file__, "--ckpt", str(tiny / "ae" / "ckpt.pt"),
                             "--port", "0", "--device", "cpu", "--n", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        line = proc.stdout.readline()
        assert line.startswith("exploring ") and "127.0.0.1" in line, line
        assert call(line.split(" at ")[1].split()[0], "/api/info", method="GET")[0] == 200
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip().splitlines() == ["stopped: the server is closed"], out


# --- supersession ----------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["waiting for the model", "decoding"])
def test_a_newer_request_supersedes_an_older_one(server, monkeypatch, where):
    """Two slider moves: the first is held up (by the lock, or inside its decode) until the second has
    arrived; the first answers 409 superseded, and only the second decode runs to its end."""
    ex, url = server
    client = where.split()[0]
    call(url, "/api/edit", {"image": 3, "steps": 3})  # its codes are cached: the requests differ only in decoding
    finished, real = [], codes.decode

    def arrived(seq):
        deadline = time.monotonic() + 30
        while ex.latest.get(f"{client}/edit", -1) < seq:
            assert time.monotonic() < deadline, "the second request never arrived"
            time.sleep(0.01)

    def decode(kind, model, d, z, x_T, steps, on_step=None):
        if where == "decoding" and not finished and ex.latest[f"{client}/edit"] == 1:
            arrived(2)  # the first is slow: the second arrives while it decodes
        x = real(kind, model, d, z, x_T, steps, on_step=on_step)
        finished.append(ex.latest[f"{client}/edit"])
        return x
    monkeypatch.setattr(codes, "decode", decode)
    answers = {}
    ask = lambda seq: answers.__setitem__(seq, call(url, "/api/edit", {"image": 3, "steps": 3, "seq": seq, "client": client,
                                                                         "scales": {"Smiling": 0.1 * seq}}))
    threads = [threading.Thread(target=ask, args=(seq,)) for seq in (1, 2)]
    held = ex.lock if where == "waiting for the model" else contextlib.nullcontext()
    with held:  # a long request holds the model while both arrive
        threads[0].start()
        arrived(1)
        threads[1].start()
        arrived(2)
    for t in threads:
        t.join(60)
    assert answers[1][0] == 409 and answers[1][1]["superseded"]
    assert answers[2][0] == 200 and len(finished) == 1


# --- the page in a real browser --------------------------------------------------------------------

# Chromium's --remote-debugging-pipe reads commands on fd 3 and writes answers on fd 4. This trampoline
# moves the two pipe ends passed to it (pass_fds) there, then becomes the browser.
TRAMPOLINE = ("import fcntl, os, sys; a, b = (fcntl.fcntl(int(f), fcntl.F_DUPFD, 10) for f in sys.argv[1:3]); "
              "os.dup2(a, 3); os.dup2(b, 4); os.closerange(5, 1024); os.execv(sys.argv[3], sys.argv[3:])")


class Browser:
    """Headless Chromium spoken to over the DevTools protocol: JSON messages, each ended by a NUL byte."""

    def __init__(self, exe, profile, width=1280, height=960, timeout=60):
        cmd_r, self.cmd_w = os.pipe()
        self.out_r, out_w = os.pipe()
        flags = ["--headless=new", "--no-sandbox", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                 "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                 f"--window-size={width},{height}", "about:blank"]
        self.log = open(os.path.join(profile, "chromium.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", TRAMPOLINE, str(cmd_r), str(out_w), exe, *flags],
                                     pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        os.close(cmd_r)
        os.close(out_w)
        self.timeout, self.id, self.session, self.errors = timeout, 0, None, []
        self.inbox = queue.Queue()
        threading.Thread(target=self.read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:  # the first page appears a moment after the browser starts
            pages = [t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.session = self.call("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True})["sessionId"]
        for method in ("Page.enable", "Runtime.enable"):
            self.call(method)
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def read(self):
        buf = b""
        while True:
            chunk = os.read(self.out_r, 1 << 16)
            if not chunk:
                return self.inbox.put(None)
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                self.inbox.put(json.loads(msg))

    def call(self, method, params=None):
        self.id += 1
        msg = {"id": self.id, "method": method, "params": params or {}}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                m = self.inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise TimeoutError(f"chromium did not answer {method} in {self.timeout} s") from None
            if m is None:
                self.log.flush()
                with open(self.log.name, "rb") as f:
                    tail = f.read()[-600:].decode(errors="replace")
                raise RuntimeError(f"chromium exited during {method}; its last words: {tail}")
            if m.get("method") == "Runtime.exceptionThrown":
                self.errors.append(m["params"]["exceptionDetails"])
            if m.get("id") == self.id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]

    def js(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.js(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout or self.timeout} s: {expression} "
                                   f"(page status: {self.js('document.getElementById(`status`).textContent')!r})")
            time.sleep(0.1)

    def close(self):
        try:
            self.session = None
            self.timeout = 5
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.cmd_w)
        os.close(self.out_r)
        self.log.close()


def chromium():
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_the_page_in_a_headless_browser(server, tmp_path):
    """Open the page, move an attribute slider until the edited image changes, pick another image,
    interpolate, check the trajectory strip and the new faces, and take a screenshot (EXPLORE_SCREENSHOT:
    where to keep it; EXPLORE_CKPT: a checkpoint to show instead of the tiny one, for the README's picture)."""
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium on this machine (apt-get install -y chromium): the browser test needs a real browser")
    own = os.environ.get("EXPLORE_CKPT")
    ex, srv = start(own, "--steps", "20") if own else (None, None)
    url = explore.url_of(srv) if own else server[1]
    wait = 600 if own else 60  # a real checkpoint trains its direction on 5000 codes
    b = Browser(exe, str(tmp_path), timeout=60)
    try:
        b.call("Page.navigate", {"url": url})
        b.wait("document.body && document.body.dataset.ready === '1' && document.getElementById('edited').src.startsWith('data:')"
               " && document.getElementById('recInferred').src.startsWith('data:')", wait)
        steps = b.js("+document.getElementById('steps').value")
        b.wait(f"document.querySelectorAll('#strip img').length === {steps}", wait)
        before = b.js("document.getElementById('edited').src")
        attr = "Wearing_Hat" if not own else "Smiling"
        b.js(f"const s = document.querySelector('#sliders input[data-attr={attr}]'); s.value = 0.5; "
             f"s.dispatchEvent(new Event('input')); true")
        if not own:  # nobody has used this direction yet: the page says it trains it
            assert "training direction" in b.js("document.getElementById('editNote').textContent")
        b.wait(f"document.getElementById('edited').src !== {json.dumps(before)} "
               f"&& document.getElementById('editNote').textContent === ''", wait)
        b.js("document.querySelectorAll('#thumbs img')[1].dispatchEvent(new MouseEvent('click', {shiftKey: true})); true")
        before = b.js("document.getElementById('interp').src")
        b.js("const a = document.getElementById('alpha'); a.value = 0.5; a.dispatchEvent(new Event('input')); true")
        b.wait(f"document.getElementById('interp').src !== {json.dumps(before)}", wait)
        b.js("document.querySelectorAll('#thumbs img')[2].click(); true")
        b.wait("document.getElementById('recInput').src === document.querySelectorAll('#thumbs img')[2].src", wait)
        if b.js("!document.getElementById('sampleCard').hidden"):  # a latent DDIM: eight new faces
            b.wait("document.querySelectorAll('#samples img').length === 8", wait)
        b.wait("!window.busy() && [...document.images].every(i => i.complete)", wait)  # everything for image A arrived
        shot = base64.b64decode(b.call("Page.captureScreenshot", {"format": "png"})["data"])
        assert Image.open(io.BytesIO(shot)).size == (1280, 960)
        assert b.js("document.getElementById('status').textContent") == "" and not b.errors, b.errors
    finally:
        b.close()
        if srv is not None:
            srv.shutdown()
            srv.server_close()
    path = os.environ.get("EXPLORE_SCREENSHOT")
    if path:
        with open(path, "wb") as f:
            f.write(shot)
