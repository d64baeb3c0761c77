"""Many runs from one command: compare models, the paper's ablation, grid search.

Each run is an ordinary run directory (config.yaml, checkpoints, metrics.jsonl, results.json), so
an interrupted sweep resumes: finished runs are reused, the one in progress resumes from last.pt.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from pathlib import Path

from llmemf.config import RunConfig, load_config
from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset
from llmemf.distributed import setup
from llmemf.errors import UserError
from llmemf.models.base import check_model_params, model_class
from llmemf.reporting.tables import load_results
from llmemf.training.rundir import restorable, restore_finished_run
from llmemf.training.trainer import matches_stored_experiment, run_dir_lock, train

REPO_CONFIGS = Path(__file__).resolve().parents[3] / "configs"

# The paper's table 4: label -> LLM-EMF config overrides.
ABLATIONS: dict[str, list[str]] = {
    "original framework (ID only)": ["model.modalities=[id]"],
    "+ textual fusion": ["model.modalities=[id,txt]", "model.txt_feature=txt_title"],
    "+ textual + LLM-enhanced": ["model.modalities=[id,txt]", "model.txt_feature=txt_llm"],
    "+ visual fusion": ["model.modalities=[id,img]"],
    "+ textual + visual": ["model.modalities=[id,img,txt]", "model.txt_feature=txt_title"],
    "full (textual + LLM + visual)": ["model.modalities=[id,img,txt]", "model.txt_feature=txt_llm"],
}


def model_config_file(name: str) -> Path | None:
    """configs/models/<name>.yaml from the working directory, else from the source checkout."""
    for root in (Path("configs"), REPO_CONFIGS):
        path = root / "models" / f"{name}.yaml"
        if path.exists():
            return path
    return None


def run_config(model: str, dataset: str | Path, out: str | Path, overrides: list[str] | None = None) -> RunConfig:
    return load_config(model_config_file(model), [f"model.name={model}", f"dataset={dataset}", f"out={out}", *(overrides or [])])


def training_stages(cfg: RunConfig) -> list[RunConfig]:
    """The runs that train ``cfg``, in order: ``[cfg]``, or, for a model that names a run which must
    precede it (``Model.pretraining_stage(params)``: Tri-CDR's SASRec pre-training), that run in
    OUT/pretrain and then ``cfg`` with ``model.init_from=OUT/pretrain``. Both go through the one trainer."""
    stage = getattr(model_class(cfg.model_name), "pretraining_stage", None)
    over = stage(cfg.model_params) if stage else None
    if not over:
        return [cfg]
    pre = copy.deepcopy(cfg)
    pre.out = str(Path(cfg.out) / "pretrain")
    pre.model = {**cfg.model, **over.get("model", {})}
    for key, value in over.get("train", {}).items():
        setattr(pre.train, key, value)
    main = copy.deepcopy(cfg)
    main.model = {**cfg.model, "init_from": pre.out}
    return [pre, main]


def finished_run(out: Path, stage: RunConfig, data_hash: str) -> bool:
    """Whether ``out`` holds ``stage``'s finished results on this data. Checked under the run directory's
    lock, for several processes running one spec: a run another process is training raises RunDirBusy,
    and one it finished a moment ago is seen finished rather than resumed and evaluated again."""
    if not out.is_dir():
        return False
    with run_dir_lock(out):
        return (out / "results.json").exists() and matches_stored_experiment(out, stage, dataset_hash=data_hash)


def train_stages(cfg: RunConfig, bundle: DataBundle | None = None, resume: bool = True, log: Callable[[str], None] = print):
    """Train every stage of ``cfg`` (training_stages); an earlier stage whose results match is reused.
    A stage after one trained here starts over: what it resumed or finished started from other weights.
    Returns the last stage's TrainResult."""
    *before, last = training_stages(cfg)
    if before and bundle is None:
        bundle = DataBundle(Dataset.load(cfg.dataset), cfg.max_len)
    for stage in before:
        out = Path(stage.out)
        # a stage restored from results/ has no checkpoint for the next stage to start from: train it again
        if resume and finished_run(out, stage, bundle.dataset.manifest.content_hash) and (out / "best.pt").is_file():
            log(f"reusing the {stage.model_name} pre-training run {out}")
            continue
        log(f"pre-training stage -> {out}")
        train(stage, bundle, resume=resume, log=log)
        resume = False
    return train(last, bundle, resume=resume, log=log)


def finished_stages(cfg: RunConfig, data_hash: str) -> bool:
    """Whether ``cfg``'s run has finished: its last stage (finished_run), and every earlier stage it keeps
    (Tri-CDR's OUT/pretrain) is the stage ``training_stages`` derives now. A pre-training recipe changed
    since (its epochs, its early stopping) makes the run unfinished: train_stages trains the pre-training
    further and the run from it again. An earlier stage's directory that is gone (a run restored from
    results/) is not checked here; ``restore_stages`` restores a run only with its earlier stages."""
    *before, last = training_stages(cfg)
    if not finished_run(Path(cfg.out), last, data_hash):
        return False
    return all(not Path(s.out).is_dir() or finished_run(Path(s.out), s, data_hash) for s in before)


def restore_stages(kept: Path, cfg: RunConfig, data_hash: str) -> bool:
    """Restore ``cfg``'s finished run from ``kept`` (its small files collected in results/, an earlier stage's
    in the same subfolder, e.g. ``kept/pretrain``): every stage or none, so that a run whose pre-training
    recipe changed since it was collected is trained again rather than restored (restore_finished_run)."""
    pairs = [(Path(kept) / Path(s.out).relative_to(cfg.out), s) for s in training_stages(cfg)]
    if not all(restorable(k, Path(s.out), s, data_hash) for k, s in pairs):
        return False
    return all([restore_finished_run(k, Path(s.out), s, data_hash) for k, s in pairs])


def run_or_reuse(cfg: RunConfig, bundle: DataBundle, log: Callable[[str], None], fresh: bool = False) -> dict:
    """Train (every stage, see training_stages) unless the run directory already holds results for this
    exact config on this data (DatasetMismatch when the config matches but the data changed); ``fresh``:
    retrain from epoch 0."""
    out = Path(cfg.out)
    world, _ = setup(cfg.device)  # under torchrun: rank 0 reads the run directory, every rank trains
    reuse: bool | Exception = False
    if world.is_main:
        try:
            reuse = not fresh and finished_stages(cfg, bundle.dataset.manifest.content_hash)
        except UserError as e:
            if not world.distributed:
                raise
            reuse = e
    reuse = world.broadcast(reuse)
    if isinstance(reuse, Exception):
        raise reuse
    if reuse:
        log(f"  reusing {out}")
    else:
        t0 = time.perf_counter()
        train_stages(cfg, bundle, resume=not fresh, log=lambda s: log("  " + s))
        log(f"  {cfg.model_name} -> {out} ({time.perf_counter() - t0:.0f}s)")
    return world.broadcast(load_results(out) if world.is_main else None)


def route_overrides(models: list[str], overrides: list[str]) -> dict[str, list[str]]:
    """Overrides per model: ``key=value`` applies to every model, ``NAME.key=value`` (NAME one of
    ``models``) only to NAME, e.g. ``llmemf.model.modalities=[id,txt]``, which the other models'
    configs would reject as an unknown field."""
    routed: dict[str, list[str]] = {m: [] for m in models}
    for item in overrides:
        head, dot, rest = item.partition(".")
        if dot and head in routed and "=" not in head:
            routed[head].append(rest)
        else:
            for m in models:
                routed[m].append(item)
    return routed


def compare_configs(dataset: Path, models: list[str], out: Path, overrides: list[str]) -> dict[str, RunConfig]:
    """Every model's run config, checked before anything trains (ValueError names a bad field)."""
    routed = route_overrides(models, overrides)
    configs = {name: run_config(name, dataset, out / name, routed[name]) for name in models}
    for name, cfg in configs.items():
        check_model_params(name, cfg.model_params)
    return configs


def compare(configs: dict[str, RunConfig], log: Callable[[str], None] = print, fresh: bool = False) -> dict[str, dict]:
    data = Dataset.load(next(iter(configs.values())).dataset)
    bundles: dict[int, DataBundle] = {}  # one per max_len (a per-model override may change it)
    results = {}
    for name, cfg in configs.items():
        log(f"[{name}]")
        if cfg.max_len not in bundles:
            bundles[cfg.max_len] = DataBundle(data, cfg.max_len)
        results[name] = run_or_reuse(cfg, bundles[cfg.max_len], log, fresh)
    return results


def parse_ablation_rows(spec: str) -> list[int]:
    """'1,3' -> [1, 3]; '' -> [] (all rows). Raises ValueError naming the accepted range."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not all(p.isdigit() and 1 <= int(p) <= len(ABLATIONS) for p in parts):
        raise ValueError(f"--rows takes numbers 1..{len(ABLATIONS)} separated by commas, got {spec!r}")
    return [int(p) for p in parts]


def ablate(
    dataset: Path, out: Path, seeds: list[int], overrides: list[str], log: Callable[[str], None] = print, rows: list[int] | None = None
) -> dict[str, list[dict]]:
    """Train the table-4 configurations (``rows``: 1-based row numbers, default all six)."""
    rows = rows or list(range(1, len(ABLATIONS) + 1))
    if bad := [r for r in rows if not 1 <= r <= len(ABLATIONS)]:
        raise ValueError(f"ablation rows are 1..{len(ABLATIONS)}, got {bad}")
    bundle = DataBundle(Dataset.load(dataset), load_config(None, ["model.name=llmemf", *overrides]).max_len)
    groups: dict[str, list[dict]] = {}
    for k, (label, ab) in enumerate(ABLATIONS.items()):
        if k + 1 not in rows:
            continue
        groups[label] = []
        for seed in seeds:
            log(f"[{label}] seed {seed}")
            cfg = run_config("llmemf", dataset, out / f"{k}_{slug(label)}" / f"seed{seed}", [*overrides, *ab, f"seed={seed}"])
            groups[label].append(run_or_reuse(cfg, bundle, log))
    return groups


def grid_points(grid: list[str]) -> list[list[str]]:
    """['train.lr=1e-3,3e-4', 'train.weight_decay=0,1e-5'] -> the product as override lists."""
    axes = []
    for spec in grid:
        if "=" not in spec:
            raise ValueError(f"grid axis {spec!r} must look like key=v1,v2,...")
        key, values = spec.split("=", 1)
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(p) for p in itertools.product(*axes)]


def tune(
    dataset: Path, model: str, grid: list[str], out: Path, overrides: list[str], log: Callable[[str], None] = print
) -> list[tuple[list[str], dict]]:
    bundle = DataBundle(Dataset.load(dataset), load_config(None, [f"model.name={model}", *overrides]).max_len)
    results = []
    for point in grid_points(grid):
        log(f"[{' '.join(point)}]")
        cfg = run_config(model, dataset, out / slug("_".join(point)), [*overrides, *point])
        results.append((point, run_or_reuse(cfg, bundle, log)))
    return results


def slug(text: str) -> str:
    """A run directory's name for a label or a grid point: letters, digits and ._- kept, the rest _."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("_")[:80] or "default"
