"""Shared fixtures: small seeded two-domain datasets the tests make themselves (see tiny_data.py)."""

from __future__ import annotations

import pytest
from tiny_data import make_tiny_dataset, write_tiny_features

from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset


@pytest.fixture
def tiny_dataset(tmp_path) -> Dataset:
    ds = make_tiny_dataset()
    ds.save(tmp_path / "tiny")
    write_tiny_features(ds)
    return Dataset.load(tmp_path / "tiny")


@pytest.fixture
def tiny_bundle(tiny_dataset) -> DataBundle:
    return DataBundle(tiny_dataset, max_len=10)


@pytest.fixture
def make_tiny():
    """The dataset factory itself, for tests that vary its arguments."""
    return make_tiny_dataset
