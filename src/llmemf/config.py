"""Run configuration: dataclasses, loaded from YAML with ``key=value`` overrides (OmegaConf)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


@dataclass
class TrainConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0  # L2 coefficient (Adam's weight_decay)
    batch_size: int = 256
    epochs: int = 100
    patience: int = 10  # epochs without a better validation MRR before stopping
    by_length: bool = True  # batch sequences of similar length together (less padding)
    bf16: bool = False  # bf16 autocast on CPU (AMX); see benchmarks/ for when it pays
    grad_clip: float = 0.0  # 0 = off
    max_minutes: float = 0.0  # stop after this much training time (0 = no limit)
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    progress: bool = True  # progress bar with loss and ETA


@dataclass
class EvalConfig:
    protocols: list[str] = field(default_factory=lambda: ["c2dsr", "full"])
    select_protocol: str = "c2dsr"  # early stopping and checkpoint selection use this protocol's MRR
    n_negatives: int = 999
    seed: int = 2022  # the sampled-negative set is fixed by this seed
    ties: str = "pessimistic"  # pessimistic | average | strict (see evaluation/protocols.py)
    batch_size: int = 512


@dataclass
class RunConfig:
    dataset: str = "data/synthetic"  # a dataset directory written by `llmemf prepare`
    out: str = "runs/default"  # run directory: config, checkpoints, metrics log, results
    seed: int = 42
    max_len: int = 15  # most recent interactions kept per sequence
    device: str = "cpu"
    model: dict[str, Any] = field(default_factory=lambda: {"name": "sasrec"})  # name + the model's own fields
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def model_name(self) -> str:
        return self.model["name"]

    @property
    def model_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.model.items() if k != "name"}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file <- ``key=value`` overrides (dotted keys: ``train.lr=3e-4``)."""
    base = OmegaConf.structured(RunConfig)
    layers = [base]
    if path is not None:
        layers.append(OmegaConf.load(path))
    if overrides:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    merged = OmegaConf.merge(*layers)
    return OmegaConf.to_object(merged)


def config_to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
