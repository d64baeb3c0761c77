"""Tri-CDR (Ma et al., Triple Sequence Learning for Cross-domain Recommendation, TOIS 2024).

Three sequences per user: the source-domain, the target-domain and the mixed sequence, each
encoded by its own causal self-attention encoder. Triple cross-domain attention lets each
single-domain state attend (causally) over the mixed sequence's states, and the fused state
predicts the next item of its domain. Triple contrastive learning ties the three views together:
a coarse-grained InfoNCE between each single-domain representation and the mixed one (other users
of the batch are negatives), and a fine-grained triplet term: for the domain a row's final
target belongs to (its "target" domain), the mixed representation must be closer to the target
sequence than to the source sequence by a margin.

Here the single-domain states live at merged positions (see c2dsr.split_domain / align), the
mixed states are shared by both directions, and each target is scored by a softmax over its own
domain's items (dot product with the item embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmemf.config import check_fields
from llmemf.data.batching import Batch, DataBundle
from llmemf.models.base import Recommender
from llmemf.models.cross_domain import align, split_domain
from llmemf.models.layers import SequenceEncoder, domain_cross_entropy, item_embedding, score_candidates


@dataclass
class TriCDRConfig:
    hidden: int = 256  # item embedding and model width (same backbone width as SASRec/C2DSR here)
    n_blocks: int = 2  # self-attention blocks per encoder
    n_heads: int = 1
    dropout: float = 0.2
    coarse_weight: float = 0.1  # weight of the coarse-grained InfoNCE terms
    fine_weight: float = 0.1  # weight of the fine-grained triplet term
    temperature: float = 0.5  # InfoNCE temperature
    margin: float = 0.2  # triplet margin on cosine similarities

    def __post_init__(self) -> None:
        check_fields(
            self,
            "model.",
            positive=("hidden", "n_blocks", "n_heads", "temperature"),
            nonneg=("coarse_weight", "fine_weight", "margin"),
            fraction=("dropout",),
            divides=("hidden", "n_heads"),
        )


class TriCDR(Recommender):
    Config = TriCDRConfig
    reference = "Ma et al., Triple Sequence Learning for Cross-domain Recommendation, ACM TOIS 2024"
    summary = "source/target/mixed self-attention encoders, triple cross-domain attention, triple contrastive learning"

    def __init__(self, config: TriCDRConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        d = config.hidden
        self.n_x = self.domain_ranges[0][1]
        self.item = item_embedding(self.n_items, d, self.pad_id)
        enc = lambda: SequenceEncoder(d, bundle.max_len, config.n_blocks, config.n_heads, config.dropout)  # noqa: E731
        self.enc_xy, self.enc_x, self.enc_y = enc(), enc(), enc()
        self.cross = nn.ModuleList([nn.MultiheadAttention(d, config.n_heads, dropout=config.dropout, batch_first=True) for _ in range(2)])
        self.ln = nn.ModuleList([nn.LayerNorm(d), nn.LayerNorm(d)])

    def views(self, xy: torch.Tensor):
        """Mixed states (B, L, d), per-domain fused states [(B, L, d)] x 2 and raw single states."""
        valid = xy != self.pad_id
        at = [xy < self.n_x, valid & (xy >= self.n_x)]
        emb = self.item(xy) * self.config.hidden**0.5
        h_xy = self.enc_xy(emb, valid)
        L = xy.shape[1]
        # Causal cross attention: a state at t may read mixed states <= t (and always itself: no empty row).
        blocked = ~torch.ones(L, L, dtype=torch.bool, device=xy.device).tril()  # True = not allowed
        singles, fused = [], []
        for d, enc in enumerate((self.enc_x, self.enc_y)):
            ids, index = split_domain(xy, at[d], self.pad_id)
            h = align(enc(self.item(ids) * self.config.hidden**0.5, ids != self.pad_id), index)  # (B, L, d)
            c, _ = self.cross[d](h, h_xy, h_xy, attn_mask=blocked, need_weights=False)
            singles.append(h)
            fused.append(self.ln[d](h + c))
        return h_xy, fused, singles, at

    def _logits(self, h: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return h @ self.item.weight[lo:hi].T

    def loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        h_xy, fused, singles, at = self.views(batch.xy)
        total, count = h_xy.new_zeros(()), 0
        for d, (lo, hi) in enumerate(self.domain_ranges):
            t = torch.where((batch.xy_target >= lo) & (batch.xy_target < hi), batch.xy_target, self.pad_id)
            s, c = domain_cross_entropy(self._logits, fused[d], t, self.domain_ranges, self.pad_id)
            total, count = total + s, count + c
        rec = total / max(count, 1)

        # Triple contrastive learning on sequence-level representations (last position).
        z_m = F.normalize(h_xy[:, -1], dim=-1)
        z = [F.normalize(s[:, -1], dim=-1) for s in singles]
        has = [a.any(1) for a in at]  # rows that have items of the domain
        coarse = h_xy.new_zeros(())
        for d in (0, 1):
            if int(has[d].sum()) > 1:
                logits = z_m[has[d]] @ z[d][has[d]].T / cfg.temperature  # (n, n): own user on the diagonal
                labels = torch.arange(logits.shape[0], device=logits.device)
                coarse = coarse + (F.cross_entropy(logits.float(), labels) + F.cross_entropy(logits.float().T, labels)) / 2
        # Fine-grained: the row's target domain = domain of its last training target.
        last = batch.xy_target[:, -1]
        tgt_y = last >= self.n_x
        sim = [(z_m * z[d]).sum(-1) for d in (0, 1)]  # (B,)
        s_target = torch.where(tgt_y, sim[1], sim[0])
        s_source = torch.where(tgt_y, sim[0], sim[1])
        both = has[0] & has[1]
        fine = (F.relu(cfg.margin + s_source - s_target) * both).sum() / both.sum().clamp(min=1)
        return rec + cfg.coarse_weight * coarse + cfg.fine_weight * fine

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        _, fused, _, _ = self.views(batch.xy)
        lo, hi = self.domain_ranges[domain]
        return score_candidates(fused[domain][:, -1], self.item.weight, lo, hi, candidates)
