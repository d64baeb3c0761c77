"""The one training loop every model goes through.

Adam with L2, early stopping on validation MRR (mean over the two target domains) with patience,
best-checkpoint save/restore, seeded per epoch so that a run killed at any moment and restarted
resumes from its last completed epoch and ends exactly where an uninterrupted run would.

A run directory holds:
    config.yaml      the resolved config
    last.pt          model + optimiser + loop state after the last completed epoch (for resume)
    best.pt          model state_dict of the best validation epoch
    metrics.jsonl    one JSON line per epoch (loss, validation metrics, seconds)
    results.json     final validation and test metrics under every protocol, timings, memory
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import math
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from llmemf.config import RunConfig, config_to_yaml, load_config
from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset, atomic_write_bytes
from llmemf.evaluation.protocols import EvalResult, Evaluator, format_table
from llmemf.models.base import Recommender, build_model, check_model_params
from llmemf.reporting.ranks import save_ranks


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


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
    """train.bf16 if set, else the model's preference where the CPU computes bf16 natively (elsewhere
    bf16 autocast is emulated and slower)."""
    if cfg.device != "cpu":
        return False
    if cfg.train.bf16 is not None:
        return bool(cfg.train.bf16)
    return model.prefers_bf16 and cpu_has_native_bf16()


def evaluate_all(model: Recommender, cfg: RunConfig, bundle: DataBundle, split: str) -> dict[str, EvalResult]:
    return {p: ev.evaluate(model, cfg.device, cfg.eval.bf16) for p, ev in _evaluators(cfg, bundle, split).items()}


def cold_item_results(model: Recommender, cfg: RunConfig, bundle: DataBundle, split: str) -> dict[str, dict] | None:
    """Metrics over users whose target is a cold-start item (never in training), when the dataset
    lists such items in cold_items.json (the synthetic shop does)."""
    root = bundle.dataset.root
    if root is None or not (Path(root) / "cold_items.json").exists():
        return None
    cold = np.asarray(json.loads((Path(root) / "cold_items.json").read_text())["items"], dtype=np.int64)
    out = {}
    for p, ev in _evaluators(cfg, bundle, split).items():
        out[p] = ev.restrict(ev.evaluate(model, cfg.device, cfg.eval.bf16), cold).to_dict()
    return out


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=float) + "\n").encode())


class MetricsLog:
    """metrics.jsonl, plus TensorBoard scalars when tensorboard is installed."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except ImportError:
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, int | float) and k != "epoch":
                    self.tb.add_scalar(k, v, record["epoch"])

    def truncate_after(self, epoch: int) -> None:
        """On resume, drop log lines of epochs the checkpoint does not include."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["epoch"] <= epoch]
        atomic_write_bytes(self.path, ("\n".join(keep) + ("\n" if keep else "")).encode())


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Adam:
    """Adam + L2 (``weight_decay``), fused into one kernel where the device has one: on CPU its step
    is 2.6-10x faster than the default foreach implementation on Food-Kitchen's models
    (benchmarks/bench_optimizer.py), with the same update up to float rounding and the same state,
    so a checkpoint written by either resumes in the other."""
    params = list(model.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=fused or None)


def same_experiment(a: RunConfig, b: RunConfig, longer: bool = False) -> bool:
    """Equal configs up to how they execute (threads, progress bar) and where the run directory
    lives, with every model field resolved to its value (a default written out equals a default
    left out): a sweep resumed with more threads, after a model gained a field, or given a finished
    run directory copied in from elsewhere, reuses its finished runs. ``longer``: also ignore when
    training stops (epochs, patience, max_minutes), which is what resuming to train longer changes."""

    def normalised(c: RunConfig) -> str:
        cls = check_model_params(c.model_name, c.model_params)
        model = {"name": c.model_name, **dataclasses.asdict(cls.Config(**c.model_params))}
        train = dataclasses.replace(c.train, threads=0, progress=True)
        if longer:
            train = dataclasses.replace(train, epochs=0, patience=0, max_minutes=0.0)
        return config_to_yaml(dataclasses.replace(c, out="", model=model, train=train))

    return normalised(a) == normalised(b)


def matches_stored_experiment(run_dir: Path, cfg: RunConfig, longer: bool = False) -> bool:
    """Whether ``run_dir/config.yaml`` exists and is ``same_experiment`` as ``cfg``; a stored config
    naming a field the model no longer has is a different experiment."""
    stored = run_dir / "config.yaml"
    if not stored.exists():
        return False
    try:
        return same_experiment(load_config(stored), cfg, longer=longer)
    except ValueError:
        return False


class RunDirConflict(RuntimeError):
    """The run directory holds a checkpoint of a different experiment than the one asked to resume."""


class RunDirBusy(RuntimeError):
    pass


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """An exclusive lock on a run directory for the length of a training: two processes writing
    the same checkpoints and metrics log would interleave their epochs. Released by the OS if
    the process dies, so a killed run never leaves a stale lock."""
    with open(run_dir / ".train.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirBusy(f"{run_dir} is being trained by another process; wait for it or use another --out") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def train(cfg: RunConfig, bundle: DataBundle | None = None, resume: bool = True, log=print) -> TrainResult:
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(run_dir):
        return _train(cfg, run_dir, bundle, resume, log)


def _train(cfg: RunConfig, run_dir: Path, bundle: DataBundle | None, resume: bool, log) -> TrainResult:
    stored = run_dir / "config.yaml"
    # Resuming under another config would continue that experiment's weights as if they were this one's.
    if resume and (run_dir / "last.pt").exists() and stored.exists() and not matches_stored_experiment(run_dir, cfg, longer=True):
        raise RunDirConflict(
            f"{run_dir} holds a checkpoint of a different experiment ({stored} differs from this config): "
            "resume it with its own config, start over there with --fresh (resume=False), or choose another run directory"
        )
    atomic_write_bytes(stored, config_to_yaml(cfg).encode())
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    if bundle is None:
        bundle = DataBundle(Dataset.load(cfg.dataset), cfg.max_len)
    model = build_model(cfg.model_name, cfg.model_params, bundle).to(cfg.device)
    t_fit = time.perf_counter()
    model.fit(bundle)
    fit_s = time.perf_counter() - t_fit
    select = _evaluators(cfg, bundle, "valid")[cfg.eval.select_protocol]
    log_file = MetricsLog(run_dir)
    epoch_seconds: list[float] = []
    eval_seconds: list[float] = []  # validation after each epoch; both lists survive resumes via last.pt
    best_epoch = -1

    use_bf16 = model.trainable and train_in_bf16(cfg, model)
    if model.trainable:
        log(f"training steps in {'bf16 autocast' if use_bf16 else 'fp32'}; evaluation in {'bf16 autocast' if cfg.eval.bf16 else 'fp32'}")
        opt = make_optimizer(model, cfg)
        start_epoch, best, bad_epochs = 0, -math.inf, 0
        last_path = run_dir / "last.pt"
        if resume and last_path.exists():
            state = load_checkpoint(last_path)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start_epoch, best, bad_epochs, best_epoch = state["epoch"], state["best"], state["bad_epochs"], state["best_epoch"]
            epoch_seconds = list(state["epoch_seconds"])
            eval_seconds = list(state.get("eval_seconds", []))  # absent in checkpoints written before it was kept
            log(f"resuming {run_dir} after epoch {start_epoch} (best valid MRR {best:.4f} at epoch {best_epoch})")
        log_file.truncate_after(start_epoch)
        train_data = bundle.train
        n_batches = math.ceil(len(train_data) / cfg.train.batch_size)
        t_budget = time.perf_counter()
        for epoch in range(start_epoch, cfg.train.epochs):
            if bad_epochs >= cfg.train.patience:
                break
            torch.manual_seed(cfg.seed * 100003 + epoch)  # dropout stream fixed per epoch: resume-exact
            if cfg.train.lr_step:  # step decay, a function of the epoch alone: resume-exact
                for group in opt.param_groups:
                    group["lr"] = cfg.train.lr * cfg.train.lr_gamma ** (epoch // cfg.train.lr_step)
            model.train()
            t0 = time.perf_counter()
            losses = []
            bar = tqdm(
                train_data.iter_batches(cfg.train.batch_size, shuffle=True, seed=cfg.seed * 7919 + epoch, by_length=cfg.train.by_length),
                total=n_batches,
                desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                disable=not cfg.train.progress,
                leave=False,
            )
            for batch in bar:
                batch = batch.to(cfg.device)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                    loss = model.loss(batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{cfg.model_name}: non-finite loss at epoch {epoch + 1}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.train.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                opt.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            train_s = time.perf_counter() - t0
            epoch_seconds.append(train_s)
            val = select.evaluate(model, cfg.device, cfg.eval.bf16)
            eval_seconds.append(val.seconds)
            mrr = val.mean_mrr()
            improved = mrr > best
            if improved:
                best, best_epoch, bad_epochs = mrr, epoch + 1, 0
                atomic_torch_save(model.state_dict(), run_dir / "best.pt")
            else:
                bad_epochs += 1
            record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "valid_mrr": mrr, "train_seconds": train_s, "eval_seconds": val.seconds}
            record.update({f"valid_{d}_{k}": v for d, m in val.metrics.items() for k, v in m.items()})
            log_file.write(record)
            log(
                f"epoch {epoch + 1:3d}  loss {record['loss']:.4f}  valid MRR "
                + "  ".join(f"{d} {100 * m['MRR']:.2f}" for d, m in val.metrics.items())
                + f"  ({train_s:.1f}s train, {val.seconds:.1f}s eval){'  *' if improved else ''}"
            )
            atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "epoch": epoch + 1,
                    "best": best,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "epoch_seconds": epoch_seconds,
                    "eval_seconds": eval_seconds,
                },
                last_path,
            )
            if cfg.train.max_minutes and time.perf_counter() - t_budget > 60 * cfg.train.max_minutes:
                log(f"stopping: train.max_minutes={cfg.train.max_minutes} reached")
                break
        if (run_dir / "best.pt").exists():
            model.load_state_dict(load_checkpoint(run_dir / "best.pt"))
    else:
        atomic_torch_save(model.state_dict(), run_dir / "best.pt")

    t_final = time.perf_counter()
    valid = evaluate_all(model, cfg, bundle, "valid")
    test = evaluate_all(model, cfg, bundle, "test")
    save_ranks(run_dir, {"valid": valid, "test": test}, bundle)  # per-user ranks: paired significance, warm/cold targets
    cold = cold_item_results(model, cfg, bundle, "test")
    seconds = {"fit": fit_s, "train": sum(epoch_seconds), "epoch_eval": sum(eval_seconds), "final_eval": time.perf_counter() - t_final}
    _write_json(
        run_dir / "results.json",
        {
            "model": cfg.model_name,
            "dataset": str(cfg.dataset),
            "best_epoch": best_epoch,
            "epochs_run": len(epoch_seconds),
            "median_epoch_seconds": float(np.median(epoch_seconds)) if epoch_seconds else 0.0,
            "train_bf16": use_bf16,
            # Time spent on this run over all its resumes (fit and final evaluation: the last invocation's).
            "seconds": seconds,
            "wall_seconds": sum(seconds.values()),
            "peak_rss_mib": peak_rss_mib(),
            "n_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "valid": {p: r.to_dict() for p, r in valid.items()},
            "test": {p: r.to_dict() for p, r in test.items()},
            "test_cold_targets": cold,
        },
    )
    return TrainResult(run_dir, model, best_epoch, valid, test, epoch_seconds)


def load_run(run: str | Path, checkpoint: str | Path | None = None, bundle: DataBundle | None = None, dataset: str | None = None):
    """Rebuild a trained model from a run directory (or a checkpoint file inside one)."""
    path = Path(run)
    run_dir = path.parent if path.is_file() else path
    ckpt = Path(checkpoint) if checkpoint else (path if path.is_file() else run_dir / "best.pt")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{run_dir}: no config.yaml; is this a llmemf run directory?")
    cfg = load_config(cfg_path, [f"dataset={dataset}"] if dataset else None)
    if bundle is None:
        bundle = DataBundle(Dataset.load(cfg.dataset), cfg.max_len)
    model = build_model(cfg.model_name, cfg.model_params, bundle)
    state = load_checkpoint(ckpt)
    model.load_state_dict(state["model"] if "optimizer" in state else state)
    model.eval()
    return cfg, bundle, model
