"""Paired significance of one model against another on the same test users and the same negatives.

Both runs are evaluated on one split with one protocol (the c2dsr protocol draws its negatives once
from a fixed seed, so two runs rank their targets against the same candidates). The unit is the
user: per-user reciprocal ranks are paired, and two tests are reported side by side:

* the Wilcoxon signed-rank test (two-sided; ties of zero difference dropped, as Wilcoxon's
  original rule), which is what recommender papers usually report. It asks whether the differences are
  symmetric around 0 (roughly: does one model rank most targets higher), not whether the mean differs:
  with thousands of users it can give a tiny p for an MRR difference that is not resolved;
* the paired t-test of the mean difference, the MRR difference itself (with thousands of users its
  normal approximation holds; the usual test for per-query IR metrics);
* a paired bootstrap of the mean difference (resampling users), whose percentile interval says how
  large the gain is, not only whether it exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedComparison:
    n_users: int
    mrr_a: float  # mean reciprocal rank of model A, in [0, 1]
    mrr_b: float
    relative_gain: float  # (A - B) / B
    wilcoxon_p: float  # two-sided; 1.0 when the two rank lists are identical
    ttest_p: float  # paired t-test of mean(A - B) = 0, two-sided; 1.0 when the two rank lists are identical
    bootstrap_low: float  # 95% percentile interval of mean(A - B)
    bootstrap_high: float


def paired_comparison(ranks_a: np.ndarray, ranks_b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> PairedComparison:
    """Compare two models' 1-based ranks of the same targets, user by user."""
    ranks_a = np.asarray(ranks_a, dtype=np.float64)
    ranks_b = np.asarray(ranks_b, dtype=np.float64)
    if ranks_a.shape != ranks_b.shape or ranks_a.ndim != 1:
        raise ValueError(f"paired ranks must be two 1-d arrays of one length, got {ranks_a.shape} and {ranks_b.shape}")
    if len(ranks_a) == 0:
        raise ValueError("no users to compare")
    rr_a, rr_b = 1.0 / ranks_a, 1.0 / ranks_b
    diff = rr_a - rr_b
    p = 1.0 if not np.any(diff) else float(stats.wilcoxon(rr_a, rr_b, zero_method="wilcox", alternative="two-sided").pvalue)
    t = 1.0 if not np.any(diff) else float(stats.ttest_rel(rr_a, rr_b).pvalue)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n_boot, len(diff)))
    boot = diff[idx].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    mrr_a, mrr_b = float(rr_a.mean()), float(rr_b.mean())
    return PairedComparison(len(diff), mrr_a, mrr_b, (mrr_a - mrr_b) / mrr_b, p, t, float(low), float(high))
