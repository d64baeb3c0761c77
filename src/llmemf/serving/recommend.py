"""Recommend for a new history with a trained model: resolve ids, score the target domain, top-k."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmemf.data.batching import Batch, DataBundle
from llmemf.models.base import Recommender


class UnknownItemError(KeyError):
    pass


def resolve_items(bundle: DataBundle, tokens: list[str]) -> list[int]:
    """Original ids (e.g. ASINs) first, then global integer ids; unknown tokens raise, all named at once."""
    items = bundle.dataset.items
    by_original = {str(o): int(i) for o, i in zip(items["original_id"], items["item_id"], strict=True)}
    out, unknown = [], []
    for tok in tokens:
        tok = tok.strip()
        if tok in by_original:
            out.append(by_original[tok])
        elif tok.isdigit() and int(tok) < bundle.n_items:
            out.append(int(tok))
        else:
            unknown.append(tok)
    if unknown:
        raise UnknownItemError(f"unknown item(s) {unknown}: not an original id (e.g. ASIN) nor a global id in 0..{bundle.n_items - 1}")
    return out


def resolve_domain(bundle: DataBundle, domain: str) -> int:
    names = [n.lower() for n in bundle.dataset.domain_names]
    if domain.lower() in names:
        return names.index(domain.lower())
    if domain.upper() in ("X", "Y", "0", "1"):
        return {"X": 0, "Y": 1, "0": 0, "1": 1}[domain.upper()]
    raise ValueError(f"unknown domain {domain!r}; use one of {bundle.dataset.domain_names} or X/Y")


def history_batch(bundle: DataBundle, history: list[int]) -> Batch:
    pad, boundary, max_len = bundle.pad_id, bundle.domain_range(1)[0], bundle.max_len
    seq = np.asarray(history[-max_len:], dtype=np.int64)

    def row(s: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(s if len(s) else np.array([pad]))[None]

    return Batch(user=torch.zeros(1, dtype=torch.long), xy=row(seq), x=row(seq[seq < boundary]), y=row(seq[seq >= boundary]))


@dataclass
class Recommendation:
    item_id: int
    original_id: str
    title: str | None
    score: float


@torch.inference_mode()
def recommend(
    model: Recommender, bundle: DataBundle, history: list[int], domain: int, k: int = 10, exclude_seen: bool = True
) -> list[Recommendation]:
    model.eval()
    lo, hi = bundle.domain_range(domain)
    scores = model.scores(history_batch(bundle, history), domain, None)[0].float()  # (n_domain,)
    seen = sorted({i - lo for i in history if lo <= i < hi}) if exclude_seen else []
    scores[seen] = -torch.inf
    top = torch.topk(scores, min(k, hi - lo - len(seen)))  # never pad the list with excluded items
    items = bundle.dataset.items
    out = []
    for s, local in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        gid = lo + local
        title = items.at[gid, "title"]
        out.append(Recommendation(gid, str(items.at[gid, "original_id"]), title if isinstance(title, str) else None, s))
    return out
