"""GRU4Rec (Hidasi et al., ICLR 2016 / arXiv 2015) on the merged cross-domain sequence.

Item embedding -> GRU over the sequence -> the hidden state after each item, projected back to the
embedding width, scores the next item by dot product with the (tied) item embeddings. Each target
is scored by a softmax over its own domain's items (cross-entropy, the loss of the follow-up paper
Hidasi & Karatzoglou 2018, and the same objective every sequential model here uses), instead of the
2015 paper's TOP1/BPR ranking losses over mini-batch negatives. The paper's best runs fed one-hot
items to the GRU; an embedding input layer (which the paper also tried) keeps the input cost
independent of the catalogue size (64k items on Food-Kitchen).

Left padding: the GRU state is held at zero while the input is padding, so a user's state does not
depend on how wide their batch happens to be.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmemf.config import check_fields
from llmemf.data.batching import DataBundle
from llmemf.models.layers import Dropout, MergedSequenceModel, item_embedding


@dataclass
class GRU4RecConfig:
    hidden: int = 100  # GRU units (the paper's best setting on its session data)
    embedding: int = 100  # item embedding width (input and tied output)
    n_layers: int = 1  # stacked GRU layers (the paper found one enough)
    dropout: float = 0.25  # on the embeddings and on the GRU output

    def __post_init__(self) -> None:
        check_fields(self, "model.", positive=("hidden", "embedding", "n_layers"), fraction=("dropout",))


class GRU4Rec(MergedSequenceModel):
    Config = GRU4RecConfig
    reference = "Hidasi et al., Session-based Recommendations with Recurrent Neural Networks, ICLR 2016"
    summary = "GRU over the merged sequence, dot-product next-item scores"

    def __init__(self, config: GRU4RecConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        d, h = config.embedding, config.hidden
        self.item = item_embedding(self.n_items, d, self.pad_id)
        self.cells = nn.ModuleList([nn.GRUCell(d if i == 0 else h, h) for i in range(config.n_layers)])
        self.drop = Dropout(config.dropout)
        self.out = nn.Linear(h, d)  # hidden state -> item embedding space

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded ids -> (B, L, d) states; position t has read items <= t."""
        B, L = seq.shape
        valid = (seq != self.pad_id)[..., None]  # (B, L, 1)
        x = self.drop(self.item(seq))  # (B, L, d)
        for cell in self.cells:
            h = x.new_zeros(B, cell.hidden_size)
            outs = []
            for t in range(L):  # a loop over time (<= max_len steps), not over users
                h = torch.where(valid[:, t], cell(x[:, t], h), h)  # stay at zero through the padding
                outs.append(h)
            x = torch.stack(outs, 1)  # (B, L, h)
        return self.out(self.drop(x))  # (B, L, d)
