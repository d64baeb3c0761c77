"""The offline feature pipeline the demo runs: enrich a subset with SmolLM2, then embed (text with the
packaged sentence-transformers model, images with the offline LiT encoder unless CLIP is given)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from llmemf.features.embed import EmbedConfig, EmbedResult, embed
from llmemf.features.llm import EnrichConfig, EnrichResult, enrich


def run_offline_features(
    dataset_root: str | Path,
    enrich_limit: int = 24,
    max_tokens: int = 48,
    llm_threads: int = 1,
    embed_cfg: EmbedConfig | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> str:
    """enrich (offline SmolLM2, the ``enrich_limit`` most popular items) -> embed; returns a summary.
    Cached: a second call costs only the cache look-ups."""
    t0 = time.perf_counter()
    log(f"features: enriching the {enrich_limit} most popular items with the offline LLM (SmolLM2-135M-Instruct), not all items")
    import torch

    threads = torch.get_num_threads()
    # One thread: greedy decoding of a 135M model is memory-bound, and on a shared 2-core machine two
    # threads were measured ~10x slower than one (spin-waiting); the embed step gets the threads back.
    ecfg = EnrichConfig(backend="local", limit=enrich_limit, max_tokens=max_tokens, threads=llm_threads, progress=progress)
    er: EnrichResult = enrich(dataset_root, ecfg, log=log)
    torch.set_num_threads(threads)
    log(er.summary())
    t1 = time.perf_counter()
    cfg = embed_cfg or EmbedConfig(progress=progress)
    res: EmbedResult = embed(dataset_root, cfg, log=log)
    log(res.summary())
    t2 = time.perf_counter()
    return (
        f"features: LLM text for {er.n_with_text} items ({er.n_generated} generated now, {er.n_cached} cached) in {t1 - t0:.1f}s; "
        f"embeddings {sorted(res.written) or '-'} written, {sorted(res.up_to_date) or '-'} up to date in {t2 - t1:.1f}s; total {t2 - t0:.1f}s"
    )
