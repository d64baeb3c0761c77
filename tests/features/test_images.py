"""Image download against a real HTTP server on loopback: good, duplicate, broken, oversized, wrong
type, flaky, hanging and missing images; content-addressed store; re-runs skip what is done."""

from __future__ import annotations

import hashlib
import time

import pytest
from feature_helpers import make_image_dataset
from servers import GOOD, OTHER, serve_images

from llmemf.features.images import ImageIndex, ImagesConfig, download_images, resolve_images


@pytest.fixture
def image_server():
    with serve_images() as (base, hits):
        yield base, hits


def test_download_checks_store_and_rerun(tmp_path, image_server):
    base, hits = image_server
    ds = make_image_dataset(tmp_path / "ds", n_x=6, n_y=6)
    names = ["good", "same-bytes", "other", "broken", "big", "big-nolength", "page", "flaky", "hang", "missing"]
    ds.items["image"] = [f"{base}/{n}.png" for n in names] + ["images/0.png", None]  # a local path is kept as is
    ds.save_items()
    # A generous timeout: a loaded CI machine must not turn a good image into a timeout.
    cfg = ImagesConfig(concurrency=8, timeout_s=2.0, max_bytes=100_000, max_retries=1, backoff_s=0.05, progress=False)
    t0 = time.time()
    res = download_images(tmp_path / "ds", cfg, log=lambda s: None)
    assert time.time() - t0 < 20
    assert (res.n_urls, res.n_local, res.n_downloaded) == (10, 1, 4)
    errors = {url.rsplit("/", 1)[1]: err for _, url, err in res.failures}
    assert set(errors) == {"broken.png", "big.png", "big-nolength.png", "page.png", "hang.png", "missing.png"}
    assert "undecodable" in errors["broken.png"] and "too large" in errors["big.png"] and "too large" in errors["big-nolength.png"]
    assert "content-type" in errors["page.png"] and "HTTP 404" in errors["missing.png"] and "Timeout" in errors["hang.png"]
    assert hits["/flaky.png"] == 2 and hits["/hang.png"] == 2 and hits["/missing.png"] == 1  # transient retried, permanent not
    store = tmp_path / "ds/images_store"
    files = sorted(p.name for p in store.glob("*.png"))
    assert files == sorted({f"{hashlib.sha256(b).hexdigest()}.png" for b in (GOOD, OTHER)})  # identical bytes stored once
    paths = resolve_images(tmp_path / "ds", ds.items["image"].tolist())
    assert paths[0] == paths[1] and paths[0].read_bytes() == GOOD
    assert paths[3] is None and paths[10] == tmp_path / "ds/images/0.png" and paths[11] is None

    before = hits.copy()
    res2 = download_images(tmp_path / "ds", cfg, log=lambda s: None)  # failures of the first run are skipped
    assert (res2.n_skipped, res2.n_failed_before, res2.n_downloaded, res2.n_failed) == (4, 6, 0, 0)
    assert hits == before
    retry = ImagesConfig(**{**cfg.__dict__, "retry_failed": True})
    res2 = download_images(tmp_path / "ds", retry, log=lambda s: None)  # --retry-failed
    assert res2.n_skipped == 4 and res2.n_downloaded == 0 and res2.n_failed == 6
    assert all(hits[f"/{n}.png"] == before[f"/{n}.png"] for n in ("good", "same-bytes", "other", "flaky"))  # done: not fetched again
    idx = ImageIndex(tmp_path / "ds")
    assert {u.rsplit("/", 1)[1]: a for _, u, _, a in idx.failures()}["broken.png"] == 2  # failures retried and counted
    idx.close()
