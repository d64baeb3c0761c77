"""Not a benchmark: makes the README's screenshot of the `llmemf serve` page (docs/serve.png).

    .venv/bin/python benchmarks/screenshot_serve.py RUN_DIR [RUN_DIR ...] --search "words" [--search ...] [--out docs/serve.png]

Serves the runs with uvicorn on a free loopback port, opens the page in Debian's headless chromium
(playwright, no browser download), adds the first search result of each --search to the history, and
saves a screenshot of the page with its recommendations.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from llmemf.serving.app import create_app
from llmemf.serving.recommend import ServedModel

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--search", action="append", default=[], help="a title search whose first result joins the history")
    ap.add_argument("--domain", default=None, help="domain to recommend in (default: the page's)")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app([ServedModel.load(r) for r in args.runs]), log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            ctx = p.chromium.launch_persistent_context(
                profile, executable_path=args.chromium, headless=True, args=FLAGS, viewport={"width": 1400, "height": 820}
            )
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready='1']")
            if args.domain:
                page.select_option("#domain", args.domain)
            page.fill("#k", str(args.k))
            page.dispatch_event("#k", "change")
            for query in args.search:
                page.fill("#search", query)
                page.wait_for_function("q => document.getElementById('search').value === q", arg=query)
                page.wait_for_timeout(600)  # the page debounces typing by 150 ms
                page.locator("#results li button.add").first.click()
                page.wait_for_timeout(400)
            page.fill("#search", args.search[-1] if args.search else "")
            page.wait_for_timeout(600)
            page.wait_for_selector("#recs[data-state='ready']")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            ctx.close()
    finally:
        server.should_exit = True
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
