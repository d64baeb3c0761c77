"""Train one model end to end: the run directory (training/rundir.py) around the loop (training/loop.py).

``train`` builds the model, fits closed-form models, runs the loop for gradient-trained ones, then
evaluates the best weights on valid and test under every protocol and writes results.json. Under
torchrun every rank calls ``train``; rank 0 alone owns the run directory (see llmemf.distributed).

The names other modules import from here (train, evaluate_all, load_run, RunDirConflict,
same_experiment, matches_stored_experiment, ...) stay importable from this module.
"""

from __future__ import annotations

import contextlib
import json
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmemf.config import RunConfig
from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset
from llmemf.distributed import SINGLE, World, setup
from llmemf.evaluation.protocols import EvalResult, Evaluator, evaluate_together, format_table
from llmemf.evaluation.ranks import save_ranks
from llmemf.io import atomic_torch_save
from llmemf.models.base import Recommender, build_model
from llmemf.training.loop import FitResult, fit, make_optimizer
from llmemf.training.rundir import (
    CheckpointDamaged,
    DatasetMismatch,
    MetricsLog,
    RunDir,
    RunDirBusy,
    RunDirConflict,
    check_data,
    code_version,
    features_of,
    load_checkpoint,
    load_run_config,
    matches_stored_experiment,
    run_dir_lock,
    same_experiment,
    verify_checkpoint,
)

__all__ = [
    "CheckpointDamaged",
    "DatasetMismatch",
    "FitResult",
    "MetricsLog",
    "RunDir",
    "RunDirBusy",
    "RunDirConflict",
    "TrainResult",
    "atomic_torch_save",
    "cold_item_results",
    "cpu_has_native_bf16",
    "evaluate_all",
    "fit",
    "load_checkpoint",
    "load_run",
    "make_optimizer",
    "matches_stored_experiment",
    "peak_rss_mib",
    "run_dir_lock",
    "same_experiment",
    "seed_everything",
    "train",
    "train_in_bf16",
]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class TrainResult:
    run_dir: Path
    model: Recommender
    best_epoch: int
    valid: dict[str, EvalResult]
    test: dict[str, EvalResult]
    epoch_seconds: list[float] = field(default_factory=list)

    def table(self, label: str, split: str = "test") -> str:
        results = self.test if split == "test" else self.valid
        return "\n\n".join(format_table([(label, r)]) for r in results.values())


def _evaluators(cfg: RunConfig, bundle: DataBundle, split: str) -> dict[str, Evaluator]:
    e = cfg.eval
    return {p: Evaluator(bundle, split, p, e.n_negatives, e.seed, e.ties, e.batch_size) for p in e.protocols}


def cpu_has_native_bf16() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def train_in_bf16(cfg: RunConfig, model: Recommender) -> bool:
    """train.bf16 if set, else the model's preference where the device computes bf16 natively (a CPU
    with AVX512-BF16 or AMX, a CUDA device that supports it; elsewhere bf16 autocast is emulated and slower)."""
    kind = torch.device(cfg.device).type
    if kind not in ("cpu", "cuda"):
        return False
    if cfg.train.bf16 is not None:
        return bool(cfg.train.bf16)
    native = cpu_has_native_bf16() if kind == "cpu" else torch.cuda.is_bf16_supported()
    return model.prefers_bf16 and native


def evaluate_all(model: Recommender, cfg: RunConfig, bundle: DataBundle, split: str, world: World = SINGLE) -> dict[str, EvalResult]:
    evaluators = _evaluators(cfg, bundle, split)
    return dict(zip(evaluators, evaluate_together(list(evaluators.values()), model, cfg.device, cfg.eval.bf16, world), strict=True))


def cold_item_results(results: dict[str, EvalResult], cfg: RunConfig, bundle: DataBundle) -> dict[str, dict] | None:
    """``results`` (evaluate_all's) over the users whose target is a cold-start item (never in training),
    when the dataset lists such items in cold_items.json (the synthetic shop does)."""
    root = bundle.dataset.root
    if root is None or not (Path(root) / "cold_items.json").exists():
        return None
    cold = np.asarray(json.loads((Path(root) / "cold_items.json").read_text())["items"], dtype=np.int64)
    split = next(iter(results.values())).split
    return {p: ev.restrict(results[p], cold).to_dict() for p, ev in _evaluators(cfg, bundle, split).items()}


def train(cfg: RunConfig, bundle: DataBundle | None = None, resume: bool = True, log: Callable[[str], None] = print) -> TrainResult:
    """Train ``cfg`` in its run directory ``cfg.out``, resuming from last.pt unless ``resume=False``.
    Under torchrun (WORLD_SIZE > 1) every rank calls this; the process group is joined on first use."""
    world, device = setup(cfg.device)
    log = world.prefix(log)
    code_version()  # read before training: the code this process loaded, whatever is committed meanwhile
    with contextlib.ExitStack() as held:  # rank 0 holds the run directory's lock until training ends
        return _train(cfg, RunDir(cfg.out, log=log), bundle, resume, log, world, device, held)


def _train(cfg: RunConfig, run: RunDir, bundle: DataBundle | None, resume: bool, log, world: World, device: str, held) -> TrainResult:
    if bundle is None:
        bundle = DataBundle(Dataset.load(cfg.dataset), cfg.max_len)
    data_hash = bundle.dataset.manifest.content_hash
    # Rank 0 locks, checks and records the experiment; a refusal reaches every rank, so all stop with the same message.
    try:
        if world.is_main:
            held.enter_context(run.lock())
        if world.distributed and len(hashes := set(world.all_gather(data_hash))) > 1:
            raise DatasetMismatch(f"the ranks load different data from {cfg.dataset} (hashes {sorted(hashes)}): give every node the same copy")
        opened = ("ok", run.open(cfg, resume, data_hash) if world.is_main else None)
    except Exception as e:
        if not world.distributed:
            raise
        opened = ("error", e)
    opened = world.broadcast(opened) if world.distributed else opened
    if opened[0] == "error":
        raise opened[1]
    start = opened[1]
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    model = build_model(cfg.model_name, cfg.model_params, bundle).to(device)
    t_fit = time.perf_counter()
    model.fit(bundle)
    fit_s = time.perf_counter() - t_fit

    use_bf16 = model.trainable and train_in_bf16(cfg, model)
    if model.trainable:
        log(f"training steps in {'bf16 autocast' if use_bf16 else 'fp32'}; evaluation in {'bf16 autocast' if cfg.eval.bf16 else 'fp32'}")
        if use_bf16 and torch.device(cfg.device).type == "cpu" and not cpu_has_native_bf16():
            log("warning: train.bf16=true on a CPU without native bf16 (AVX512-BF16 or AMX): emulated autocast is much slower than fp32")
        select = _evaluators(cfg, bundle, "valid")[cfg.eval.select_protocol]
        fitted = fit(
            model,
            bundle,
            cfg.train,
            select,
            seed=cfg.seed,
            device=device,
            bf16=use_bf16,
            eval_bf16=cfg.eval.bf16,
            run=run if world.is_main else None,
            resume=start,
            world=world,
            log=log,
            name=cfg.model_name,
        )
    else:
        fitted = FitResult()
        if world.is_main:
            run.save_best(model.state_dict(), 0)

    t_final = time.perf_counter()
    valid = evaluate_all(model, cfg, bundle, "valid", world)
    test = evaluate_all(model, cfg, bundle, "test", world)
    cold = cold_item_results(test, cfg, bundle)
    epoch_seconds, eval_seconds = fitted.epoch_seconds, fitted.eval_seconds
    seconds = {"fit": fit_s, "train": sum(epoch_seconds), "epoch_eval": sum(eval_seconds), "final_eval": time.perf_counter() - t_final}
    if world.is_main:
        save_ranks(run.path, {"test": test}, bundle)  # per-user test ranks, written before results.json marks the run finished
        run.write_results(
            {
                "model": cfg.model_name,
                "dataset": str(cfg.dataset),
                "dataset_content_hash": data_hash,
                "best_epoch": fitted.best_epoch,
                "epochs_run": len(epoch_seconds),
                "median_epoch_seconds": float(np.median(epoch_seconds)) if epoch_seconds else 0.0,
                "train_bf16": use_bf16,
                "processes": world.size,  # torchrun ranks of the last invocation (1: one process)
                # Time spent on this run over all its resumes (fit and final evaluation: the last invocation's).
                "seconds": seconds,
                "wall_seconds": sum(seconds.values()),
                "peak_rss_mib": peak_rss_mib(),
                "n_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "valid": {p: r.to_dict() for p, r in valid.items()},
                "test": {p: r.to_dict() for p, r in test.items()},
                "test_cold_targets": cold,
                "features": features_of(cfg),  # the identity of each feature file the model read
                "code": code_version(),  # of the process that finished the run (a resumed run may have started on another)
            }
        )
    return TrainResult(run.path, model, fitted.best_epoch, valid, test, epoch_seconds)


def load_run(run: str | Path, checkpoint: str | Path | None = None, bundle: DataBundle | None = None, dataset: str | None = None):
    """Rebuild a trained model from a run directory (or a checkpoint file inside one)."""
    path = Path(run)
    run_dir = path.parent if path.is_file() else path
    ckpt = Path(checkpoint) if checkpoint else (path if path.is_file() else run_dir / "best.pt")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{run_dir}: no config.yaml; is this a llmemf run directory?")
    cfg = load_run_config(cfg_path, [f"dataset={dataset}"] if dataset else None)
    if bundle is None:
        bundle = DataBundle(Dataset.load(cfg.dataset), cfg.max_len)
    way_out = "evaluate it on the dataset it was trained on, or retrain on this one"
    check_data(run_dir, cfg, bundle.dataset.manifest.content_hash, features_of(cfg), way_out)  # features too: its keys come from them
    if problem := verify_checkpoint(ckpt):
        raise CheckpointDamaged(f"{ckpt} is damaged ({problem}): retrain the run, or load another checkpoint")
    model = build_model(cfg.model_name, cfg.model_params, bundle)
    state = load_checkpoint(ckpt)
    model.load_state_dict(state["model"] if "optimizer" in state else state)
    model.eval()
    return cfg, bundle, model
