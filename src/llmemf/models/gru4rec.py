"""GRU4Rec (Hidasi et al., ICLR 2016; Hidasi & Karatzoglou, CIKM 2018) on the merged cross-domain sequence,
as the authors' official PyTorch code computes it (hidasib/GRU4Rec_PyTorch_Official, ``gru4rec_pytorch.py``)
with its "shared" (constrained-embedding) cross-entropy setting of 100 units
(``paramfiles/rsc15_xe_shared_100_best.py``):

    h_t = GRU(dropout_embed(W_y[s_t]), h_{t-1})      one table W_y is the input and output item vectors
    out_t = dropout_hidden(h_t)                     and the dropped output is the state carried on
    score_t(i) = out_t . W_y[i] + b_y[i]             b_y: one output bias per item (zero at start)

W_y starts Glorot-uniform +-sqrt(6 / (n_items + hidden)) (the official ``init_parameter_matrix``), the
GRU weights with the official per-gate scaling, every bias at zero. As in the official training loop
(``h.detach_()`` before every step), gradients do not flow from one step's loss into earlier steps.

Differences forced by the shared protocol (docs/baselines.md): each target is scored by a softmax over
its own domain's items (the official cross-entropy runs over in-batch targets plus 2048 sampled items with
a log-q correction, which estimates the full softmax); sequences are padded batches, not session-parallel
mini-batches, so the one trainer makes one optimiser step per batch of users (Adam), not one per time step
(Adagrad).

Left padding: the state is held at zero while the input is padding, so a user's state does not depend on
how wide their batch happens to be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from llmemf.config import check_fields
from llmemf.data.batching import DataBundle
from llmemf.models.layers import Dropout, MergedSequenceModel


@dataclass
class GRU4RecConfig:
    hidden: int = 100  # GRU units, also the item vector width (constrained embedding); official 100-unit setting
    n_layers: int = 1  # stacked GRU layers, all ``hidden`` wide (official: one)
    dropout_embed: float = 0.0  # on the input item vectors (official dropout_p_embed; 0.0 in the 100-unit setting)
    dropout_hidden: float = 0.4  # on each layer's output, which is also the carried state (official dropout_p_hidden: 0.4)
    truncate_bptt: bool = True  # official: the state is detached before each step (one-step truncated backpropagation)

    def __post_init__(self) -> None:
        check_fields(self, "model.", positive=("hidden", "n_layers"), fraction=("dropout_embed", "dropout_hidden"))


def uniform_glorot(t: torch.Tensor, scale0: float = 1.0, scale1: float = 1.0) -> None:
    """The official ``init_parameter_matrix``: U(-s, s), s = sqrt(6 / (rows / scale0 + cols / scale1))."""
    s = math.sqrt(6.0 / (t.shape[0] / scale0 + t.shape[1] / scale1))
    nn.init.uniform_(t, -s, s)


class GRU4Rec(MergedSequenceModel):
    Config = GRU4RecConfig
    reference = "Hidasi et al., Session-based Recommendations with Recurrent Neural Networks, ICLR 2016 (official PyTorch code)"
    summary = "GRU over the merged sequence, tied item vectors with per-item output bias"

    def __init__(self, config: GRU4RecConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        h = config.hidden
        self.item = nn.Embedding(self.n_items + 1, h, padding_idx=self.pad_id)  # W_y (+ a zero pad row)
        self.out_bias = nn.Parameter(torch.zeros(self.n_items + 1))  # b_y
        self.cells = nn.ModuleList([nn.GRUCell(h, h) for _ in range(config.n_layers)])
        self.drop_embed, self.drop_hidden = Dropout(config.dropout_embed), Dropout(config.dropout_hidden)
        with torch.no_grad():
            uniform_glorot(self.item.weight[: self.n_items])
            self.item.weight[self.pad_id].zero_()
            for cell in self.cells:
                uniform_glorot(cell.weight_ih, scale1=3)
                uniform_glorot(cell.weight_hh, scale1=3)
                cell.bias_ih.zero_()
                cell.bias_hh.zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded ids -> (B, L, h) outputs; position t has read items <= t."""
        B, L = seq.shape
        valid = (seq != self.pad_id)[..., None]  # (B, L, 1)
        x = self.drop_embed(self.item(seq))  # (B, L, h)
        detach = self.training and self.config.truncate_bptt
        for cell in self.cells:
            h = x.new_zeros(B, cell.hidden_size)
            outs = []
            for t in range(L):  # a loop over time (<= max_len steps), not over users
                step = self.drop_hidden(cell(x[:, t], h.detach() if detach else h))
                h = torch.where(valid[:, t], step, h)  # stay at zero through the padding
                outs.append(h)
            x = torch.stack(outs, 1)  # (B, L, h): the next layer's input
        return x
