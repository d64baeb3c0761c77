"""BPR-MF (Rendle et al., UAI 2009): matrix factorisation trained with the BPR pairwise loss.

    x_ui = <w_u, h_i> (+ b_i)        loss = -log sigmoid(x_ui - x_uj)

for every (user, item) pair of a user's training sequence, with one negative j drawn uniformly
from the positive's own domain per positive (so the model learns to rank within a domain, which is
what the evaluation asks), and L2 regularisation through the trainer's ``weight_decay``.

Which user vector. The model is non-sequential: order is ignored. A user is scored by their history
through a user embedding, as in the paper: in the C2DSR-style splits every evaluated user also
has a training sequence, and that sequence is exactly their evaluation history (the held-out
targets never appear in training), so w_u is learnt from the history the evaluation gives.
A user with no training sequence keeps their random initial w_u: this model needs the evaluated
users in training, as matrix factorisation always does.

The item bias b_i is not in the paper's MF; it is off by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmemf.config import check_fields
from llmemf.data.batching import Batch, DataBundle
from llmemf.models.base import Recommender


@dataclass
class BPRMFConfig:
    hidden: int = 64  # latent factors (the paper sweeps 8..128)
    init_std: float = 0.1  # N(0, std^2) initialisation of the factors, as in the paper
    item_bias: bool = False  # add a learnt per-item bias (not in the paper)

    def __post_init__(self) -> None:
        check_fields(self, "model.", positive=("hidden", "init_std"))


def sample_in_domain(pos: torch.Tensor, domain_ranges: list[tuple[int, int]], n: int = 1) -> torch.Tensor:
    """(...,) global positive ids -> (..., n) ids drawn uniformly from each positive's own domain
    (a negative may rarely equal the positive; with thousands of items per domain this is noise)."""
    (lo0, hi0), (lo1, hi1) = domain_ranges
    in1 = (pos >= lo1)[..., None]
    lo = torch.where(in1, lo1, lo0)
    size = torch.where(in1, hi1 - lo1, hi0 - lo0)
    return lo + (torch.rand(*pos.shape, n, device=pos.device) * size).long().clamp_max(size - 1)


def training_items(batch: Batch) -> torch.Tensor:
    """(B, L + 1) every item of each training sequence (inputs plus the last target), pad elsewhere."""
    return torch.cat([batch.xy, batch.xy_target[:, -1:]], dim=1)


class BPRMF(Recommender):
    Config = BPRMFConfig
    reference = "Rendle et al., BPR: Bayesian Personalized Ranking from Implicit Feedback, UAI 2009"
    summary = "matrix factorisation with the BPR pairwise loss, negatives from the positive's domain"

    def __init__(self, config: BPRMFConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        d = config.hidden
        self.user = nn.Embedding(bundle.n_users, d)
        self.item = nn.Embedding(self.n_items + 1, d, padding_idx=self.pad_id)
        self.bias = nn.Embedding(self.n_items + 1, 1, padding_idx=self.pad_id) if config.item_bias else None
        for emb in (self.user, self.item):
            nn.init.normal_(emb.weight, std=config.init_std)
        with torch.no_grad():
            self.item.weight[self.pad_id].zero_()
            if self.bias is not None:
                self.bias.weight.zero_()

    def _score(self, u: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """u (B, d), items (B, C) -> (B, C)."""
        s = torch.einsum("bd,bcd->bc", u, self.item(items))
        return s if self.bias is None else s + self.bias(items)[..., 0]

    def loss(self, batch: Batch) -> torch.Tensor:
        pos = training_items(batch)  # (B, P)
        valid = pos != self.pad_id
        neg = sample_in_domain(pos, self.domain_ranges)[..., 0]  # (B, P)
        u = self.user(batch.user)  # (B, d)
        diff = self._score(u, pos) - self._score(u, neg)  # (B, P)
        return -(F.logsigmoid(diff) * valid).sum() / valid.sum().clamp_min(1)

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        u = self.user(batch.user)  # (B, d)
        lo, hi = self.domain_ranges[domain]
        if candidates is not None:
            return self._score(u, candidates)
        s = u @ self.item.weight[lo:hi].T  # (B, hi - lo)
        return s if self.bias is None else s + self.bias.weight[lo:hi, 0]
