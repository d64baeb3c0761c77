"""Image download against a real HTTP server on loopback: good, duplicate, broken, oversized, wrong
type, flaky, hanging and missing images; content-addressed store; re-runs skip what is done."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from feature_helpers import make_image_dataset
from PIL import Image

from llmemf.features.images import ImageIndex, ImagesConfig, download_images, resolve_images


def _png(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


GOOD, OTHER, BIG = _png(0), _png(1), _png(2, size=300)  # BIG: ~270 kB of noise, over the 100 kB cap


@pytest.fixture
def image_server():
    hits: Counter[str] = Counter()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str, length: bool = True) -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            if length:
                self.send_header("content-length", str(len(body)))
            else:
                self.send_header("connection", "close")
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout or size cap): expected
                return
            if not length:
                self.close_connection = True

        def do_GET(self) -> None:  # noqa: N802
            path = self.path
            hits[path] += 1
            if path in ("/good.png", "/same-bytes.png"):
                self._send(200, GOOD, "image/png")
            elif path == "/other.png":
                self._send(200, OTHER, "image/png; charset=binary")
            elif path == "/broken.png":
                self._send(200, GOOD[:200], "image/png")  # truncated: header fine, pixels missing
            elif path == "/big.png":
                self._send(200, BIG, "image/png")
            elif path == "/big-nolength.png":
                self._send(200, BIG, "image/png", length=False)  # no content-length: caught while streaming
            elif path == "/page.png":
                self._send(200, b"<html>not an image</html>", "text/html")
            elif path == "/flaky.png":
                self._send(503, b"busy", "text/plain") if hits[path] == 1 else self._send(200, OTHER, "image/png")
            elif path == "/hang.png":
                time.sleep(6)
                self._send(200, GOOD, "image/png")
            else:
                self._send(404, b"no", "text/plain")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_download_checks_store_and_rerun(tmp_path, image_server):
    base, hits = image_server
    ds = make_image_dataset(tmp_path / "ds", n_x=6, n_y=6)
    names = ["good", "same-bytes", "other", "broken", "big", "big-nolength", "page", "flaky", "hang", "missing"]
    ds.items["image"] = [f"{base}/{n}.png" for n in names] + ["images/0.png", None]  # a local path is kept as is
    ds.save_items()
    # A generous timeout: a loaded CI machine must not turn a good image into a timeout.
    cfg = ImagesConfig(concurrency=8, timeout_s=2.0, max_bytes=100_000, max_retries=1, backoff_s=0.05, progress=False)
    t0 = time.time()
    res = download_images(tmp_path / "ds", cfg, log=lambda s: None)
    assert time.time() - t0 < 20
    assert (res.n_urls, res.n_local, res.n_downloaded) == (10, 1, 4)
    errors = {url.rsplit("/", 1)[1]: err for _, url, err in res.failures}
    assert set(errors) == {"broken.png", "big.png", "big-nolength.png", "page.png", "hang.png", "missing.png"}
    assert "undecodable" in errors["broken.png"] and "too large" in errors["big.png"] and "too large" in errors["big-nolength.png"]
    assert "content-type" in errors["page.png"] and "HTTP 404" in errors["missing.png"] and "Timeout" in errors["hang.png"]
    assert hits["/flaky.png"] == 2 and hits["/hang.png"] == 2 and hits["/missing.png"] == 1  # transient retried, permanent not
    store = tmp_path / "ds/images_store"
    files = sorted(p.name for p in store.glob("*.png"))
    assert files == sorted({f"{hashlib.sha256(b).hexdigest()}.png" for b in (GOOD, OTHER)})  # identical bytes stored once
    paths = resolve_images(tmp_path / "ds", ds.items["image"].tolist())
    assert paths[0] == paths[1] and paths[0].read_bytes() == GOOD
    assert paths[3] is None and paths[10] == tmp_path / "ds/images/0.png" and paths[11] is None

    before = hits.copy()
    res2 = download_images(tmp_path / "ds", cfg, log=lambda s: None)
    assert res2.n_skipped == 4 and res2.n_downloaded == 0 and res2.n_failed == 6
    assert all(hits[f"/{n}.png"] == before[f"/{n}.png"] for n in ("good", "same-bytes", "other", "flaky"))  # done: not fetched again
    idx = ImageIndex(tmp_path / "ds")
    assert {u.rsplit("/", 1)[1]: a for _, u, _, a in idx.failures()}["broken.png"] == 2  # failures retried and counted
    idx.close()
