"""Start / stop the loopback test servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent


@contextmanager
def openai_server(mode: str, log: Path, delay: float = 0.0, hang: float = 30.0, startup_s: float = 180.0):
    """Run openai_server.py in its own process; yields its base URL (…/v1)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "openai_server.py"), "--mode", mode, "--log", str(log), "--delay", str(delay), "--hang", str(hang)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        t0 = time.time()
        line = proc.stdout.readline()  # blocks until the model is loaded and the socket is bound
        if not line.startswith("PORT ") or time.time() - t0 > startup_s:
            raise RuntimeError(f"openai_server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def read_log(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
