"""Ranks and metrics on hand-computed cases; order invariance; degenerate models do not look good."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmemf.data.batching import Batch
from llmemf.evaluation.metrics import ranking_metrics
from llmemf.evaluation.protocols import Evaluator, _by_length, rank_full, rank_sampled, sample_negatives
from llmemf.models.base import Recommender


def test_metrics_hand_computed():
    m = ranking_metrics(np.array([1, 2, 10, 11]))
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11) / 4)
    assert m["HR@1"] == pytest.approx(0.25)
    assert m["HR@5"] == pytest.approx(0.5)
    assert m["HR@10"] == pytest.approx(0.75)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 4)


def test_rank_sampled_counts_strictly_higher_and_ties():
    scores = torch.tensor([[0.5, 0.9, 0.1, 0.5, 0.7]])  # target 0.5; two above, one tie
    assert rank_sampled(scores, "strict").item() == 3
    assert rank_sampled(scores, "pessimistic").item() == 4
    assert rank_sampled(scores, "average").item() == 3.5


def test_rank_full_and_order_invariance():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(4, 50, generator=g)
    target = torch.tensor([0, 7, 49, 20])
    ranks = rank_full(scores, target)
    expected = [1 + int((scores[i] > scores[i, target[i]]).sum()) for i in range(4)]
    assert ranks.tolist() == expected
    perm = torch.randperm(50, generator=g)
    inv = torch.argsort(perm)
    assert rank_full(scores[:, perm], inv[target]).tolist() == expected  # same items, other order
    cand = torch.cat([scores[:, :1], scores[:, 1:][:, torch.randperm(49, generator=g)]], 1)
    assert torch.equal(rank_sampled(cand), rank_sampled(torch.cat([scores[:, :1], scores[:, 1:]], 1)))


def test_negatives_exclude_target_and_are_uniform():
    targets = np.array([0, 5, 9] * 2000)
    neg = sample_negatives(targets, 10, 999, seed=1)
    assert neg.shape == (6000, 999)
    assert not (neg == targets[:, None]).any()
    assert neg.min() >= 0 and neg.max() <= 9
    counts = np.bincount(neg[targets == 5].ravel(), minlength=10)
    others = np.delete(counts, 5)
    assert counts[5] == 0 and others.std() / others.mean() < 0.02
    assert np.array_equal(neg, sample_negatives(targets, 10, 999, seed=1))  # fixed by the seed


class ConstantModel(Recommender):
    trainable = False

    def scores(self, batch: Batch, domain: int, candidates=None):
        lo, hi = self.domain_ranges[domain]
        shape = (batch.size, hi - lo) if candidates is None else candidates.shape
        return torch.zeros(shape)


class OracleModel(Recommender):
    trainable = False

    def scores(self, batch: Batch, domain: int, candidates=None):
        lo, hi = self.domain_ranges[domain]
        ids = torch.arange(lo, hi).expand(batch.size, -1) if candidates is None else candidates
        return (ids == batch.target[:, None]).float()


@pytest.mark.parametrize("protocol", ["c2dsr", "full"])
def test_constant_model_does_not_look_good(tiny_bundle, protocol):
    res = Evaluator(tiny_bundle, "test", protocol, n_negatives=99).evaluate(ConstantModel(None, tiny_bundle))
    for name, metrics in res.metrics.items():
        assert metrics["MRR"] < 0.1, (name, metrics)  # every tie counted against the model
        assert metrics["HR@10"] == 0.0
    oracle = Evaluator(tiny_bundle, "test", protocol, n_negatives=99).evaluate(OracleModel(None, tiny_bundle))
    assert all(m["MRR"] == 1.0 for m in oracle.metrics.values())


def test_evaluator_counts_per_domain(tiny_bundle):
    res = Evaluator(tiny_bundle, "valid", "full").evaluate(OracleModel(None, tiny_bundle))
    td = tiny_bundle.splits["valid"].target_domain
    assert res.counts == {"X": int((td == 0).sum()), "Y": int((td == 1).sum())}


class TiedModel(Recommender):
    """Scores in a few levels (many ties), the same function of (history, item) by either path; counts
    its scoring calls."""

    trainable = False

    def __init__(self, config, bundle, columns: bool):
        super().__init__(config, bundle)
        self.columns, self.calls = columns, 0

    def scores(self, batch: Batch, domain: int, candidates=None):
        self.calls += 1
        lo, hi = self.domain_ranges[domain]
        ids = torch.arange(lo, hi).expand(batch.size, -1) if candidates is None else candidates
        return ((ids * 7 + batch.xy[:, -1:]) % 5).float()

    def candidate_scores_are_full_columns(self, n_candidates, domain):
        return self.columns


def _old_ranks(model, bundle, ev: Evaluator) -> dict[str, np.ndarray]:
    """The evaluator as it was before evaluate_together: each protocol scores on its own, and a rank
    is 1 + (competitors above) [+ ties, whole or half] from two counts."""
    data = bundle.splits[ev.split]
    out = {}
    with torch.inference_mode():
        for d, rows in ev.rows_by_domain.items():
            lo, _ = bundle.domain_range(d)
            parts = []
            for i in range(0, len(rows), ev.batch_size):
                batch = data.batch(rows[i : i + ev.batch_size])
                if ev.protocol == "c2dsr":
                    scores = model.scores(batch, d, torch.from_numpy(ev.candidates[d][i : i + ev.batch_size])).float()
                    target, others, own = scores[:, :1], scores[:, 1:], 0
                else:
                    scores = model.scores(batch, d, None).float()
                    target, others, own = scores.gather(1, (batch.target - lo)[:, None]), scores, 1
                higher = (others > target).sum(1).double()
                equal = (others == target).sum(1).double() - own
                rank = {"pessimistic": 1.0 + higher + equal, "average": 1.0 + higher + equal / 2.0, "strict": 1.0 + higher}[ev.ties]
                parts.append(rank.numpy())
            out[bundle.dataset.domain_names[d]] = np.concatenate(parts)
    return out


@pytest.mark.parametrize("ties", ["pessimistic", "average", "strict"])
def test_evaluating_protocols_together_ranks_every_user_as_before(tiny_bundle, ties):
    from llmemf.evaluation.protocols import evaluate_together
    from llmemf.models.base import build_model

    torch.manual_seed(0)
    models = {
        "llmemf": build_model("llmemf", {"d_id": 16, "n_blocks": 1, "modalities": ["id"]}, tiny_bundle).eval(),
        "ties, columns": TiedModel(None, tiny_bundle, columns=True),
        "ties, own candidate path": TiedModel(None, tiny_bundle, columns=False),
    }
    evs = [Evaluator(tiny_bundle, "test", p, n_negatives=30, ties=ties, batch_size=7) for p in ("full", "c2dsr")]
    # users are batched by history length, so ranks must be put back in row order: the data makes that a real permutation
    data = tiny_bundle.splits["test"]
    assert any((_by_length(data, rows) != np.arange(len(rows))).any() for rows in evs[0].rows_by_domain.values())
    n_batches = sum(-(-len(rows) // 7) for rows in evs[0].rows_by_domain.values())
    for label, model in models.items():
        assert model.candidate_scores_are_full_columns(31, 0) is (label != "ties, own candidate path"), label
        old = [_old_ranks(model, tiny_bundle, ev) for ev in evs]
        calls = getattr(model, "calls", 0)
        together = evaluate_together(evs, model)
        if isinstance(model, TiedModel):  # one scoring pass per batch where candidates are columns
            assert model.calls - calls == n_batches * (1 if model.columns else 2), label
        alone = [ev.evaluate(model) for ev in evs]
        for ev, before, res, res_alone in zip(evs, old, together, alone, strict=True):
            assert res.protocol == ev.protocol
            for dom, ranks in before.items():
                assert np.array_equal(res.ranks[dom], ranks), (label, ev.protocol, dom)
                assert np.array_equal(res_alone.ranks[dom], ranks), (label, ev.protocol, dom)
    tied = _old_ranks(models["ties, columns"], tiny_bundle, evs[0])
    pessimistic = _old_ranks(models["ties, columns"], tiny_bundle, Evaluator(tiny_bundle, "test", "full", ties="pessimistic", batch_size=7))
    assert any((tied[d] != pessimistic[d]).any() for d in tied) or ties == "pessimistic"  # ties do occur


class NaNModel(TiedModel):
    def scores(self, batch: Batch, domain: int, candidates=None):
        out = super().scores(batch, domain, candidates)
        out[-1, -1] = float("nan")  # one NaN in the last column of a row
        return out


@pytest.mark.parametrize("protocols", [("full",), ("c2dsr",), ("full", "c2dsr")])
def test_nan_scores_are_refused(tiny_bundle, protocols):
    from llmemf.evaluation.protocols import evaluate_together

    evs = [Evaluator(tiny_bundle, "test", p, n_negatives=30) for p in protocols]
    with pytest.raises(FloatingPointError, match="NaN scores"):
        evaluate_together(evs, NaNModel(None, tiny_bundle, columns=True))


def test_evaluating_together_needs_one_split_and_batching(tiny_bundle):
    from llmemf.evaluation.protocols import evaluate_together

    model = TiedModel(None, tiny_bundle, columns=True)
    for other in (Evaluator(tiny_bundle, "valid", "c2dsr"), Evaluator(tiny_bundle, "test", "c2dsr", batch_size=9)):
        with pytest.raises(ValueError, match="one bundle, split and batch size"):
            evaluate_together([Evaluator(tiny_bundle, "test", "full"), other], model)
