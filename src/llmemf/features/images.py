"""Item images: download URLs into a content-addressed store, and resolve any item's image to a file.

``items.image`` holds a URL (http/https), a path relative to the dataset directory, or an absolute
path. Local paths are used as they are. URLs are downloaded by ``download_images`` into

    DATASET/images_store/<sha256>.<ext>     the bytes, named by their hash (identical images stored once)
    DATASET/images_store/index.sqlite       url -> sha256 file, and per-item failures (WAL; one commit per item)

Each download is checked before it is kept: HTTP status, a size cap (streamed, aborted past it),
content type image/*, and a full PIL decode. Transient errors (timeouts, connection errors, 408/429/5xx)
are retried with exponential backoff (tenacity); permanent ones (404, not an image, too large, a
redirect loop, any other HTTP client error) fail at once. Every failure is recorded for its URL and the
run goes on: the other downloads in flight finish and are kept. A re-run skips every URL already in
the index, downloaded or failed; ``retry_failed`` (``llmemf images --retry-failed``) retries the failures.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

STORE_DIR = "images_store"


@dataclass
class ImagesConfig:
    concurrency: int = 16  # downloads in flight
    timeout_s: float = 20.0  # per attempt (connect + read)
    max_bytes: int = 10 * 1024 * 1024  # size cap; larger files are failures, never stored
    max_retries: int = 3  # retries after the first attempt, transient errors only
    backoff_s: float = 0.5  # first backoff; doubles per retry (capped at 8 s), with jitter
    user_agent: str = "llmemf/0.1 (+image download)"
    progress: bool = True  # tqdm bar with rate and ETA
    retry_failed: bool = False  # also retry URLs that failed in an earlier run (else they are skipped)


def is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://"))


class ImageIndex:
    def __init__(self, dataset_root: str | Path):
        self.root = Path(dataset_root) / STORE_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.root / "index.sqlite", timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS images (url TEXT PRIMARY KEY, file TEXT, bytes INTEGER, content_type TEXT, created REAL);
            CREATE TABLE IF NOT EXISTS failures (url TEXT PRIMARY KEY, item_id INTEGER, error TEXT, attempts INTEGER, updated REAL);
            """
        )
        self.db.commit()

    def done(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT url, file FROM images").fetchall())

    def put(self, url: str, file: str, nbytes: int, ctype: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO images VALUES (?,?,?,?,?)", (url, file, nbytes, ctype, time.time()))
        self.db.execute("DELETE FROM failures WHERE url = ?", (url,))
        self.db.commit()

    def fail(self, url: str, item_id: int, error: str) -> None:
        self.db.execute(
            "INSERT INTO failures VALUES (?,?,?,1,?) ON CONFLICT(url) DO UPDATE SET "
            "error = excluded.error, attempts = attempts + 1, updated = excluded.updated",
            (url, item_id, error[:300], time.time()),
        )
        self.db.commit()

    def failed_urls(self) -> set[str]:
        return {u for (u,) in self.db.execute("SELECT url FROM failures").fetchall()}

    def failures(self) -> list[tuple[int, str, str, int]]:
        return self.db.execute("SELECT item_id, url, error, attempts FROM failures ORDER BY item_id").fetchall()

    def close(self) -> None:
        self.db.close()


def resolve_images(dataset_root: str | Path, values: list[object]) -> list[Path | None]:
    """Local file of each items.image value (None: no image, or a URL not downloaded yet)."""
    root = Path(dataset_root)
    urls = {}
    if any(is_url(v) for v in values) and (root / STORE_DIR / "index.sqlite").exists():
        idx = ImageIndex(root)
        urls = idx.done()
        idx.close()
    out: list[Path | None] = []
    for v in values:
        if not isinstance(v, str) or not v:
            out.append(None)
        elif is_url(v):
            out.append(root / STORE_DIR / urls[v] if v in urls else None)
        else:
            p = Path(v)
            out.append(p if p.is_absolute() else root / p)
    return out


class PermanentError(Exception):
    """Not worth retrying: the answer will not change (404, not an image, too large)."""


class TransientError(Exception):
    """Worth retrying: 408/429/5xx, or a server that closed early."""


_EXT = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}


def check_image(data: bytes) -> str:
    """Decode fully (verify() alone misses truncated pixel data); returns the file extension."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()  # structure and checksums
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # every pixel: a truncated file fails here
            fmt = im.format or "PNG"
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds; all mean "not an image"
        raise PermanentError(f"undecodable image ({type(e).__name__}: {e})") from e
    return _EXT.get(fmt, fmt.lower())


async def _fetch(client, url: str, cfg: ImagesConfig) -> tuple[bytes, str]:
    import httpx

    try:
        async with client.stream("GET", url) as resp:
            if resp.status_code in (408, 409, 425, 429) or resp.status_code >= 500:
                raise TransientError(f"HTTP {resp.status_code}")
            if resp.status_code != 200:
                raise PermanentError(f"HTTP {resp.status_code}")
            ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
            if not ctype.startswith("image/"):
                raise PermanentError(f"content-type {ctype or 'missing'!r} is not an image")
            declared = int(resp.headers.get("content-length") or 0)
            if declared > cfg.max_bytes:
                raise PermanentError(f"too large: {declared} bytes > cap {cfg.max_bytes}")
            buf = bytearray()
            async for chunk in resp.aiter_bytes():
                buf += chunk
                if len(buf) > cfg.max_bytes:  # servers may lie about (or omit) the length
                    raise PermanentError(f"too large: over the cap of {cfg.max_bytes} bytes")
            return bytes(buf), ctype
    except (httpx.TimeoutException, httpx.TransportError) as e:  # includes TLS handshake failures (ConnectError)
        raise TransientError(f"{type(e).__name__}: {e}") from e
    except httpx.HTTPError as e:  # TooManyRedirects, DecodingError, ...: asking again gives the same answer
        raise PermanentError(f"{type(e).__name__}: {e}") from e
    except (OSError, ValueError) as e:  # ssl / socket errors outside httpx's mapping, a malformed URL
        raise PermanentError(f"{type(e).__name__}: {e}") from e


@dataclass
class ImagesResult:
    n_urls: int  # distinct URLs in the items table
    n_local: int  # items with a local path (used as is)
    n_skipped: int  # URLs already downloaded by an earlier run
    n_downloaded: int
    n_failed: int
    bytes: int
    seconds: float
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (item_id, url, error)
    n_failed_before: int = 0  # URLs that failed in an earlier run, skipped (retry_failed=False)

    def summary(self) -> str:
        lines = [
            f"images: {self.n_urls} URLs ({self.n_skipped} already stored, {self.n_downloaded} downloaded, {self.n_failed} failed), "
            f"{self.n_local} local paths; {self.bytes / 1e6:.1f} MB in {self.seconds:.1f}s"
        ]
        if self.n_failed_before:
            lines.append(f"  {self.n_failed_before} URLs failed in an earlier run and were skipped (--retry-failed retries them)")
        lines += [f"  failed item {i}: {u}: {e}" for i, u, e in self.failures[:10]]
        if len(self.failures) > 10:
            lines.append(f"  ... and {len(self.failures) - 10} more (images_store/index.sqlite, table failures)")
        return "\n".join(lines)


async def _download_all(jobs: list[tuple[int, str]], index: ImageIndex, cfg: ImagesConfig, stats: dict) -> None:
    import httpx
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter
    from tqdm import tqdm

    sem = asyncio.Semaphore(max(1, cfg.concurrency))
    limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    async with httpx.AsyncClient(timeout=cfg.timeout_s, limits=limits, follow_redirects=True, headers={"user-agent": cfg.user_agent}) as client:
        bar = tqdm(total=len(jobs), disable=not cfg.progress, desc="images", unit="img", dynamic_ncols=True)

        async def one(item_id: int, url: str) -> None:
            async with sem:
                try:
                    async for attempt in AsyncRetrying(
                        retry=retry_if_exception_type(TransientError),
                        stop=stop_after_attempt(cfg.max_retries + 1),
                        wait=wait_exponential_jitter(multiplier=cfg.backoff_s, max=8.0),
                        reraise=True,
                    ):
                        with attempt:
                            data, ctype = await _fetch(client, url, cfg)
                    ext = check_image(data)
                    name = f"{hashlib.sha256(data).hexdigest()}.{ext}"
                    path = index.root / name
                    if not path.exists():  # content-addressed: the same bytes are stored once
                        from llmemf.io import atomic_write_bytes

                        atomic_write_bytes(path, data)
                    index.put(url, name, len(data), ctype)
                    stats["downloaded"] += 1
                    stats["bytes"] += len(data)
                except (TransientError, PermanentError) as e:
                    index.fail(url, item_id, str(e))
                    stats["failures"].append((item_id, url, str(e)))
                bar.update(1)

        try:
            # return_exceptions: an unexpected error (a bug) in one download must not cancel the others in
            # flight; what finished is in the index, and the first such error is raised after all are done.
            outcomes = await asyncio.gather(*(one(i, u) for i, u in jobs), return_exceptions=True)
        finally:
            bar.close()
        for o in outcomes:
            if isinstance(o, BaseException):
                raise o


def download_images(dataset_root: str | Path, cfg: ImagesConfig | None = None, log: Callable[[str], None] = print) -> ImagesResult:
    """Download every item image URL not yet in the store; items.image is left unchanged (URLs are
    resolved through the index, so the original URL stays the item's identity)."""
    from llmemf.data.dataset import Dataset

    cfg = cfg or ImagesConfig()
    t0 = time.perf_counter()
    ds = Dataset.load(dataset_root)
    values = ds.items["image"].tolist()
    first_item: dict[str, int] = {}
    n_local = 0
    for i, v in enumerate(values):
        if is_url(v):
            first_item.setdefault(v, i)
        elif isinstance(v, str) and v:
            n_local += 1
    index = ImageIndex(dataset_root)
    try:
        done = index.done()
        failed_before = set() if cfg.retry_failed else index.failed_urls() & set(first_item)
        jobs = [(i, u) for u, i in first_item.items() if u not in done and u not in failed_before]
        n_stored = sum(u in done for u in first_item)
        log(
            f"images: {len(first_item)} URLs, {n_stored} already stored, {len(failed_before)} failed before (skipped), "
            f"{len(jobs)} to download; {n_local} local paths"
        )
        stats = {"downloaded": 0, "bytes": 0, "failures": []}
        if jobs:
            asyncio.run(_download_all(jobs, index, cfg, stats))
    finally:
        index.close()
    return ImagesResult(
        n_urls=len(first_item),
        n_local=n_local,
        n_skipped=n_stored,
        n_downloaded=stats["downloaded"],
        n_failed=len(stats["failures"]),
        bytes=stats["bytes"],
        seconds=time.perf_counter() - t0,
        failures=sorted(stats["failures"]),
        n_failed_before=len(failed_before),
    )
