"""Enrichment throughput: requests/s against a local OpenAI-compatible server at concurrency 1 vs 16,
the cost of a re-run (calls made), and SmolLM2-135M offline tokens/s.

    .venv/bin/python benchmarks/bench_enrich.py DATASET [--n 64] [--latency 0.05] [--skip-smollm2]

The server is tests/features/openai_server.py (scripted mode, a fixed per-request latency standing in
for a remote model). The dataset is copied to a temp dir (items.parquet gets llm_text written there).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "features"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--n", type=int, default=64, help="items per measurement")
    ap.add_argument("--latency", type=float, default=0.05, help="server seconds per request")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--smollm2-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for SmolLM2 (1: fastest on the shared 2-core machine)")
    args = ap.parse_args()

    from servers import openai_server, read_log

    from llmemf.features.llm import EnrichConfig, LocalBackend, enrich

    tmp = Path(tempfile.mkdtemp(prefix="bench_enrich_"))
    ds = tmp / "ds"
    ds.mkdir()
    for f in ("manifest.json", "items.parquet", "train.parquet", "valid.parquet", "test.parquet"):
        shutil.copy(Path(args.dataset) / f, ds / f)
    log = tmp / "server.log"
    rows = []
    with openai_server("scripted", log, delay=args.latency) as url:
        for conc, first in ((1, 0), (16, args.n)):
            cfg = EnrichConfig(
                backend="openai", base_url=url, model="bench", order="id", items=list(range(first, first + args.n)), concurrency=conc, progress=False
            )
            t0 = time.perf_counter()
            res = enrich(ds, cfg, log=lambda s: None)
            dt = time.perf_counter() - t0
            rows.append((f"concurrency {conc}", res.calls, dt, res.calls / dt))
        n_log = len(read_log(log))
        cfg.items = list(range(0, 2 * args.n))
        t0 = time.perf_counter()
        res = enrich(ds, cfg, log=lambda s: None)
        dt = time.perf_counter() - t0
        rows.append(("re-run (all cached)", res.calls, dt, float("nan")))
        assert len(read_log(log)) == n_log, "the re-run reached the server"
    print(f"server latency {args.latency * 1e3:.0f} ms/request, {args.n} distinct prompts per run")
    print(f"{'run':24s} {'calls':>6s} {'seconds':>8s} {'req/s':>8s}")
    for name, calls, dt, rps in rows:
        print(f"{name:24s} {calls:6d} {dt:8.2f} {rps:8.1f}")
    print(f"speed-up concurrency 16 vs 1: {rows[1][3] / rows[0][3]:.1f}x; re-run server requests: {len(read_log(log)) - n_log}")

    if not args.skip_smollm2:
        import torch

        from llmemf.data.dataset import Dataset
        from llmemf.features.prompts import PAPER_TEMPLATE, render_prompt

        d = Dataset.load(ds)
        prompts = [render_prompt(PAPER_TEMPLATE, d.domain_names[int(r.domain)], r.title, r.description) for r in d.items.head(8).itertuples()]
        t0 = time.perf_counter()
        be = LocalBackend(EnrichConfig(max_tokens=args.smollm2_tokens, threads=args.threads))
        print(f"\nSmolLM2-135M-Instruct ({be.model_id}, greedy, {torch.get_num_threads()} threads): load {time.perf_counter() - t0:.1f}s")
        print(f"{'batch':>6s} {'tokens':>7s} {'seconds':>8s} {'tokens/s':>9s}")
        for bs in (1, 8):
            t0 = time.perf_counter()
            gens = [g for s in range(0, 8, bs) for g in be.generate(prompts[s : s + bs])]
            dt = time.perf_counter() - t0
            toks = sum(g.completion_tokens for g in gens)
            print(f"{bs:6d} {toks:7d} {dt:8.2f} {toks / dt:9.1f}")
        print(f"sample: {gens[0].text[:200]!r}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
