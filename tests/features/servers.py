"""Start / stop the loopback test servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent


@contextmanager
def openai_server(mode: str, log: Path, delay: float = 0.0, hang: float = 30.0, startup_s: float = 180.0):
    """Run openai_server.py in its own process; yields its base URL (…/v1)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "openai_server.py"), "--mode", mode, "--log", str(log), "--delay", str(delay), "--hang", str(hang)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        t0 = time.time()
        line = proc.stdout.readline()  # blocks until the model is loaded and the socket is bound
        if not line.startswith("PORT ") or time.time() - t0 > startup_s:
            raise RuntimeError(f"openai_server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def read_log(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(x) for x in log.read_text().splitlines() if x.strip()]


def _png(seed: int, size: int = 48) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


GOOD, OTHER, BIG = _png(0), _png(1), _png(2, size=300)  # BIG: ~270 kB of noise, over a 100 kB cap


@contextmanager
def serve_images():
    """A loopback image server in a thread; yields (base URL, hits per path). Paths: good, same-bytes,
    other, broken (truncated), big, big-nolength, page (HTML), flaky (503 once), hang (6 s), loop (a
    redirect to itself), slow (0.5 s, then good); anything else 404."""
    import threading
    from collections import Counter
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits: Counter[str] = Counter()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str, length: bool = True, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
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
            elif path == "/loop.png":
                self._send(302, b"", "text/plain", headers={"location": "/loop.png"})
            elif path.startswith("/slow"):
                time.sleep(0.5)
                self._send(200, OTHER if "other" in path else GOOD, "image/png")
            else:
                self._send(404, b"no", "text/plain")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()
