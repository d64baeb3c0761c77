"""The web page in a real headless browser (Debian's chromium driven by playwright; no browser download):
search, build a cross-domain history, and the rendered recommendations equal /v1/recommend's answer."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

CHROMIUM = os.environ.get("LLMEMF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_or_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ModuleNotFoundError:
        return "playwright is not installed (pip install -e '.[serve-test]')"
    if not os.path.exists(CHROMIUM):
        return f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    return None


@pytest.fixture
def page(tmp_path):
    reason = _browser_or_reason()
    if reason:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"the browser test must run under CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # a persistent context is how playwright takes a --user-data-dir: a fresh one per test
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield ctx.pages[0] if ctx.pages else ctx.new_page()
        finally:
            ctx.close()


def _rendered(page) -> list[int]:
    return [int(x) for x in page.eval_on_selector_all("#recs li.rec", "els => els.map(e => e.dataset.itemId)")]


def _settled(page, seq_before: str | None) -> None:
    """Wait until the list shows the answer to a request sent after ``seq_before``."""
    page.wait_for_function(
        "prev => { const r = document.getElementById('recs'); return r.dataset.state === 'ready' && r.dataset.seq !== prev; }",
        arg=seq_before,
        timeout=15000,
    )


def test_page_builds_a_history_and_shows_the_services_answer(page, live, tmp_path):
    page.goto(live + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=15000)
    assert page.locator("#model-info").inner_text().startswith("llmemf on tiny")
    # empty history: the fallback (most popular) list, flagged
    api = httpx.post(live + "/v1/recommend", json={"history": [], "domain": "Y", "k": 10, "cold_id": "learned", "run": "llmemf"}).json()
    assert _rendered(page) == [i["item_id"] for i in api["items"]] and "fallback" in page.locator("#status").inner_text()

    history = []
    for query, item in (("item 1 of x", 1), ("I0035", 35), ("item 40", 40)):  # both domains
        page.fill("#search", query)
        row = page.locator(f"#results li[data-item-id='{item}']")
        row.wait_for(timeout=15000)
        seq = page.locator("#recs").get_attribute("data-seq")
        row.locator("button.add").click()
        _settled(page, seq)
        history.append(item)
    assert [int(x) for x in page.eval_on_selector_all("#history li", "els => els.map(e => e.dataset.itemId)")] == history

    seq = page.locator("#recs").get_attribute("data-seq")
    page.fill("#k", "7")
    page.dispatch_event("#k", "change")
    _settled(page, seq)
    api = httpx.post(live + "/v1/recommend", json={"history": history, "domain": "Y", "k": 7, "cold_id": "learned", "run": "llmemf"}).json()
    assert api["fallback"] is False and len(api["items"]) == 7
    assert _rendered(page) == [i["item_id"] for i in api["items"]]
    titles = page.eval_on_selector_all("#recs li.rec .t", "els => els.map(e => e.firstChild.textContent)")
    assert titles == [i["title"] for i in api["items"]]
    assert page.locator("#status").inner_text() == ""

    # switch run and domain: the list follows the other model's answer
    seq = page.locator("#recs").get_attribute("data-seq")
    page.select_option("#run", "sasrec")
    _settled(page, seq)
    seq = page.locator("#recs").get_attribute("data-seq")
    page.select_option("#domain", "X")
    _settled(page, seq)
    api = httpx.post(live + "/v1/recommend", json={"history": history, "domain": "X", "k": 7, "run": "sasrec"}).json()
    assert _rendered(page) == [i["item_id"] for i in api["items"]]
    assert page.locator("#cold-wrap").is_hidden()
    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
    assert (tmp_path / "serve.png").stat().st_size > 5000
