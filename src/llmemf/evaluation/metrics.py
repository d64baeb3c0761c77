"""Ranking metrics from 1-based ranks: MRR (no cutoff), NDCG@k, HR@k."""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ("MRR", "NDCG@5", "NDCG@10", "HR@1", "HR@5", "HR@10")


def ranking_metrics(ranks: np.ndarray) -> dict[str, float]:
    """Mean metrics over users, in [0, 1]. ``ranks`` may be fractional (averaged ties)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        return {name: float("nan") for name in METRIC_NAMES}
    if (ranks < 1).any():
        raise ValueError("ranks are 1-based")
    out = {"MRR": float(np.mean(1.0 / ranks))}
    for k in (5, 10):
        out[f"NDCG@{k}"] = float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)))
    for k in (1, 5, 10):
        out[f"HR@{k}"] = float(np.mean(ranks <= k))
    return out
