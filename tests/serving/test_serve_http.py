"""The HTTP service against a real uvicorn on loopback: endpoints, and bad input is a 4xx with a message, never a 500."""

from __future__ import annotations

import httpx
import pytest

from llmemf.serving.recommend import RecommendRequest, ServedModel


@pytest.fixture(scope="module")
def client(live):
    with httpx.Client(base_url=live, timeout=30) as c:
        yield c


def test_health_models_and_model_facts(client, serve_dataset):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["runs"] == ["llmemf", "sasrec"] and set(health["batching"]) == {"llmemf", "sasrec"}
    runs = client.get("/v1/models").json()
    assert [(r["run"], r["model"], r["default"]) for r in runs] == [("llmemf", "llmemf", True), ("sasrec", "sasrec", False)]
    m = client.get("/v1/model").json()
    assert m["model"] == "llmemf" and m["dataset"]["content_hash"] == serve_dataset.manifest.content_hash
    assert [d["name"] for d in m["dataset"]["domains"]] == ["X", "Y"] and m["cold_id"] == ["learned", "neutral", "content"]
    assert m["config"]["d_id"] == 16 and set(m["test"]) == {"c2dsr", "full"}
    assert client.get("/v1/model", params={"run": "sasrec"}).json()["cold_id"] == []
    assert "/v1/recommend" in client.get("/openapi.json").json()["paths"]
    assert "<title>llmemf" in client.get("/").text


def test_recommend_matches_the_shared_code_path(client, llmemf_run):
    body = {"history": ["I0001", 35, "I0040", "NOPE"], "domain": "Y", "k": 5}
    res = client.post("/v1/recommend", json=body)
    assert res.status_code == 200, res.text
    data = res.json()
    direct = ServedModel.load(llmemf_run).recommend(RecommendRequest(["I0001", 35, "I0040", "NOPE"], "Y", k=5))
    assert [i["item_id"] for i in data["items"]] == [r.item_id for r in direct.items]
    assert data["unknown"] == ["NOPE"] and data["history"] == [1, 35, 40] and data["fallback"] is False and data["cold_id"] == "learned"
    assert set(data["items"][0]) == {"item_id", "original_id", "title", "score", "image"}
    neutral = client.post("/v1/recommend", json={**body, "cold_id": "neutral"}).json()
    assert neutral["cold_id"] == "neutral" and len(neutral["items"]) == 5
    other = client.post("/v1/recommend", json={**body, "run": "sasrec"}).json()
    assert other["cold_id"] is None and len(other["items"]) == 5


def test_fallback_batch_and_images(client):
    fb = client.post("/v1/recommend", json={"history": [], "domain": "X", "k": 3}).json()
    assert fb["fallback"] is True and len(fb["items"]) == 3
    reqs = [{"history": [1, 2], "domain": "X", "k": 3}, {"history": [31], "domain": "Y", "k": 2}, {"history": [], "domain": "Y", "k": 1}]
    batch = client.post("/v1/recommend/batch", json={"requests": reqs}).json()["results"]
    singles = [client.post("/v1/recommend", json=r).json() for r in reqs]
    assert [[i["item_id"] for i in b["items"]] for b in batch] == [[i["item_id"] for i in s["items"]] for s in singles]
    # images: served from the dataset directory where the item has one, null (the page's placeholder) elsewhere
    assert client.get("/v1/items/0").json()["image"] == "/images/0" and client.get("/v1/items/2").json()["image"] is None
    img = client.get("/images/0")
    assert img.status_code == 200 and img.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/images/2").status_code == 404


def test_item_search_and_lookup(client):
    found = client.get("/v1/items", params={"query": "3 OF x"}).json()  # every word, anywhere, any case
    assert [i["item_id"] for i in found] == [3, 13, 23]
    assert found[0] == {"item_id": 3, "original_id": "I0003", "title": "item 3 of X", "domain": "X", "image": None}
    y_only = client.get("/v1/items", params={"query": "of", "domain": "Y", "limit": 5}).json()
    assert [i["item_id"] for i in y_only] == [30, 31, 32, 33, 34] and {i["domain"] for i in y_only} == {"Y"}
    by_asin = client.get("/v1/items", params={"query": "I0042"}).json()
    assert [i["item_id"] for i in by_asin] == [42]
    assert client.get("/v1/items/I0042").json()["title"] == "item 42 of Y"
    missing = client.get("/v1/items/NOPE")
    assert missing.status_code == 404 and "NOPE" in missing.json()["detail"]


OK = {"history": [1, 35], "domain": "Y", "k": 5}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({**OK, "domain": "Z"}, 400, "unknown domain"),
        ({**OK, "k": 0}, 422, "k: Input should be greater than or equal to 1"),
        ({**OK, "k": 1001}, 422, "k: Input should be less than or equal to 1000"),
        ({**OK, "k": "5"}, 422, "k: Input should be a valid integer"),
        ({**OK, "history": list(range(1001))}, 422, "history: List should have at most 1000 items"),
        ({**OK, "history": [1.5]}, 422, "history.0"),
        ({**OK, "history": [[1]]}, 422, "history.0"),
        ({**OK, "history": [True]}, 422, "history.0"),
        ({**OK, "history": "1,35"}, 422, "history: Input should be a valid list"),
        ({**OK, "history": None}, 422, "history"),
        ({**OK, "cold_id": "magic"}, 400, "cold_id='magic'"),
        ({**OK, "cold_id": "neutral", "run": "sasrec"}, 400, "no cold-start policy"),
        ({**OK, "run": "nope"}, 400, "unknown run 'nope'"),
        ({**OK, "extra": 1}, 422, "extra: Extra inputs are not permitted"),
        ({"history": [1]}, 422, "domain: Field required"),
    ],
)
def test_bad_input_is_a_4xx_with_a_message(client, body, status, message):
    res = client.post("/v1/recommend", json=body)
    assert res.status_code == status, res.text
    assert message in res.json()["detail"]


def test_malformed_and_oversized_bodies(client):
    res = client.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert res.status_code == 422 and "JSON" in res.json()["detail"]
    big = b'{"domain": "X", "history": [' + b",".join([b'"' + b"A" * 60 + b'"'] * 1100) + b"]}"
    assert len(big) > 64 * 1024
    res = client.post("/v1/recommend", content=big, headers={"content-type": "application/json"})
    assert res.status_code == 413 and "64 KiB" in res.json()["detail"]

    def chunks():  # no Content-Length: the limit still holds while reading
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    res = client.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert res.status_code == 413
    too_many = client.post("/v1/recommend/batch", json={"requests": [OK] * 257})
    assert too_many.status_code == 422 and "requests" in too_many.json()["detail"]
    assert client.get("/v1/items", params={"limit": 0}).status_code == 422
    assert client.get("/v1/items", params={"domain": "Q"}).status_code == 400
    assert client.get("/health").status_code == 200  # the server is still up


def test_concurrent_requests_are_answered_each_as_alone(client, live):
    """Requests in flight together are scored as one batch (Coalescer); each still gets its own answer."""
    import asyncio

    bodies = [
        {"history": list(range(i, i + 1 + i % 5)), "domain": "XY"[i % 2], "k": 1 + i % 7, "cold_id": ["learned", "neutral", None][i % 3]}
        for i in range(24)
    ]
    bodies = [{k: v for k, v in b.items() if v is not None} for b in bodies]
    alone = [client.post("/v1/recommend", json=b).json() for b in bodies]

    async def together():
        async with httpx.AsyncClient(base_url=live, timeout=30) as c:
            return await asyncio.gather(*[c.post("/v1/recommend", json=b) for b in bodies])

    for res, ref in zip(asyncio.run(together()), alone, strict=True):
        assert res.status_code == 200
        got = res.json()
        assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in ref["items"]]
        assert [i["score"] for i in got["items"]] == pytest.approx([i["score"] for i in ref["items"]], abs=1e-4)
    print("coalescing:", client.get("/health").json()["batching"])  # how many batches they formed (timing-dependent)


def test_the_serve_command_binds_loopback_and_answers(llmemf_run, tmp_path):
    """`llmemf serve RUN` as a user runs it: a subprocess on a free port, then stopped."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llmemf.cli", "serve", str(llmemf_run), "--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "llmemf serve did not answer within 120 s"
                time.sleep(0.2)
        assert health.json()["runs"] == ["llmemf"]
        res = httpx.post(f"http://127.0.0.1:{port}/v1/recommend", json={"history": [1, 35], "domain": "Y", "k": 3})
        assert res.status_code == 200 and len(res.json()["items"]) == 3
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_serve_command_reports_a_bad_run_directory(tmp_path):
    from typer.testing import CliRunner

    from llmemf.cli import app

    res = CliRunner().invoke(app, ["serve", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "nope: no such run directory" in res.output
    (tmp_path / "half").mkdir()
    res = CliRunner().invoke(app, ["serve", str(tmp_path / "half")])
    assert res.exit_code == 2 and "not a llmemf run directory" in res.output
