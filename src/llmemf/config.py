"""Run configuration: dataclasses, loaded from YAML with ``key=value`` overrides (OmegaConf).

Every value is checked when the config is loaded (types, ranges, choices, the model's own fields),
before any data is read: a mistake is a ``ConfigError`` naming the key, not a failure an epoch later.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llmemf.errors import UserError
from llmemf.evaluation.protocols import PROTOCOLS, TIES


class ConfigError(UserError, ValueError):
    """A config value that is unknown, of the wrong type or out of range; the message names the key."""


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_fields(
    cfg: Any,
    prefix: str,
    positive: tuple[str, ...] = (),
    nonneg: tuple[str, ...] = (),
    fraction: tuple[str, ...] = (),
    choices: dict[str, tuple] | None = None,
    divides: tuple[str, str] | None = None,
) -> None:
    """Validate a config dataclass: every int/float/bool/str field has its declared type, ``positive``
    fields are > 0, ``nonneg`` >= 0, ``fraction`` in [0, 1), ``choices`` one of the listed values,
    ``divides=(a, b)``: a is a multiple of b (a width split into attention heads).
    Called from the configs' ``__post_init__``; ``prefix`` is how the user writes the key (``train.``)."""

    def fail(name: str, what: str) -> None:
        raise ConfigError(f"{prefix}{name}={getattr(cfg, name)!r}: {what} (fix the config file or the {prefix}{name}=... override)")

    for f in dataclasses.fields(cfg):
        want = _TYPES.get(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""))
        value = getattr(cfg, f.name)
        if want and not (isinstance(value, want) and (bool in want or not isinstance(value, bool))):
            fail(f.name, f"expected {f.type}, got {type(value).__name__}")
    for name in positive:
        if not getattr(cfg, name) > 0:
            fail(name, "must be > 0")
    for name in nonneg:
        if not getattr(cfg, name) >= 0:
            fail(name, "must be >= 0")
    for name in fraction:
        if not 0 <= getattr(cfg, name) < 1:
            fail(name, "must lie in [0, 1)")
    for name, allowed in (choices or {}).items():
        if getattr(cfg, name) not in allowed:
            fail(name, f"must be one of {', '.join(map(str, allowed))}")
    if divides and getattr(cfg, divides[0]) % getattr(cfg, divides[1]):
        fail(divides[0], f"must be a multiple of {prefix}{divides[1]}={getattr(cfg, divides[1])}")


@dataclass
class TrainConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0  # L2 coefficient (Adam's weight_decay)
    batch_size: int = 256
    epochs: int = 100  # at least 1 for a trainable model (closed-form models ignore it)
    patience: int = 10  # epochs without a better validation MRR before stopping
    by_length: bool = True  # batch sequences of similar length together (less padding)
    # bf16 autocast for the training steps on CPU. None = the model's choice (Recommender.prefers_bf16) where
    # the CPU has native bf16 (AVX512-BF16 or AMX); true/false force it. Evaluation stays fp32 (eval.bf16).
    bf16: bool | None = None
    grad_clip: float = 0.0  # 0 = off
    lr_step: int = 0  # step decay: epoch e (from 0) trains at lr * lr_gamma ** (e // lr_step); 0 = constant lr (SR-GNN: 3)
    lr_gamma: float = 0.1  # the step decay's factor
    max_minutes: float = 0.0  # stop after this much training time (0 = no limit)
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    progress: bool = True  # progress bar with loss and ETA
    # Tables a model reads by rows (LLM-EMF's ID table under its sampled softmax) get sparse gradients and
    # Adam updates of the rows a step read only: a step's cost no longer grows with the catalogue, but
    # rows a step does not read keep their moments instead of moving on them (training/optim.py).
    lazy_adam: bool = False

    def __post_init__(self) -> None:
        # epochs and patience may be 0 here (closed-form models ignore them; the trainer's config comparison
        # zeroes them); check_run_config asks a trainable model for at least 1 of each.
        check_fields(
            self,
            "train.",
            positive=("lr", "batch_size", "lr_gamma"),
            nonneg=("weight_decay", "epochs", "patience", "grad_clip", "max_minutes", "threads", "lr_step"),
        )


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

    def __post_init__(self) -> None:
        check_fields(self, "eval.", positive=("n_negatives", "batch_size"), choices={"select_protocol": PROTOCOLS, "ties": TIES})
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad or not self.protocols:
            raise ConfigError(f"eval.protocols={list(self.protocols)}: each must be one of {', '.join(PROTOCOLS)} (and at least one)")


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


def _one_line(e: OmegaConfBaseException) -> str:
    """OmegaConf's message without its 'full_key: ... object_type=...' trailer (the key is named first)."""
    msg = str(getattr(e, "msg", None) or e).splitlines()[0]
    key = getattr(e, "full_key", None)
    return f"{key}: {msg}" if key else msg


def check_run_config(cfg: RunConfig) -> None:
    """What the dataclasses cannot check alone: the model and its fields, and that a trainable model trains."""
    from llmemf.models.base import check_model_params  # lazily: models import this module

    if cfg.max_len < 1:
        raise ConfigError(f"max_len={cfg.max_len}: must be >= 1")
    if cfg.eval.select_protocol not in cfg.eval.protocols:
        raise ConfigError(f"eval.select_protocol={cfg.eval.select_protocol!r} is not among eval.protocols={list(cfg.eval.protocols)}")
    name = cfg.model.get("name")
    try:
        cls = check_model_params(name, cfg.model_params)
    except KeyError as e:
        raise ConfigError(f"model.name={name!r}: {e.args[0]} (see `llmemf models`)") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cls.Config(**cfg.model_params)  # the model's own ranges and choices (__post_init__)
    if cls.trainable and cfg.train.epochs < 1:
        raise ConfigError(f"train.epochs={cfg.train.epochs}: {name} is trained by gradient steps and needs at least 1 epoch")
    if cls.trainable and cfg.train.patience < 1:
        raise ConfigError(f"train.patience={cfg.train.patience}: {name} would stop before its first epoch; give at least 1")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file <- ``key=value`` overrides (dotted keys: ``train.lr=3e-4``), then checked
    (``check_run_config``). Raises ConfigError, one line naming the key."""
    base = OmegaConf.structured(RunConfig)
    layers = [base]
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as e:  # noqa: BLE001 - YAML syntax errors come as several yaml exception types
            raise ConfigError(f"{path}: not a readable YAML config ({' '.join(str(e).split())})") from None
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not key=value (e.g. train.lr=3e-4)")
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"{_one_line(e)}" + (f" (in {path} or the overrides)" if path else "")) from None
    check_run_config(cfg)
    return cfg


def config_to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
