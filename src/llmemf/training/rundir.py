"""The run directory: one experiment's files, who may write them, and whether a resume is the same experiment.

    config.yaml      the resolved config
    run.json         the dataset it trains on: path and the manifest's content_hash, and the identity of each
                     feature file the model reads (``features_of``)
    last.pt          model + optimiser + loop state after the last completed epoch (for resume)
    last.prev.pt     the epoch before's last.pt (a hard link, no copy): resume falls back to it
    best.pt          model state_dict of the best validation epoch
    *.pt.sha256      size and sha256 of each checkpoint, written after it: a damaged checkpoint is detected
    metrics.jsonl    one JSON line per epoch (loss, validation metrics, seconds)
    results.json     final validation and test metrics under every protocol, timings, memory, and the code
                     that finished the run (``code_version``)
    .train.lock      held (flock) by the one process training here

Every write is atomic (llmemf.io). In a distributed run only rank 0 opens a RunDir.

Identity: a run directory belongs to one experiment (its config, up to how it executes) on one
dataset (its content hash). Resuming, reusing finished results (compare) and loading the model for
evaluation or serving all refuse a dataset whose content hash differs from the recorded one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from llmemf.config import RunConfig, config_to_yaml, load_config
from llmemf.errors import UserError
from llmemf.evaluation.ranks import RANKS_FILE
from llmemf.io import atomic_link, atomic_torch_save, atomic_write_bytes, atomic_write_json, file_lock, sha256_file
from llmemf.models.base import check_model_params, model_class

# What of a finished run is kept beside the code (results/<scenario>/): never a checkpoint.
SMALL_FILES = ("config.yaml", "results.json", "metrics.jsonl", RANKS_FILE)


@functools.cache
def code_version() -> dict[str, Any]:
    """The llmemf code this process runs: its package version and, when it runs from a git checkout of the
    project (src/llmemf in a repository), the commit and whether the tracked code (src, configs, pyproject.toml)
    differs from it (None otherwise: an installed package cannot say). Read once per process, when it first
    trains: a commit made while a long process runs is not the code it loaded."""
    try:
        package = version("llmemf")
    except PackageNotFoundError:
        package = None
    commit = dirty = None
    src = Path(__file__).resolve().parents[2]  # .../src when run from a checkout
    root = src.parent
    if src.name == "src" and (root / "pyproject.toml").exists():
        git = ["git", "-C", str(root)]
        try:
            commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
            code = ["--", "src", "configs", "pyproject.toml"]  # not docs/ or results/, which a collect rewrites
            status = subprocess.run([*git, "status", "--porcelain", "-uno", *code], capture_output=True, text=True, timeout=30, check=True)
            dirty = bool(status.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            commit = dirty = None
    return {"llmemf": package, "commit": commit, "dirty": dirty}


def load_checkpoint(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


class DatasetMismatch(UserError):
    """The dataset's content hash differs from the one a run directory recorded."""


class CheckpointDamaged(UserError):
    """A checkpoint does not match its recorded size and sha256, or does not load."""


def dataset_hash_of(dataset: str | Path) -> str:
    """The content_hash in ``dataset``/manifest.json ("" when it cannot be read: Dataset.load reports that)."""
    try:
        return str(json.loads((Path(dataset) / "manifest.json").read_text()).get("content_hash", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def recorded_dataset_hash(run_dir: Path) -> str:
    """The content hash ``run_dir/run.json`` recorded ("" for run directories older than run.json)."""
    try:
        return str(json.loads((Path(run_dir) / "run.json").read_text()).get("dataset_content_hash", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def features_of(cfg: RunConfig) -> dict[str, str]:
    """The feature files ``cfg``'s model reads, each with its identity (features.store.feature_identity)."""
    from llmemf.features.store import feature_identity

    cls = model_class(cfg.model_name)
    return {name: feature_identity(cfg.dataset, name) for name in cls.features_read(cls.Config(**cfg.model_params))}


def recorded_features(run_dir: Path) -> dict[str, str] | None:
    """The feature identities a run recorded (run.json, else results.json); None where it recorded none
    (a run directory older than the record): it cannot be checked."""
    for name in ("run.json", "results.json"):
        try:
            got = json.loads((Path(run_dir) / name).read_text()).get("features")
        except (OSError, ValueError, AttributeError):
            continue
        if got is not None:
            return got
    return None


def check_data(run_dir: Path, cfg: RunConfig, dataset_hash: str, features: dict[str, str], way_out: str) -> None:
    """DatasetMismatch unless the run was trained on this data: the dataset's content hash and the identity of
    every feature file its model reads (``check_dataset``, ``check_features``)."""
    check_dataset(run_dir, cfg.dataset, dataset_hash, way_out)
    check_features(run_dir, cfg, features, way_out)


def check_features(run_dir: Path, cfg: RunConfig, current: dict[str, str], way_out: str) -> None:
    """DatasetMismatch unless the run recorded the feature identities ``current`` (or recorded none)."""
    stored = recorded_features(run_dir)
    if stored is not None and stored != current:
        changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        raise DatasetMismatch(
            f"{run_dir} was trained on feature(s) {changed} of {cfg.dataset} as they were before (identity "
            f"{[stored.get(k) for k in changed]}, now {[current.get(k) for k in changed]}: re-embedded since?): {way_out}"
        )


def check_dataset(run_dir: Path, dataset: str | Path, current: str, way_out: str) -> None:
    """DatasetMismatch unless ``current`` is the hash ``run_dir`` recorded (or either is unknown)."""
    stored = recorded_dataset_hash(run_dir)
    if stored and current and stored != current:
        raise DatasetMismatch(
            f"{run_dir} was trained on dataset content hash {stored}, but {dataset} has content hash {current} "
            f"(the data changed, or it is another dataset): {way_out}"
        )


def resolved(cfg: RunConfig) -> RunConfig:
    """``cfg`` with every field of its model written out: what a run directory records, so that a later
    change of a default cannot change what a stored config means."""
    cls = check_model_params(cfg.model_name, cfg.model_params)
    return dataclasses.replace(cfg, model={"name": cfg.model_name, **dataclasses.asdict(cls.Config(**cfg.model_params))})


def load_run_config(path: Path, overrides: list[str] | None = None) -> RunConfig:
    """A run directory's config.yaml (``load_config``). One written before run directories recorded every
    model field names only the fields set away from the defaults of its day: each field whose default has
    changed since (the model's ``earlier_defaults``) and that it does not name gets its earlier default."""
    name = load_config(path).model_name  # the checks and their one-line errors, the model's name among them
    stored = OmegaConf.load(path).get("model") or {}
    earlier = [f"model.{k}={v}" for k, v in model_class(name).earlier_defaults.items() if k not in stored]
    return load_config(path, [*earlier, *(overrides or [])])


def same_experiment(a: RunConfig, b: RunConfig, longer: bool = False) -> bool:
    """Equal configs up to how they execute (threads, progress bar) and where the run directory and the
    dataset live (the dataset's content hash is checked apart), with every model field resolved to its value (a default written out equals a default
    left out): a sweep resumed with more threads, after a model gained a field, or given a finished
    run directory copied in from elsewhere, reuses its finished runs. ``longer``: also ignore when
    training stops (epochs, patience, max_minutes), which is what resuming to train longer changes."""

    def normalised(c: RunConfig) -> str:
        train = dataclasses.replace(c.train, threads=0, progress=True)
        if longer:
            train = dataclasses.replace(train, epochs=0, patience=0, max_minutes=0.0)
        # where the dataset lives is not what it is: its content hash is checked apart (check_dataset)
        return config_to_yaml(dataclasses.replace(resolved(c), out="", dataset="", train=train))

    return normalised(a) == normalised(b)


def matches_stored_experiment(run_dir: Path, cfg: RunConfig, longer: bool = False, dataset_hash: str | None = None) -> bool:
    """Whether ``run_dir/config.yaml`` exists and is ``same_experiment`` as ``cfg``; a stored config
    naming a field the model no longer has is a different experiment. The same experiment on data
    whose content hash (``dataset_hash``, else read from cfg.dataset's manifest) differs from the
    recorded one raises DatasetMismatch: its results are not this data's."""
    stored = Path(run_dir) / "config.yaml"
    if not stored.exists():
        return False
    try:
        same = same_experiment(load_run_config(stored), cfg, longer=longer)
    except ValueError:
        return False
    if same:
        current = dataset_hash if dataset_hash is not None else dataset_hash_of(cfg.dataset)
        check_data(Path(run_dir), cfg, current, features_of(cfg), "retrain it with --fresh, or pass the dataset it was trained on")
    return same


def restorable(kept: Path, run_dir: Path, cfg: RunConfig, dataset_hash: str) -> bool:
    """Whether ``restore_finished_run(kept, run_dir, cfg, dataset_hash)`` would restore (it changes nothing)."""
    return _restorable_config(kept, run_dir, cfg, dataset_hash) is not None


def _restorable_config(kept: Path, run_dir: Path, cfg: RunConfig, dataset_hash: str) -> RunConfig | None:
    """``kept``'s stored config moved to ``cfg``'s directories when ``kept`` can be restored into ``run_dir``
    (see restore_finished_run), else None."""
    if (run_dir / "results.json").exists() or not (kept / "results.json").is_file() or not (kept / "config.yaml").is_file():
        return None
    try:
        recorded = json.loads((kept / "results.json").read_text()).get("dataset_content_hash", "")
        stored = _relocated(load_run_config(kept / "config.yaml"), cfg)
    except (ValueError, AttributeError):
        return None
    if not recorded or recorded != dataset_hash or not same_experiment(stored, cfg):
        return None
    if recorded_features(kept) not in (None, features_of(cfg)):  # the features were re-embedded since: train it again
        return None
    return stored


def restore_finished_run(kept: Path, run_dir: Path, cfg: RunConfig, dataset_hash: str) -> bool:
    """Make ``run_dir`` a finished run of ``cfg`` from ``kept``, a copy of a finished run's small files
    (``llmemf report --collect`` keeps them in results/), when ``kept`` is this experiment on this data:
    its config equals ``cfg`` up to where the dataset and the run directory live, and the content hash
    its results recorded is ``dataset_hash``. So a spec resumed on a new machine, whose run directories
    were lost, reuses the runs whose results the repository holds instead of training them again.
    Returns False, changing nothing, when ``run_dir`` already has results or ``kept`` does not qualify."""
    kept, run_dir = Path(kept), Path(run_dir)
    stored = _restorable_config(kept, run_dir, cfg, dataset_hash)
    if stored is None:
        return False
    features = features_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in set(SMALL_FILES) - {"config.yaml", "results.json"}:  # those two are written below
        if (kept / name).is_file():
            atomic_write_bytes(run_dir / name, (kept / name).read_bytes())
    # the stored config, moved here: how the run was trained (threads, progress bar) stays as recorded
    atomic_write_bytes(run_dir / "config.yaml", config_to_yaml(resolved(stored)).encode())
    atomic_write_json(run_dir / "run.json", {"dataset": str(cfg.dataset), "dataset_content_hash": dataset_hash, "features": features})
    atomic_write_bytes(run_dir / "results.json", (kept / "results.json").read_bytes())  # last: it marks the run finished
    return True


def _relocated(stored: RunConfig, cfg: RunConfig) -> RunConfig:
    """``stored`` with ``cfg``'s dataset and run directory, and a path it names inside its own run
    directory (Tri-CDR's ``init_from=OUT/pretrain``) moved into ``cfg``'s."""
    model = dict(stored.model)
    init = model.get("init_from")
    if init and stored.out and Path(init).is_relative_to(stored.out):
        model["init_from"] = str(Path(cfg.out) / Path(init).relative_to(stored.out))
    return dataclasses.replace(stored, dataset=cfg.dataset, out=cfg.out, model=model)


class RunDirConflict(UserError, RuntimeError):
    """The run directory holds a checkpoint of a different experiment than the one asked to resume."""


class RunDirBusy(UserError, RuntimeError):
    """Another process is training in this run directory."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """An exclusive lock on a run directory for the length of a training: two processes writing
    the same checkpoints and metrics log would interleave their epochs. Released by the OS if
    the process dies, so a killed run never leaves a stale lock."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(file_lock(Path(run_dir) / ".train.lock", wait=False))
        except BlockingIOError:
            raise RunDirBusy(f"{run_dir} is being trained by another process; wait for it or use another --out") from None
        yield


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
        """On resume, drop log lines of epochs the checkpoint does not include, and a line torn by a kill
        in the middle of its append."""

        def kept(line: str) -> bool:
            try:
                return json.loads(line)["epoch"] <= epoch
            except (ValueError, KeyError, TypeError):
                return False

        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text(errors="replace").splitlines() if line and kept(line)]
        atomic_write_bytes(self.path, ("\n".join(keep) + ("\n" if keep else "")).encode())


class RunDir:
    """One run directory. ``open`` checks and records the experiment; the loop saves through it."""

    def __init__(self, path: str | Path, log=print):
        self.path = Path(path)
        self.log = log
        self.config = self.path / "config.yaml"
        self.identity = self.path / "run.json"
        self.last = self.path / "last.pt"
        self.prev = self.path / "last.prev.pt"
        self.best = self.path / "best.pt"
        self.results = self.path / "results.json"
        self._metrics: MetricsLog | None = None

    def lock(self):
        self.path.mkdir(parents=True, exist_ok=True)
        return run_dir_lock(self.path)

    # ---- identity ----------------------------------------------------------------------------
    def open(self, cfg: RunConfig, resume: bool, dataset_hash: str = "") -> dict | None:
        """Check that a checkpoint here belongs to ``cfg``'s experiment on this dataset, record both, and
        return the loop state to resume from (None: start at epoch 0). Every check runs before training."""
        features = features_of(cfg)
        if resume and self.last.exists():
            # Resuming under another config would continue that experiment's weights as if they were this one's.
            if self.config.exists() and not matches_stored_experiment(self.path, cfg, longer=True, dataset_hash=""):
                raise RunDirConflict(
                    f"{self.path} holds a checkpoint of a different experiment ({self.config} differs from this config): "
                    "resume it with its own config, start over there with --fresh (resume=False), or choose another run directory"
                )
            check_data(self.path, cfg, dataset_hash, features, "start over with --fresh, or pass the dataset it was trained on")
            stored = load_run_config(self.config) if self.config.exists() else cfg
            if cfg.train.epochs < stored.train.epochs or cfg.train.patience < stored.train.patience:
                raise RunDirConflict(
                    f"{self.path} trained with train.epochs={stored.train.epochs}, train.patience={stored.train.patience}: "
                    f"resuming trains longer, never shorter (asked: epochs={cfg.train.epochs}, patience={cfg.train.patience}); "
                    "start over there with --fresh (resume=False), or choose another run directory"
                )
        state = self._resume_state() if resume and self.last.exists() else None
        if state is None:  # a fresh start: nothing of an earlier experiment may be resumed, reused or loaded later
            for stale in (self.last, self.prev, self.best):
                stale.unlink(missing_ok=True)
                _sum(stale).unlink(missing_ok=True)
        else:
            state = self._check_best(state)
        # results.json describes a finished training; until this one finishes, nothing may reuse the old one.
        self.results.unlink(missing_ok=True)
        atomic_write_bytes(self.config, config_to_yaml(resolved(cfg)).encode())
        atomic_write_json(self.identity, {"dataset": str(cfg.dataset), "dataset_content_hash": dataset_hash, "features": features})
        return state

    # ---- checkpoints -------------------------------------------------------------------------
    def save_last(self, state: dict) -> None:
        """last.pt and its checksum; the previous pair stays as last.prev.pt. In every order a kill can
        interrupt these steps, one of the two pairs matches its checksum."""
        if self.last.exists() and _sum(self.last).exists():
            atomic_link(self.last, self.prev)
            atomic_link(_sum(self.last), _sum(self.prev))
        _save_checked(state, self.last, epoch=int(state["epoch"]))

    def save_best(self, model_state: dict, epoch: int) -> None:
        _save_checked(model_state, self.best, epoch=epoch)

    def has_best(self) -> bool:
        return self.best.exists()

    def load_best(self) -> dict:
        problem, state = _load_checked(self.best)
        if problem:
            raise CheckpointDamaged(f"{self.best} is damaged ({problem}): retrain with --fresh")
        return state

    def _resume_state(self) -> dict:
        problem, state = _load_checked(self.last)
        if not problem:
            return state
        fallback_problem, fallback = _load_checked(self.prev) if self.prev.exists() else ("absent", None)
        if fallback_problem:
            raise CheckpointDamaged(
                f"{self.last} is damaged ({problem}) and {self.prev.name} is {fallback_problem}: "
                f"start over with --fresh, or delete {self.last} and {_sum(self.last).name} to train from epoch 0"
            )
        # Keep the damaged file for inspection, out of the way of the next save's last -> last.prev link.
        self.last.replace(self.path / "last.pt.damaged")
        _sum(self.last).unlink(missing_ok=True)
        self.log(f"{self.last} is damaged ({problem}; kept as last.pt.damaged): resuming from {self.prev.name}, epoch {fallback['epoch']}")
        return fallback

    def _check_best(self, state: dict) -> dict:
        """best.pt must hold the best epoch's weights before more epochs train: a damaged one is rebuilt
        from last.pt when the best epoch is the last one, else refused; a deleted one forgets the best."""
        if state["best_epoch"] <= 0:
            return state
        if not self.best.exists():
            self.log(f"{self.best} is missing: the best epoch is chosen again among the epochs still to train")
            return {**state, "best": -math.inf, "best_epoch": -1, "bad_epochs": 0}
        problem, _ = _load_checked(self.best)
        if not problem:
            return state
        if state["best_epoch"] == state["epoch"]:
            self.log(f"{self.best} is damaged ({problem}): rebuilt from {self.last.name}, whose epoch {state['epoch']} is the best")
            self.save_best(state["model"], state["epoch"])
            return state
        raise CheckpointDamaged(
            f"{self.best} is damaged ({problem}) and the best epoch ({state['best_epoch']}) is not the last one, so its weights "
            f"cannot be rebuilt: start over with --fresh, or delete {self.best} to resume and choose the best among the epochs still to train"
        )

    # ---- logs and results --------------------------------------------------------------------
    @property
    def metrics(self) -> MetricsLog:
        if self._metrics is None:
            self._metrics = MetricsLog(self.path)
        return self._metrics

    def write_results(self, results: dict) -> None:
        atomic_write_json(self.results, results)


def _sum(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _save_checked(obj: Any, path: Path, epoch: int) -> None:
    data = atomic_torch_save(obj, path)
    digest = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "epoch": epoch}
    atomic_write_json(_sum(path), digest)


def verify_checkpoint(path: Path) -> str:
    """ "" when ``path`` matches its recorded size and sha256 (or has no record: written before records
    were kept, and then only loading tells); else what is wrong, in a few words."""
    path = Path(path)
    if not path.exists():
        return "absent"
    try:
        record = json.loads(_sum(path).read_text())
    except FileNotFoundError:
        return ""
    except ValueError:
        return f"its checksum file {_sum(path).name} is unreadable"
    size = path.stat().st_size
    if size != record.get("size"):
        return f"{size} bytes where {record.get('size')} were written"
    if sha256_file(path) != record.get("sha256"):
        return "sha256 differs from the one recorded when it was written"
    return ""


def _load_checked(path: Path) -> tuple[str, Any]:
    """(problem, state): problem "" and the loaded state, or what is wrong and None."""
    problem = verify_checkpoint(path)
    if problem:
        return problem, None
    try:
        return "", load_checkpoint(path)
    except Exception as e:  # a torn or foreign file: torch raises a variety of errors
        return f"does not load: {type(e).__name__}: {' '.join(str(e).split())[:120]}", None
