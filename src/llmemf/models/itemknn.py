"""ItemKNN (Sarwar et al., WWW 2001): item-based collaborative filtering.

Closed form, no gradient training. Every user's training sequence is a set of items; two items are
similar when the same users interacted with both:

    sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|) * sqrt(|U_j|) + shrink)

(cosine similarity of the binary item columns of the user-item matrix; ``shrink`` damps pairs seen
by very few users, 0 = the paper's plain cosine). For each item we keep its ``k`` most similar items
*of each domain*, so that a Food item still has Kitchen neighbours when Kitchen is the target domain.
A user is scored by their history, as in the paper's tables: score(c) = sum over history items h
of sim(h, c) (each occurrence counts, so repeated items weigh more).

Tie-break (not in the paper): most candidates share no neighbour with a short history and would all
score exactly 0, which the pessimistic evaluation counts against the model. A popularity term far
smaller than any non-zero similarity (``pop_tiebreak`` * count / max count) orders those candidates
by popularity without changing the order of the others. Set it to 0 for the pure method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmemf.config import check_fields
from llmemf.data.batching import Batch, DataBundle
from llmemf.models.base import Recommender


@dataclass
class ItemKNNConfig:
    k: int = 100  # neighbours kept per item and per domain (the paper's neighbourhood size)
    shrink: float = 0.0  # added to the cosine denominator; 0 = plain cosine as in the paper
    pop_tiebreak: float = 1e-6  # popularity term that only breaks ties (see module docstring); 0 = off

    def __post_init__(self) -> None:
        check_fields(self, "model.", positive=("k",), nonneg=("shrink", "pop_tiebreak"))


def cooccurrence(seqs: list[np.ndarray], n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Item-item co-occurrence over users' item *sets*. Returns (rows, cols, counts) of the pairs
    i != j that share at least one user, and the per-item user counts (n_items,)."""
    sets = [np.unique(np.asarray(s, dtype=np.int64)) for s in seqs]
    width = max((len(s) for s in sets), default=0)
    pad = n_items  # an id no item has
    mat = np.full((len(sets), max(width, 1)), pad, dtype=np.int64)  # (U, W) each user's distinct items
    for u, s in enumerate(sets):
        mat[u, : len(s)] = s
    item_users = np.bincount(mat[mat != pad], minlength=n_items).astype(np.float64)
    a, b = mat[:, :, None], mat[:, None, :]  # (U, W, 1), (U, 1, W): every ordered pair of a user's items
    keep = (a != pad) & (b != pad) & (a != b)
    a, b = np.broadcast_to(a, keep.shape)[keep], np.broadcast_to(b, keep.shape)[keep]
    pair, counts = np.unique(a * n_items + b, return_counts=True)
    return pair // n_items, pair % n_items, counts.astype(np.float64), item_users


def rank_in_row(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort entries by row, then value descending (ties: lower column first). Returns the sorting
    order and each sorted entry's rank within its row (0 = most similar)."""
    order = np.lexsort((cols, -vals, rows))
    r = rows[order]
    starts = np.r_[0, np.flatnonzero(np.diff(r)) + 1]  # first sorted index of each row
    first = np.repeat(starts, np.diff(np.r_[starts, len(r)]))  # (nnz,) its row's first index
    return order, np.arange(len(r)) - first


class ItemKNN(Recommender):
    Config = ItemKNNConfig
    trainable = False
    reference = "Sarwar et al., Item-Based Collaborative Filtering Recommendation Algorithms, WWW 2001"
    summary = "item-item cosine similarity from training co-occurrence; score = sum of similarities to the history"

    def __init__(self, config: ItemKNNConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        # The neighbour lists as a dense (n_items + 1, 2k) table: column block d holds the top-k
        # neighbours in domain d. Unused slots point at pad_id with similarity 0; the pad row is empty.
        width = 2 * config.k
        self.register_buffer("nbr", torch.full((self.n_items + 1, width), self.pad_id, dtype=torch.int32))
        self.register_buffer("sim", torch.zeros(self.n_items + 1, width))
        self.register_buffer("pop", torch.zeros(self.n_items + 1))  # tie-break term per item

    def fit(self, bundle: DataBundle) -> None:
        k, n = self.config.k, self.n_items
        rows, cols, inter, item_users = cooccurrence(list(bundle.dataset.splits["train"]["items"]), n)
        sim = inter / (np.sqrt(item_users[rows] * item_users[cols]) + self.config.shrink)
        nbr = np.full((n + 1, 2 * k), self.pad_id, dtype=np.int32)
        val = np.zeros((n + 1, 2 * k), dtype=np.float32)
        for d, (lo, hi) in enumerate(self.domain_ranges):
            r, c, s = (a[(cols >= lo) & (cols < hi)] for a in (rows, cols, sim))  # neighbours in domain d
            order, rank = rank_in_row(r, c, s)
            top = rank < k
            keep = order[top]  # the kept entries, best first within each row
            nbr[r[keep], d * k + rank[top]] = c[keep]
            val[r[keep], d * k + rank[top]] = s[keep]
        self.nbr.copy_(torch.from_numpy(nbr))
        self.sim.copy_(torch.from_numpy(val))
        pop = np.zeros(n + 1)
        pop[:n] = item_users / max(item_users.max(), 1.0)
        self.pop.copy_(torch.from_numpy(self.config.pop_tiebreak * pop).float())

    def history_scores(self, history: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded history -> (B, n_items + 1) summed similarities (pad column included)."""
        B = history.shape[0]
        nbr = self.nbr[history].long().reshape(B, -1)  # (B, L * 2k) neighbour ids of every history item
        sim = self.sim[history].reshape(B, -1)  # (B, L * 2k); pad history rows contribute 0
        out = torch.zeros(B, self.n_items + 1, dtype=self.sim.dtype, device=history.device)
        return out.scatter_add_(1, nbr, sim) + self.pop

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        full = self.history_scores(batch.xy)  # (B, n_items + 1)
        lo, hi = self.domain_ranges[domain]
        if candidates is None:
            return full[:, lo:hi]
        return full.gather(1, candidates)
