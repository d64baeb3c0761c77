"""Adam for tables whose gradient touches a few rows per step (sparse embedding gradients).

A model names the tables a training step reads only by rows (``Recommender.sparse_embeddings``) and
looks rows up through the module's flag (``F.embedding(ids, emb.weight, sparse=emb.sparse)``). With
``train.lazy_adam`` the trainer sets that flag: the table's gradient is then a sparse tensor of the
rows the step used, instead of a dense (N x d) one that is mostly zeros, and ``LazyAdam`` updates
the table in those rows only, so a step costs the same whatever the catalogue's size. Every other
parameter gets torch's Adam unchanged. Without ``train.lazy_adam`` such tables still get sparse
gradients, which ``LazyAdam(lazy=False)`` makes dense once before Adam's step: the same update as
dense gradients, but one (N x d) gradient per step instead of one per lookup (a sampled-softmax step
of LLM-EMF looks its ID table up five times, and each dense lookup gradient is zero-filled and added).

Lazy is not the same as Adam. Adam decays every row's moments at every step and keeps moving a
row on its momentum after its gradient stops; lazy Adam leaves a row untouched (weights and
moments) in a step whose gradient does not use it, and applies the L2 term (``weight_decay``) only
to the rows the step uses. When every row is used, the two coincide. Where rows are read rarely,
lazy Adam moves them less than Adam would, and so learns them more slowly at the same learning rate
(docs/cost.md, section 4): hence an option, off by default.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LazyAdam(torch.optim.Adam):
    """torch.optim.Adam, except that a parameter whose gradient is sparse is updated lazily (above), or
    with ``lazy=False`` by Adam after its gradient is made dense. Its state (step, exp_avg,
    exp_avg_sq) has Adam's layout, so checkpoints load in either and a parameter may switch between
    sparse and dense gradients (DDP's dense fallback)."""

    def __init__(self, params, *args, lazy: bool = True, **kwargs):
        super().__init__(params, *args, **kwargs)
        self.lazy = lazy
        # lazy=False: one dense gradient buffer per sparse-gradient table, reused across steps (zeroing
        # memory already touched is far cheaper than a fresh (N x d) allocation's page faults every step)
        self._dense_grads: dict[torch.Tensor, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("LazyAdam takes no closure")
        if not self.lazy:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None and p.grad.is_sparse:
                        p.grad = self._densified(p)
        sparse = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None and p.grad.is_sparse]
        grads = [p.grad for _, p in sparse]
        for _, p in sparse:  # torch's Adam refuses sparse gradients: hide them from it
            p.grad = None
        try:
            super().step()
        finally:
            for (_, p), g in zip(sparse, grads, strict=True):
                p.grad = g
        for group, p in sparse:
            self._lazy_step(group, p)

    def _densified(self, p: torch.Tensor) -> torch.Tensor:
        grad = p.grad
        dense = self._dense_grads.get(p)
        if dense is None or dense.shape != p.shape or dense.device != p.device or dense.dtype != grad.dtype:
            dense = self._dense_grads[p] = torch.zeros(p.shape, dtype=grad.dtype, device=p.device)
        else:
            dense.zero_()
        return dense.index_add_(0, grad._indices()[0], grad._values())  # duplicate rows summed

    def _lazy_step(self, group: dict, p: torch.Tensor) -> None:
        if group["amsgrad"] or group["maximize"]:
            raise ValueError("LazyAdam supports neither amsgrad nor maximize")
        grad = p.grad.coalesce()  # one entry per row, duplicates summed
        rows, values = grad.indices()[0], grad.values()
        state = self.state[p]
        if not state:  # as torch's Adam lays it out, so that either can continue from the other
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        beta1, beta2 = group["betas"]
        if group["weight_decay"]:
            values = values + group["weight_decay"] * p[rows]
        state["step"] += 1
        step = float(state["step"])
        exp_avg = state["exp_avg"][rows].lerp_(values, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"][rows] = exp_avg
        state["exp_avg_sq"][rows] = exp_avg_sq
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
        p.index_add_(0, rows, exp_avg / denom, alpha=-group["lr"] / (1 - beta1**step))


def has_sparse_gradients(model: nn.Module) -> bool:
    """Whether any of the model's embedding tables asks for sparse gradients."""
    return any(isinstance(m, nn.Embedding) and m.sparse for m in model.modules())


def make_gradients_dense(model: nn.Module) -> None:
    """Every embedding table back to dense gradients (for where sparse ones are not supported)."""
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            m.sparse = False


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_ (2-norm over all gradients), which refuses sparse gradients:
    those count, and are scaled, by their coalesced values."""
    params = [p for p in parameters if p.grad is not None]
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    grads = [p.grad.values() if p.grad.is_sparse else p.grad for p in params]
    total = torch.nn.utils.get_total_norm(grads)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale)
    return total
