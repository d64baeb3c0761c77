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

A history of no known user (``Batch.user == NO_USER``: `llmemf recommend`) is folded in: w_u is fitted
to that history by the BPR loss itself, item factors frozen (layers.fold_in), from the mean trained
user vector, with an L2 pull to zero. Same history, same vector (the negatives are seeded).

The item bias b_i is not in the paper's MF; it is off by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmemf.config import check_fields
from llmemf.data.batching import Batch, DataBundle
from llmemf.models.base import NO_USER, Recommender
from llmemf.models.cross_domain import sample_in_domain
from llmemf.models.layers import fold_in, training_items


@dataclass
class BPRMFConfig:
    hidden: int = 64  # latent factors (the paper sweeps 8..128)
    init_std: float = 0.1  # N(0, std^2) initialisation of the factors, as in the paper
    item_bias: bool = False  # add a learnt per-item bias (not in the paper)
    fold_in_steps: int = 100  # Adam steps fitting a new history's user vector (recommend; see layers.fold_in)
    fold_in_lr: float = 0.05  # their learning rate
    fold_in_l2: float = 0.01  # L2 weight on the folded-in vector (keeps a short history's vector bounded)

    def __post_init__(self) -> None:
        check_fields(self, "model.", positive=("hidden", "init_std", "fold_in_steps", "fold_in_lr"), nonneg=("fold_in_l2",))


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

    def _pair_loss(self, u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """Mean BPR loss of users u (B, d) over positives pos (B, P) (pad = none) and negatives neg (B, P)."""
        valid = pos != self.pad_id
        diff = self._score(u, pos) - self._score(u, neg)  # (B, P)
        return -(F.logsigmoid(diff) * valid).sum() / valid.sum().clamp_min(1)

    def loss(self, batch: Batch) -> torch.Tensor:
        pos = training_items(batch)  # (B, P)
        neg = sample_in_domain(pos, self.domain_ranges)[..., 0]  # (B, P)
        return self._pair_loss(self.user(batch.user), pos, neg)

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        """(B, d): the learnt w_u of known users; rows with user == NO_USER fold their history ``xy`` in."""
        new = batch.user == NO_USER
        u = self.user(batch.user.clamp(min=0))
        if not bool(new.any()):
            return u
        hist = batch.xy[new]  # (N, L)
        gen = torch.Generator(device=hist.device).manual_seed(0)

        def objective(w: torch.Tensor) -> torch.Tensor:
            pos = hist.clone()  # a normal tensor even when the batch was made under inference mode
            return self._pair_loss(w, pos, sample_in_domain(pos, self.domain_ranges, 1, gen)[..., 0])

        init = self.user.weight.detach().mean(0).expand(len(hist), -1)
        c = self.config
        return u.masked_scatter(new[:, None], fold_in(objective, init, c.fold_in_steps, c.fold_in_lr, c.fold_in_l2))

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        u = self.user_vectors(batch)  # (B, d)
        lo, hi = self.domain_ranges[domain]
        if candidates is not None:
            return self._score(u, candidates)
        s = u @ self.item.weight[lo:hi].T  # (B, hi - lo)
        return s if self.bias is None else s + self.bias.weight[lo:hi, 0]
