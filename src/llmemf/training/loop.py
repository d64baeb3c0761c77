"""The one training loop every gradient-trained model goes through.

Adam with L2, early stopping on validation MRR (mean over the two target domains) with patience,
the best epoch's weights kept; seeded per epoch (data order and dropout stream) so that a run
killed at any moment and resumed from its last completed epoch ends where an uninterrupted run
would. Distributed (torchrun): the model is wrapped in DistributedDataParallel, every rank takes
its share of each global batch (``World.share``), validation is split across ranks and gathered,
so every rank reaches the same decisions; only rank 0 has a RunDir to write to.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from llmemf.config import TrainConfig
from llmemf.data.batching import DataBundle
from llmemf.distributed import SINGLE, World
from llmemf.evaluation.protocols import Evaluator
from llmemf.models.base import Recommender
from llmemf.training.optim import LazyAdam, clip_grad_norm_, has_sparse_gradients, make_gradients_dense
from llmemf.training.rundir import RunDir


def make_optimizer(model: torch.nn.Module, train_cfg: TrainConfig) -> LazyAdam:
    """Adam + L2 (``weight_decay``), fused into one kernel where the device has one: on CPU its step
    is 2.6-10x faster than the default foreach implementation on Food-Kitchen's models
    (benchmarks/bench_optimizer.py), with the same update up to float rounding and the same state,
    so a checkpoint written by either resumes in the other. The tables the model reads by rows
    (``Recommender.sparse_embeddings``) are switched to sparse gradients here; with ``train.lazy_adam``
    they get lazy Adam's update of the rows a step read, otherwise Adam's (training/optim.py)."""
    for table in getattr(model, "sparse_embeddings", list)():
        table.sparse = True
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    betas = getattr(model, "adam_betas", (0.9, 0.999))  # a Recommender declares its reference code's betas
    return LazyAdam(params, lr=train_cfg.lr, betas=betas, weight_decay=train_cfg.weight_decay, fused=fused or None, lazy=train_cfg.lazy_adam)


@dataclass
class FitResult:
    best_epoch: int = -1  # 1-based; -1: no epoch improved on nothing (or none ran)
    epoch_seconds: list[float] = field(default_factory=list)  # training time of every epoch, over all resumes
    eval_seconds: list[float] = field(default_factory=list)  # validation time after each epoch


class _Loss(torch.nn.Module):
    """model.loss as a forward(): DistributedDataParallel hooks its gradient all-reduce onto forward()."""

    def __init__(self, model: Recommender):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


def fit(
    model: Recommender,
    bundle: DataBundle,
    train_cfg: TrainConfig,
    evaluator: Evaluator,
    *,
    seed: int,
    device: str = "cpu",
    bf16: bool = False,
    eval_bf16: bool = False,
    run: RunDir | None = None,
    resume: dict | None = None,
    world: World = SINGLE,
    log: Callable[[str], None] = print,
    name: str = "",
) -> FitResult:
    """Train ``model`` for up to ``train_cfg.epochs`` epochs, select on ``evaluator``'s mean MRR and leave
    the best epoch's weights in ``model``. ``run``: where to checkpoint (rank 0; None elsewhere or for no
    files). ``resume``: a last.pt state to continue from. The learning rate follows
    ``train_cfg.lr_step`` / ``lr_gamma`` (a function of the epoch alone, so a resume needs no schedule state)."""
    opt = make_optimizer(model, train_cfg)
    res = FitResult()
    start_epoch, best, bad_epochs = 0, -math.inf, 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        start_epoch, best, bad_epochs, res.best_epoch = resume["epoch"], resume["best"], resume["bad_epochs"], resume["best_epoch"]
        res.epoch_seconds = list(resume["epoch_seconds"])
        res.eval_seconds = list(resume.get("eval_seconds", []))  # absent in checkpoints written before it was kept
        log(f"resuming {run.path if run else 'the run'} after epoch {start_epoch} (best valid MRR {best:.4f} at epoch {res.best_epoch})")
    if run is not None:
        run.metrics.truncate_after(start_epoch)
    step = _Loss(model)
    if world.distributed:
        on_cuda = torch.device(device).type == "cuda"
        if on_cuda and has_sparse_gradients(model):
            # DDP all-reduces sparse gradients on gloo (tests/test_distributed.py), but NCCL has no sparse all-reduce.
            make_gradients_dense(model)
            if train_cfg.lazy_adam:
                log("train.lazy_adam is off under DDP on CUDA: NCCL cannot all-reduce sparse gradients, so every table trains with Adam")
        # Unused parameters (a modality a config switches off) would stall DDP's reducer without find_unused_parameters.
        # Buffers (frozen feature matrices) are equal on every rank and never change: no per-step broadcast.
        step = torch.nn.parallel.DistributedDataParallel(
            step, device_ids=[torch.device(device).index] if on_cuda else None, find_unused_parameters=True, forward_sync_buffers=False
        )
    device_type = torch.device(device).type
    data = bundle.train
    t_budget = time.perf_counter()
    for epoch in range(start_epoch, train_cfg.epochs):
        if bad_epochs >= train_cfg.patience:
            break
        # Dropout stream fixed per (epoch, rank): resume-exact. Rank 0 draws what a one-process run draws.
        torch.manual_seed(seed * 100003 + epoch + 1_000_003 * world.rank)
        if train_cfg.lr_step:  # step decay (SR-GNN: x0.1 every 3 epochs; lr_step=1: exponential decay)
            for group in opt.param_groups:
                group["lr"] = train_cfg.lr * train_cfg.lr_gamma ** (epoch // train_cfg.lr_step)
        model.train()
        t0 = time.perf_counter()
        losses = []
        chunks = data.batch_rows(train_cfg.batch_size, shuffle=True, seed=seed * 7919 + epoch, by_length=train_cfg.by_length)
        bar = tqdm(chunks, desc=f"epoch {epoch + 1}/{train_cfg.epochs}", disable=not (train_cfg.progress and world.is_main), leave=False)
        for rows in bar:
            rows, weight = world.share(rows)
            batch = data.batch(rows).to(device)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                loss = step(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: non-finite loss at epoch {epoch + 1}")
            if world.distributed:
                loss = loss * weight
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.grad_clip:
                clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        # The global batch's mean loss: the ranks' weighted losses summed, over the world size and the steps.
        epoch_loss = world.sum(float(np.sum(losses))) / (world.size * len(losses)) if world.distributed else float(np.mean(losses))
        train_s = time.perf_counter() - t0
        res.epoch_seconds.append(train_s)
        val = evaluator.evaluate(model, device, eval_bf16, world=world)
        res.eval_seconds.append(val.seconds)
        mrr = val.mean_mrr()
        improved = mrr > best
        if improved:
            best, res.best_epoch, bad_epochs = mrr, epoch + 1, 0
            if run is not None:
                run.save_best(model.state_dict(), epoch + 1)
        else:
            bad_epochs += 1
        record = {"epoch": epoch + 1, "loss": epoch_loss, "valid_mrr": mrr, "train_seconds": train_s, "eval_seconds": val.seconds}
        record.update({f"valid_{d}_{k}": v for d, m in val.metrics.items() for k, v in m.items()})
        log(
            f"epoch {epoch + 1:3d}  loss {record['loss']:.4f}  valid MRR "
            + "  ".join(f"{d} {100 * m['MRR']:.2f}" for d, m in val.metrics.items())
            + f"  ({train_s:.1f}s train, {val.seconds:.1f}s eval){'  *' if improved else ''}"
        )
        if run is not None:
            run.metrics.write(record)
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch + 1,
                "best": best,
                "best_epoch": res.best_epoch,
                "bad_epochs": bad_epochs,
                "epoch_seconds": res.epoch_seconds,
                "eval_seconds": res.eval_seconds,
            }
            run.save_last(state)
        # Rank 0's clock decides for everyone: ranks that disagreed on stopping would wait on each other forever.
        out_of_time = bool(train_cfg.max_minutes) and world.broadcast(time.perf_counter() - t_budget > 60 * train_cfg.max_minutes)
        if out_of_time:
            log(f"stopping: train.max_minutes={train_cfg.max_minutes} reached")
            break
    best_state = world.broadcast(run.load_best() if run is not None and run.has_best() else None)
    if best_state is not None:
        model.load_state_dict(best_state)
    return res
