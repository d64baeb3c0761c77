"""ranks.npz: every run keeps its per-user ranks with user ids, targets and cold flags."""

from __future__ import annotations

import hashlib

import numpy as np
from tiny_data import make_tiny_dataset

from llmemf.config import load_config
from llmemf.data.dataset import Dataset
from llmemf.evaluation.ranks import load_ranks
from llmemf.training.trainer import train


def test_trained_run_keeps_ranks_that_match_its_metrics_and_flags_cold_targets(tmp_path):
    ds = make_tiny_dataset()
    # Make item 5 (domain X) cold: drop it from every training sequence, then ask for it as a test target.
    train_df = ds.splits["train"]
    keep = [[k for k, i in enumerate(items) if i != 5] for items in train_df["items"]]
    train_df["items"] = [[items[k] for k in ks] for items, ks in zip(train_df["items"], keep, strict=True)]
    train_df["timestamps"] = [[ts[k] for k in ks] for ts, ks in zip(train_df["timestamps"], keep, strict=True)]
    test_df = ds.splits["test"]
    rows = np.nonzero(test_df["target_domain"].to_numpy() == 0)[0][:3]
    test_df.loc[rows, "target"] = 5
    ds.save(tmp_path / "data")
    cfg = load_config(None, ["model.name=pop", f"dataset={tmp_path / 'data'}", f"out={tmp_path / 'run'}", "eval.n_negatives=20"])
    result = train(cfg, log=lambda s: None)
    ranks = load_ranks(tmp_path / "run")
    assert set(ranks) == {("test", p, d) for p in ("c2dsr", "full") for d in ("X", "Y")}
    x = ranks[("test", "full", "X")]
    assert np.array_equal(x["ranks"], result.test["full"].ranks["X"])
    assert np.isclose(np.mean(1 / x["ranks"]), result.test["full"].metrics["X"]["MRR"])
    test = Dataset.load(tmp_path / "data").splits["test"]
    x_users = test["user"].astype(str).to_numpy()[test["target_domain"].to_numpy() == 0]
    assert str(x["users_sha"]) == hashlib.sha256("\n".join(x_users).encode()).hexdigest()
    assert ranks[("test", "c2dsr", "X")]["users_sha"] == x["users_sha"] != ranks[("test", "full", "Y")]["users_sha"]
    assert np.array_equal(x["cold"], x["targets"] == 5) and x["cold"].sum() >= 3
    assert not ranks[("test", "full", "Y")]["cold"].any()
