"""π-Net (Ma et al., π-Net: A Parallel Information-sharing Network for Shared-account Cross-domain
Sequential Recommendations, SIGIR 2019), as the authors' TensorFlow code computes it (mamuyang/PINet,
``PiNet.py``; settings from ``Train2.py``). PSJNet-I of the journal version is this model.

For target domain A, with B the other domain (both directions run in parallel):
    encoder     a GRU over A's items and one over B's items (separate per-domain item tables)
    filter      the Shared-account Filter Unit, a recurrent cell over B's positions: at each B item,
                input [B's GRU output ; A's GRU output at the last A item before it], and for each of K
                latent members k (member vectors m_k):
                    f_k = sigmoid([b ; a ; s] W_f + b_f + m_k V_f)
                    c_k = tanh([b ; s] W_s + b_s + m_k V_f)     (the code adds V_f's member term here too;
                                                                 its V_s is created and never used)
                    s' = mean_k (f_k * s + (1 - f_k) * c_k)
    transfer    the Cross-domain Transfer Unit, a GRU over the filter's outputs (B's positions)
    decoder     dropout, then a dense layer [transfer state of B ; A's GRU state] -> A's items with a
                per-item bias; softmax cross-entropy over A's items
Every GRU / filter cell has TF1's DropoutWrapper with keep 0.8 on input, output and state; TF1 GRU cells
(cross_domain.TFGRUCell); Glorot-normal kernels; filter biases start at 1.0, the decoder's at 0.

Differences forced by the shared protocol (docs/baselines.md): each cell runs over its domain's positions of
the merged, left-padded sequence (cross_domain.DomainRNN), and every merged position with a next item is a
training target scored from the representation of the target's domain at that position (the official data
give one target per domain per sequence; one training sequence per user here); the one trainer clips
gradients by norm when asked (the official clips each value to +-5, not done here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmemf.config import check_fields
from llmemf.data.batching import DataBundle, domain_masks
from llmemf.models.cross_domain import DomainGRU, DomainRNN, PerDomainStateModel, domain_decoder, stacked_item_table
from llmemf.models.layers import Dropout


@dataclass
class PiNetConfig:
    hidden: int = 100  # item embedding and every cell's width (official embedding_size = hidden_size = 100)
    n_members: int = 4  # K latent account members in the filter unit (official 4)
    dropout: float = 0.2  # every cell's input / output / state and the decoder input (official keep_prob 0.8)

    def __post_init__(self) -> None:
        check_fields(self, "model.", positive=("hidden", "n_members"), fraction=("dropout",))


class FilterCell(nn.Module):
    """The official Shared-account Filter Unit cell (module docstring): input [own ; other] (2h), state h."""

    def __init__(self, d: int, n_members: int):
        super().__init__()
        self.members = nn.Parameter(torch.empty(n_members, d))  # (K, e) member embeddings
        self.w_f = nn.Linear(3 * d, d)  # [own ; other ; state] -> gate
        self.v_f = nn.Linear(d, d, bias=False)  # member term
        self.w_s = nn.Linear(2 * d, d)  # [own ; state] -> candidate
        with torch.no_grad():
            for p in (self.members, self.w_f.weight, self.v_f.weight, self.w_s.weight):
                nn.init.xavier_normal_(p)
            self.w_f.bias.fill_(1.0)
            self.w_s.bias.fill_(1.0)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        own = x[:, : s.shape[1]]
        u = self.v_f(self.members)  # (K, d)
        f = torch.sigmoid(self.w_f(torch.cat([x, s], -1))[:, None] + u)  # (B, K, d)
        c = torch.tanh(self.w_s(torch.cat([own, s], -1))[:, None] + u)  # (B, K, d)
        return (f * s[:, None] + (1 - f) * c).mean(1)


class PiNet(PerDomainStateModel):
    Config = PiNetConfig
    reference = "Ma et al., π-Net: A Parallel Information-sharing Network for Shared-account Cross-domain Sequential Recommendations, SIGIR 2019"
    summary = "per-domain GRUs, recurrent shared-account filter + cross-domain transfer GRU, dense decoder"

    def __init__(self, config: PiNetConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        d, p = config.hidden, config.dropout
        self.n_x = self.domain_ranges[0][1]
        self.item = stacked_item_table(self.n_items, d, self.pad_id, self.domain_ranges)
        self.encoder = nn.ModuleList([DomainGRU(d, d, p) for _ in range(2)])
        # filter[a] / transfer[a] run over the OTHER domain's positions and feed the prediction of domain a
        self.filter = nn.ModuleList([DomainRNN(FilterCell(d, config.n_members), d, p) for _ in range(2)])
        self.transfer = nn.ModuleList([DomainGRU(d, d, p) for _ in range(2)])
        self.drop = Dropout(p)
        self.out, self.out_bias = domain_decoder(self.n_items, 2 * d, self.domain_ranges)  # [transfer ; own state] -> items, the official order

    def domain_states(self, xy: torch.Tensor) -> list[torch.Tensor]:
        """(B, L) merged ids -> per domain (B, L, 2h) decoder input for predicting that domain's next item
        after each merged position."""
        at = domain_masks(xy, self.n_x, self.pad_id)
        emb = self.item(xy)
        enc = [self.encoder[d](emb, at[d]) for d in (0, 1)]  # (outputs, states) at merged positions
        reps = []
        for a in (0, 1):
            b = 1 - a
            f_out, _ = self.filter[a](torch.cat([enc[b][0], enc[a][0]], -1), at[b])  # over B's positions
            _, t_state = self.transfer[a](f_out, at[b])
            reps.append(self.drop(torch.cat([t_state, enc[a][1]], -1)))  # official order [transfer_B ; encoder_A]
        return reps
