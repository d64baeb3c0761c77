"""Issue 17: serving latency in-process and over HTTP, with and without the service's --index, and an
approximate index at 1M items.

    .venv/bin/python benchmarks/bench_serve.py DATASET_DIR --work SCRATCH_DIR [--sizes 100000,1000000]
        [--requests 1000] [--threads 1] [--http-requests 1000] [--http-seconds 60] [--skip-http] [--skip-ann]
        [--index fp16 --index ivf:nlist=1024,nprobe=16 ...] [--frozen-width 128] [--only synthetic]

Nothing is trained: latency does not depend on the weights, so every model is LLM-EMF at its real
size (d_id 256, 2 blocks; img 512-d and txt 384-d frozen features, random unit vectors where the
dataset has none: said in the output), randomly initialised, written as a run directory (config.yaml
+ best.pt) under --work and loaded with ServedModel.load, the code path of `llmemf serve`.

1. In-process: ``ServedModel.recommend`` (resolve, batch, encoders, one matmul against the domain's
   precomputed fused keys, top-k 10, response objects) per request, p50 / p99 over --requests
   requests, each a test-split history of DATASET_DIR (target domain as given) or of the synthetic
   catalogue (domain X). Baseline in the same run: the generic path every other model takes,
   ``model.scores`` (which re-normalises the ID keys per call).
   Synthetic catalogues: N items per domain, 2,000 users with random histories; at 100k the full
   model, at 1M ID-only keys (d 256) to bound memory (1M x 1154 fp32 keys would be 4.6 GB a domain);
   with --frozen-width W also the full model with its frozen features projected to W (model.frozen_width).
   Their ID vectors and features are drawn around 2,000 cluster centres (each item's cluster shared by
   its ID and features), noise as large as the centres.
   Then each --index spec (default fp16 and ivf) on the same model and requests: build time (both
   domains, as at the service's start), p50 / p99, the ratio to exact scoring timed again right before,
   and recall@10 against the exact answers. Recall depends on how the keys cluster: on DATASET_DIR's
   random features and random ID vectors (no structure at all: the worst case for an index) it is far
   below that of the clustered synthetic keys, and neither is a trained model's.
2. HTTP: `llmemf serve RUN --threads T` in a subprocess on 127.0.0.1, and a bounded async httpx
   loop (each request times out after 10 s; each level stops at --http-requests or --http-seconds)
   at concurrency 1 and 16: client-side latency p50 / p99 and completed requests per second. The load
   generator shares the machine's cores with the server; at concurrency 1 also one keep-alive http.client
   connection (the standard library: a client whose own cost is tens of microseconds, so what is left is
   the server's latency). Then the same with each --index spec, with
   recall@10 of its answers against the exact server's answers to the same bodies.
3. 1M items: faiss IVF-Flat (inner product, nlist 1024, nprobe 16 / 64) over the ID keys vs exact
   torch scoring: p99 per single query, build time, recall@10 against exact. The synthetic ID
   vectors are drawn around 2,000 cluster centres with noise as large as the centres (cosine ~0.5
   within a cluster): learned embeddings cluster, uniformly random ones are the hardest case for any
   index, so this is the recall of clustered keys, not of a trained model's.

4. The query side (issue 17: with --index ivf the encoders are what a request waits for): on each --index
   ivf spec's served model, LLM-EMF's encoders computing the last position only (the current path) against
   the full encoder pass (every position through every block, then the last picked: the path before),
   and the same compiled (`llmemf serve --compile`; its warm-up time in the row's name), per request
   interleaved, so all see the same load: the query alone (history batch + encoders) and
   ``ServedModel.recommend``, p50 / p99 and full/this ratios. Over HTTP, `llmemf serve --index ivf` with
   the full encoder pass patched in, and with --compile (concurrency 1), next to the plain server's rows.

The machine may be shared: the script prints the load average at start and end next to the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from llmemf.config import config_to_yaml, load_config
from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset, DomainInfo, Manifest, make_items_frame, split_history_target
from llmemf.features.store import Feature, FeatureManifest, list_features, save_feature
from llmemf.models.base import build_model
from llmemf.models.layers import StackedSequenceEncoder
from llmemf.serving.index import IndexSpec
from llmemf.serving.recommend import RecommendRequest, ServedModel

FEATURES = {"img": 512, "txt_llm": 384}  # CLIP ViT-B/32 and all-MiniLM-L6-v2 widths
N_CLUSTERS = 2000  # clusters of the synthetic item vectors
# `llmemf serve` with the full encoder pass patched in (section 4); argv after -c is serve's
FULL_PASS_SERVE = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench_serve; "
    "bench_serve.use_full_encoder_pass(); from llmemf.cli import main; main()"
)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


def load_avg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def item_clusters(n_items: int, seed: int) -> np.ndarray:
    """Each item's cluster (of N_CLUSTERS), shared by its ID vector and its features, so that fused keys cluster
    as a trained model's do (an approximate index's recall depends on it; latency does not)."""
    return np.random.default_rng(seed + 1).integers(0, N_CLUSTERS, n_items)


def add_random_features(root: Path, seed: int, clustered: bool = False) -> list[str]:
    """Random features where the dataset lacks img / txt_llm (speed only; clustered: around item_clusters'
    centres, noise as large as the centres); returns the names written."""
    ds = Dataset.load(root)
    have = set(list_features(root))
    rng = np.random.default_rng(seed)
    written = []
    for name, dim in FEATURES.items():
        if name in have:
            continue
        values = rng.standard_normal((ds.n_items, dim), dtype=np.float32)
        if clustered:
            values += rng.standard_normal((N_CLUSTERS, dim), dtype=np.float32)[item_clusters(ds.n_items, seed)]
        manifest = FeatureManifest(name=name, encoder="random-bench", weights="none", dim=dim, n_items=ds.n_items, dtype="float32")
        save_feature(root, Feature(manifest, values, np.ones(ds.n_items, dtype=bool)))
        written.append(name)
    return written


def synthetic_dataset(root: Path, n: int, seed: int, n_users: int = 2000) -> Path:
    """N items per domain, users with random histories of 6..15 items from both domains (leave-one-out)."""
    if (root / "manifest.json").exists():
        return root
    rng = np.random.default_rng(seed)
    items = make_items_frame([n, n], [f"S{i:08d}" for i in range(2 * n)])
    items["title"] = [f"synthetic item {i}" for i in range(2 * n)]
    rows = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        seq = [int(x) for x in rng.integers(0, 2 * n, int(rng.integers(8, 18)))]
        seq[-1] = int(rng.integers(0, n))  # the test target is an X item
        ts = list(range(len(seq)))
        rows["train"].append({"user": f"u{u}", "items": seq[:-2], "timestamps": ts[:-2]})
        for split, end in (("valid", -1), ("test", None)):
            s, t = (seq[:end], ts[:end]) if end else (seq, ts)
            hist, hts, target, tts = split_history_target(s, t)
            rows[split].append(
                {"user": f"u{u}", "items": hist, "timestamps": hts, "target": target, "target_domain": int(target >= n), "target_timestamp": tts}
            )
    manifest = Manifest(name=f"synthetic-{n}", domains=[DomainInfo("X", n, 0), DomainInfo("Y", n, n)], source="bench_serve")
    Dataset(manifest=manifest, items=items, splits={k: pd.DataFrame(v) for k, v in rows.items()}).save(root)
    return root


def write_run(dataset: Path, out: Path, seed: int, modalities: list[str], cluster_ids: bool = False, frozen_width: int = 0) -> Path:
    """A randomly initialised LLM-EMF of the real size saved as a run directory (config.yaml + best.pt)."""
    if (out / "best.pt").exists():
        return out
    overrides = [f"dataset={dataset}", f"out={out}", "model.name=llmemf", f"seed={seed}", f"model.modalities=[{','.join(modalities)}]"]
    cfg = load_config(None, [*overrides, f"model.frozen_width={frozen_width}"])
    torch.manual_seed(seed)
    model = build_model("llmemf", cfg.model_params, DataBundle(Dataset.load(dataset), cfg.max_len))
    if cluster_ids:
        w = model.item_id.weight.data
        gen = torch.Generator().manual_seed(seed)
        centres = torch.randn(N_CLUSTERS, w.shape[1], generator=gen)
        w.copy_(centres[torch.from_numpy(item_clusters(w.shape[0], seed))] + torch.randn(w.shape, generator=gen))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config_to_yaml(cfg))
    torch.save(model.state_dict(), out / "best.pt")
    return out


def requests_of(dataset: Path, n: int, domain: str | None) -> list[RecommendRequest]:
    test = Dataset.load(dataset).splits["test"]
    out = []
    for i in range(n):
        row = test.iloc[i % len(test)]
        out.append(RecommendRequest([int(x) for x in row["items"]], domain or int(row["target_domain"]), k=10))
    return out


def time_requests(served: ServedModel, reqs: list[RecommendRequest]) -> tuple[list[float], list[list[int]]]:
    """(latency of each request, the item ids it answered)."""
    for r in reqs[:10]:  # warm-up (and the keys of both domains)
        served.recommend(r)
    times, answers = [], []
    for r in reqs:
        t = time.perf_counter()
        res = served.recommend(r)
        times.append(time.perf_counter() - t)
        answers.append([i.item_id for i in res.items])
    return times, answers


def recall(answers: list[list[int]], exact: list[list[int]]) -> float:
    """Mean share of the exact answer's items that an approximate answer holds (recall@k, k = 10 here)."""
    return float(np.mean([len(set(a) & set(e)) / max(len(e), 1) for a, e in zip(answers, exact, strict=True)]))


def in_process(label: str, served: ServedModel, reqs: list[RecommendRequest], baseline_n: int, rows: list) -> list[list[int]]:
    """Times the fused-key path and the model.scores baseline; returns the exact answers."""
    fast, answers = time_requests(served, reqs)
    served.fast = False
    slow, _ = time_requests(served, reqs[:baseline_n])
    served.fast = True
    n_items = served.bundle.domain_range(1)[0]
    d = served.keys(0, served.model.config.cold_id).shape[1]
    rows.append((label, n_items, d, len(fast), pct(fast, 50), pct(fast, 99), len(slow), pct(slow, 50), pct(slow, 99), pct(slow, 50) / pct(fast, 50)))
    print(f"  {label}: fused keys p50 {pct(fast, 50):.2f} ms p99 {pct(fast, 99):.2f} ms; model.scores p50 {pct(slow, 50):.2f} ms", flush=True)
    return answers


def use_full_encoder_pass():
    """Make LLM-EMF's encoders run every position through every block and pick the last (the query path
    before the last-position encoders); returns the function that restores the current path."""
    last_position = StackedSequenceEncoder.forward

    def full_pass(self, x, valid, last_only=False):
        states = last_position(self, x, valid)
        return states[:, :, -1] if last_only else states

    StackedSequenceEncoder.forward = full_pass
    return lambda: setattr(StackedSequenceEncoder, "forward", last_position)


@contextlib.contextmanager
def encoder_pass(full: bool):
    restore = use_full_encoder_pass() if full else None
    try:
        yield
    finally:
        if restore:
            restore()


def query_path(label: str, spec: str, served: ServedModel, reqs: list[RecommendRequest], rows: list) -> None:
    """Section 4: the full encoder pass, the last-position encoders and those compiled (`--compile`, its
    warm-up timed), interleaved request by request."""
    compiled = ServedModel(served.model, served.bundle, served.model_name, index=served.index, compile=True)
    compiled._indexes = served._indexes  # the same index, built once
    t = time.perf_counter()
    compiled.warm_up()
    compile_s = time.perf_counter() - t
    paths = {
        "full encoder pass": (served, True),
        "last position": (served, False),
        f"last position, --compile ({compile_s:.0f} s)": (compiled, False),
    }
    times: dict[tuple[str, str], list[float]] = {(what, path): [] for what in ("query", "recommend") for path in paths}
    for r in reqs[:10]:
        compiled.recommend(r)
    for r in reqs:
        domain = served.resolve_domain(r.domain)
        for path, (model, full) in paths.items():
            with encoder_pass(full):
                t = time.perf_counter()
                with torch.inference_mode():
                    model.query(model.history_batch([model.resolve_items(r.history)[0]]), domain)
                times["query", path].append(time.perf_counter() - t)
                t = time.perf_counter()
                model.recommend(r)
                times["recommend", path].append(time.perf_counter() - t)
    rq, rr = times["query", "full encoder pass"], times["recommend", "full encoder pass"]
    for path in paths:
        q, rec = times["query", path], times["recommend", path]
        rows.append(
            (label, spec, path, len(rec), pct(q, 50), pct(q, 99), pct(rec, 50), pct(rec, 99), pct(rq, 50) / pct(q, 50), pct(rr, 50) / pct(rec, 50))
        )
        print(f"  {label} --index {spec}, {path}: fused_query p50 {pct(q, 50):.2f} ms, recommend p50 {pct(rec, 50):.2f} ms", flush=True)


def in_process_index(label: str, served: ServedModel, spec: str, reqs: list[RecommendRequest], exact: tuple, rows: list) -> ServedModel:
    """The same requests answered with `--index spec` (the same model): build time, latency, recall@10 against
    the exact answers; ``exact`` is (latencies, answers) of exact scoring in this run. Returns the indexed model."""
    indexed = ServedModel(served.model, served.bundle, served.model_name, index=IndexSpec.parse(spec))
    t = time.perf_counter()
    indexed.warm_up()  # both domains' keys or index, as the service builds them before it answers
    build = time.perf_counter() - t
    times, answers = time_requests(indexed, reqs)
    exact_t, exact_answers = exact
    rows.append(
        (
            label,
            spec,
            build,
            len(times),
            pct(times, 50),
            pct(times, 99),
            pct(exact_t, 50) / pct(times, 50),
            pct(exact_t, 99) / pct(times, 99),
            recall(answers, exact_answers),
        )
    )
    print(
        f"  {label} --index {spec}: built in {build:.0f} s, p50 {pct(times, 50):.2f} ms p99 {pct(times, 99):.2f} ms, recall@10 {rows[-1][-1]:.3f}",
        flush=True,
    )
    return indexed


# ---- HTTP -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load_loop(url: str, bodies: list[dict], concurrency: int, n: int, seconds: float) -> tuple[list[float], int, float, dict[int, list[int]]]:
    """(latencies, errors, wall seconds, the item ids answered to each body index)."""
    import httpx

    lat: list[float] = []
    answers: dict[int, list[int]] = {}
    errors = 0
    counter = iter(range(n))
    t0 = time.perf_counter()
    deadline = t0 + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=10.0, limits=limits) as client:

        async def worker():
            nonlocal errors
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/recommend", json=bodies[i % len(bodies)])
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    lat.append(time.perf_counter() - t)
                    answers[i % len(bodies)] = [item["item_id"] for item in r.json()["items"]]
                else:
                    errors += 1

        await asyncio.wait_for(asyncio.gather(*[worker() for _ in range(concurrency)]), seconds + 30)
    return lat, errors, time.perf_counter() - t0, answers


def sync_loop(url: str, bodies: list[dict], n: int, seconds: float) -> tuple[list[float], int, float]:
    """One keep-alive connection, one request at a time, through the standard library's http.client: a client
    whose own cost per request is tens of microseconds, so the latency is the server's (latencies, errors, wall)."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    payloads = [json.dumps(b).encode() for b in bodies]
    lat: list[float] = []
    errors = 0
    t0 = time.perf_counter()
    for i in range(n):
        if time.perf_counter() - t0 > seconds:
            break
        t = time.perf_counter()
        try:
            conn.request("POST", "/v1/recommend", body=payloads[i % len(payloads)], headers={"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            conn.close()
            ok = False
        if ok:
            lat.append(time.perf_counter() - t)
        else:
            errors += 1
    conn.close()
    return lat, errors, time.perf_counter() - t0


def http_bench(
    label: str,
    run: Path,
    reqs: list[RecommendRequest],
    args,
    rows: list,
    index: str = "exact",
    exact: dict | None = None,
    query: str | None = None,
) -> dict:
    """`llmemf serve RUN --index index` under load; recall@10 against ``exact`` (body index -> item ids of the
    exact server, concurrency 1) where given. ``query`` (section 4, concurrency 1 only): "full encoder pass"
    (patched in) or "--compile". Returns this server's answers at concurrency 1."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    launcher = ["-c", FULL_PASS_SERVE] if query == "full encoder pass" else ["-m", "llmemf.cli"]
    cmd = [sys.executable, *launcher, "serve", str(run), "--port", str(port), "--threads", str(args.threads), "--index", index] + (
        ["--compile"] if query == "--compile" else []
    )
    answers_c1: dict[int, list[int]] = {}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llmemf serve exited: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("llmemf serve did not start in 600 s")
            time.sleep(0.5)
        bodies = [{"history": r.history, "domain": r.domain, "k": r.k} for r in reqs]
        asyncio.run(load_loop(url, bodies, 1, 20, 60))  # warm-up
        shown = f"{index}, {query}" if query else index
        for c in [1] if query else args.concurrency:
            lat, errors, wall, answers = asyncio.run(load_loop(url, bodies, c, args.http_requests, args.http_seconds))
            if c == 1:
                answers_c1 = answers
            common = sorted(set(answers) & set(exact or {}))
            rec = recall([answers[i] for i in common], [exact[i] for i in common]) if common else float("nan")
            rows.append((label, shown, f"{c} (httpx async)", len(lat), errors, pct(lat, 50), pct(lat, 99), len(lat) / wall, rec))
            print(
                f"  {label} --index {shown} c={c}: {len(lat)} ok, {errors} errors, p50 {pct(lat, 50):.1f} ms p99 {pct(lat, 99):.1f} ms, "
                f"{len(lat) / wall:.1f} req/s, recall@10 {rec:.3f}",
                flush=True,
            )
            if c == 1:  # the same server and bodies under a client that costs next to nothing per request
                lat, errors, wall = sync_loop(url, bodies, args.http_requests, args.http_seconds)
                rows.append((label, shown, "1 (http.client)", len(lat), errors, pct(lat, 50), pct(lat, 99), len(lat) / wall, rec))
                print(f"  {label} --index {shown} c=1, http.client: p50 {pct(lat, 50):.1f} ms p99 {pct(lat, 99):.1f} ms", flush=True)
        print(f"  server batching: {httpx.get(url + '/health').json()['batching']}")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return answers_c1


# ---- approximate index ------------------------------------------------------------------------
def ann_bench(served: ServedModel, reqs: list[RecommendRequest], threads: int, rows: list) -> None:
    import faiss

    faiss.omp_set_num_threads(threads)
    key_t = served.keys(0, served.model.config.cold_id)  # (N, d) float32, unit ID keys
    keys = key_t.numpy()
    with torch.inference_mode():
        queries = torch.cat([served.model.fused_query(served.history_batch([r.history]), 0) for r in reqs]).numpy()
    qt = torch.from_numpy(queries)
    with torch.inference_mode():
        exact = [torch.topk(qt[i : i + 50] @ key_t.T, 10).indices.numpy() for i in range(0, len(qt), 50)]
    exact = np.concatenate(exact)  # (n, 10) exact top-10 of every query
    exact_t = []
    for i in range(min(len(qt), 200)):  # single-query latency of the exact scan (the index's competitor)
        t = time.perf_counter()
        with torch.inference_mode():
            torch.topk(qt[i : i + 1] @ key_t.T, 10)
        exact_t.append(time.perf_counter() - t)
    rows.append((f"exact (torch matmul + topk), {len(exact_t)} queries", "-", pct(exact_t, 50), pct(exact_t, 99), 1.0))
    t = time.perf_counter()
    quantizer = faiss.IndexFlatIP(keys.shape[1])
    index = faiss.IndexIVFFlat(quantizer, keys.shape[1], 1024, faiss.METRIC_INNER_PRODUCT)
    sample = keys[np.random.default_rng(0).choice(len(keys), min(len(keys), 50_000), replace=False)]
    index.train(sample)
    index.add(keys)
    build = time.perf_counter() - t
    for nprobe in (16, 64):
        index.nprobe = nprobe
        times, hits = [], 0
        for i in range(len(queries)):
            t = time.perf_counter()
            _, idx = index.search(queries[i : i + 1], 10)
            times.append(time.perf_counter() - t)
            hits += len(set(idx[0].tolist()) & set(exact[i].tolist()))
        rows.append((f"faiss IVF-Flat nlist 1024 nprobe {nprobe}", f"{build:.0f}", pct(times, 50), pct(times, 99), hits / (10 * len(queries))))
        print(f"  IVF nprobe {nprobe}: p99 {pct(times, 99):.2f} ms recall@10 {hits / (10 * len(queries)):.3f}", flush=True)


def table(header: tuple, rows: list, fmt: tuple) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(f.format(v) for f, v in zip(fmt, r, strict=True)) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path, help="a prepared dataset directory (e.g. Food-Kitchen); copied, never changed")
    ap.add_argument("--work", type=Path, required=True, help="scratch directory for dataset copies and run directories")
    ap.add_argument("--sizes", default="100000,1000000", help="synthetic catalogue sizes (items per domain)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--baseline-requests", type=int, default=200, help="requests timed on the model.scores baseline")
    ap.add_argument("--threads", type=int, default=1, help="torch / faiss threads (the server's --threads)")
    ap.add_argument("--http-requests", type=int, default=1000, help="requests per concurrency level (at most)")
    ap.add_argument("--http-seconds", type=float, default=60.0, help="time bound per concurrency level")
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--skip-ann", action="store_true")
    ap.add_argument(
        "--index",
        action="append",
        help="a `llmemf serve --index` spec to compare with exact scoring in-process and over HTTP (repeatable; default fp16 and ivf)",
    )
    ap.add_argument("--only", default="", help="serve only the catalogues whose label contains this text (e.g. synthetic)")
    ap.add_argument("--frozen-width", type=int, default=0, help="also serve the full model with model.frozen_width=W (catalogues up to 200k)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.index = args.index or ["fp16", "ivf"]
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"bench_serve: {args.threads} thread(s), {os.cpu_count()} cores, load average {load_avg()} at start (the machine may be shared)")
    fast = [m for m in ("uvloop", "httptools") if importlib.util.find_spec(m)]
    print(f"  uvicorn's event loop and HTTP parser: {', '.join(fast) or 'asyncio and h11 (pure Python: install llmemf[serve])'}")

    # the real dataset, copied with random features where it has none
    real = args.work / f"ds_{args.dataset.name}"
    if not (real / "manifest.json").exists():
        shutil.copytree(args.dataset, real, ignore=shutil.ignore_patterns("images_store", "images", "features"))
        if (args.dataset / "features").exists():
            shutil.copytree(args.dataset / "features", real / "features")
    written = add_random_features(real, args.seed)
    if written:
        print(f"  {real}: random unit features for {', '.join(written)} (the dataset has none; speed only)")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    no_http: set[str] = set()
    runs = {args.dataset.name: (write_run(real, args.work / f"run_{args.dataset.name}", args.seed, ["id", "img", "txt"]), real, None, False)}
    for n in sizes:
        root = synthetic_dataset(args.work / f"syn_{n}", n, args.seed)
        if n <= 200_000:
            add_random_features(root, args.seed, clustered=True)
            runs[f"synthetic {n:,}"] = (
                write_run(root, args.work / f"run_syn_{n}", args.seed, ["id", "img", "txt"], cluster_ids=True),
                root,
                "X",
                False,
            )
            if args.frozen_width:
                runs[f"synthetic {n:,} (frozen PCA {args.frozen_width})"] = (
                    write_run(root, args.work / f"run_syn_{n}_pca{args.frozen_width}", args.seed, ["id", "img", "txt"], True, args.frozen_width),
                    root,
                    "X",
                    False,
                )
        if n > 200_000:
            no_http.add(f"synthetic {n:,} (ID keys only)")  # the approximate-index case; its HTTP rows would add only minutes
        runs[f"synthetic {n:,} (ID keys only)"] = (
            write_run(root, args.work / f"run_syn_{n}_id", args.seed, ["id"], cluster_ids=True),
            root,
            "X",
            n == max(sizes),  # the approximate index on the largest catalogue
        )

    runs = {label: run for label, run in runs.items() if args.only in label}
    inproc, indexed, queries, http, ann = [], [], [], [], []
    ann_label = next((k for k, v in runs.items() if v[3]), "")
    print("\n[1] in-process scoring (ServedModel.recommend, k=10)")
    for label, (run, root, domain, with_ann) in runs.items():
        served = ServedModel.load(run)
        reqs = requests_of(root, args.requests, domain)
        print(f"  {label}: loaded {run}, load average {load_avg()}", flush=True)
        big = served.bundle.domain_range(1)[0] >= 500_000
        exact_answers = in_process(label, served, reqs, min(args.baseline_requests, 50) if big else args.baseline_requests, inproc)
        exact_times, _ = time_requests(served, reqs)  # exact again, right before the index rows (the load drifts)
        for spec in args.index:
            with_index = in_process_index(label, served, spec, reqs, (exact_times, exact_answers), indexed)
            if IndexSpec.parse(spec).kind == "ivf":
                query_path(label, spec, with_index, reqs, queries)
            del with_index
        if not args.skip_ann and with_ann:
            print(f"\n[3] approximate index at {label} (ID keys, clustered synthetic vectors)")
            ann_bench(served, reqs, args.threads, ann)
        del served
        gc.collect()

    if not args.skip_http:
        print("\n[2] HTTP (llmemf serve on 127.0.0.1, async httpx load generator on the same machine)")
        for label, (run, root, domain, _) in runs.items():
            if label in no_http:
                continue
            reqs = requests_of(root, min(args.requests, 500), domain)
            exact = http_bench(label, run, reqs, args, http)
            for spec in args.index:
                http_bench(label, run, reqs, args, http, spec, exact)
                if IndexSpec.parse(spec).kind == "ivf":
                    for query in ("full encoder pass", "--compile"):
                        http_bench(label, run, reqs, args, http, spec, exact, query)

    print(f"\nload average at end {load_avg()}; {args.threads} torch thread(s)\n")
    print(
        table(
            ("catalogue", "items/domain", "key width", "n", "p50 ms", "p99 ms", "baseline n", "baseline p50 ms", "baseline p99 ms", "speed-up p50"),
            inproc,
            ("{}", "{:,}", "{}", "{}", "{:.2f}", "{:.2f}", "{}", "{:.2f}", "{:.2f}", "{:.1f}x"),
        )
    )
    print("(in-process; baseline = the generic model.scores path, measured in the same run)\n")
    sections = [
        (
            indexed,
            ("catalogue", "index", "build s", "n", "p50 ms", "p99 ms", "exact/index p50", "exact/index p99", "recall@10"),
            ("{}", "{}", "{:.1f}", "{}", "{:.2f}", "{:.2f}", "{:.1f}x", "{:.1f}x", "{:.3f}"),
            "(in-process; exact = the fused-key path timed again right before, same requests; recall@10 against its answers)",
        ),
        (
            queries,
            ("catalogue", "index", "encoders", "n", "query p50 ms", "query p99 ms", "p50 ms", "p99 ms", "full/this query p50", "full/this p50"),
            ("{}", "{}", "{}", "{}", "{:.2f}", "{:.2f}", "{:.2f}", "{:.2f}", "{:.2f}x", "{:.2f}x"),
            "(in-process, interleaved request by request; query: history batch + fused_query; p50 / p99: ServedModel.recommend)",
        ),
        (
            http,
            ("catalogue", "index", "concurrency (client)", "ok", "errors", "p50 ms", "p99 ms", "req/s", "recall@10"),
            ("{}", "{}", "{}", "{}", "{}", "{:.1f}", "{:.1f}", "{:.1f}", "{:.3f}"),
            "(HTTP, client-side latency; client and server share the cores; recall@10 against the exact server's answers to the same bodies)",
        ),
    ]
    for rows, headers, formats, note in sections:
        if rows:
            print(table(headers, rows, formats))
            print(note + "\n")
    if ann:
        print(table((f"{ann_label}, domain X", "build s", "p50 ms", "p99 ms", "recall@10"), ann, ("{}", "{}", "{:.2f}", "{:.2f}", "{:.3f}")))
        print("(single queries; recall@10 against exact scoring of the same keys)")


if __name__ == "__main__":
    main()
