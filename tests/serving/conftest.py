"""Serving fixtures: a tiny dataset with features and a few item images, runs trained on it (once per
session), and a real uvicorn on a free loopback port serving them (helpers in serve_helpers.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from serve_helpers import WITH_IMAGE, LiveServer, train_run
from tiny_data import make_tiny_dataset, write_tiny_features

from llmemf.data.dataset import Dataset


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


@pytest.fixture(scope="session")
def live(llmemf_run, sasrec_run):
    from llmemf.serving.app import create_app
    from llmemf.serving.recommend import ServedModel

    with LiveServer(create_app([ServedModel.load(llmemf_run), ServedModel.load(sasrec_run)])) as server:
        yield server.url
