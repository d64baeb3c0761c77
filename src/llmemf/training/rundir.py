"""The run directory: one experiment's files, who may write them, and whether a resume is the same experiment.

    config.yaml      the resolved config
    last.pt          model + optimiser + loop state after the last completed epoch (for resume)
    best.pt          model state_dict of the best validation epoch
    metrics.jsonl    one JSON line per epoch (loss, validation metrics, seconds)
    results.json     final validation and test metrics under every protocol, timings, memory
    .train.lock      held (flock) by the one process training here

Every write is atomic (llmemf.io). In a distributed run only rank 0 opens a RunDir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
from pathlib import Path
from typing import Any

import torch

from llmemf.config import RunConfig, config_to_yaml, load_config
from llmemf.errors import UserError
from llmemf.io import atomic_torch_save, atomic_write_bytes, atomic_write_json
from llmemf.models.base import check_model_params


def load_checkpoint(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


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
    stored = Path(run_dir) / "config.yaml"
    if not stored.exists():
        return False
    try:
        return same_experiment(load_config(stored), cfg, longer=longer)
    except ValueError:
        return False


class RunDirConflict(UserError, RuntimeError):
    """The run directory holds a checkpoint of a different experiment than the one asked to resume."""


class RunDirBusy(UserError, RuntimeError):
    """Another process is training in this run directory."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """An exclusive lock on a run directory for the length of a training: two processes writing
    the same checkpoints and metrics log would interleave their epochs. Released by the OS if
    the process dies, so a killed run never leaves a stale lock."""
    with open(Path(run_dir) / ".train.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirBusy(f"{run_dir} is being trained by another process; wait for it or use another --out") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class MetricsLog:
    """metrics.jsonl, plus TensorBoard scalars when tensorboard is installed."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
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


class RunDir:
    """One run directory. ``open`` checks and records the experiment; the loop saves through it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.results = self.path / "results.json"
        self._metrics: MetricsLog | None = None

    def lock(self):
        self.path.mkdir(parents=True, exist_ok=True)
        return run_dir_lock(self.path)

    def open(self, cfg: RunConfig, resume: bool) -> dict | None:
        """Check that a checkpoint here belongs to ``cfg``'s experiment, record ``cfg``, and return the
        loop state to resume from (None: start at epoch 0)."""
        # Resuming under another config would continue that experiment's weights as if they were this one's.
        if resume and self.last.exists() and self.config.exists() and not matches_stored_experiment(self.path, cfg, longer=True):
            raise RunDirConflict(
                f"{self.path} holds a checkpoint of a different experiment ({self.config} differs from this config): "
                "resume it with its own config, start over there with --fresh (resume=False), or choose another run directory"
            )
        atomic_write_bytes(self.config, config_to_yaml(cfg).encode())
        if resume and self.last.exists():
            return load_checkpoint(self.last)
        return None

    @property
    def metrics(self) -> MetricsLog:
        if self._metrics is None:
            self._metrics = MetricsLog(self.path)
        return self._metrics

    def save_last(self, state: dict) -> None:
        atomic_torch_save(state, self.last)

    def save_best(self, model_state: dict, epoch: int) -> None:
        atomic_torch_save(model_state, self.best)

    def has_best(self) -> bool:
        return self.best.exists()

    def load_best(self) -> dict:
        return load_checkpoint(self.best)

    def write_results(self, results: dict) -> None:
        atomic_write_json(self.results, results)
