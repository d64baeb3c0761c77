"""LLM enrichment against real OpenAI-compatible servers on loopback: SmolLM2 generations, scripted
faults (429 / 500 / garbage / hang), the SQLite cache (re-run = zero calls), kill -9 and resume."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
from feature_helpers import make_image_dataset
from servers import openai_server, read_log

from llmemf.features.llm import EnrichConfig, GenerationCache, cache_key, enrich
from llmemf.features.prompts import PAPER_TEMPLATE, render_prompt, strip_reasoning


def test_prompt_is_the_papers_and_reasoning_is_dropped():
    p = render_prompt(PAPER_TEMPLATE, "Food", "Organic green tea", None)
    assert p.startswith("Generate additional contextual information for an item which is type of Food with Organic green tea. Provide")
    assert "None" not in p and "description" not in p
    assert "Its description: Loose leaf." in render_prompt(PAPER_TEMPLATE, "Food", "Tea", "Loose  leaf.")
    assert strip_reasoning("<think>a\nb</think>\n Answer ") == "Answer"
    assert strip_reasoning("reasoning here</think>Answer") == "Answer"
    assert strip_reasoning("Answer <think>unfinished") == "Answer"
    assert cache_key("openai", "m", "p", {"t": 0}) != cache_key("openai", "m", "p", {"t": 1})
    # the repetition penalty joins the key only when set, so caches written before it existed still hit
    assert "repetition_penalty" not in EnrichConfig().sampling()
    assert EnrichConfig(repetition_penalty=1.2).sampling()["repetition_penalty"] == 1.2


def test_smollm2_server_answers_the_client(tmp_path, monkeypatch):
    """The real path: openai SDK -> HTTP -> a server generating with SmolLM2-135M-Instruct."""
    make_image_dataset(tmp_path / "ds", n_x=1, n_y=1)
    log = tmp_path / "server.log"
    with openai_server("smollm2", log) as url:
        cfg = EnrichConfig(backend="openai", base_url=url, model="smollm2", max_tokens=12, repetition_penalty=1.2, progress=False)
        res = enrich(tmp_path / "ds", cfg, log=lambda s: None)
        assert (res.n_generated, res.n_failed, res.calls) == (2, 0, 2)
        texts = pq.read_table(tmp_path / "ds/items.parquet").to_pandas()["llm_text"]
        assert texts.notna().all() and all(len(t.split()) >= 3 for t in texts)  # real text, not empty
        again = enrich(tmp_path / "ds", cfg, log=lambda s: None)
    assert (again.calls, again.n_cached, again.n_generated) == (0, 2, 0)  # re-run: zero calls
    assert len(read_log(log)) == 2


def test_retries_failures_and_reasoning(tmp_path):
    ds = make_image_dataset(tmp_path / "ds", n_x=4, n_y=3)
    titles = ["plain one", "RATELIMIT two", "FLAKY three", "ALWAYS500 four", "GARBAGE five", "HANG six", "THINK seven"]
    ds.items["title"] = titles
    ds.items["description"] = None
    ds.save_items()
    log = tmp_path / "server.log"
    with openai_server("scripted", log, hang=20) as url:
        cfg = EnrichConfig(
            backend="openai", base_url=url, model="scripted", template="{title}", max_retries=2, timeout_s=1.0, concurrency=7, progress=False
        )
        t0 = time.time()
        res = enrich(tmp_path / "ds", cfg, log=lambda s: None)
        assert time.time() - t0 < 30
        failed = {i for i, _ in res.failures}
        assert failed == {3, 4, 5}  # always-500, garbage, hang
        assert res.n_generated == 4
        items = pd.read_parquet(tmp_path / "ds/items.parquet")
        assert items.loc[1, "llm_text"] == "answer: RATELIMIT two"  # 429, 429, then success: retried
        assert items.loc[2, "llm_text"] == "answer: FLAKY three"  # 500 then success
        assert items.loc[6, "llm_text"] == "answer: THINK seven"  # reasoning dropped
        assert items.loc[[3, 4, 5], "llm_text"].isna().all()
        statuses = [r["status"] for r in read_log(log) if r["prompt"] == "ALWAYS500 four"]
        assert statuses == [500, 500, 500]  # 1 try + max_retries=2
        db = GenerationCache(tmp_path / "ds/llm_cache.sqlite")
        assert sorted(i for i, _, _ in db.failures()) == [3, 4, 5]
        db.close()
        n_before = len(read_log(log))
        res2 = enrich(tmp_path / "ds", cfg, log=lambda s: None)  # failures are retried, successes are not
        asked = {r["prompt"] for r in read_log(log)[n_before:]}
        assert asked == {"ALWAYS500 four", "GARBAGE five", "HANG six"}
        assert res2.n_cached == 4 and res2.n_failed == 3
        db = GenerationCache(tmp_path / "ds/llm_cache.sqlite")
        assert all(attempts == 2 for _, _, attempts in db.failures())
        db.close()


def test_kill_9_mid_run_resumes_with_nothing_lost(tmp_path):
    make_image_dataset(tmp_path / "ds", n_x=30, n_y=30)
    log = tmp_path / "server.log"
    cache = tmp_path / "ds/llm_cache.sqlite"
    with openai_server("scripted", log, delay=0.1) as url:
        env = dict(os.environ, LLMEMF_OPENAI_BASE_URL=url, LLMEMF_OPENAI_MODEL="scripted")
        cmd = [sys.executable, "-m", "llmemf.cli", "enrich", str(tmp_path / "ds"), "--concurrency", "4", "--no-progress"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        n_done = 0
        while time.time() < deadline and n_done < 10:
            time.sleep(0.05)
            if cache.exists():
                with contextlib.suppress(sqlite3.OperationalError), contextlib.closing(sqlite3.connect(cache)) as db:
                    n_done = db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert 10 <= n_done < 40, "the kill did not land mid-run"
        db = sqlite3.connect(cache)
        committed = {p for (p,) in db.execute("SELECT prompt FROM generations")}
        db.close()
        time.sleep(0.5)  # let the server finish logging the requests that were in flight at the kill
        n_log_at_kill = len(read_log(log))
        assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    after = [r["prompt"] for r in read_log(log)[n_log_at_kill:]]
    assert not committed & set(after)  # nothing committed before the kill was generated again
    n_prompts = len({r["prompt"] for r in read_log(log)})
    assert len(after) == len(set(after)) == n_prompts - len(committed)  # exactly the missing ones, each once
    items = pd.read_parquet(tmp_path / "ds/items.parquet")
    assert items["llm_text"].notna().all()
