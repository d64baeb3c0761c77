"""Faster, approximate top-k over a domain's fused keys: `llmemf serve RUN --index ivf | fp16` (used by
serving/recommend.py).

Exact scoring reads every key of the domain per request (N_d x D floats: 460 MB at 100k items of width
1,154), so it runs at memory bandwidth. An inverted-file index (faiss IVF-Flat, inner product) clusters
the keys into ``nlist`` lists once and scans only the ``nprobe`` lists nearest the query: about
nprobe / nlist of the keys. The price is recall: an item in an unprobed list is missed.

IVF-Flat keeps every key in full float32 precision and ranks its candidates by their exact inner
product with the query, so the scores it returns are the exact fused scores of the returned items
(the same numbers as exact scoring, up to float rounding); only which items reach the list is
approximate.

float16 keys halve the bytes that the exact scan reads (and the keys' memory); every item is still
scored, with the query and keys rounded to float16, so the scores are rounded and near-ties may swap.

Spec (one string, the CLI's --index and ``ServedModel.load(index=...)``):
    exact                       the default: score every item against float32 keys
    fp16                        score every item against float16 keys
    ivf                         IVF-Flat with nlist = 4 sqrt(N_d) lists and nprobe = 16
    ivf:nlist=1024,nprobe=32    either knob set; nprobe = nlist scans every list (exact top-k)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from llmemf.errors import UserError

EXTRA = "pip install 'llmemf[serve-index]'"  # the extra that brings faiss-cpu
TRAIN_PER_LIST = 64  # k-means training keys per list: enough for stable centroids, bounded build time at large N


@dataclass(frozen=True)
class IndexSpec:
    kind: str = "ivf"  # ivf | fp16
    nlist: int | None = None  # ivf: None = 4 sqrt(N_d) (faiss's rule of thumb), chosen per domain when the index is built
    nprobe: int = 16

    @classmethod
    def parse(cls, text: str | None) -> IndexSpec | None:
        """None for exact scoring ("exact" or no spec), else the spec; a malformed spec is a UserError."""
        if text is None or text.strip() == "exact":
            return None
        if text.strip() == "fp16":
            return cls(kind="fp16")
        kind, _, params = text.strip().partition(":")
        if kind != "ivf":
            raise UserError(f"--index {text!r}: use exact (the default), fp16 or ivf, e.g. ivf or ivf:nlist=1024,nprobe=16")
        values: dict[str, int] = {}
        for part in filter(None, params.split(",")):
            name, _, value = part.partition("=")
            if name.strip() not in ("nlist", "nprobe") or not value.strip().isdigit() or int(value) < 1:
                raise UserError(f"--index {text!r}: {part!r} is not nlist=N or nprobe=N with N >= 1")
            values[name.strip()] = int(value)
        return cls(**values)

    def __str__(self) -> str:
        if self.kind == "fp16":
            return "fp16"
        return "ivf:" + ",".join(f"{k}={v}" for k, v in (("nlist", self.nlist), ("nprobe", self.nprobe)) if v is not None)

    def lists_for(self, n_keys: int) -> int:
        """Number of lists for a domain of n_keys items (never more than the keys)."""
        return max(1, min(self.nlist or round(4 * math.sqrt(n_keys)), n_keys))


def import_faiss():
    try:
        import faiss
    except ModuleNotFoundError:
        raise UserError(f"--index ivf needs faiss, which is not installed: {EXTRA}") from None
    return faiss


class IVFIndex:
    """One domain's fused keys (N_d, D) in a faiss IVF-Flat inner-product index."""

    def __init__(self, keys: torch.Tensor, spec: IndexSpec, seed: int = 0):
        faiss = import_faiss()
        faiss.omp_set_num_threads(torch.get_num_threads())  # the service's --threads, as for torch
        data = np.ascontiguousarray(keys.float().numpy())
        n, dim = data.shape
        self.nlist = spec.lists_for(n)
        self.nprobe = min(spec.nprobe, self.nlist)
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.cp.seed = seed  # k-means initialisation: the same keys give the same index
        train = data
        if n > TRAIN_PER_LIST * self.nlist:
            train = data[np.random.default_rng(seed).choice(n, TRAIN_PER_LIST * self.nlist, replace=False)]
        self.index.train(train)
        self.index.add(data)
        self.index.nprobe = self.nprobe

    def search(self, queries: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, local item indices), each (B, n), best first; index -1 (score -inf) where the probed lists
        held fewer than n keys."""
        scores, ids = self.index.search(np.ascontiguousarray(queries.float().numpy()), n)
        scores[ids < 0] = -np.inf
        return torch.from_numpy(scores), torch.from_numpy(ids)
