"""Item graphs built from training sequences, and sparse aggregation over them (the one home for both).

Graphs are scipy CSR matrices (built once, never trained); a model aggregates over the rows a step
needs only: ``receptive_field`` cuts the sub-graphs a depth-k aggregation reads to compute a set of
rows, ``sparse_aggregate`` multiplies one of them with a dense table.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp
import torch


def transition_graph(sequences: Iterable[Sequence[int]], n: int) -> sp.csr_matrix:
    """(n, n) directed graph of consecutive items, row-normalised: A[i, j] = (times j directly follows i)
    / (times anything directly follows i). Repeats count (a pair seen twice weighs twice), a repeated item
    gives a self-loop, rows of items never followed stay zero. This is C2DSR's GraphMaker rule
    (cjx96/C2DSR utils/GraphMaker.py: its duplicate check reads an ``real_adj`` that is never filled, so
    every consecutive pair is kept; ``sp.coo_matrix`` sums the duplicates; ``normalize`` divides rows)."""
    src, dst = [], []
    for s in sequences:
        s = np.asarray(s, dtype=np.int64)
        if len(s) > 1:
            src.append(s[:-1])
            dst.append(s[1:])
    src = np.concatenate(src) if src else np.zeros(0, np.int64)
    dst = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    a = sp.coo_matrix((np.ones(len(src), dtype=np.float64), (src, dst)), shape=(n, n)).tocsr()  # duplicates summed
    out_degree = np.asarray(a.sum(1)).ravel()
    inv = np.divide(1.0, out_degree, out=np.zeros_like(out_degree), where=out_degree > 0)
    return (sp.diags(inv) @ a).astype(np.float32).tocsr()


def domain_transition_graphs(sequences: Iterable[Sequence[int]], n_x: int, n_y: int) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """C2DSR's three graphs from merged sequences of global ids (X = 0..n_x-1, Y = n_x..n_x+n_y-1):
    the mixed graph (n_x + n_y square) over the merged sequences, the X graph (n_x square, X-local ids)
    over each sequence's X subsequence, the Y graph (n_y square, Y-local ids) over its Y subsequence.
    (The official code keeps X and Y in one block-diagonal ``adj_single``; its X rows read X columns
    only and its Y rows Y columns only, so the two blocks are the same graphs.)"""
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences]
    mixed = transition_graph(seqs, n_x + n_y)
    x = transition_graph([s[s < n_x] for s in seqs], n_x)
    y = transition_graph([s[s >= n_x] - n_x for s in seqs], n_y)
    return mixed, x, y


def receptive_field(adj: sp.csr_matrix, items: np.ndarray, depth: int) -> list[tuple[np.ndarray, torch.Tensor]]:
    """The sub-graphs a depth-``depth`` aggregation needs to compute rows ``items`` (sorted unique ids).

    Returns, from the input layer up, (input rows, sparse CSR (n_out, n_in) block of ``adj``): layer l
    maps its input rows to the next layer's input rows; the last layer's output rows are ``items``.
    Every layer's input rows include its output rows, so a model that sums its layers (C2DSR) can read
    each layer at ``items``. Aggregating over the whole table would do the same arithmetic on every
    item; this does it on the batch's items and their neighbourhoods only.
    """
    plan, rows = [], np.asarray(items, dtype=np.int64)
    for _ in range(depth):
        block = adj[rows]
        cols = np.union1d(block.indices, rows)
        block = block[:, cols].tocsr()
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the one kernel used here is stable
            warnings.simplefilter("ignore", UserWarning)
            t = torch.sparse_csr_tensor(
                torch.from_numpy(block.indptr.astype(np.int64)),
                torch.from_numpy(block.indices.astype(np.int64)),
                torch.from_numpy(block.data.astype(np.float32)),
                size=block.shape,
            )
        plan.append((cols, t))
        rows = cols
    return plan[::-1]


def sparse_aggregate(block: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """block (n_out, n_in) sparse CSR @ h (n_in, d), in fp32 (MKL has no bf16 sparse kernel)."""
    with torch.autocast(h.device.type, enabled=False):
        return torch.sparse.mm(block.to(h.device), h.float())
