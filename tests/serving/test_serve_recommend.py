"""The serving code path (ServedModel) that `llmemf recommend` and `llmemf serve` share."""

from __future__ import annotations

import json

import pytest
import torch
from serve_helpers import train_run
from typer.testing import CliRunner

from llmemf.cli import app
from llmemf.models.base import REGISTRY
from llmemf.serving.recommend import USER_ID_MODELS, RecommendRequest, RequestError, ServedModel


@pytest.fixture(scope="module")
def served(llmemf_run) -> ServedModel:
    return ServedModel.load(llmemf_run)


def test_fused_dot_product_equals_model_scores_under_every_cold_policy(served):
    """LLM-EMF's logit fusion served as one matmul (fused_query @ fused_keys.T) gives model.scores exactly,
    with some items made cold so that the three policies differ."""
    model = served.model
    warm = model.warm.clone()
    model.warm[[3, 7, 33, 50]] = False  # cold items in both domains
    model._imputed = None
    try:
        batch = served.history_batch([[1, 35, 40], [2], [31, 32, 33, 34], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]])
        seen = {}
        for mode in ("learned", "neutral", "content"):
            model.set_cold_id(mode)
            for dom in (0, 1):
                with torch.inference_mode():
                    ref = model.scores(batch, dom)
                    got = model.fused_query(batch, dom) @ model.fused_keys(dom, mode).T
                assert got.shape == ref.shape == (4, 30 if dom == 0 else 40)
                torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
                seen[mode, dom] = got
        assert not torch.allclose(seen["learned", 1], seen["neutral", 1])  # the policies really differ
        assert not torch.allclose(seen["learned", 1], seen["content", 1])
    finally:
        model.set_cold_id("learned")
        model.warm.copy_(warm)
        model._imputed = None


def test_cross_domain_history_unknown_ids_and_exclusion(served):
    res = served.recommend(RecommendRequest(["I0001", 35, "40", "NOPE", 9999, -1, "²", "70"], "Y", k=5))
    assert res.history == [1, 35, 40] and res.unknown == ["NOPE", 9999, -1, "²", "70"] and not res.fallback
    ids = [r.item_id for r in res.items]
    assert len(ids) == 5 and all(30 <= i < 70 for i in ids) and not {35, 40} & set(ids)
    scores = [r.score for r in res.items]
    assert scores == sorted(scores, reverse=True)
    assert res.items[0].original_id == f"I{ids[0]:04d}" and res.items[0].title == f"item {ids[0]} of Y"
    # include the history: the excluded items come back, k above the domain size gives the whole domain
    everything = served.recommend(RecommendRequest([1, 35, 40], 1, k=1000, exclude_history=False))
    assert len(everything.items) == 40 and {35, 40} <= {r.item_id for r in everything.items}
    rest = served.recommend(RecommendRequest([1, 35, 40], "y", k=1000))
    assert len(rest.items) == 38


def test_empty_or_unknown_history_falls_back_to_popular_items(served, serve_dataset):
    counts = torch.zeros(70)
    for seq in serve_dataset.splits["train"]["items"]:
        for i in seq:
            counts[int(i)] += 1
    expected = torch.topk(counts[:30], 4).indices.tolist()
    for history in ([], ["nope", 12345]):
        res = served.recommend(RecommendRequest(history, "X", k=4))
        assert res.fallback and res.history == [] and [r.item_id for r in res.items] == expected
        assert [r.score for r in res.items] == counts[expected].tolist()


def test_a_batch_answers_like_single_requests(served):
    reqs = [
        RecommendRequest([1, 2, 35], "X", k=3),
        RecommendRequest([31], "Y", k=4, cold_id="neutral"),
        RecommendRequest([], "Y", k=2),
        RecommendRequest(list(range(30, 50)), "Y", k=6),
        RecommendRequest([3], "X", k=3, exclude_history=False),
    ]
    batch = served.recommend_many(reqs)
    for req, res in zip(reqs, batch, strict=True):
        single = served.recommend(req)
        assert [r.item_id for r in res.items] == [r.item_id for r in single.items]
        assert [r.score for r in res.items] == pytest.approx([r.score for r in single.items], abs=1e-4)


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (RecommendRequest([1], "Z"), "unknown domain 'Z'"),
        (RecommendRequest([1], "X", k=0), "k=0"),
        (RecommendRequest([1], "X", k=1001), "k=1001"),
        (RecommendRequest(list(range(1001)), "X"), "at most 1000"),
        (RecommendRequest([1], "X", cold_id="magic"), "learned, neutral, content"),
    ],
)
def test_bad_requests_name_the_problem(served, req, message):
    with pytest.raises(RequestError, match=message):
        served.recommend(req)


def test_cold_id_only_for_models_that_have_it(sasrec_run):
    with pytest.raises(RequestError, match="no cold-start policy"):
        ServedModel.load(sasrec_run).recommend(RecommendRequest([1], "X", cold_id="neutral"))


def test_cli_recommend_is_the_service_path(served, llmemf_run):
    res = CliRunner().invoke(app, ["recommend", "--checkpoint", str(llmemf_run), "--history", "I0001,35,I0040", "--domain", "Y", "-k", "5", "--json"])
    assert res.exit_code == 0, res.output
    cli = json.loads(res.output)
    direct = served.recommend(RecommendRequest(["I0001", "35", "I0040"], "Y", k=5))
    assert [r["item_id"] for r in cli] == [r.item_id for r in direct.items]
    assert [r["score"] for r in cli] == pytest.approx([r.score for r in direct.items], abs=1e-5)
    bad = CliRunner().invoke(app, ["recommend", "--checkpoint", str(llmemf_run), "--history", "I0001", "--domain", "W"])
    assert bad.exit_code == 2 and "unknown domain 'W'" in bad.output
    bad = CliRunner().invoke(app, ["recommend", "--checkpoint", str(llmemf_run), "--history", "I0001", "--domain", "X", "-k", "0"])
    assert bad.exit_code == 2 and "-k 0: must be between 1 and 1000" in bad.output


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_model_is_servable(name, serve_dataset, tmp_path):
    """Each model answers a new cross-domain history through scores(), or (user-ID models) says it cannot."""
    run = train_run(serve_dataset.root, tmp_path / name, name)
    served = ServedModel.load(run)
    fallback = served.recommend(RecommendRequest([], "X", k=3))
    assert fallback.fallback and len(fallback.items) == 3
    req = RecommendRequest(["I0001", 35, 36], "Y", k=5)
    if not served.scores_new_histories:
        assert name in USER_ID_MODELS
        with pytest.raises(RequestError, match="cannot score a new history"):
            served.recommend(req)
        return
    res = served.recommend(req)
    assert len(res.items) == 5 and all(30 <= r.item_id < 70 and r.item_id not in (35, 36) for r in res.items)
    assert all(torch.isfinite(torch.tensor(r.score)) for r in res.items)


def test_a_model_with_projected_frozen_features_serves_its_own_scores(serve_dataset, tmp_path):
    """model.frozen_width: the served fused dot product equals model.scores, with the projection read back
    from the checkpoint."""
    served = ServedModel.load(train_run(serve_dataset.root, tmp_path / "pca", "llmemf", "model.d_id=16", "model.frozen_width=4"))
    model = served.model
    assert model.widths["txt"] == 4 and model.get_buffer("txt_projection").shape[0] == 1 + 4
    batch = served.history_batch([[1, 35, 40], [31, 32, 33, 34]])
    with torch.inference_mode():
        torch.testing.assert_close(model.fused_query(batch, 1) @ model.fused_keys(1, "learned").T, model.scores(batch, 1), rtol=1e-5, atol=1e-4)
    assert len(served.recommend(RecommendRequest(["I0001", 35], "Y", k=5)).items) == 5
