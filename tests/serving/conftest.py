"""Serving fixtures: a tiny dataset with features and a few item images, runs trained on it (once per
session), and a real uvicorn on a free loopback port serving them."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image
from tiny_data import make_tiny_dataset, write_tiny_features
from typer.testing import CliRunner

from llmemf.cli import app
from llmemf.data.dataset import Dataset

FAST = ["train.epochs=1", "train.progress=false", "train.threads=1", "eval.n_negatives=30"]
WITH_IMAGE = (0, 1, 30, 31)  # items that get a PNG file (the rest have none: the page shows a placeholder)


def train_run(dataset_root, out, model: str, *extra: str):
    res = CliRunner().invoke(app, ["train", "--model", model, "--dataset", str(dataset_root), "--out", str(out), *FAST, *extra])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out


@pytest.fixture(scope="session")
def serve_dataset(tmp_path_factory) -> Dataset:
    root = tmp_path_factory.mktemp("serve") / "tiny"
    ds = make_tiny_dataset()
    ds.items["image"] = [f"images/{i}.png" if i in WITH_IMAGE else None for i in range(ds.n_items)]
    ds.save(root)
    write_tiny_features(ds)
    (root / "images").mkdir()
    for i in WITH_IMAGE:
        Image.fromarray(np.full((8, 8, 3), 40 * (i % 6), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    return Dataset.load(root)


@pytest.fixture(scope="session")
def llmemf_run(serve_dataset, tmp_path_factory):
    return train_run(serve_dataset.root, tmp_path_factory.mktemp("runs") / "llmemf", "llmemf", "model.d_id=16")


@pytest.fixture(scope="session")
def sasrec_run(serve_dataset, tmp_path_factory):
    return train_run(serve_dataset.root, tmp_path_factory.mktemp("runs") / "sasrec", "sasrec", "model.hidden=16")


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


@pytest.fixture(scope="session")
def live(llmemf_run, sasrec_run):
    from llmemf.serving.app import create_app
    from llmemf.serving.recommend import ServedModel

    with LiveServer(create_app([ServedModel.load(llmemf_run), ServedModel.load(sasrec_run)])) as server:
        yield server.url
