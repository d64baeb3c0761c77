"""NCF-MLP (He et al., WWW 2017): the MLP instance of Neural Collaborative Filtering.

    y_ui = sigmoid(h^T MLP([p_u ; q_i]))

User and item embeddings are concatenated and passed through a tower of ReLU layers that halves
in width (the paper's default tower 64 -> 32 -> 16 -> 8, each embedding half the first layer's
width). Trained with the paper's pointwise log loss: every positive (user, item) of a user's
training sequence against ``n_negatives`` items drawn uniformly from the positive's own domain.

Which user vector: a user embedding, as in the paper. In the C2DSR-style splits every evaluated user
has a training sequence equal to their evaluation history (the held-out targets never appear in
training), so p_u is learnt from exactly the history the evaluation gives (see bprmf.py). A history
of no known user (``Batch.user == NO_USER``: `llmemf recommend`) is folded in: p_u is fitted to it by
the same log loss, every other weight frozen (layers.fold_in), from the mean trained user vector.

As the authors' code (hexiangnan/neural_collaborative_filtering, ``MLP.py``): embeddings N(0, 0.01^2),
ReLU tower 64 -> 32 -> 16 -> 8 (Glorot-uniform), LeCun-uniform sigmoid output, 4 negatives per positive,
Adam lr 1e-3, batch 256. Differences forced by the shared protocol (docs/baselines.md): negatives are drawn
from the positive's own domain (evaluation ranks within a domain; the official draws from every item the
user has not seen),
a batch is the positives of ``batch_size`` users (the official shuffles (user, item) instances), and a
repeated training item counts as often as it occurs (the official trains on the distinct pairs).

Scoring every item of a domain means one MLP pass per (user, item) pair. The first layer is linear
in the concatenation, W [p_u ; q_i] = W_u p_u + W_i q_i, so both halves are computed once, and the
pairs are formed in chunks of items to bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from llmemf.config import ConfigError, check_fields
from llmemf.data.batching import Batch, DataBundle
from llmemf.models.base import NO_USER, Recommender
from llmemf.models.cross_domain import sample_in_domain
from llmemf.models.layers import Dropout, fold_in, training_items


@dataclass
class NCFMLPConfig:
    layers: list[int] = field(default_factory=lambda: [64, 32, 16, 8])  # tower widths; layers[0] = |p_u| + |q_i|
    n_negatives: int = 4  # sampled negatives per positive (the paper's default ratio)
    dropout: float = 0.0  # between tower layers (the paper uses none)
    chunk_pairs: int = 1 << 20  # (user, item) pairs per chunk when scoring a whole domain
    fold_in_steps: int = 100  # Adam steps fitting a new history's user vector (recommend; see layers.fold_in)
    fold_in_lr: float = 0.05  # their learning rate
    fold_in_l2: float = 0.01  # L2 weight on the folded-in vector

    def __post_init__(self) -> None:
        check_fields(
            self, "model.", positive=("n_negatives", "chunk_pairs", "fold_in_steps", "fold_in_lr"), nonneg=("fold_in_l2",), fraction=("dropout",)
        )
        if not self.layers or not all(isinstance(w, int) and w > 0 for w in self.layers):
            raise ConfigError(f"model.layers={list(self.layers)}: must be a non-empty list of positive widths")


class NCFMLP(Recommender):
    Config = NCFMLPConfig
    reference = "He et al., Neural Collaborative Filtering, WWW 2017 (MLP variant)"
    summary = "user and item embeddings concatenated through an MLP tower, log loss with sampled negatives"

    def __init__(self, config: NCFMLPConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        widths = list(config.layers)
        assert widths[0] % 2 == 0, "layers[0] is the concatenation of two equal embeddings"
        d = widths[0] // 2
        self.user = nn.Embedding(bundle.n_users, d)
        self.item = nn.Embedding(self.n_items + 1, d, padding_idx=self.pad_id)
        for emb in (self.user, self.item):
            nn.init.normal_(emb.weight, std=0.01)  # as in the paper's code
        # First tower layer split into its user and item halves (see the module docstring).
        self.first_user = nn.Linear(d, widths[1])
        self.first_item = nn.Linear(d, widths[1], bias=False)
        rest = []
        for a, b in zip(widths[1:-1], widths[2:], strict=True):
            rest += [nn.ReLU(), Dropout(config.dropout), nn.Linear(a, b)]
        self.tower = nn.Sequential(*rest, nn.ReLU())  # (..., widths[1]) pre-activation -> (..., widths[-1])
        self.predict = nn.Linear(widths[-1], 1)
        # The authors' Keras code (hexiangnan/neural_collaborative_filtering, MLP.py): Glorot-uniform tower layers
        # (Keras 1's default, over the whole [p_u ; q_i] -> w1 matrix, so both halves share its bound), LeCun-uniform
        # prediction layer, zero biases.
        with torch.no_grad():
            bound = (6.0 / (widths[0] + widths[1])) ** 0.5
            for half in (self.first_user.weight, self.first_item.weight):
                nn.init.uniform_(half, -bound, bound)
            self.first_user.bias.zero_()
            for m in self.tower:
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    m.bias.zero_()
            lecun = (3.0 / widths[-1]) ** 0.5
            nn.init.uniform_(self.predict.weight, -lecun, lecun)
            self.predict.bias.zero_()

    def _logits(self, u: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """u (B, w1) user half of the first layer; items (B, C) ids -> (B, C) logits."""
        z = u[:, None] + self.first_item(self.item(items))  # (B, C, w1)
        return self.predict(self.tower(z))[..., 0]

    def _log_loss(self, u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """Mean log loss of user halves u (B, w1) over positives pos (B, P) (pad = none), negatives neg (B, P, n)."""
        valid = (pos != self.pad_id).float()
        B, P = pos.shape
        items = torch.cat([pos[..., None], neg], dim=2).reshape(B, -1)  # (B, P * (1 + n))
        logits = self._logits(u, items).view(B, P, -1)  # (B, P, 1 + n)
        labels = torch.zeros_like(logits)
        labels[..., 0] = 1.0
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(2)  # (B, P)
        return (bce * valid).sum() / valid.sum().clamp_min(1)

    def loss(self, batch: Batch) -> torch.Tensor:
        pos = training_items(batch)  # (B, P)
        neg = sample_in_domain(pos, self.domain_ranges, self.config.n_negatives)  # (B, P, n)
        return self._log_loss(self.first_user(self.user(batch.user)), pos, neg)

    def user_vectors(self, batch: Batch) -> torch.Tensor:
        """(B, d) p_u of known users; rows with user == NO_USER fold their history ``xy`` in."""
        new = batch.user == NO_USER
        p = self.user(batch.user.clamp(min=0))
        if not bool(new.any()):
            return p
        hist = batch.xy[new]  # (N, L)
        gen = torch.Generator(device=hist.device).manual_seed(0)

        def objective(w: torch.Tensor) -> torch.Tensor:
            pos = hist.clone()  # a normal tensor even when the batch was made under inference mode
            return self._log_loss(self.first_user(w), pos, sample_in_domain(pos, self.domain_ranges, self.config.n_negatives, gen))

        init = self.user.weight.detach().mean(0).expand(len(hist), -1)
        c = self.config
        return p.masked_scatter(new[:, None], fold_in(objective, init, c.fold_in_steps, c.fold_in_lr, c.fold_in_l2))

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        u = self.first_user(self.user_vectors(batch))  # (B, w1)
        if candidates is not None:
            return self._logits(u, candidates)
        lo, hi = self.domain_ranges[domain]
        item_half = self.first_item(self.item.weight[lo:hi])  # (n_d, w1), once for the whole batch
        step = max(1, self.config.chunk_pairs // u.shape[0])
        out = []
        for a in range(0, hi - lo, step):  # chunks of items bound the (B, chunk, w1) activations
            z = u[:, None] + item_half[None, a : a + step]
            out.append(self.predict(self.tower(z))[..., 0])
        return torch.cat(out, dim=1)  # (B, n_d)
