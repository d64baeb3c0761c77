"""The query side of serving: LLM-EMF's encoders compute the last position only at inference (the last
block computes that row alone), and `--compile` runs them compiled; the answers are those of the full
encoder pass and of eager, alone and batched."""

from __future__ import annotations

import pytest
import torch

from llmemf.data.batching import DataBundle
from llmemf.errors import UserError
from llmemf.models.base import build_model
from llmemf.models.layers import StackedSequenceEncoder
from llmemf.serving.recommend import RecommendRequest, ServedModel

HISTORIES = [[1], [35], [1, 35, 40], [2, 3, 4, 5, 31], list(range(30, 45)), [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 33]]
REQUESTS = [RecommendRequest(h, dom, k=8) for h in HISTORIES for dom in ("X", "Y")]


@pytest.fixture(scope="module")
def served(llmemf_run) -> ServedModel:
    return ServedModel.load(llmemf_run)


def answer(res) -> tuple[list[int], list[float]]:
    return [i.item_id for i in res.items], [i.score for i in res.items]


def answers(served: ServedModel, batched: bool) -> list[tuple[list[int], list[float]]]:
    return [answer(r) for r in (served.recommend_many(REQUESTS) if batched else [served.recommend(r) for r in REQUESTS])]


@pytest.fixture(scope="module")
def full_pass_answers(served) -> list[tuple[list[int], list[float]]]:
    """The reference: every position of every sequence through every block, then the last one picked."""
    last_position_only = StackedSequenceEncoder.forward

    def full_pass(self, x, valid, last_only=False):
        states = last_position_only(self, x, valid)
        return states[:, :, -1] if last_only else states

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StackedSequenceEncoder, "forward", full_pass)
        return answers(served, batched=False)


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
def test_last_position_queries_give_the_full_pass_answers(served, full_pass_answers, batched):
    for (ids, scores), (want_ids, want_scores) in zip(answers(served, batched), full_pass_answers, strict=True):
        assert ids == want_ids
        assert scores == pytest.approx(want_scores, abs=1e-4)


def test_fused_query_of_a_batch_is_each_history_alone(served):
    """Coalesced requests share one padded batch: each row is the query its history gets alone."""
    with torch.inference_mode():
        for dom in (0, 1):
            batch = served.model.fused_query(served.history_batch(HISTORIES), dom)
            alone = torch.cat([served.model.fused_query(served.history_batch([h]), dom) for h in HISTORIES])
            torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def small_model(serve_dataset):
    """An untrained LLM-EMF with the fewest ops (ID modality, one block): compiling it is what the test pays
    for, and the number of ops sets that cost, not the widths."""
    torch.manual_seed(0)
    bundle = DataBundle(serve_dataset, max_len=6)
    return build_model("llmemf", {"d_id": 8, "modalities": ["id"], "n_blocks": 1, "n_heads": 2}, bundle).eval(), bundle


def test_compiled_queries_give_the_eager_answers(small_model):
    """`--compile`: after warm-up (both graphs compiled), every history length (up to and beyond max_len), both
    domains, alone and coalesced, answer as eager does, with no compilation at request time."""
    model, bundle = small_model
    eager = ServedModel(model, bundle, "llmemf")
    compiled = ServedModel(model, bundle, "llmemf", compile=True)
    compiled.warm_up()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    requests = [RecommendRequest(h, dom, k=8) for h in [*HISTORIES, list(range(6))] for dom in ("X", "Y")]
    want = [answer(eager.recommend(r)) for r in requests]
    for got in ([compiled.recommend(r) for r in requests], compiled.recommend_many(requests)):
        for res, (want_ids, want_scores) in zip(got, want, strict=True):
            ids, scores = answer(res)
            assert ids == want_ids
            assert scores == pytest.approx(want_scores, abs=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # warm-up compiled every shape


def test_compile_needs_a_fused_query(sasrec_run):
    with pytest.raises(UserError, match="--compile"):
        ServedModel.load(sasrec_run, compile=True)
