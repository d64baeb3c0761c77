"""The HTTP service of `llmemf serve`: FastAPI over ``ServedModel`` (serving/recommend.py), plus the web page.

Endpoints (OpenAPI docs at /docs):
    GET  /                      the explorer page (static/index.html: plain HTML + JS)
    GET  /health                liveness and the served runs
    GET  /v1/models             the served runs (the page's run switch)
    GET  /v1/model?run=         model name, config, dataset (name, hash, domains), test metrics
    POST /v1/recommend          one history -> top-k items of a domain
    POST /v1/recommend/batch    many histories in one call
    GET  /v1/items?query=       title (or original id) search
    GET  /v1/items/{id}         one item by item id or original id
    GET  /images/{item_id}      the item's image file from the dataset directory

Every request mistake is a 4xx with a message, never a 500: 400 (RequestError: unknown domain or run, an
option the model lacks), 404 (unknown item), 413 (body over 64 KiB, checked before parsing), 422 (schema:
k out of 1..1000, history over 1000 ids, ids that are neither int nor string, unknown fields).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from llmemf.errors import UserError
from llmemf.serving.recommend import MAX_HISTORY, MAX_K, RecommendRequest, RequestError, ServedModel

MAX_BODY = 64 * 1024  # bytes; a full 1000-id history of ASINs is about 15 KiB
MAX_BATCH = 256  # histories per /v1/recommend/batch call
STATIC = Path(__file__).parent / "static"
Id = StrictInt | Annotated[StrictStr, Field(max_length=64)]


class RecommendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[Id] = Field(default_factory=list, max_length=MAX_HISTORY, description="oldest first: item ids or original ids")
    domain: StrictStr | StrictInt = Field(description="target domain: its name, X / Y or 0 / 1")
    k: StrictInt = Field(10, ge=1, le=MAX_K)
    exclude_history: StrictBool = True
    cold_id: StrictStr | None = Field(None, description="LLM-EMF cold-start policy: learned | neutral | content (default: the run's)")
    run: StrictStr | None = Field(None, description="which served run (default: the first)")

    def request(self) -> RecommendRequest:
        return RecommendRequest(self.history, self.domain, self.k, self.exclude_history, self.cold_id)


class BatchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: list[RecommendBody] = Field(max_length=MAX_BATCH)
    run: StrictStr | None = None


class Coalescer:
    """Scores concurrent /v1/recommend requests together. While one batch is scored (in a worker thread,
    so the event loop keeps accepting), newly arrived requests queue up and form the next batch: at
    concurrency c a domain's keys are read once per batch instead of c times (scoring one history is a
    matrix-vector product, bound by memory bandwidth), and a lone request waits for nothing."""

    def __init__(self, served: ServedModel, max_batch: int = 64):
        self.served, self.max_batch = served, max_batch
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0}  # reported by /health

    async def submit(self, req: RecommendRequest):
        if self.task is None:  # started in the server's event loop, on first use
            self.queue = asyncio.Queue()
            self.task = asyncio.create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((req, fut))
        return await fut

    async def _loop(self) -> None:
        while True:
            items = [await self.queue.get()]
            while len(items) < self.max_batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
            self.stats["batches"] += 1
            self.stats["requests"] += len(items)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(items))
            try:
                results = await asyncio.to_thread(self.served.recommend_many, [r for r, _ in items])
            except Exception as e:  # noqa: BLE001 - requests were checked before queueing: this is a bug, every waiter gets it
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), res in zip(items, results, strict=True):
                if not fut.done():
                    fut.set_result(res)


class BodyLimit:
    """ASGI middleware: reads a request body up to ``limit`` bytes before the app sees it; larger is a 413
    (so no handler ever parses an oversized body, with or without a Content-Length header)."""

    def __init__(self, app, limit: int = MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await self._too_large(send)
        body, more = b"", True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
            if len(body) > self.limit:
                return await self._too_large(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send):
        data = json.dumps({"detail": f"request body over {self.limit // 1024} KiB; send fewer or shorter histories"}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})


def _run_names(dirs: list[Path]) -> list[str]:
    """Each run's directory name; a repeated name gets -2, -3, ..."""
    names: list[str] = []
    for d in dirs:
        name, n = d.name, 1
        while name in names:
            n += 1
            name = f"{d.name}-{n}"
        names.append(name)
    return names


def create_app(served: list[ServedModel], names: list[str] | None = None) -> FastAPI:
    """The app over already-loaded runs of one dataset (the first is the default)."""
    if not served:
        raise UserError("no run to serve; give at least one run directory")
    hashes = {s.bundle.dataset.manifest.content_hash for s in served}
    if len(hashes) > 1:
        raise UserError(f"the runs use different datasets (content hashes {sorted(hashes)}); serve runs of one dataset together")
    names = names or _run_names([s.run_dir or Path(s.model_name) for s in served])
    runs = dict(zip(names, served, strict=True))
    first = served[0]
    for s in served:
        s.warm_up()
    catalogue = _Catalogue(first)

    app = FastAPI(title="llmemf", description="Recommendations from trained llmemf runs", version="1")
    app.state.runs = runs

    coalescers = {name: Coalescer(s) for name, s in runs.items()}

    def run_of(name: str | None) -> ServedModel:
        if name is None:
            return first
        if name not in runs:
            raise RequestError(f"unknown run {name!r}; served: {', '.join(runs)}")
        return runs[name]

    @app.exception_handler(UserError)
    async def user_error(_: Request, e: UserError):
        return JSONResponse({"detail": e.one_line()}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError):
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(dict.fromkeys(parts))[:2000]}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/health")
    async def health():
        return {"status": "ok", "runs": list(runs), "batching": {n: c.stats for n, c in coalescers.items()}}

    @app.get("/v1/models")
    async def models():
        return [{"run": n, "model": s.model_name, "cold_id": list(s.cold_modes), "default": s is first} for n, s in runs.items()]

    @app.get("/v1/model")
    async def model(run: str | None = None):
        s = run_of(run)
        m = s.bundle.dataset.manifest
        results = {}
        if s.run_dir is not None and (s.run_dir / "results.json").exists():
            results = json.loads((s.run_dir / "results.json").read_text())
        return {
            "run": next(n for n, v in runs.items() if v is s),
            "model": s.model_name,
            "config": s.config and json.loads(json.dumps(s.config.model, default=str)),
            "max_len": s.bundle.max_len,
            "dataset": {
                "name": m.name,
                "content_hash": m.content_hash,
                "domains": [{"name": d.name, "n_items": d.n_items, "offset": d.offset} for d in m.domains],
            },
            "cold_id": list(s.cold_modes),
            "scores_new_histories": s.scores_new_histories,
            "index": str(s.index or "exact"),
            "test": results.get("test"),
        }

    def answer(s: ServedModel, results) -> list[dict[str, Any]]:
        out = []
        for r in results:
            d = r.to_dict()
            for item in d["items"]:
                item["image"] = catalogue.image_url(item["item_id"])
            out.append(d)
        return out

    @app.post("/v1/recommend")
    async def recommend(body: RecommendBody):
        s = run_of(body.run)
        req = body.request()
        s.check(req)  # a bad request is answered now, never mixed into a batch
        result = await coalescers[body.run or names[0]].submit(req)
        return JSONResponse(answer(s, [result])[0])  # already JSON types: no jsonable_encoder pass

    @app.post("/v1/recommend/batch")
    async def recommend_batch(body: BatchBody):
        runs_used = {b.run for b in body.requests if b.run is not None} | ({body.run} if body.run else set())
        if len(runs_used) > 1:
            raise RequestError(f"one run per batch call, got {sorted(runs_used)}")
        s = run_of(runs_used.pop() if runs_used else None)
        results = await asyncio.to_thread(s.recommend_many, [b.request() for b in body.requests])
        return JSONResponse({"results": answer(s, results)})

    @app.get("/v1/items")
    async def items(query: str = Query("", max_length=200), domain: str | None = None, limit: int = Query(20, ge=1, le=100)) -> list[dict[str, Any]]:
        dom = first.resolve_domain(domain) if domain is not None else None
        return [catalogue.describe(g) for g in catalogue.search(query, dom, limit)]

    @app.get("/v1/items/{item}")
    async def one_item(item: str):
        gid = first.resolve_item(item)
        if gid is None:
            return JSONResponse({"detail": f"unknown item {item!r}: not an original id nor an item id in 0..{first.bundle.n_items - 1}"}, 404)
        return catalogue.describe(gid)

    @app.get("/images/{item_id}", include_in_schema=False)
    async def image(item_id: int):
        path = catalogue.image_path(item_id)
        if path is None:
            return JSONResponse({"detail": f"item {item_id} has no image file"}, 404)
        return FileResponse(path)

    app.add_middleware(BodyLimit)
    return app


class _Catalogue:
    """Item facts for the page: title search and image files (from the dataset directory)."""

    def __init__(self, s: ServedModel):
        self.s = s
        self.lower = [(t or "").lower() for t in s.titles]
        values = s.bundle.dataset.items["image"].tolist()
        root = s.bundle.dataset.root
        if root is not None and any(isinstance(v, str) and v for v in values):
            from llmemf.features.images import resolve_images

            self.paths = resolve_images(root, values)
        else:
            self.paths = [None] * len(values)
        self._exists: dict[int, bool] = {}

    def image_path(self, gid: int) -> Path | None:
        if not 0 <= gid < len(self.paths) or self.paths[gid] is None:
            return None
        if gid not in self._exists:
            self._exists[gid] = self.paths[gid].is_file()
        return self.paths[gid] if self._exists[gid] else None

    def image_url(self, gid: int) -> str | None:
        return f"/images/{gid}" if self.image_path(gid) is not None else None

    def describe(self, gid: int) -> dict[str, Any]:
        s = self.s
        return {
            "item_id": gid,
            "original_id": s.original_ids[gid],
            "title": s.titles[gid],
            "domain": s.domain_names[s.domain_of(gid)],
            "image": self.image_url(gid),
        }

    def search(self, query: str, domain: int | None, limit: int) -> list[int]:
        """Items whose title contains every word of the query (case-insensitive), or whose original id
        starts with it; in item order."""
        words = query.lower().split()
        lo, hi = self.s.bundle.domain_range(domain) if domain is not None else (0, len(self.lower))
        out = []
        q = query.strip()
        for g in range(lo, hi):
            t = self.lower[g]
            if (words and all(w in t for w in words)) or (q and self.s.original_ids[g].startswith(q)) or not q:
                out.append(g)
                if len(out) >= limit:
                    break
        return out


def app_from_env() -> FastAPI:
    """uvicorn factory for --workers > 1 (each worker process loads the runs): LLMEMF_SERVE_RUNS (os.pathsep-
    separated run directories), LLMEMF_SERVE_THREADS, LLMEMF_SERVE_INDEX and LLMEMF_SERVE_COMPILE (serve's --index
    and --compile)."""
    torch.set_num_threads(int(os.environ.get("LLMEMF_SERVE_THREADS", "1")))
    dirs = [Path(p) for p in os.environ["LLMEMF_SERVE_RUNS"].split(os.pathsep)]
    index = os.environ.get("LLMEMF_SERVE_INDEX", "exact")
    compile_ = bool(os.environ.get("LLMEMF_SERVE_COMPILE"))
    return create_app([ServedModel.load(d, index=index, compile=compile_) for d in dirs])
