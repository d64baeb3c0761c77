"""Recommend for new histories with a trained run: the one code path of `llmemf recommend` and `llmemf serve`.

A ``ServedModel`` loads a run once and answers ``RecommendRequest``s:

  resolve    history tokens -> global item ids (original ids such as ASINs, or item ids); unknown tokens
             are reported, not fatal. The history may mix both domains (cross-domain models read both).
  batch      the resolved histories of one (domain, cold_id) group -> one Batch, built with
             llmemf.data.batching (left padding and the X / Y split live there only)
  score      LLM-EMF with logit fusion: one matmul of ``fused_query`` (B, D) against the domain's precomputed
             ``fused_keys`` (N_d, D), cached per (domain, cold_id). Every other model: ``model.scores``.
             Or, with an approximate index (serving/index.py; LLM-EMF with logit fusion only): ``index="ivf"``,
             the index's best k + |history| items of the domain with their exact fused scores; ``index="fp16"``,
             the same matmul against float16 keys.
  top-k      ``torch.topk`` after masking the history (``exclude_history``); never padded with excluded items
  fallback   an empty or all-unknown history gets the domain's most popular training items, flagged

With ``compile=True`` (`llmemf serve --compile`, serving/compiled.py) LLM-EMF's query encoders run compiled,
compiled at warm-up.

Request mistakes raise ``RequestError`` (a UserError): the CLI prints it and exits 2, the service answers 4xx.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import llmemf.models.base as model_base
from llmemf.data.batching import Batch, DataBundle, domain_masks, left_pad
from llmemf.errors import UserError
from llmemf.models.base import Recommender
from llmemf.models.llmemf import COLD_ID_MODES
from llmemf.serving.compiled import CompiledQuery
from llmemf.serving.index import IndexSpec, IVFIndex, import_faiss

MAX_K = 1000  # largest k a request may ask for
MAX_HISTORY = 1000  # longest history a request may send (the model reads its last max_len items)
# The user index of a request's batch: no user of the training vocabulary. Where models/base.py defines
# NO_USER, its contract is that user-ID models fold such a history in; before that (this branch's base),
# the models below read a user embedding learnt in training and cannot score a new history. (After the
# merge with main, which has NO_USER, this reduces to `from llmemf.models.base import NO_USER`.)
NEW_USER: int = getattr(model_base, "NO_USER", -1)
USER_ID_MODELS = set() if hasattr(model_base, "NO_USER") else {"bprmf", "ncf_mlp"}


class RequestError(UserError):
    """A request the caller can fix (unknown domain, bad k, unsupported option); HTTP 400 / CLI exit 2."""


@dataclass
class RecommendRequest:
    history: list[int | str]  # oldest first: item ids (int) or original ids (str; a digit string falls back to an item id)
    domain: str | int  # target domain: its name, X / Y, or 0 / 1
    k: int = 10
    exclude_history: bool = True  # never recommend an item already in the history
    cold_id: str | None = None  # LLM-EMF: cold-start policy for this request (learned | neutral | content); None = the run's


@dataclass
class Recommendation:
    item_id: int  # global item id
    original_id: str  # e.g. the ASIN
    title: str | None
    score: float | None  # the model's score (fallback: the item's training count); None where not finite
    image: str | None = None  # filled by the service: URL of the item's image, None where there is none


@dataclass
class RecommendResult:
    domain: str
    items: list[Recommendation]
    history: list[int]  # the resolved history (global ids), in order
    unknown: list[int | str] = field(default_factory=list)  # history tokens that are no item of the dataset
    fallback: bool = False  # True: empty or all-unknown history, so the domain's most popular items
    cold_id: str | None = None  # the cold-start policy used (LLM-EMF), else None

    def to_dict(self) -> dict:
        d = dict(vars(self))  # not dataclasses.asdict: its recursive deep copy is the slowest step of an answer
        d["items"] = [dict(vars(i)) for i in self.items]
        d["history"], d["unknown"] = list(self.history), list(self.unknown)
        return d


class ServedModel:
    """A trained run loaded once for answering requests (thread-safe: scoring is serialised)."""

    def __init__(
        self,
        model: Recommender,
        bundle: DataBundle,
        model_name: str,
        run_dir: Path | None = None,
        config=None,
        index: IndexSpec | None = None,
        compile: bool = False,
    ):
        self.model = model.eval()
        self.bundle = bundle
        self.model_name = model_name
        self.run_dir = run_dir
        self.config = config
        ds = bundle.dataset
        self.domain_names = list(ds.domain_names)
        items = ds.items
        self.original_ids = [str(o) for o in items["original_id"]]
        self.by_original = {o: i for i, o in enumerate(self.original_ids)}
        self.titles = [t if isinstance(t, str) and t else None for t in items["title"]]
        seqs = [np.asarray(s, dtype=np.int64) for s in ds.splits["train"]["items"]]
        flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
        self.popularity = torch.from_numpy(np.bincount(flat, minlength=bundle.n_items)[: bundle.n_items].astype(np.float32))
        self.fast = getattr(model, "fused_query", None) is not None and getattr(model.config, "fusion", None) == "logits"
        self.cold_modes: tuple[str, ...] = COLD_ID_MODES if hasattr(model, "set_cold_id") else ()  # per-request cold_id
        self._keys: dict[tuple[int, str | None], torch.Tensor] = {}
        self.index = index  # None: exact scoring (float32 keys); else fp16 keys, or an IVF index per (domain, cold_id)
        self.ivf = index is not None and index.kind == "ivf"
        self._indexes: dict[tuple[int, str | None], IVFIndex] = {}
        if index is not None and not self.fast:
            raise UserError(
                f"--index {index}: model {model_name} has no fused keys to index (only LLM-EMF with fusion=logits has); serve it without --index"
            )
        if self.ivf:
            import_faiss()  # a missing faiss is said now, not at the first request
        if compile and not self.fast:
            raise UserError(
                f"--compile: model {model_name} has no fused query to compile (only LLM-EMF with fusion=logits has); serve it without --compile"
            )
        self.compiled = CompiledQuery(model) if compile else None
        self.query = (self.compiled or model.fused_query) if self.fast else None  # (batch, domain) -> (B, D) fused query
        self._lock = threading.Lock()  # model state (cold_id on the slow path) and the key cache

    @classmethod
    def load(cls, run_dir: str | Path, index: str | None = None, compile: bool = False) -> ServedModel:
        """Load a run; ``index``: "exact" / None, "fp16" or "ivf[:nlist=N,nprobe=N]" (serving/index.py);
        ``compile``: LLM-EMF's query encoders through torch.compile (serving/compiled.py)."""
        from llmemf.training.trainer import load_run

        path = Path(run_dir)
        run_dir = path.parent if path.is_file() else path
        if not path.exists():
            raise UserError(f"{path}: no such run directory or file; train one with `llmemf train`")
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"{path}: not a llmemf run directory (no config.yaml)")
        if path.is_dir() and not (run_dir / "best.pt").is_file():
            raise UserError(f"{path}: no best.pt (training has not finished an epoch); train it with `llmemf train`")
        spec = IndexSpec.parse(index)  # a bad spec fails before the run is loaded
        cfg, bundle, model = load_run(path)
        return cls(model, bundle, cfg.model_name, run_dir=run_dir, config=cfg, index=spec, compile=compile)

    # ---- input ---------------------------------------------------------------------------------
    @property
    def scores_new_histories(self) -> bool:
        return bool(getattr(type(self.model), "scores_new_histories", self.model_name not in USER_ID_MODELS))

    def resolve_domain(self, domain: str | int) -> int:
        if isinstance(domain, int) and not isinstance(domain, bool) and domain in (0, 1):
            return domain
        if isinstance(domain, str):
            names = [n.lower() for n in self.domain_names]
            if domain.strip().lower() in names:
                return names.index(domain.strip().lower())
            alias = {"X": 0, "Y": 1, "0": 0, "1": 1}.get(domain.strip().upper())
            if alias is not None:
                return alias
        raise RequestError(f"unknown domain {domain!r}; use one of {self.domain_names} or X / Y")

    def resolve_item(self, token: int | str) -> int | None:
        """Global id of an original id or an item id; None if it is neither."""
        if isinstance(token, bool):
            return None
        if isinstance(token, int):
            return token if 0 <= token < self.bundle.n_items else None
        tok = str(token).strip()
        if tok in self.by_original:
            return self.by_original[tok]
        if tok.isascii() and tok.isdigit() and int(tok) < self.bundle.n_items:  # not "²", which isdigit() too
            return int(tok)
        return None

    def resolve_items(self, tokens: list[int | str]) -> tuple[list[int], list[int | str]]:
        """(global ids of the known tokens in order, the unknown tokens)."""
        ids, unknown = [], []
        for tok in tokens:
            gid = self.resolve_item(tok)
            (unknown.append(tok) if gid is None else ids.append(gid))
        return ids, unknown

    def item(self, gid: int) -> Recommendation:
        return Recommendation(gid, self.original_ids[gid], self.titles[gid], 0.0)

    def domain_of(self, gid: int) -> int:
        return int(gid >= self.bundle.domain_range(1)[0])

    def check(self, req: RecommendRequest) -> tuple[int, str | None]:
        """Validate a request; (domain index, cold_id policy to use)."""
        dom = self.resolve_domain(req.domain)
        if not isinstance(req.k, int) or isinstance(req.k, bool) or not 1 <= req.k <= MAX_K:
            raise RequestError(f"k={req.k!r}: ask for 1..{MAX_K} items")
        if len(req.history) > MAX_HISTORY:
            raise RequestError(f"history of {len(req.history)} ids: send at most {MAX_HISTORY} (the model reads the last {self.bundle.max_len})")
        cold = req.cold_id
        if cold is not None:
            if not self.cold_modes:
                raise RequestError(f"cold_id={cold!r}: model {self.model_name} has no cold-start policy to choose (LLM-EMF has)")
            if cold not in self.cold_modes:
                raise RequestError(f"cold_id={cold!r}: use one of {', '.join(self.cold_modes)}")
            if cold == "content" and getattr(self.model, "frozen_keys", torch.zeros(0, 0)).shape[1] == 0:
                raise RequestError("cold_id='content' predicts ID vectors from image/text features; this run has none")
        elif self.cold_modes:
            cold = self.model.config.cold_id
        if not self.scores_new_histories and any(self.resolve_item(t) is not None for t in req.history):
            raise RequestError(
                f"model {self.model_name} scores the users it was trained on by their user ID and cannot score a new history; "
                "serve a sequential model (e.g. sasrec, llmemf)"
            )
        return dom, cold

    # ---- scoring -------------------------------------------------------------------------------
    def history_batch(self, histories: list[list[int]]) -> Batch:
        """One left-padded Batch of new histories (each cut to the run's max_len), through llmemf.data.batching."""
        n_x, pad, width = self.bundle.domain_range(1)[0], self.bundle.pad_id, self.bundle.max_len
        seqs = [np.asarray(h[-width:], dtype=np.int64) for h in histories]
        xs, ys = [], []
        for s in seqs:
            is_x, is_y = domain_masks(s, n_x, pad)
            xs.append(s[is_x])
            ys.append(s[is_y])

        def padded(rows: list[np.ndarray]) -> torch.Tensor:
            mat, _ = left_pad(rows, max(max((len(r) for r in rows), default=0), 1), pad)
            return torch.from_numpy(mat)

        return Batch(user=torch.full((len(seqs),), NEW_USER, dtype=torch.long), xy=padded(seqs), x=padded(xs), y=padded(ys))

    def keys(self, domain: int, cold_id: str | None) -> torch.Tensor:
        """(N_d, D) fused keys of a domain under a cold-start policy, computed once."""
        key = (domain, cold_id)
        if key not in self._keys:
            with self._lock, torch.inference_mode():
                if key not in self._keys:
                    dtype = torch.float16 if self.index is not None and self.index.kind == "fp16" else torch.float32
                    self._keys[key] = self.model.fused_keys(domain, cold_id).to(dtype).contiguous()
        return self._keys[key]

    def ann_index(self, domain: int, cold_id: str | None) -> IVFIndex:
        """The approximate index of a domain's fused keys under a cold-start policy, built once. The keys
        themselves are not kept: the index holds them."""
        key = (domain, cold_id)
        if key not in self._indexes:
            with self._lock, torch.inference_mode():
                if key not in self._indexes:
                    self._indexes[key] = IVFIndex(self.model.fused_keys(domain, cold_id), self.index)
        return self._indexes[key]

    def warm_up(self) -> None:
        """Precompute both domains' keys (or index) under the run's own policy, and compile the query encoders
        with ``compile`` (the service does this at start, before it answers)."""
        if self.compiled is not None:
            one_of_each = [0, self.bundle.domain_range(1)[0]]  # an X and a Y item: all three sequences non-empty
            with self._lock, torch.inference_mode():
                self.compiled.warm_up([one_of_each, one_of_each[:1]], self.history_batch)
        if self.fast:
            for d in (0, 1):
                if not self.ivf:
                    self.keys(d, self.model.config.cold_id)
                else:
                    self.ann_index(d, self.model.config.cold_id)

    @torch.inference_mode()
    def score(self, histories: list[list[int]], domain: int, cold_id: str | None) -> torch.Tensor:
        """(B, N_d) scores of ``domain``'s items for each history (none of them empty)."""
        batch = self.history_batch(histories)
        if self.fast:
            keys = self.keys(domain, cold_id)
            with self._lock:  # the encoders are shared modules; one forward at a time
                q = self.query(batch, domain)  # (B, D)
            return (q.to(keys.dtype) @ keys.T).float()
        with self._lock:
            before = getattr(self.model.config, "cold_id", None)
            if cold_id is not None and cold_id != before:
                self.model.set_cold_id(cold_id)
            try:
                return self.model.scores(batch, domain, None).float()
            finally:
                if cold_id is not None and cold_id != before:
                    self.model.set_cold_id(before)

    @torch.inference_mode()
    def search(self, histories: list[list[int]], domain: int, cold_id: str | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate index: (scores, local item indices), each (B, n), of the index's best n items for each
        history; index -1 where fewer were found. The scores are exact fused scores (see serving/index.py)."""
        batch = self.history_batch(histories)
        index = self.ann_index(domain, cold_id)
        with self._lock:  # the encoders are shared modules; one forward at a time
            q = self.query(batch, domain)  # (B, D)
        return index.search(q, n)

    @torch.inference_mode()
    def recommend_many(self, requests: list[RecommendRequest]) -> list[RecommendResult]:
        """Answer many requests; those with the same (domain, cold_id) are scored as one batch."""
        checked = [self.check(r) for r in requests]  # all validated before any work
        resolved = [self.resolve_items(r.history) for r in requests]
        results: list[RecommendResult | None] = [None] * len(requests)
        groups: dict[tuple[int, str | None], list[int]] = {}
        for i, ((dom, cold), (ids, unknown)) in enumerate(zip(checked, resolved, strict=True)):
            if ids:
                groups.setdefault((dom, cold), []).append(i)
            else:
                results[i] = self._top(requests[i], dom, cold, ids, unknown, self.popularity[slice(*self.bundle.domain_range(dom))], True)
        for (dom, cold), rows in groups.items():
            histories = [resolved[i][0] for i in rows]
            if not self.ivf:
                scores, local = self.score(histories, dom, cold), [None] * len(rows)
            else:  # k + |seen| candidates, so that k remain after the history's items are dropped
                n = max(requests[i].k + len(self._seen(requests[i], dom, resolved[i][0])) for i in rows)
                scores, local = self.search(histories, dom, cold, min(n, self.domain_size(dom)))
            for i, s, cand in zip(rows, scores, local, strict=True):
                results[i] = self._top(requests[i], dom, cold, *resolved[i], s, False, cand)
        return results  # type: ignore[return-value]

    def recommend(self, request: RecommendRequest) -> RecommendResult:
        return self.recommend_many([request])[0]

    def domain_size(self, dom: int) -> int:
        lo, hi = self.bundle.domain_range(dom)
        return hi - lo

    def _seen(self, req: RecommendRequest, dom: int, ids: list[int]) -> list[int]:
        """Local indices (in the domain) of the history's items to exclude from the answer."""
        lo, hi = self.bundle.domain_range(dom)
        return sorted({i - lo for i in ids if lo <= i < hi}) if req.exclude_history else []

    def _top(
        self,
        req: RecommendRequest,
        dom: int,
        cold: str | None,
        ids: list[int],
        unknown: list,
        scores: torch.Tensor,
        fallback: bool,
        candidates: torch.Tensor | None = None,
    ) -> RecommendResult:
        """The top k of ``scores``: of every item of the domain, or (approximate index) of ``candidates``, the
        local indices that ``scores`` belong to (-1: none)."""
        seen = self._seen(req, dom, ids)
        if candidates is None:
            if seen:
                scores = scores.clone()
                scores[seen] = -torch.inf
            top = torch.topk(scores, min(req.k, self.domain_size(dom) - len(seen)))  # never pad the list with excluded items
            local = top.indices
        else:
            keep = (candidates >= 0) & ~torch.isin(candidates, torch.tensor(seen, dtype=candidates.dtype))
            scores, candidates = scores[keep], candidates[keep]
            top = torch.topk(scores, min(req.k, len(scores)))
            local = candidates[top.indices]
        lo = self.bundle.domain_range(dom)[0]
        items = []
        for s, i in zip(top.values.tolist(), local.tolist(), strict=True):
            rec = self.item(lo + i)
            rec.score = s if math.isfinite(s) else None  # a model's -inf (masked item) has no JSON form
            items.append(rec)
        return RecommendResult(self.domain_names[dom], items, ids, unknown, fallback, cold)
