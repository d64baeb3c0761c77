"""π-Net (Ma et al., π-Net: A Parallel Information-sharing Network for Shared-account Cross-domain
Sequential Recommendations, SIGIR 2019).

A shared account's history mixes several people and two domains. Per domain, a GRU encodes that
domain's items (in order). To recommend in domain A, the Shared-account Filter Unit (SFU) looks at
each state of the other domain B together with A's current state and, for K latent members of
the account, gates out what is useful to A; the Cross-domain Transfer Unit (CTU) is a GRU over
those filtered states, giving B->A knowledge at each step. The hybrid decoder predicts A's next
item from [A's state ; transferred B->A state]. Both directions run in parallel.

Here: both GRUs read their domain subsequence split out of the merged batch (vectorised, see
cross_domain.DomainGRU); every state is mapped back to merged positions, so that a target at merged
position t in domain A is predicted from everything the account did up to t. Each target is
scored by a softmax over its own domain's items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmemf.data.batching import DataBundle, domain_masks
from llmemf.models.cross_domain import DomainGRU
from llmemf.models.layers import Dropout, PerDomainStateModel


@dataclass
class PiNetConfig:
    hidden: int = 90  # embedding and GRU width (π-Net's setting: 90)
    n_members: int = 4  # K latent account members in the filter unit (π-Net: 4 for HVIDEO)
    dropout: float = 0.2  # on embeddings and the decoder input


class FilterTransfer(nn.Module):
    """SFU + CTU for one direction B -> A."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.gate = nn.Linear(2 * d, d)
        self.members = nn.Parameter(torch.randn(k, d) * 0.1)  # (K, d) latent member biases
        self.value = nn.Linear(d, d)
        self.ctu = DomainGRU(d)

    def forward(self, h_b: torch.Tensor, h_a: torch.Tensor, at_b: torch.Tensor) -> torch.Tensor:
        """h_b, h_a (B, L, d) aligned states; at_b (B, L) positions of B items -> (B, L, d) B->A."""
        g = torch.sigmoid(self.gate(torch.cat([h_b, h_a], -1))[:, :, None] + self.members)  # (B, L, K, d)
        filtered = (g * torch.tanh(self.value(h_b))[:, :, None]).mean(2)  # (B, L, d) mean over members
        return self.ctu(filtered, at_b)


class PiNet(PerDomainStateModel):
    Config = PiNetConfig
    reference = "Ma et al., π-Net: A Parallel Information-sharing Network for Shared-account Cross-domain Sequential Recommendations, SIGIR 2019"
    summary = "per-domain GRUs, shared-account filter + cross-domain transfer GRU, hybrid decoder"

    def __init__(self, config: PiNetConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        d = config.hidden
        self.n_x = self.domain_ranges[0][1]
        self.item = nn.Embedding(self.n_items + 1, d, padding_idx=self.pad_id)
        self.drop = Dropout(config.dropout)
        self.gru = nn.ModuleList([DomainGRU(d), DomainGRU(d)])
        self.transfer = nn.ModuleList([FilterTransfer(d, config.n_members), FilterTransfer(d, config.n_members)])  # Y->X, X->Y
        self.decode = nn.ModuleList([nn.Linear(2 * d, d), nn.Linear(2 * d, d)])
        self.out = nn.Embedding(self.n_items, d)  # output item vectors (softmax weights)
        nn.init.normal_(self.out.weight, std=d**-0.5)

    def domain_states(self, xy: torch.Tensor) -> list[torch.Tensor]:
        """(B, L) merged ids -> per domain (B, L, d) user representation for predicting that
        domain's next item after each merged position."""
        at = list(domain_masks(xy, self.n_x, self.pad_id))
        emb = self.drop(self.item(xy))
        h = [self.gru[d](emb, at[d]) for d in (0, 1)]
        reps = []
        for a in (0, 1):
            b = 1 - a
            t = self.transfer[a](h[b], h[a], at[b])  # B -> A
            reps.append(torch.tanh(self.decode[a](self.drop(torch.cat([h[a], t], -1)))))
        return reps
