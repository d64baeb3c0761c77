"""C2DSR (Cao et al., Contrastive Cross-Domain Sequential Recommendation, CIKM 2022).

Three views of a user's history: the merged sequence XY and its two single-domain subsequences
X and Y. Items are first smoothed by graph convolution over an item graph built from training
co-occurrence (consecutive interactions): the mixed graph feeds the XY view, the single-domain
graph (cross-domain edges removed) feeds X and Y. Each view has its own causal self-attention
encoder. At every merged position t the model predicts
    the next X item   from  h_xy[t]            (shared)   and  h_xy[t] + h_x[t]   (specific, at X positions)
    the next Y item   from  h_xy[t]            (shared)   and  h_xy[t] + h_y[t]   (specific, at Y positions)
where h_x[t] is the X encoder's state at the last X item at or before t. A contrastive infomax
term asks a bilinear discriminator to tell the user's single-domain representation paired with
their real mixed representation from one paired with a corrupted mixed sequence (one domain's
items replaced by random items of that domain). Loss = lam * prediction + (1 - lam) * infomax.

Speed (the official code spends most of its time here): the GNN runs once per step as one sparse
matmul per layer on the mixed graph and one on the block-diagonal single-domain graph (X and Y
share it, each half with its own weights); the item table is gathered once for the three views
and the two corrupted sequences; the merged encoder runs once over the real and both corrupted
sequences; every next-item cross-entropy of the step (2 shared + 2 specific heads) is evaluated
on the supervised rows only, in one call per domain. With ``train_negatives`` > 0 the softmax is
over the target plus a shared sample of the domain (layers.sampled_softmax_nll, one (n, k)
buffer for forward and backward), which with bf16 is what makes the >=10x per-epoch target
reachable on 2 CPU cores (configs/models/c2dsr.yaml); 0 keeps the paper's full softmax.

The alignment helpers at the top (split a merged left-padded batch into per-domain
subsequences, map their states back to merged positions, next item of a domain after each
position) are vectorised over the batch and used by the other cross-domain models as well.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from llmemf.config import check_fields
from llmemf.data.batching import Batch, DataBundle
from llmemf.data.dataset import train_item_counts
from llmemf.models.base import Recommender
from llmemf.models.layers import Dropout, SequenceEncoder, domain_cross_entropy, item_embedding, sampled_softmax_nll

# ---------------------------------------------------------------- sequence alignment helpers


def split_domain(xy: torch.Tensor, in_domain: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The subsequence of ``xy`` (B, L) whose positions have ``in_domain`` (B, L) true, left-padded
    and trimmed to its longest row: returns (B, Ld) ids and (B, L) index of each merged position's
    last in-domain item in that compact tensor (-1 where the row has none yet)."""
    B, L = xy.shape
    # A stable sort on the flag moves the in-domain items to the right end, in order: left padding.
    order = torch.sort(in_domain.to(torch.int8), dim=1, stable=True).indices  # (B, L)
    compact = torch.where(in_domain.gather(1, order), xy.gather(1, order), torch.full_like(xy, pad_id))
    count = in_domain.sum(1)  # (B,)
    width = max(int(count.max()), 1)
    compact = compact[:, L - width :]  # (B, Ld)
    seen = in_domain.long().cumsum(1)  # (B, L) in-domain items at or before t
    index = torch.where(seen > 0, width - count[:, None] + seen - 1, torch.full_like(seen, -1))
    return compact, index


def align(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """states (B, Ld, d) of a compact subsequence -> (B, L, d) at merged positions (zeros where -1)."""
    picked = states.gather(1, index.clamp(min=0)[..., None].expand(-1, -1, states.shape[-1]))
    return picked * (index >= 0)[..., None]


def next_in_domain(targets: torch.Tensor, lo: int, hi: int, pad_id: int) -> torch.Tensor:
    """(B, L) teacher-forcing targets -> the first item of domain [lo, hi) at or after each
    position (the next item of that domain after the input at t); pad_id where none."""
    B, L = targets.shape
    hit = (targets >= lo) & (targets < hi)
    pos = torch.where(hit, torch.arange(L, device=targets.device).expand(B, L), torch.full_like(targets, L))
    first = pos.flip(1).cummin(1).values.flip(1)  # (B, L) smallest hit index >= t, or L
    padded = torch.cat([targets, torch.full_like(targets[:, :1], pad_id)], 1)
    return padded.gather(1, first)


# ---------------------------------------------------------------- item graph


def build_item_graph(sequences, n_items: int, boundary: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Item-item graph from consecutive interactions in the training sequences.

    Returns (mixed, single): scipy CSR (n_items, n_items) matrices D^-1/2 (A + I) D^-1/2 of the
    graph with every consecutive pair as an undirected edge (mixed), and with cross-domain edges
    removed (single, block-diagonal: X-X and Y-Y only). Repeated pairs count once.
    """
    src, dst = [], []
    for s in sequences:
        s = np.asarray(s, dtype=np.int64)
        if len(s) > 1:
            src.append(s[:-1])
            dst.append(s[1:])
    src = np.concatenate(src) if src else np.zeros(0, np.int64)
    dst = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    keep = src != dst
    src, dst = src[keep], dst[keep]

    def normalised(u: np.ndarray, v: np.ndarray) -> sp.csr_matrix:
        a = sp.coo_matrix((np.ones(2 * len(u)), (np.concatenate([u, v]), np.concatenate([v, u]))), shape=(n_items, n_items)).tocsr()
        a.data[:] = 1.0  # duplicates were summed: binarise
        a = (a + sp.identity(n_items, format="csr")).tocsr()
        d = np.asarray(a.sum(1)).ravel() ** -0.5
        return (sp.diags(d) @ a @ sp.diags(d)).astype(np.float32).tocsr()

    same = (src < boundary) == (dst < boundary)
    return normalised(src, dst), normalised(src[same], dst[same])


def receptive_field(adj: sp.csr_matrix, items: np.ndarray, depth: int) -> list[tuple[np.ndarray, torch.Tensor]]:
    """The sub-graphs a depth-``depth`` GNN needs to compute rows ``items`` (sorted unique ids).

    Returns, from the input layer up, (input rows, sparse CSR (n_out, n_in) block of ``adj``):
    layer l maps its input rows to the next layer's rows; the last layer's output rows are
    ``items``. A GNN over the whole table would do the same arithmetic on every item; this does it
    on the batch's items and their neighbourhoods only.
    """
    plan, rows = [], items
    for _ in range(depth):
        block = adj[rows]
        cols = np.unique(block.indices)  # includes ``rows`` (self-loops)
        block = block[:, cols].tocsr()
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the one kernel used here is stable
            warnings.simplefilter("ignore", UserWarning)
            t = torch.sparse_csr_tensor(
                torch.from_numpy(block.indptr.astype(np.int64)),
                torch.from_numpy(block.indices.astype(np.int64)),
                torch.from_numpy(block.data),
                size=block.shape,
            )
        plan.append((cols, t))
        rows = cols
    return plan[::-1]


# ---------------------------------------------------------------- model


@dataclass
class C2DSRConfig:
    hidden: int = 256  # item embedding and model width (official: 256)
    gnn_layers: int = 1  # graph convolution depth (official: 1)
    n_blocks: int = 2  # self-attention blocks per encoder (official: 2)
    n_heads: int = 1  # attention heads (official: 1)
    dropout: float = 0.2  # dropout in encoders and GNN (official: 0.2)
    leaky: float = 0.1  # LeakyReLU slope of the GNN (official: 0.1)
    lam: float = 0.7  # weight of the next-item losses; 1 - lam weighs the infomax losses (official: 0.7)
    loss_positions: int = 10  # only the last this many merged positions are supervised (official "used" = 10)
    # 0: full softmax over the target's domain (paper); k > 0: target + k shared negatives (full softmax anyway
    # where a domain has no more than k items). configs/models/c2dsr.yaml trains with 4096.
    train_negatives: int = 0
    # With train_negatives > 0: weigh each sampled negative by n_domain / k (add log(n_domain / k) to its logit), so that
    # the sampled partition function estimates the full one instead of k / n_domain of it (importance-sampled softmax).
    sampled_correction: bool = True
    # Where sampled negatives come from: "uniform" over the domain, or "popularity" (q proportional to (train count + 1)^0.75,
    # word2vec's proposal), which hands the popular items, the hard negatives, more updates; the correction uses 1 / (k q).
    negative_sampler: str = "uniform"

    def __post_init__(self) -> None:
        check_fields(
            self,
            "model.",
            positive=("hidden", "gnn_layers", "n_blocks", "n_heads", "loss_positions"),
            nonneg=("leaky", "lam", "train_negatives"),
            fraction=("dropout",),
            choices={"negative_sampler": ("uniform", "popularity")},
            divides=("hidden", "n_heads"),
        )


class GraphConv(nn.Module):
    """h_out = dropout(LeakyReLU((A h_in) W)); (A h) W = A (h W), aggregated first so that only the
    rows the batch needs go through W."""

    def __init__(self, d: int, leaky: float, dropout: float):
        super().__init__()
        self.lin = nn.Linear(d, d, bias=False)
        self.leaky, self.drop = leaky, Dropout(dropout)

    def forward(self, agg: torch.Tensor) -> torch.Tensor:
        return self.drop(F.leaky_relu(self.lin(agg), self.leaky))


def sparse_aggregate(block: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """block (n_out, n_in) sparse CSR @ h (n_in, d), in fp32 (MKL has no bf16 sparse kernel)."""
    with torch.autocast(h.device.type, enabled=False):
        return torch.sparse.mm(block.to(h.device), h.float())


class C2DSR(Recommender):
    Config = C2DSRConfig
    reference = "Cao et al., Contrastive Cross-Domain Sequential Recommendation, CIKM 2022"
    summary = "GNN-smoothed items, self-attention over X, Y and merged sequences, cross-domain contrastive infomax"

    def __init__(self, config: C2DSRConfig, bundle: DataBundle):
        super().__init__(config, bundle)
        d = config.hidden
        self.n_x = self.domain_ranges[0][1]
        self.item = item_embedding(self.n_items, d, self.pad_id)
        # Graphs from the training sequences only (scipy CSR; sliced per step, never trained).
        self.adj_mixed, self.adj_single = build_item_graph(bundle.dataset.splits["train"]["items"], self.n_items, self.n_x)
        self.gnn_xy = nn.ModuleList([GraphConv(d, config.leaky, config.dropout) for _ in range(config.gnn_layers)])
        self.gnn_x = nn.ModuleList([GraphConv(d, config.leaky, config.dropout) for _ in range(config.gnn_layers)])
        self.gnn_y = nn.ModuleList([GraphConv(d, config.leaky, config.dropout) for _ in range(config.gnn_layers)])
        enc = lambda: SequenceEncoder(d, bundle.max_len, config.n_blocks, config.n_heads, config.dropout)  # noqa: E731
        self.enc_xy, self.enc_x, self.enc_y = enc(), enc(), enc()
        # Output heads of both domains in one table: rows lo..hi-1 are that domain's lin_X / lin_Y.
        self.out_w = nn.Parameter(torch.randn(self.n_items, d) * d**-0.5)
        self.out_b = nn.Parameter(torch.zeros(self.n_items))
        # Bilinear discriminators D(a, b) = a^T W b + c, as Linear + dot (nn.Bilinear is slow on CPU).
        self.disc_x = nn.Linear(d, d)  # D_X(X-specific rep, mixed rep)
        self.disc_y = nn.Linear(d, d)
        if config.negative_sampler not in ("uniform", "popularity"):
            raise ValueError(f"negative_sampler must be 'uniform' or 'popularity', got {config.negative_sampler!r}")
        if config.negative_sampler == "popularity":
            weight = (torch.from_numpy(train_item_counts(bundle.dataset)).double() + 1) ** 0.75
        else:
            weight = torch.ones(self.n_items, dtype=torch.float64)
        # Per domain: the proposal q over its items (not saved with the model; rebuilt from the data).
        self.neg_q = [(weight[lo:hi] / weight[lo:hi].sum()).float() for lo, hi in self.domain_ranges]

    # -- item tables ------------------------------------------------------------------------

    def _gnn(self, plan: list, rows: np.ndarray, table: torch.Tensor, items: np.ndarray, single: bool) -> torch.Tensor:
        """GNN output rows of ``items`` (U, d) from their receptive field ``plan`` only; ``table``
        holds the embeddings of ``rows`` (sorted ids), gathered once per step for both graphs."""
        h = table[torch.from_numpy(np.searchsorted(rows, plan[0][0])).to(table.device)]
        outs = [cols for cols, _ in plan[1:]] + [items]
        for layer, ((_, block), out_rows) in enumerate(zip(plan, outs, strict=True)):
            agg = sparse_aggregate(block, h)  # (n_out, d)
            if single:  # block-diagonal graph: X rows through the X GNN, Y rows through the Y GNN
                is_x = torch.from_numpy(out_rows < self.n_x).to(agg.device)[:, None]
                h = torch.where(is_x, self.gnn_x[layer](agg), self.gnn_y[layer](agg))
            else:
                h = self.gnn_xy[layer](agg)
        return h

    def item_tables(self, *id_tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Inputs of the merged and single-domain views for the items of this step only.

        Returns the merged-view table (U, d), the single-view table (U, d) over the step's unique
        ids U (pad included, as a zero row), and each input tensor remapped to rows of the tables.
        The GNN runs once per step over U's receptive field, shared by every sequence that uses it;
        the embedding table is gathered once (a gather's backward writes a full-size gradient).
        """
        flat = torch.cat([t.reshape(-1) for t in id_tensors])
        uniq, inv = torch.unique(flat, return_inverse=True)  # sorted: pad (largest id) is last if present
        real = uniq[uniq != self.pad_id]
        items = real.cpu().numpy()
        depth = self.config.gnn_layers
        plans = [receptive_field(adj, items, depth) for adj in (self.adj_mixed, self.adj_single)] if depth else []
        rows = np.unique(np.concatenate([items] + [p[0][0] for p in plans]))
        table = self.item.weight[torch.from_numpy(rows).to(self.item.weight.device)]  # (R, d)
        e = table[torch.from_numpy(np.searchsorted(rows, items)).to(table.device)]  # (U', d)
        mixed = self._gnn(plans[0], rows, table, items, single=False) + e if depth else e
        single = self._gnn(plans[1], rows, table, items, single=True) + e if depth else e
        if len(real) < len(uniq):
            mixed, single = (torch.cat([t, t.new_zeros(1, t.shape[1])]) for t in (mixed, single))
        local, start = [], 0
        for t in id_tensors:
            local.append(inv[start : start + t.numel()].view_as(t))
            start += t.numel()
        scale = self.config.hidden**0.5
        return mixed * scale, single * scale, local

    # -- encoders ---------------------------------------------------------------------------

    def encode(self, xy: torch.Tensor, mixed: torch.Tensor, single: torch.Tensor, local: torch.Tensor, *corrupted: torch.Tensor):
        """(B, L) merged ids (and their rows ``local`` in the step's tables) -> merged states
        (B, L, d), X / Y states aligned to merged positions, the domain masks, and the merged
        states of each ``corrupted`` (B, L) row tensor (same padding as ``xy``). The merged encoder
        runs once over all of them stacked: one (k B, L) call instead of k calls of batch B."""
        is_x = xy < self.n_x
        is_y = (xy >= self.n_x) & (xy != self.pad_id)
        stacked = torch.cat([local, *corrupted])  # ((1 + k) B, L)
        h_xy, *h_corrupted = self.enc_xy(mixed[stacked], (xy != self.pad_id).repeat(1 + len(corrupted), 1)).split(len(xy))
        x, ix = split_domain(local, is_x, -1)
        y, iy = split_domain(local, is_y, -1)
        h_x = align(self.enc_x(single[x.clamp(min=0)], x >= 0), ix)  # (B, L, d)
        h_y = align(self.enc_y(single[y.clamp(min=0)], y >= 0), iy)
        return h_xy, h_x, h_y, is_x, is_y, h_corrupted

    def _logits(self, h: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return h @ self.out_w[lo:hi].T + self.out_b[lo:hi]

    def _sampled_ce(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy over target + ``train_negatives`` items of the target's domain,
        one negative set per domain per step shared by all rows (a negative equal to a row's
        target is left out for that row; ``sampled_correction`` reweighs the negatives to stand
        for the whole domain). The output table is gathered once."""
        k = self.config.train_negatives
        if self.config.negative_sampler == "uniform":
            negs = [torch.randint(lo, hi, (k,), device=h.device) for lo, hi in self.domain_ranges]
        else:
            negs = [torch.multinomial(q, k, replacement=True).to(h.device) + lo for q, (lo, _) in zip(self.neg_q, self.domain_ranges, strict=True)]
        cand = torch.cat([t] + negs)
        w, b = self.out_w[cand], self.out_b[cand]  # (n + 2k, d), (n + 2k,)
        n = len(t)
        pos = (h * w[:n]).sum(-1) + b[:n]  # (n,)
        total = h.new_zeros((), dtype=torch.float32)
        for d, (lo, hi) in enumerate(self.domain_ranges):
            sel = (t >= lo) & (t < hi)
            if not bool(sel.any()):
                continue
            span = slice(n + d * k, n + (d + 1) * k)
            bias = b[span]
            if self.config.sampled_correction:  # each negative stands for 1 / (k q) items of the domain
                bias = bias - torch.log(k * self.neg_q[d].to(h.device)[negs[d] - lo])
            total = total + sampled_softmax_nll(h[sel], pos[sel], w[span], bias, negs[d], t[sel]).sum()
        return total

    # -- training ---------------------------------------------------------------------------

    def loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        xy, tgt = batch.xy, batch.xy_target
        B, L = xy.shape
        (lo_x, hi_x), (lo_y, hi_y) = self.domain_ranges
        is_x = xy < self.n_x
        is_y = (xy >= self.n_x) & (xy != self.pad_id)
        # Corrupted sequences for the infomax term: one domain's items replaced at random.
        corrupt_y = torch.where(is_y, torch.randint_like(xy, lo_y, hi_y), xy)
        corrupt_x = torch.where(is_x, torch.randint_like(xy, lo_x, hi_x), xy)
        mixed, single, (l_xy, l_cx, l_cy) = self.item_tables(xy, corrupt_x, corrupt_y)
        h_xy, h_x, h_y, is_x, is_y, (h_cy, h_cx) = self.encode(xy, mixed, single, l_xy, l_cy, l_cx)

        # Next-item heads on the last `loss_positions` merged positions.
        u = min(cfg.loss_positions, L)
        nx = next_in_domain(tgt, lo_x, hi_x, self.pad_id)[:, -u:]  # (B, u)
        ny = next_in_domain(tgt, lo_y, hi_y, self.pad_id)[:, -u:]
        hs, hx, hy = h_xy[:, -u:], h_x[:, -u:], h_y[:, -u:]
        at_x, at_y = is_x[:, -u:], is_y[:, -u:]
        pad = torch.full_like(nx, self.pad_id)
        hidden = torch.cat([hs, hs, hs + hx, hs + hy], 1)  # (B, 4u, d): shared X, shared Y, specific X, specific Y
        targets = torch.cat([nx, ny, torch.where(at_x, nx, pad), torch.where(at_y, ny, pad)], 1)  # (B, 4u)
        # Sampling only pays where it leaves items out: a domain no larger than K gets the full softmax.
        if 0 < cfg.train_negatives < min(hi - lo for lo, hi in self.domain_ranges):
            keep = targets != self.pad_id
            total = self._sampled_ce(hidden[keep], targets[keep])
        else:
            total, _ = domain_cross_entropy(self._logits, hidden, targets, self.domain_ranges, self.pad_id)
        # The official code averages each head over all B x used slots (padding included): same here.
        pred = total / (B * u)

        # Contrastive infomax: single-domain rep vs the merged rep pooled over the other domain's
        # positions, real or from a sequence whose other-domain items were replaced at random.

        def pool(h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            m = m.float()
            return (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)

        has_both = (is_x.any(1) & is_y.any(1)).float()  # rows without both domains carry no signal
        wx, wy = self.disc_x(pool(h_x, is_x)), self.disc_y(pool(h_y, is_y))  # (B, d): W r + c-ish
        scores = torch.cat(
            [
                (wx * pool(h_xy, is_y)).sum(-1, keepdim=True),
                (wx * pool(h_cy, is_y)).sum(-1, keepdim=True),
                (wy * pool(h_xy, is_x)).sum(-1, keepdim=True),
                (wy * pool(h_cx, is_x)).sum(-1, keepdim=True),
            ],
            1,
        ).float()  # (B, 4)
        labels = torch.tensor([1.0, 0.0, 1.0, 0.0], device=xy.device).expand(B, 4)
        bce = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")  # (B, 4)
        mi = (bce * has_both[:, None]).sum() / has_both.sum().clamp(min=1) / 2  # x_mi + y_mi, each real + false
        return cfg.lam * pred + (1 - cfg.lam) * mi

    # -- evaluation -------------------------------------------------------------------------

    def user_state(self, batch: Batch, domain: int) -> torch.Tensor:
        """(B, d): shared state after the last item + the domain's specific state at its last item."""
        mixed, single, (local,) = self.item_tables(batch.xy)
        h_xy, h_x, h_y, _, _, _ = self.encode(batch.xy, mixed, single, local)
        return h_xy[:, -1] + (h_x if domain == 0 else h_y)[:, -1]

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        u = self.user_state(batch, domain)
        lo, hi = self.domain_ranges[domain]
        if candidates is None:
            return self._logits(u, lo, hi)
        return torch.einsum("bd,bcd->bc", u, self.out_w[candidates]) + self.out_b[candidates]
