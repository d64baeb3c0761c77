"""PSJNet (Sun et al., Parallel Split-Join Networks for Shared Account Cross-domain Sequential
Recommendations, TKDE 2022/2023).

Like π-Net, one GRU per domain encodes that domain's items of a shared account. PSJNet then
*splits* each domain's state, per latent account member, into a part to share with the other
domain and a part to keep (complementary gates), attends over the members to pool each part, and
*joins*: a transfer GRU runs over the other domain's shared part at every merged position, and a
gate mixes the kept part with that transferred knowledge. Both directions run in parallel; the
joined representation of domain A predicts A's next item.

No public code of PSJNet was found (GitHub code search, paperswithcode: "no code implementations"); the
paper says π-Net is its PSJNet-I, so the parts PSJNet-II shares with it are π-Net's code (models/pinet.py):
per-domain TF1 GRU encoders with dropout on input, output and state, a dropout + dense decoder with a
per-item bias over [A's state ; joined knowledge]. The split and join units follow the paper's description
(split role-specific parts at each timestamp; join them over all timestamps and roles) and are not
checked against code.

Here every state lives at merged positions (cross_domain.DomainRNN: a GRU steps over its own domain's
positions only), so a target at merged position t in domain A is predicted from the account's whole
history up to t; each target is scored by a softmax over its own domain's items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmemf.config import check_fields
from llmemf.data.batching import DataBundle, domain_masks
from llmemf.models.cross_domain import DomainGRU, PerDomainStateModel, domain_decoder, stacked_item_table
from llmemf.models.layers import Dropout


@dataclass
class PSJNetConfig:
    hidden: int = 90  # embedding and GRU width (as π-Net, which PSJNet extends)
    n_members: int = 4  # K latent account members in the split unit
    dropout: float = 0.2  # every GRU's input / output / state and the decoder input (π-Net's keep_prob 0.8)

    def __post_init__(self) -> None:
        check_fields(self, "model.", positive=("hidden", "n_members"), fraction=("dropout",))


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

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.transfer = DomainGRU(d, d, dropout)
        self.gate = nn.Linear(2 * d, d)

    def forward(self, keep_a: torch.Tensor, share_b: torch.Tensor, at_b: torch.Tensor) -> torch.Tensor:
        _, t = self.transfer(share_b, at_b)  # (B, L, d): over B's positions only, never over padding
        j = torch.sigmoid(self.gate(torch.cat([keep_a, t], -1)))
        return j * keep_a + (1 - j) * t


class PSJNet(PerDomainStateModel):
    Config = PSJNetConfig
    reference = "Sun et al., Parallel Split-Join Networks for Shared Account Cross-domain Sequential Recommendations, TKDE 2022"
    summary = "per-domain GRUs, member-wise split into shared/kept parts, parallel transfer-and-join"

    def __init__(self, config: PSJNetConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        d, p = config.hidden, config.dropout
        self.n_x = self.domain_ranges[0][1]
        self.item = stacked_item_table(self.n_items, d, self.pad_id, self.domain_ranges)
        self.encoder = nn.ModuleList([DomainGRU(d, d, p) for _ in range(2)])
        self.split = nn.ModuleList([Split(d, config.n_members), Split(d, config.n_members)])
        self.join = nn.ModuleList([Join(d, p), Join(d, p)])
        self.drop = Dropout(p)
        self.out, self.out_bias = domain_decoder(self.n_items, 2 * d, self.domain_ranges)  # [own state ; transfer] -> items

    def domain_states(self, xy: torch.Tensor) -> list[torch.Tensor]:
        at = domain_masks(xy, self.n_x, self.pad_id)
        enc = [self.encoder[d](self.item(xy), at[d]) for d in (0, 1)]  # (outputs, states) at merged positions
        h = [enc[d][0] for d in (0, 1)]
        parts = [self.split[a](h[a], h[1 - a]) for a in (0, 1)]  # (share, keep) per domain
        reps = []
        for a in (0, 1):
            joined = self.join[a](parts[a][1], parts[1 - a][0], at[1 - a])
            reps.append(self.drop(torch.cat([enc[a][1], joined], -1)))
        return reps
