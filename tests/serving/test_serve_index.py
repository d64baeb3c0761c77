"""The approximate index of `llmemf serve --index ivf` (serving/index.py): with every list probed it answers
exactly as exact scoring does, its scores are the exact fused scores, and it refuses what it cannot do."""

from __future__ import annotations

import importlib.util
import sys

import httpx
import pytest
import torch
from serve_helpers import LiveServer
from typer.testing import CliRunner

from llmemf.cli import app
from llmemf.errors import UserError
from llmemf.serving.index import IndexSpec
from llmemf.serving.recommend import RecommendRequest, ServedModel

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="the serve-index extra (faiss-cpu) is not installed")

EXHAUSTIVE = "ivf:nlist=4,nprobe=4"  # every list probed: the index's top-k is the exact top-k
REQUESTS = [
    RecommendRequest([1, 35, 40], "Y", k=5),
    RecommendRequest([2, 3, 4, 5], "X", k=10),
    RecommendRequest(list(range(30, 45)), "Y", k=7, cold_id="neutral"),
    RecommendRequest([31, 6], "X", k=3, cold_id="content"),
    RecommendRequest([7], "X", k=4, exclude_history=False),
]


@pytest.fixture(scope="module")
def exact(llmemf_run) -> ServedModel:
    return ServedModel.load(llmemf_run)


@pytest.fixture(scope="module")
def indexed(llmemf_run) -> ServedModel:
    return ServedModel.load(llmemf_run, index=EXHAUSTIVE)


def answer(res) -> tuple[list[int], list[float]]:
    return [r.item_id for r in res.items], [r.score for r in res.items]


@needs_faiss
def test_exhaustive_index_gives_the_exact_top_k_and_exact_scores(exact, indexed):
    for req, batched in zip(REQUESTS, indexed.recommend_many(REQUESTS), strict=True):
        want_ids, want_scores = answer(exact.recommend(req))
        for res in (indexed.recommend(req), batched):  # alone, and coalesced with requests of other domains / policies
            ids, scores = answer(res)
            assert ids == want_ids
            assert scores == pytest.approx(want_scores, abs=1e-4)


@needs_faiss
def test_history_is_excluded_and_the_list_is_still_full(exact, indexed):
    """A history made of the exact top items: the index asks for k + |history| candidates, so k remain."""
    top = [r.item_id for r in exact.recommend(RecommendRequest([1, 35], "Y", k=6, exclude_history=False)).items]
    req = RecommendRequest([1, *top], "Y", k=6)
    ids, _ = answer(indexed.recommend(req))
    assert len(ids) == 6 and not set(top) & set(ids)
    assert ids == answer(exact.recommend(req))[0]
    rest = indexed.recommend(RecommendRequest([1, 35, 40], "Y", k=1000))  # k above the domain size: all 40 but the 2 seen
    assert len(rest.items) == 38 and {r.item_id for r in rest.items} == set(range(30, 70)) - {35, 40}


@needs_faiss
def test_probing_fewer_lists_returns_real_items_with_exact_scores(exact, llmemf_run):
    approx = ServedModel.load(llmemf_run, index="ivf:nlist=8,nprobe=1")
    req = RecommendRequest([2, 3, 4], "Y", k=5)
    res = approx.recommend(req)
    full = exact.score([[2, 3, 4]], 1, exact.model.config.cold_id)[0]
    assert 0 < len(res.items) <= 5
    for r in res.items:
        assert 30 <= r.item_id < 70 and r.score == pytest.approx(float(full[r.item_id - 30]), abs=1e-4)


@needs_faiss
def test_http_service_with_the_index(indexed, exact):
    from llmemf.serving.app import create_app

    body = {"history": ["I0001", 35, "I0040"], "domain": "Y", "k": 5}
    with LiveServer(create_app([indexed])) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        res = client.post("/v1/recommend", json=body)
        assert res.status_code == 200, res.text
        assert [i["item_id"] for i in res.json()["items"]] == answer(exact.recommend(RecommendRequest(["I0001", 35, "I0040"], "Y", k=5)))[0]
        assert client.get("/v1/model").json()["index"] == EXHAUSTIVE


def test_fp16_keys_score_every_item_like_exact(exact, llmemf_run):
    """float16 keys: every item is scored, the scores are exact ones rounded (so near-ties may swap; not here)."""
    half = ServedModel.load(llmemf_run, index="fp16")
    assert half.keys(1, "learned").dtype == torch.float16
    for req in REQUESTS:
        (ids, scores), (want_ids, want_scores) = answer(half.recommend(req)), answer(exact.recommend(req))
        assert ids == want_ids
        assert scores == pytest.approx(want_scores, abs=2e-2)


def test_index_needs_the_fused_keys_of_llmemf(sasrec_run):
    with pytest.raises(UserError, match="sasrec has no fused keys to index"):
        ServedModel.load(sasrec_run, index="ivf")
    res = CliRunner().invoke(app, ["serve", str(sasrec_run), "--index", "ivf"])
    assert res.exit_code == 2 and "no fused keys to index" in res.output


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hnsw", "use exact .*, fp16 or ivf"),
        ("ivf:nlist=0", "'nlist=0' is not"),
        ("ivf:nprobe=x", "'nprobe=x' is not"),
        ("ivf:depth=3", "'depth=3' is not"),
    ],
)
def test_bad_index_spec_is_one_line(llmemf_run, spec, message):
    with pytest.raises(UserError, match=message):
        IndexSpec.parse(spec)
    res = CliRunner().invoke(app, ["serve", str(llmemf_run), "--index", spec])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1


def test_spec_parsing():
    assert IndexSpec.parse(None) is None and IndexSpec.parse("exact") is None
    assert IndexSpec.parse("ivf") == IndexSpec() and IndexSpec.parse("ivf:nprobe=32,nlist=1024") == IndexSpec(nlist=1024, nprobe=32)
    assert str(IndexSpec(nlist=1024, nprobe=32)) == "ivf:nlist=1024,nprobe=32"
    assert IndexSpec.parse("fp16") == IndexSpec(kind="fp16") and str(IndexSpec(kind="fp16")) == "fp16"
    assert IndexSpec().lists_for(100_000) == 1265 and IndexSpec(nlist=50).lists_for(30) == 30


def test_missing_faiss_names_the_extra(llmemf_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ModuleNotFoundError
    with pytest.raises(UserError, match=r"pip install 'llmemf\[serve-index\]'"):
        ServedModel.load(llmemf_run, index="ivf")
