"""`llmemf serve --compile`: LLM-EMF's query encoders through torch.compile (inductor, CPU).

A request's cost, once ``--index ivf`` has removed the key scan, is the nine encoders on a history of at
most max_len items: small matmuls and many small ops. Compiled with the weights frozen into the graph
(inductor's ``freezing``: constant weights, pre-packed for the CPU's matmul kernels) and the ops between
the matmuls fused, the same query costs less. Shapes are dynamic (one graph for every history length and
batch size), except that torch specialises a size of 1: every batch is padded to one width of at least 2
for its three sequences, so the graphs are two, batch size 1 and larger, both compiled at warm-up.
Padding changes nothing (left padding is masked; the models are tested to be padding-invariant).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmemf.data.batching import Batch


def same_width(batch: Batch, pad_id: int) -> Batch:
    """The batch's X, Y and merged sequences left-padded to one width of at least 2."""
    width = max(batch.xy.shape[1], 2)

    def padded(seqs: torch.Tensor) -> torch.Tensor:
        return F.pad(seqs, (width - seqs.shape[1], 0), value=pad_id)

    return Batch(user=batch.user, xy=padded(batch.xy), x=padded(batch.x), y=padded(batch.y))


class CompiledQuery:
    """``model.fused_query(batch, domain)`` with the encoders compiled; the per-domain fold stays eager, so
    one graph serves both domains. Call under torch.inference_mode or torch.no_grad (serving does)."""

    def __init__(self, model):
        self.model = model
        self.pad_id = model.pad_id
        self.encoders = torch.compile(model.sequence_queries, dynamic=True, options={"freezing": True})

    def __call__(self, batch: Batch, domain: int) -> torch.Tensor:
        return self.model.fold_queries(self.encoders(same_width(batch, self.pad_id)), domain)

    def warm_up(self, histories: list[list[int]], history_batch) -> None:
        """Compile both graphs (a single history, and a batch of two) before the first request."""
        for rows in (histories[:1], histories[:2]):
            self(history_batch(rows), 0)
