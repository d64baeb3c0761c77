"""SASRec (Kang & McAuley, ICDM 2018) on the merged cross-domain sequence, as the authors' code computes it
(kang205/SASRec, ``model.py`` and ``modules.py``; pmixer/SASRec.pytorch is a port with a different block
layout by default and is not followed):

    x_0 = dropout(sqrt(d) E[s] + P) * mask
    block:  q = LN(x);  a = q + dropout(softmax(causal, key-masked (q W_q)(x W_k)^T / sqrt(d_h))) (x W_v)
            x = (LN(a) + W_2 dropout(ReLU(W_1 LN(a))) ...) * mask     (dropouts after each of W_1, W_2)
    output LN(x);  score(i) = out . E[i]                                (tied item vectors)

Queries are normalised and keys are not; the attention residual adds the normalised queries; there is no
attention output projection; the feed-forward is ReLU with its residual on its normalised input; every
LayerNorm has eps 1e-8; every matrix is Glorot-uniform and every bias zero (TF1 defaults). Defaults are the
authors' Amazon setting: width 50, two blocks, one head, dropout 0.5; the loss is theirs: binary
cross-entropy of the target against one sampled negative at every position.

Differences forced by the shared protocol (docs/baselines.md): the negative is drawn from the target's own
domain (evaluation ranks within a domain; the official draws from the whole catalogue, excluding the
user's items, which are rare collisions here); max_len is the protocol's (15), positions are counted
from the right (the same embedding for the same slot of a left-padded window). ``loss=softmax`` is the
full softmax over the target's domain that the other sequential models share (not the paper's loss;
``configs/models/sasrec_softmax.yaml`` sets it at the scenario README's reference settings).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmemf.config import check_fields
from llmemf.data.batching import Batch, DataBundle
from llmemf.models.cross_domain import sample_in_domain
from llmemf.models.layers import Dropout, MergedSequenceModel


@dataclass
class SASRecConfig:
    hidden: int = 50  # item embedding and model width (official hidden_units 50)
    n_blocks: int = 2  # self-attention blocks (official 2)
    n_heads: int = 1  # (official 1)
    dropout: float = 0.5  # official on the Amazon data (Beauty, Video); 0.2 only on MovieLens-1M
    loss: str = "bce"  # "bce": official, the target against one sampled in-domain negative per position |
    # "softmax": full softmax over the target's domain (the objective the other sequential models share)
    init: str = "xavier"  # "xavier": Glorot-uniform matrices, zero biases (the official TF1 defaults) | "normal": item rows
    # N(0, 1/d), torch defaults elsewhere

    def __post_init__(self) -> None:
        check_fields(
            self,
            "model.",
            positive=("hidden", "n_blocks", "n_heads"),
            fraction=("dropout",),
            choices={"init": ("xavier", "normal"), "loss": ("bce", "softmax")},
            divides=("hidden", "n_heads"),
        )


class Block(nn.Module):
    """One SASRec block in the official layout (module docstring)."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        assert d % n_heads == 0, f"width {d} must divide into {n_heads} heads"
        self.n_heads = n_heads
        self.ln_q, self.ln_ff = nn.LayerNorm(d, eps=1e-8), nn.LayerNorm(d, eps=1e-8)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.ff1, self.ff2 = nn.Linear(d, d), nn.Linear(d, d)  # the official kernel-size-1 conv1d layers
        self.drop_att, self.drop_ff1, self.drop_ff2 = Dropout(dropout), Dropout(dropout), Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, L, d); allowed (B, 1, L, L) causal & real keys; valid (B, L) -> (B, L, d)."""
        B, L, d = x.shape
        H = self.n_heads
        q_in = self.ln_q(x)
        q, k, v = (t.view(B, L, H, d // H).transpose(1, 2) for t in (self.q(q_in), self.k(x), self.v(x)))  # (B, H, L, dh)
        att = (q @ k.transpose(-1, -2)) / (d // H) ** 0.5  # (B, H, L, L)
        att = torch.softmax(att.masked_fill(~allowed, -(2.0**32) + 1), -1) * valid[:, None, :, None]  # query masking
        a = (self.drop_att(att) @ v).transpose(1, 2).reshape(B, L, d) + q_in
        y = self.ln_ff(a)
        return (self.drop_ff2(self.ff2(self.drop_ff1(F.relu(self.ff1(y))))) + y) * valid[..., None]


class SASRec(MergedSequenceModel):
    Config = SASRecConfig
    reference = "Kang & McAuley, Self-Attentive Sequential Recommendation, ICDM 2018 (authors' code)"
    summary = "causal self-attention over the merged sequence, dot-product next-item scores"
    adam_betas = (0.9, 0.98)  # official model.py: tf.train.AdamOptimizer(learning_rate=args.lr, beta2=0.98)

    def __init__(self, config: SASRecConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        if config.init not in ("xavier", "normal"):
            raise ValueError(f"init must be 'normal' or 'xavier', got {config.init!r}")
        if config.loss not in ("bce", "softmax"):
            raise ValueError(f"loss must be 'bce' or 'softmax', got {config.loss!r}")
        d = config.hidden
        self.item = nn.Embedding(self.n_items + 1, d, padding_idx=self.pad_id)
        self.pos = nn.Embedding(bundle.max_len, d)  # row 0 = the most recent slot
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(d, config.n_heads, config.dropout) for _ in range(config.n_blocks)])
        self.ln_f = nn.LayerNorm(d, eps=1e-8)
        with torch.no_grad():
            if config.init == "xavier":
                for p in self.parameters():
                    if p.dim() >= 2:
                        nn.init.xavier_uniform_(p)
                for m in self.modules():
                    if isinstance(m, nn.Linear):
                        m.bias.zero_()
            else:
                nn.init.normal_(self.item.weight, std=d**-0.5)
            self.item.weight[self.pad_id].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, d) states."""
        B, L = seq.shape
        valid = seq != self.pad_id
        pos = torch.arange(L - 1, -1, -1, device=seq.device)  # (L,) distance from the right end
        x = self.drop(self.item(seq) * self.config.hidden**0.5 + self.pos(pos)[None]) * valid[..., None]
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()
        allowed = (causal[None] & valid[:, None, :])[:, None]  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, allowed, valid)
        return self.ln_f(x)

    def loss(self, batch: Batch) -> torch.Tensor:
        if self.config.loss == "softmax":
            return super().loss(batch)
        h = self.encode(batch.xy)  # (B, L, d)
        pos = batch.xy_target
        real = pos != self.pad_id
        neg = sample_in_domain(torch.where(real, pos, 0), self.domain_ranges)[..., 0]  # (B, L)
        lp = (h * self.item(pos)).sum(-1)
        ln = (h * self.item(neg)).sum(-1)
        per = -(F.logsigmoid(lp) + F.logsigmoid(-ln))  # -log sigmoid(pos) - log(1 - sigmoid(neg))
        return (per * real).sum() / real.sum().clamp_min(1)
