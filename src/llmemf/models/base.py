"""The interface every model answers (RecBole-style), and the registry of models by CLI name.

A model is built from its config dataclass and the DataBundle, then the one training loop calls:
    loss(batch)                         -> scalar tensor, for a training Batch
    scores(batch, domain, candidates)   -> (B, C) scores of the given global item ids, or
                                           (B, n_domain_items) for every item of ``domain`` when
                                           ``candidates`` is None (domain-local order)
    fit(bundle)                         -> closed-form fitting (Pop, ItemKNN); gradient models skip it
Higher scores mean "more likely next". A batch row whose ``user`` is ``NO_USER`` is a history of no
known user: models that read user embeddings fold that history in (see layers.fold_in).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, ClassVar

import torch
from torch import nn

from llmemf.data.batching import Batch, DataBundle


class Recommender(nn.Module):
    Config: ClassVar[type]  # the model's config dataclass
    trainable: ClassVar[bool] = True  # False: fit() is all the training it needs
    # Adam's betas as the model's reference code sets them (the trainer's optimiser reads this).
    adam_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    prefers_bf16: ClassVar[bool] = False  # train.bf16 unset: train in bf16 autocast where the CPU has native bf16
    reference: ClassVar[str] = ""  # paper reference, for `llmemf models`
    summary: ClassVar[str] = ""  # one line
    # Config fields whose default has changed, each with its earlier default: a run directory's config.yaml
    # written before every field was recorded names only fields set away from the defaults of its day, and
    # so trained with these (training.rundir.load_run_config).
    earlier_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Any, bundle: DataBundle):
        super().__init__()
        self.config = config
        self.n_items = bundle.n_items
        self.pad_id = bundle.pad_id
        self.domain_ranges = [bundle.domain_range(0), bundle.domain_range(1)]

    def loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def features_read(cls, config: Any) -> list[str]:
        """The dataset's feature files (``features/<name>.npy``) a model of ``config`` reads: a run records their
        identity (features.store.feature_identity), so that a finished run is not reused on features re-embedded since."""
        return []

    def fit(self, bundle: DataBundle) -> None:
        """Closed-form models compute their statistics here; called once before training."""

    def candidate_scores_are_full_columns(self, n_candidates: int, domain: int) -> bool:
        """Whether ``scores(batch, domain, candidates)`` with ``n_candidates`` per row is, bit for bit,
        ``scores(batch, domain)`` at the candidates' columns: an evaluation that needs both then
        scores once (evaluation/protocols.py). False unless a model knows it computes them so."""
        return False

    def sparse_embeddings(self) -> list[nn.Embedding]:
        """Embedding tables that a training step of this configuration reads only by rows, each looked up
        as ``F.embedding(ids, emb.weight, sparse=emb.sparse)``: the trainer may set ``emb.sparse`` to
        have their gradients sparse and their Adam updates lazy (``train.lazy_adam``)."""
        return []


# Batch.user of a history that belongs to no known user (serving a new history): a user-ID model
# (BPRMF, NCF-MLP) folds that history in instead of reading a user embedding.
NO_USER = -1


# name -> "module:Class" (imported lazily so that `llmemf models` stays fast)
REGISTRY: dict[str, str] = {
    "pop": "llmemf.models.pop:Pop",
    "itemknn": "llmemf.models.itemknn:ItemKNN",
    "bprmf": "llmemf.models.bprmf:BPRMF",
    "ncf_mlp": "llmemf.models.ncf_mlp:NCFMLP",
    "gru4rec": "llmemf.models.gru4rec:GRU4Rec",
    "sasrec": "llmemf.models.sasrec:SASRec",
    "srgnn": "llmemf.models.srgnn:SRGNN",
    "pinet": "llmemf.models.pinet:PiNet",
    "psjnet": "llmemf.models.psjnet:PSJNet",
    "c2dsr": "llmemf.models.c2dsr:C2DSR",
    "tricdr": "llmemf.models.tricdr:TriCDR",
    "mifn": "llmemf.models.mifn:MIFN",
    "llmemf": "llmemf.models.llmemf:LLMEMF",
}


def model_class(name: str) -> type[Recommender]:
    """The class registered as ``name``; KeyError for an unknown name. A registered model whose module
    fails to import raises that ImportError: every registered model exists, so a failure is a bug."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def check_model_params(name: str, params: dict[str, Any]) -> type[Recommender]:
    """The model's class; ValueError naming any field its Config does not have."""
    cls = model_class(name)
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = set(params) - known
    if unknown:
        raise ValueError(f"model {name}: unknown config field(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls


def build_model(name: str, params: dict[str, Any], bundle: DataBundle) -> Recommender:
    cls = check_model_params(name, params)
    return cls(cls.Config(**params), bundle)
