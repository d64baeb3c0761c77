"""Helpers of the serving tests (fixtures live in conftest.py): training a tiny run, a live uvicorn."""

from __future__ import annotations

import socket
import threading
import time

from typer.testing import CliRunner

from llmemf.cli import app

FAST = ["train.epochs=1", "train.progress=false", "train.threads=1", "eval.n_negatives=30"]
WITH_IMAGE = (0, 1, 30, 31)  # items that get a PNG file (the rest have none: the page shows a placeholder)


def train_run(dataset_root, out, model: str, *extra: str):
    res = CliRunner().invoke(app, ["train", "--model", model, "--dataset", str(dataset_root), "--out", str(out), *FAST, *extra])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 at a free port, in a background thread."""

    def __init__(self, asgi_app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # the OS picks a free port; uvicorn serves on this very socket
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(asgi_app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
