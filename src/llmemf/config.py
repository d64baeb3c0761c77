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
    lr_decay: float = 1.0  # the learning rate of epoch e (from 0) is lr * lr_decay**e (torch ExponentialLR stepped per epoch)
    adam_beta2: float = 0.999  # Adam's second-moment decay (SASRec.pytorch, C2DSR and Tri-CDR use 0.98)
    batch_size: int = 256
    epochs: int = 100
    patience: int = 10  # epochs without a better validation MRR before stopping
    by_length: bool = True  # batch sequences of similar length together (less padding)
    # bf16 autocast for the training steps on CPU. None = the model's choice (Recommender.prefers_bf16) where
    # the CPU has native bf16 (AVX512-BF16 or AMX); true/false force it. Evaluation stays fp32 (eval.bf16).
    bf16: bool | None = None
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
    # Scores in bf16 are quantised (8-bit mantissa), so candidates tie and ties count against the model:
    # -0.2 MRR measured on a Food-Kitchen subset for the same weights. Off unless speed matters more.
    bf16: bool = False


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
