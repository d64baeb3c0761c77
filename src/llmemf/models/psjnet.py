"""PSJNet (Sun et al., Parallel Split-Join Networks for Shared Account Cross-domain Sequential
Recommendations, TKDE 2022/2023).

Like π-Net, one GRU per domain encodes that domain's items of a shared account. PSJNet then
*splits* each domain's state, per latent account member, into a part to share with the other
domain and a part to keep (complementary gates), attends over the members to pool each part, and
*joins*: a transfer GRU runs over the other domain's shared part at every merged position, and a
gate mixes the kept part with that transferred knowledge. Both directions run in parallel; the
joined representation of domain A predicts A's next item.

Here every state lives at merged positions (see cross_domain.DomainGRU), so a target at
merged position t in domain A is predicted from the account's whole history up to t; each
target is scored by a softmax over its own domain's items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmemf.data.batching import DataBundle, domain_masks
from llmemf.models.cross_domain import DomainGRU
from llmemf.models.layers import Dropout, PerDomainStateModel


@dataclass
class PSJNetConfig:
    hidden: int = 90  # embedding and GRU width (as π-Net, which PSJNet extends)
    n_members: int = 4  # K latent account members in the split unit
    dropout: float = 0.2  # on embeddings and the join input


class Split(nn.Module):
    """Per member k: g_k = sigmoid(W [h_a ; h_b] + m_k); share = g_k * h_a, keep = (1 - g_k) * h_a,
    each pooled over members by attention."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.gate = nn.Linear(2 * d, d)
        self.members = nn.Parameter(torch.randn(k, d) * 0.1)  # (K, d)
        self.att_share, self.att_keep = nn.Linear(d, 1), nn.Linear(d, 1)

    def forward(self, h_a: torch.Tensor, h_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.sigmoid(self.gate(torch.cat([h_a, h_b], -1))[:, :, None] + self.members)  # (B, L, K, d)
        share, keep = g * h_a[:, :, None], (1 - g) * h_a[:, :, None]
        pool = lambda x, att: (torch.softmax(att(torch.tanh(x)), 2) * x).sum(2)  # noqa: E731  (B, L, d)
        return pool(share, self.att_share), pool(keep, self.att_keep)


class Join(nn.Module):
    """Transfer GRU over the other domain's shared part, gated into this domain's kept part."""

    def __init__(self, d: int):
        super().__init__()
        self.transfer = DomainGRU(d)
        self.gate = nn.Linear(2 * d, d)

    def forward(self, keep_a: torch.Tensor, share_b: torch.Tensor, at_b: torch.Tensor) -> torch.Tensor:
        t = self.transfer(share_b, at_b)  # (B, L, d): over B's positions only, never over padding
        j = torch.sigmoid(self.gate(torch.cat([keep_a, t], -1)))
        return j * keep_a + (1 - j) * t


class PSJNet(PerDomainStateModel):
    Config = PSJNetConfig
    reference = "Sun et al., Parallel Split-Join Networks for Shared Account Cross-domain Sequential Recommendations, TKDE 2022"
    summary = "per-domain GRUs, member-wise split into shared/kept parts, parallel transfer-and-join"

    def __init__(self, config: PSJNetConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        d = config.hidden
        self.n_x = self.domain_ranges[0][1]
        self.item = nn.Embedding(self.n_items + 1, d, padding_idx=self.pad_id)
        self.drop = Dropout(config.dropout)
        self.gru = nn.ModuleList([DomainGRU(d), DomainGRU(d)])
        self.split = nn.ModuleList([Split(d, config.n_members), Split(d, config.n_members)])
        self.join = nn.ModuleList([Join(d), Join(d)])
        self.decode = nn.ModuleList([nn.Linear(2 * d, d), nn.Linear(2 * d, d)])
        self.out = nn.Embedding(self.n_items, d)  # output item vectors
        nn.init.normal_(self.out.weight, std=d**-0.5)

    def domain_states(self, xy: torch.Tensor) -> list[torch.Tensor]:
        at = list(domain_masks(xy, self.n_x, self.pad_id))
        emb = self.drop(self.item(xy))
        h = [self.gru[d](emb, at[d]) for d in (0, 1)]  # (B, L, d) each, at merged positions
        parts = [self.split[a](h[a], h[1 - a]) for a in (0, 1)]  # (share, keep) per domain
        reps = []
        for a in (0, 1):
            joined = self.join[a](parts[a][1], parts[1 - a][0], at[1 - a])
            reps.append(torch.tanh(self.decode[a](self.drop(torch.cat([h[a], joined], -1)))))
        return reps
