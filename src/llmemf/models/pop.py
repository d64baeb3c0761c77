"""Pop: every user gets the items of the target domain ranked by training-set frequency.
The sanity floor every learned model must clear."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmemf.data.batching import Batch, DataBundle
from llmemf.models.base import Recommender


@dataclass
class PopConfig:
    pass


class Pop(Recommender):
    Config = PopConfig
    trainable = False
    reference = "popularity ranking (non-personalised baseline)"
    summary = "rank the target domain's items by their number of training interactions"

    def __init__(self, config: PopConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        self.register_buffer("counts", torch.zeros(self.n_items + 1))

    def fit(self, bundle: DataBundle) -> None:
        seqs = bundle.dataset.splits["train"]["items"]
        flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if len(seqs) else np.zeros(0, np.int64)
        self.counts.copy_(torch.from_numpy(np.bincount(flat, minlength=self.n_items + 1)[: self.n_items + 1]).float())

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        lo, hi = self.domain_ranges[domain]
        if candidates is None:
            return self.counts[lo:hi].expand(batch.size, -1)
        return self.counts[candidates]
