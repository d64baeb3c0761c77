"""Small seeded two-domain datasets for the tests (importable as `tiny_data`; conftest exposes fixtures)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmemf.data.dataset import Dataset, DomainInfo, Manifest, make_items_frame, split_history_target
from llmemf.features.store import Feature, FeatureManifest, save_feature


def make_tiny_dataset(n_x: int = 30, n_y: int = 40, n_users: int = 80, seed: int = 0, min_len: int = 6, max_len: int = 12) -> Dataset:
    """Users walk through item 'clusters' so that the next item is learnable; every user has a
    train sequence and a valid and test line (leave-one-out, like the C2DSR files)."""
    rng = np.random.default_rng(seed)
    n = n_x + n_y
    items = make_items_frame([n_x, n_y], [f"I{i:04d}" for i in range(n)])
    items["title"] = [f"item {i} of {'X' if i < n_x else 'Y'}" for i in range(n)]
    rows = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        start = int(rng.integers(0, n))
        seq = [(start + 3 * k + int(rng.integers(0, 2))) % n for k in range(length + 2)]
        ts = list(range(1000 * u, 1000 * u + len(seq)))
        rows["train"].append({"user": f"u{u}", "items": seq[:-2], "timestamps": ts[:-2]})
        for split, end in (("valid", -1), ("test", None)):
            s, t = (seq[:end], ts[:end]) if end else (seq, ts)
            hist, hts, target, tts = split_history_target(s, t)
            rows[split].append(
                {"user": f"u{u}", "items": hist, "timestamps": hts, "target": target, "target_domain": int(target >= n_x), "target_timestamp": tts}
            )
    manifest = Manifest(name="tiny", domains=[DomainInfo("X", n_x, 0), DomainInfo("Y", n_y, n_x)], source="tests")
    return Dataset(manifest=manifest, items=items, splits={k: pd.DataFrame(v) for k, v in rows.items()})


def write_tiny_features(ds: Dataset, seed: int = 0) -> None:
    """Random frozen features `img` (16-d), `txt_title` and `txt_llm` (12-d), a few rows missing."""
    rng = np.random.default_rng(seed)
    n = ds.n_items
    for name, dim in (("img", 16), ("txt_title", 12), ("txt_llm", 12)):
        mask = rng.random(n) > 0.1
        manifest = FeatureManifest(name=name, encoder="random-test", weights="none", dim=dim, n_items=n, dtype="float32")
        save_feature(ds.root, Feature(manifest, rng.normal(size=(n, dim)).astype(np.float32), mask))
