"""C2DSR (Cao et al., Contrastive Cross-Domain Sequential Recommendation, CIKM 2022), as the authors'
code computes it (cjx96/C2DSR at 89d4b92, ``C2DSR_src/``; docs/baselines.md maps every component).

Three views of a user's merged history s_1..s_n: the merged sequence XY and the X-only and Y-only
sequences, the latter aligned to the merged positions (padding where the other domain's items are).
Each view has its own item table and a one-layer graph convolution over its own item graph
(models/graph.py: consecutive items, directed, count-weighted, row-normalised; the X and Y graphs
link consecutive items of each domain's own subsequence):
    g = (e + A dropout(e) + b) / 2,   input of the view's encoder = (e + g) * sqrt(d) + position
and its own causal self-attention encoder (official block layout: Q = LN(x), x = Q + MHA(Q, x, x),
x = FFN(LN(x)) with a residual inside the FFN; padding zeroed after every block but still attended to,
so every row is left-padded to ``max_len`` as the official loader does). At the last ``loss_positions``
merged positions, full softmax over a domain's items plus one padding class (``lin_PAD``):
    shared heads:   h_xy[t] predicts s_{t+1} in its own domain's head (the other head is not supervised)
    specific heads: h_xy[t] + h_x[t] predicts the next X item at X positions (Y alike); the padding
                    logit comes from h_x[t] alone
each head summed over its targets and divided by (rows x loss_positions). Infomax: a bilinear
discriminator D_X scores the X-specific representation (h_x pooled over the X positions with a
target) against the merged representation pooled over the Y positions: real, or from ``corru_y``
(Y items kept, X items replaced by random X items); D_Y alike with ``corru_x`` (X kept, Y randomised).
    loss = lam (x_share + y_share + x + y) + (1 - lam) (x_mi + y_mi)
Scores: lin_X(h_xy[last] + h_x[last X position]) (Y alike). The official optimiser is Adam with betas
(0.9, 0.98) and no L2 (``--weight_decay`` is parsed but never reaches the optimiser): ``adam_betas``
and configs/models/c2dsr.yaml.

Official data details reproduced here: rows whose X (or Y) sequence has no supervised position are
dropped from training (loader.py "pass sequence x/y": weight 0 here); a domain's last item before
the final one is removed from its view when the final item is of the other domain; the Y test uses
``ground[-1] > source_item_num`` (so a sequence ending in the first Y item loses its last Y target
in the specific head, as officially); the corrupted sequences are drawn once per training user and
reused every epoch (``fixed_corruptions``; the official loader draws them when it loads the data).

``train_negatives`` > 0 is a speed variant, not the paper's loss (configs/models/c2dsr_fast.yaml):
each head's softmax is over the target, ``train_negatives`` items of its domain shared by the step
(uniform or popularity^0.75, importance-weighted) and the padding class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmemf.config import check_fields
from llmemf.data.batching import Batch, DataBundle, domain_masks
from llmemf.data.dataset import train_item_counts
from llmemf.models.base import Recommender
from llmemf.models.cross_domain import next_in_domain
from llmemf.models.graph import domain_transition_graphs, receptive_field, sparse_aggregate
from llmemf.models.layers import Dropout, sampled_softmax_nll

# ---------------------------------------------------------------- model


@dataclass
class C2DSRConfig:
    hidden: int = 256  # item embedding and model width (official --hidden_units 256)
    gnn_layers: int = 1  # graph convolution depth (official --GNN 1)
    n_blocks: int = 2  # self-attention blocks per encoder (official --num_blocks 2)
    n_heads: int = 1  # attention heads (official --num_heads 1)
    dropout: float = 0.2  # embedding, attention, feed-forward and GNN-input dropout (official --dropout 0.2)
    lam: float = 0.7  # weight of the next-item losses; 1 - lam weighs the infomax losses (official --lambda 0.7)
    loss_positions: int = 10  # only the last this many merged positions are supervised (official trainer.py "used = 10")
    # Corrupted sequences drawn once per training user and reused every epoch, as the official loader does (it draws
    # them when it loads the data); false: a fresh draw every step.
    fixed_corruptions: bool = True
    # 0: full softmax over the target's domain + the padding class (the paper's loss). k > 0: the speed variant
    # (configs/models/c2dsr_fast.yaml): target + k negatives of the domain shared by the step + the padding class.
    train_negatives: int = 0
    # k > 0: each negative's logit gets - log(k q) (q its sampling probability), so that the sampled partition
    # function estimates the full one instead of k / n_domain of it (importance-sampled softmax).
    sampled_correction: bool = True
    # k > 0: where negatives come from: "uniform" over the domain, or "popularity" (q proportional to
    # (train count + 1)^0.75, word2vec's proposal: the popular items, the hard negatives, get more updates).
    negative_sampler: str = "uniform"

    def __post_init__(self) -> None:
        check_fields(
            self,
            "model.",
            positive=("hidden", "gnn_layers", "n_blocks", "n_heads", "loss_positions"),
            nonneg=("lam", "train_negatives"),
            fraction=("dropout",),
            choices={"negative_sampler": ("uniform", "popularity")},
            divides=("hidden", "n_heads"),
        )


class FeedForward(nn.Module):
    """Official PointWiseFeedForward (model/C2DSR.py:26-41): x + dropout(W2 relu(dropout(W1 x))); its
    Conv1d of width 1 is a Linear."""

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(d, d), nn.Linear(d, d)
        self.drop1, self.drop2 = Dropout(dropout), Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop2(self.lin2(F.relu(self.drop1(self.lin1(x)))))


class Encoder(nn.Module):
    """Official ATTENTION (model/C2DSR.py:47-108): positions counted from the left (1 = first item,
    0 = padding), per block Q = LN(x), x = Q + MHA(Q, x, x) (causal; padding is zero but not masked
    as a key), x = FFN(LN(x)), padding zeroed; a final LayerNorm. LayerNorm eps 1e-8 as officially."""

    def __init__(self, d: int, max_len: int, n_blocks: int, n_heads: int, dropout: float):
        super().__init__()
        # max_len + 1 rows: a full window has positions 1..max_len (the official table has max_len rows;
        # its data never holds a sequence that long).
        self.pos = nn.Embedding(max_len + 1, d, padding_idx=0)
        self.drop = Dropout(dropout)
        self.attn_norm = nn.ModuleList([nn.LayerNorm(d, eps=1e-8) for _ in range(n_blocks)])
        self.attn = nn.ModuleList([nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True) for _ in range(n_blocks)])
        self.ffn_norm = nn.ModuleList([nn.LayerNorm(d, eps=1e-8) for _ in range(n_blocks)])
        self.ffn = nn.ModuleList([FeedForward(d, dropout) for _ in range(n_blocks)])
        self.norm = nn.LayerNorm(d, eps=1e-8)

    def forward(self, x: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """x (B, L, d) scaled item vectors, present (B, L) the view's positions -> (B, L, d)."""
        keep = present[..., None].to(x.dtype)
        pos = present.long().cumsum(1) * present  # (B, L) 1..n over the view's items, 0 elsewhere
        x = self.drop(x + self.pos(pos)) * keep
        L = x.shape[1]
        future = torch.ones(L, L, dtype=torch.bool, device=x.device).triu(1)  # True: may not attend
        for attn_norm, attn, ffn_norm, ffn in zip(self.attn_norm, self.attn, self.ffn_norm, self.ffn, strict=True):
            q = attn_norm(x)
            a, _ = attn(q, x, x, attn_mask=future, need_weights=False)
            x = ffn(ffn_norm(q + a)) * keep
        return self.norm(x)


class GraphSmoothing(nn.Module):
    """Official GCNLayer (model/GNN.py): per layer h = A dropout(h) + b, output the mean of the input and
    every layer's output. Its GraphConvolution also creates a weight that its forward never uses
    (GNN.py:77-83): not created here."""

    def __init__(self, d: int, layers: int, dropout: float):
        super().__init__()
        self.bias = nn.ParameterList([nn.Parameter(torch.empty(d).uniform_(-(d**-0.5), d**-0.5)) for _ in range(layers)])
        self.drop = Dropout(dropout)

    def forward(self, table: torch.Tensor, adj, items: np.ndarray) -> torch.Tensor:
        """Rows ``items`` (sorted unique ids, U) of the smoothed ``table`` (n, d), from their receptive field only."""
        at = lambda rows: torch.from_numpy(np.searchsorted(rows, items)).to(table.device)  # noqa: E731
        total = table[torch.from_numpy(items).to(table.device)]
        if not len(self.bias):
            return total
        plan = receptive_field(adj, items, len(self.bias))
        h = table[torch.from_numpy(plan[0][0]).to(table.device)]
        outs = [cols for cols, _ in plan[1:]] + [items]
        for b, (_, block), out_rows in zip(self.bias, plan, outs, strict=True):
            h = sparse_aggregate(block, self.drop(h)) + b  # (n_out, d)
            total = total + h[at(out_rows)]
        return total / (len(self.bias) + 1)


class C2DSR(Recommender):
    Config = C2DSRConfig
    reference = "Cao et al., Contrastive Cross-Domain Sequential Recommendation, CIKM 2022 (cjx96/C2DSR)"
    summary = "GNN-smoothed items, self-attention over X, Y and merged sequences, cross-domain contrastive infomax"
    adam_betas: ClassVar[tuple[float, float]] = (0.9, 0.98)  # official torch_utils.get_optimizer('adam'); no L2 (see module doc)

    @property
    def prefers_bf16(self) -> bool:  # type: ignore[override]
        # The sampled variant is a speed option: it trains in bf16 where the device computes bf16 natively.
        # The official loss stays in fp32, as the official code runs it.
        return self.config.train_negatives > 0

    def __init__(self, config: C2DSRConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        d = config.hidden
        self.n_x = self.domain_ranges[0][1]
        self.n_y = self.n_items - self.n_x
        self.max_len = bundle.max_len
        # One table per view (official item_emb, item_emb_X, item_emb_Y), N(0, 1) rows as nn.Embedding's
        # default, the last row padding. The X and Y tables hold their own domain's items only: the
        # official ones have a row for every item, but a view never reads the other domain's rows.
        self.item_xy = nn.Embedding(self.n_items + 1, d, padding_idx=self.n_items)
        self.item_x = nn.Embedding(self.n_x + 1, d, padding_idx=self.n_x)
        self.item_y = nn.Embedding(self.n_y + 1, d, padding_idx=self.n_y)
        # Graphs from the full training sequences (official GraphMaker reads traindata_new.txt); scipy CSR, never trained.
        self.adj = list(domain_transition_graphs(bundle.dataset.splits["train"]["items"], self.n_x, self.n_y))
        self.gnn_xy, self.gnn_x, self.gnn_y = (GraphSmoothing(d, config.gnn_layers, config.dropout) for _ in range(3))
        enc = lambda: Encoder(d, self.max_len, config.n_blocks, config.n_heads, config.dropout)  # noqa: E731
        self.enc_xy, self.enc_x, self.enc_y = enc(), enc(), enc()
        self.lin_x, self.lin_y = nn.Linear(d, self.n_x), nn.Linear(d, self.n_y)  # official lin_X, lin_Y
        self.lin_pad = nn.Linear(d, 1)  # official lin_PAD: the padding class of every training softmax
        self.disc_x, self.disc_y = nn.Bilinear(d, d, 1), nn.Bilinear(d, d, 1)  # official D_X, D_Y
        for disc in (self.disc_x, self.disc_y):
            nn.init.xavier_uniform_(disc.weight)
            nn.init.zeros_(disc.bias)
        if config.negative_sampler not in ("uniform", "popularity"):
            raise ValueError(f"negative_sampler must be 'uniform' or 'popularity', got {config.negative_sampler!r}")
        if config.negative_sampler == "popularity":
            weight = (torch.from_numpy(train_item_counts(bundle.dataset)).double() + 1) ** 0.75
        else:
            weight = torch.ones(self.n_items, dtype=torch.float64)
        # Per domain: the proposal q over its items (not saved with the model; rebuilt from the data).
        self.neg_q = [(weight[lo:hi] / weight[lo:hi].sum()).float() for lo, hi in self.domain_ranges]
        # Per user and (left-padded) position: the random X item and the random Y item of its corrupted
        # sequences, drawn once like the official loader's (deterministic under the trainer's seed).
        n_users = bundle.n_users
        self.register_buffer("random_x", torch.randint(0, self.n_x, (n_users, self.max_len)), persistent=False)
        self.register_buffer("random_y", torch.randint(self.n_x, self.n_items, (n_users, self.max_len)), persistent=False)

    # -- inputs -----------------------------------------------------------------------------

    def _left_pad(self, t: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, max_len), left-padded as the official loader pads every row."""
        return F.pad(t, (self.max_len - t.shape[1], 0), value=self.pad_id) if t.shape[1] < self.max_len else t

    def _view_inputs(self, view: int, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) local to view 0 (XY, global ids), 1 (X) or 2 (Y), padding = the table's last row ->
        (..., d) encoder inputs (e + GNN(e)) * sqrt(d) (model/C2DSR.py:167-180). The GNN runs once per
        call over the receptive field of the ids present."""
        table = (self.item_xy, self.item_x, self.item_y)[view]
        gnn = (self.gnn_xy, self.gnn_x, self.gnn_y)[view]
        uniq, inv = torch.unique(ids, return_inverse=True)  # sorted: padding (the largest id) last if present
        real = uniq[uniq != table.padding_idx]
        # (U, d); nothing but padding (a view of a domain absent from the batch): no rows
        rows = table.weight[real] + gnn(table.weight, self.adj[view], real.cpu().numpy()) if len(real) else table.weight[:0]
        rows = torch.cat([rows, rows.new_zeros(1, rows.shape[1])])  # padding: the encoder zeroes it anyway
        return rows[inv] * self.config.hidden**0.5

    def _domain_view(self, xy: torch.Tensor, at: torch.Tensor, domain: int) -> torch.Tensor:
        """(B, L) domain-``domain`` view of the merged ids at positions ``at``, padding elsewhere -> (B, L, d) states."""
        lo, hi = self.domain_ranges[domain]
        local = torch.where(at, xy - lo, hi - lo)
        enc = self.enc_x if domain == 0 else self.enc_y
        return enc(self._view_inputs(1 + domain, local), at)

    def corruptions(self, batch: Batch, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) random X ids and random Y ids, one per position, for the corrupted sequences."""
        if self.config.fixed_corruptions:
            return self.random_x[batch.user], self.random_y[batch.user]
        return torch.randint_like(xy, 0, self.n_x), torch.randint_like(xy, self.n_x, self.n_items)

    # -- training ---------------------------------------------------------------------------

    def _nll(self, domain: int, h: torch.Tensor, pad_logit: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Summed -log softmax of targets ``t`` (n,) (domain-local ids) from states ``h`` (n, d) over the
        domain's items and the padding class (logit ``pad_logit`` (n,)): official CrossEntropyLoss over
        cat(lin_X(h), lin_PAD(.)). With 0 < ``train_negatives`` < the domain's size: ``_sampled_nll``."""
        head = self.lin_x if domain == 0 else self.lin_y
        k = self.config.train_negatives
        if 0 < k < head.out_features:
            return self._sampled_nll(domain, h, pad_logit, t, k)
        logits = head(h).float()  # (n, n_dom)
        lse = torch.logaddexp(torch.logsumexp(logits, 1), pad_logit.float())
        return (lse - logits.gather(1, t[:, None])[:, 0]).sum()

    def _sampled_nll(self, domain: int, h: torch.Tensor, pad_logit: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
        """``_nll`` over the target, k negatives of the domain shared by all rows (a negative equal to a row's
        target is left out of that row) and the padding class; ``sampled_correction`` reweighs the negatives
        to stand for the whole domain."""
        head = self.lin_x if domain == 0 else self.lin_y
        q = self.neg_q[domain].to(h.device)
        if self.config.negative_sampler == "uniform":
            negs = torch.randint(0, head.out_features, (k,), device=h.device)
        else:
            negs = torch.multinomial(q, k, replacement=True)
        bias = head.bias[negs]
        if self.config.sampled_correction:  # each negative stands for 1 / (k q) items of the domain
            bias = bias - torch.log(k * q[negs])
        pos = ((h * head.weight[t]).sum(-1) + head.bias[t]).float()
        nll = sampled_softmax_nll(h, pos, head.weight[negs], bias, negs, t).float()  # without the padding class
        return (torch.logaddexp(nll + pos, pad_logit.float()) - pos).sum()

    def loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        xy, tgt = self._left_pad(batch.xy), self._left_pad(batch.xy_target)
        B, L = xy.shape
        (lo_x, hi_x), (lo_y, hi_y) = self.domain_ranges
        pad = self.pad_id
        is_x, is_y = domain_masks(xy, self.n_x, pad)
        valid = xy != pad
        final = tgt[:, -1:]  # (B, 1) the sequence's last item (rows are right-aligned)
        next_x = next_in_domain(tgt, lo_x, hi_x, pad)  # (B, L) next X item after each position
        next_y = next_in_domain(tgt, lo_y, hi_y, pad)
        last_x = is_x & (is_x.flip(1).cumsum(1).flip(1) == 1)  # the row's last X position
        last_y = is_y & (is_y.flip(1).cumsum(1).flip(1) == 1)
        # loader.py:271-312: a domain's positions with a next item of that domain; the last one has it only when
        # the final item is of that domain, else it leaves the view. The Y test is `ground[-1] > source_item_num`.
        at_x = is_x & (~last_x | domain_masks(final, self.n_x, pad)[0])
        at_y = is_y & (~last_y | (final > self.n_x))
        kept = at_x.any(1) & at_y.any(1)  # loader.py:289-313: other rows are not trained on ("pass sequence x/y")
        n_rows = kept.sum().clamp(min=1)

        # Corrupted merged sequences (loader.py:249-269): corru_x keeps X and randomises Y, corru_y the reverse.
        rand_x, rand_y = self.corruptions(batch, xy)
        corru_x = torch.where(is_y, rand_y, xy)
        corru_y = torch.where(is_x, rand_x, xy)
        # The merged encoder runs once over the real and both corrupted sequences (one (3B, L) call).
        merged = self.enc_xy(self._view_inputs(0, torch.cat([xy, corru_x, corru_y])), valid.repeat(3, 1))
        h_xy, h_cx, h_cy = merged.split(B)
        h_x = self._domain_view(xy, at_x, 0)
        h_y = self._domain_view(xy, at_y, 1)

        # Next-item heads on the last u positions (trainer.py:190-234), on the supervised slots only.
        u = min(cfg.loss_positions, L)
        s = slice(L - u, L)
        hs, hx, hy, t = h_xy[:, s], h_x[:, s], h_y[:, s], tgt[:, s]
        keep = kept[:, None]
        share_x, share_y = domain_masks(t, self.n_x, pad)  # shared heads: the immediate next item, in its own domain's head
        share_x, share_y = share_x & keep, share_y & keep
        spec_x, spec_y = at_x[:, s] & keep, at_y[:, s] & keep  # specific heads: the next item of the view's domain
        nll = self._nll(
            0,
            torch.cat([hs[share_x], (hs + hx)[spec_x]]),
            self.lin_pad(torch.cat([hs[share_x], hx[spec_x]]))[:, 0],
            torch.cat([t[share_x], next_x[:, s][spec_x]]) - lo_x,
        ) + self._nll(
            1,
            torch.cat([hs[share_y], (hs + hy)[spec_y]]),
            self.lin_pad(torch.cat([hs[share_y], hy[spec_y]]))[:, 0],
            torch.cat([t[share_y], next_y[:, s][spec_y]]) - lo_y,
        )
        pred = nll / (n_rows * u)  # each head officially: masked sum / (rows x used)

        # Contrastive infomax (trainer.py:155-188): means over each view's supervised positions.
        def pool(h: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
            w = at.to(h.dtype)
            return (h * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1)

        r_x, r_y = pool(h_x, at_x), pool(h_y, at_y)
        scores = torch.cat(
            [
                self.disc_x(pool(h_xy, at_y), r_x),  # D_X(r_x, real_y_fea): nn.Bilinear(node, S)
                self.disc_x(pool(h_cy, at_y), r_x),  # D_X's negative: corru_y (X randomised) at Y positions
                self.disc_y(pool(h_xy, at_x), r_y),
                self.disc_y(pool(h_cx, at_x), r_y),  # D_Y's negative: corru_x (Y randomised) at X positions
            ],
            1,
        ).float()  # (B, 4)
        labels = torch.tensor([1.0, 0.0, 1.0, 0.0], device=xy.device).expand(B, 4)
        bce = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
        mi = (bce * keep).sum() / n_rows  # x_mi + y_mi, each real + false, each a mean over the rows
        return cfg.lam * pred + (1 - cfg.lam) * mi

    # -- evaluation -------------------------------------------------------------------------

    def user_state(self, batch: Batch, domain: int) -> torch.Tensor:
        """(B, d): merged state at the last position + the domain view's state at its last position
        (trainer.py:244-267; loader.py:159-171: the last position when the history has none of the domain)."""
        xy = self._left_pad(batch.xy)
        B, L = xy.shape
        valid = xy != self.pad_id
        at = domain_masks(xy, self.n_x, self.pad_id)[domain]
        h_xy = self.enc_xy(self._view_inputs(0, xy), valid)[:, -1]
        h = self._domain_view(xy, at, domain)
        last = torch.where(at.any(1), L - 1 - at.flip(1).long().argmax(1), L - 1)
        return h_xy + h[torch.arange(B, device=xy.device), last]

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        u = self.user_state(batch, domain)
        head = self.lin_x if domain == 0 else self.lin_y
        if candidates is None:
            return head(u)
        local = candidates - self.domain_ranges[domain][0]
        return torch.einsum("bd,bcd->bc", u, head.weight[local]) + head.bias[local]
