"""Fixtures of the feature tests (helpers live in feature_helpers.py)."""

from __future__ import annotations

import pytest
from feature_helpers import make_image_dataset

from llmemf.data.dataset import Dataset


@pytest.fixture
def image_dataset(tmp_path) -> Dataset:
    return make_image_dataset(tmp_path / "ds")
