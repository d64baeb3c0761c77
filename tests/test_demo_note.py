"""The demo's note when SASRec falls below Pop: a paired test on the same users, printed only then."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from llmemf.demo import below_pop_note
from llmemf.evaluation.metrics import ranking_metrics
from llmemf.evaluation.protocols import EvalResult


def _result(ranks_by_domain: dict[str, np.ndarray]) -> SimpleNamespace:
    test = {
        p: EvalResult(
            p,
            "test",
            {d: ranking_metrics(r) for d, r in ranks_by_domain.items()},
            {d: len(r) for d, r in ranks_by_domain.items()},
            0.0,
            ranks_by_domain,
        )
        for p in ("c2dsr", "full")
    }
    return SimpleNamespace(test=test)


def test_note_names_the_domains_below_pop_with_a_paired_test():
    rng = np.random.default_rng(0)
    pop = rng.integers(1, 300, size=150).astype(float)
    sas_a = pop + rng.integers(0, 20, size=150)  # slightly worse on A
    sas_b = np.maximum(1, pop // 2)  # clearly better on B
    note = below_pop_note({"pop": _result({"A": pop, "B": pop}), "sasrec": _result({"A": sas_a, "B": sas_b})})
    assert "A (c2dsr)" in note and "A (full)" in note and "B (" not in note
    assert "paired t-test p = " in note and "over 150 users" in note
    assert below_pop_note({"pop": _result({"A": pop}), "sasrec": _result({"A": pop / 2 + 0.5})}) == ""
