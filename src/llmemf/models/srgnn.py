"""SR-GNN (Wu et al., AAAI 2019): session graphs + gated graph neural network.

Each sequence becomes a directed graph whose nodes are its distinct items and whose edges are its
consecutive transitions (in- and out-adjacency each normalised by node degree). A gated GNN
(message passing followed by a GRU update) refines the node vectors; the sequence is read out by
soft attention of every position on the last item, combined with the last item's own vector:

    alpha_i = q^T sigmoid(W1 v_last + W2 v_i + c)     s_g = sum_i alpha_i v_i
    s = W3 [s_g ; v_last]                            score(j) = s . e_j  (tied item embeddings)

As the official code (CRIPAC-DIG/SR-GNN, ``pytorch_code/model.py``, ``utils.py``, ``main.py``): every
prefix of a training sequence that has a next item is one example (the official preprocessing makes
each prefix a session); in- and out-adjacency are normalised by the in- and out-degree of the node;
every weight and bias starts U(-1/sqrt(d), 1/sqrt(d)); scores are tied to the item vectors, no bias.
Its schedule (Adam lr 1e-3 x 0.1 every 3 epochs, L2 1e-5, batch of 100 prefixes) is in
configs/models/srgnn.yaml through the trainer's ``train.lr_step``.

Differences forced by the shared protocol (docs/baselines.md): each target is scored by a softmax over its
own domain's items (the official softmax runs over the whole, single-domain catalogue); a batch holds
the prefixes of ``batch_size`` users, not 100 prefixes drawn independently (the config's 13 users hold
~100 prefixes on Food-Kitchen, 7.8 on average each).

Batched graphs without a Python loop over sequences. Node slots are the L positions of the
left-padded row: position t is an alias of the first position holding the same item, so repeated
items share one node and later copies are unused slots. With P the (L, L) one-hot alias matrix,
the edge counts of the prefix ending at t are sum_{s<t} P_s^T P_{s+1}: one cumulative sum gives
the adjacency of every prefix at once, (B, L, L, L).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmemf.config import check_fields
from llmemf.data.batching import Batch, DataBundle
from llmemf.models.base import Recommender
from llmemf.models.layers import domain_cross_entropy, score_candidates


@dataclass
class SRGNNConfig:
    hidden: int = 100  # node / item embedding width (the paper's 100)
    steps: int = 1  # gated GNN propagation steps (the paper's 1)

    def __post_init__(self) -> None:
        check_fields(self, "model.", positive=("hidden", "steps"))


def session_graphs(seq: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) left-padded ids -> alias (B, L) node slot of each position (L for padding) and
    adj (B, L, L, L): adj[b, t] is the 0/1 transition matrix (from-node, to-node) of the prefix
    of row b that ends at position t."""
    B, L = seq.shape
    valid = seq != pad_id
    pos = torch.arange(L, device=seq.device)
    same = (seq[:, :, None] == seq[:, None, :]) & valid[:, :, None] & valid[:, None, :]  # (B, L, L)
    alias = torch.where(same, pos, L).amin(2)  # (B, L) first position with the same item; L = padding
    P = F.one_hot(alias, L + 1)[..., :L].float()  # (B, L, L) position -> node slot, zero rows for padding
    step = torch.einsum("bsi,bsj->bsij", P[:, :-1], P[:, 1:])  # (B, L-1, L, L) edge of transition s -> s+1
    adj = torch.cat([step.new_zeros(B, 1, L, L), step.cumsum(1)], dim=1).clamp_max(1.0)  # (B, L, L, L)
    return alias, adj


class GatedGNN(nn.Module):
    """Message passing along in- and out-edges, then a GRU update of every node (Li et al. 2016), as the
    official ``GNNCell``: in = A_in (W_in h + b_in) + b_iah, out = A_out (W_out h + b_out) + b_oah."""

    def __init__(self, d: int, steps: int):
        super().__init__()
        self.steps = steps
        self.edge_in, self.edge_out = nn.Linear(d, d), nn.Linear(d, d)
        self.b_iah, self.b_oah = nn.Parameter(torch.zeros(d)), nn.Parameter(torch.zeros(d))  # added after aggregation
        self.gru = nn.GRUCell(2 * d, d)

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """h (N, L, d) node vectors; adj (N, L, L) 0/1 from->to. Returns (N, L, d)."""
        N, L, d = h.shape
        a_out = adj / adj.sum(2, keepdim=True).clamp_min(1.0)  # row i: successors of i, / out-degree
        a_in = adj.transpose(1, 2) / adj.sum(1)[..., None].clamp_min(1.0)  # row j: predecessors of j, / in-degree
        for _ in range(self.steps):
            m = torch.cat([a_in @ self.edge_in(h) + self.b_iah, a_out @ self.edge_out(h) + self.b_oah], dim=2)  # (N, L, 2d)
            h = self.gru(m.reshape(N * L, 2 * d), h.reshape(N * L, d)).view(N, L, d)
        return h


class SRGNN(Recommender):
    Config = SRGNNConfig
    reference = "Wu et al., Session-based Recommendation with Graph Neural Networks, AAAI 2019"
    summary = "gated GNN over each sequence's transition graph, attention readout on the last item"

    def __init__(self, config: SRGNNConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        d = config.hidden
        self.item = nn.Embedding(self.n_items + 1, d, padding_idx=self.pad_id)
        self.gnn = GatedGNN(d, config.steps)
        self.w_last, self.w_node = nn.Linear(d, d), nn.Linear(d, d)  # W1, W2 (+ c) of the attention
        self.q = nn.Linear(d, 1, bias=False)
        self.combine = nn.Linear(2 * d, d)  # W3
        bound = d**-0.5  # the paper's uniform(-1/sqrt(d), 1/sqrt(d)) initialisation of every weight
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        with torch.no_grad():
            self.item.weight[self.pad_id].zero_()

    def session_vectors(self, seq: torch.Tensor, rows: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """The vector s of the prefix of row ``rows[m]`` that ends at position ``ends[m]``: (M, d)."""
        L = seq.shape[1]
        alias, adj = session_graphs(seq, self.pad_id)
        seq, alias = seq[rows], alias[rows]  # (M, L)
        h = self.gnn(self.item(seq), adj[rows, ends])  # (M, L, d) node vectors of each prefix's graph
        pos = torch.arange(L, device=seq.device)
        in_prefix = (alias < L) & (pos[None] <= ends[:, None])  # (M, L) positions the prefix holds
        v = h.gather(1, alias.clamp_max(L - 1)[..., None].expand_as(h))  # (M, L, d) node vector per position
        v_last = v.gather(1, ends[:, None, None].expand(-1, 1, v.shape[2]))[:, 0]  # (M, d)
        alpha = self.q(torch.sigmoid(self.w_last(v_last)[:, None] + self.w_node(v)))  # (M, L, 1)
        s_g = (alpha * v * in_prefix[..., None]).sum(1)  # (M, d)
        return self.combine(torch.cat([s_g, v_last], dim=1))

    def _logits(self, h: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return h @ self.item.weight[lo:hi].T

    def loss(self, batch: Batch) -> torch.Tensor:
        rows, ends = (batch.xy_target != self.pad_id).nonzero(as_tuple=True)  # every prefix with a next item
        s = self.session_vectors(batch.xy, rows, ends)  # (M, d)
        total, count = domain_cross_entropy(self._logits, s, batch.xy_target[rows, ends], self.domain_ranges, self.pad_id)
        return total / max(count, 1)

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        B, L = batch.xy.shape
        rows = torch.arange(B, device=batch.xy.device)
        s = self.session_vectors(batch.xy, rows, torch.full_like(rows, L - 1))  # (B, d) whole history
        lo, hi = self.domain_ranges[domain]
        return score_candidates(s, self.item.weight, lo, hi, candidates)
