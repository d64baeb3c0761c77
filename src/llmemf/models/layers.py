"""Pieces several models share: the causal self-attention encoder, domain-restricted softmax loss,
and scoring of candidate items."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llmemf.data.batching import Batch
from llmemf.models.base import Recommender


class Dropout(nn.Module):
    """Inverted dropout, as nn.Dropout, with a cheaper random mask.

    On a CPU nn.Dropout's Bernoulli draw costs ~7 ns per element, the largest cost after the
    matmuls in C2DSR's step (48 dropouts). Here each element keeps with probability 1 - p from a
    16-bit slice of the default generator's 64-bit integers (4 elements per draw, ~6x cheaper);
    p is rounded to a multiple of 1/65536. Seeded by torch.manual_seed like any other draw.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= round(self.p * 65536) - 32768  # P = 1 - p
        return (x * keep).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FeedForward(nn.Module):
    def __init__(self, d: int, dropout: float, mult: int = 1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, mult * d), nn.GELU(), Dropout(dropout), nn.Linear(mult * d, d), Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        assert d % n_heads == 0, f"width {d} must divide into {n_heads} heads"
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.resid_drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, L, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, L, dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, L, d)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, n_heads, dropout)
        self.ffn = FeedForward(d, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.ffn(self.ln2(x))


class SequenceEncoder(nn.Module):
    """Causal self-attention over a left-padded sequence of item vectors (SASRec's encoder).

    Input (B, L, d) vectors and (B, L) validity; output (B, L, d), where position t has seen only
    positions <= t. Positions are counted from the right (0 = most recent) to match left padding.
    """

    def __init__(self, d: int, max_len: int, n_blocks: int = 2, n_heads: int = 1, dropout: float = 0.2):
        super().__init__()
        self.pos = nn.Embedding(max_len, d)
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList([Block(d, n_heads, dropout) for _ in range(n_blocks)])
        self.ln_f = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        pos = torch.arange(L - 1, -1, -1, device=x.device)  # (L,) distance from the right end
        x = self.drop(x + self.pos(pos)[None]) * valid[..., None]
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        # A query may look at itself even when it is padding: no all-masked row, so no NaN.
        mask = (causal[None] & valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=x.device)[None]
        mask = mask[:, None]  # (B, 1, L, L), broadcast over heads
        for block in self.blocks:
            x = block(x, mask) * valid[..., None]
        return self.ln_f(x)


LogitFn = Callable[[torch.Tensor, int, int], torch.Tensor]


def training_items(batch: Batch) -> torch.Tensor:
    """(B, L + 1) every item of each training sequence (inputs plus the last target), pad elsewhere."""
    return torch.cat([batch.xy, batch.xy_target[:, -1:]], dim=1)


def fold_in(objective: Callable[[torch.Tensor], torch.Tensor], init: torch.Tensor, steps: int, lr: float, l2: float) -> torch.Tensor:
    """Fold new users into a trained user-ID model: the user vectors minimising the model's own
    training ``objective(u)`` (a scalar over the users' histories) + ``l2`` * mean ||u||^2, with every
    model weight frozen (``steps`` Adam steps from ``init`` (B, d)). Standard folding-in for latent
    factor models (Sarwar et al. 2002): the item side stays as trained, only the new rows are fitted.
    Works under the caller's inference mode (recommend) by leaving it for these few steps."""
    with torch.inference_mode(False), torch.enable_grad():
        u = init.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([u], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss = objective(u) + l2 * u.pow(2).sum(1).mean()
            (grad,) = torch.autograd.grad(loss, [u])
            u.grad = grad
            opt.step()
    return u.detach()


def item_embedding(n_items: int, d: int, pad_id: int) -> nn.Embedding:
    """(n_items + 1, d) item table, N(0, 1/d) rows and a zero padding row."""
    emb = nn.Embedding(n_items + 1, d, padding_idx=pad_id)
    nn.init.normal_(emb.weight, std=d**-0.5)
    with torch.no_grad():
        emb.weight[pad_id].zero_()
    return emb


def domain_cross_entropy(
    logit_fn: LogitFn,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    domain_ranges: list[tuple[int, int]],
    pad_id: int,
) -> tuple[torch.Tensor, int]:
    """Summed softmax cross-entropy where each target is scored over its own domain's items only.

    hidden (..., d) states, targets (...) global ids (pad_id = no target). ``logit_fn(h, lo, hi)``
    returns (n, hi - lo) logits of items lo..hi-1. Returns (sum of losses, number of targets).
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    total = h.new_zeros(())
    count = 0
    for lo, hi in domain_ranges:
        sel = (t >= lo) & (t < hi) & (t != pad_id)
        n = int(sel.sum())
        if n == 0:
            continue
        logits = logit_fn(h[sel], lo, hi)  # (n, hi - lo)
        total = total + F.cross_entropy(logits.float(), t[sel] - lo, reduction="sum")
        count += n
    return total, count


class _SampledLogSumExp(torch.autograd.Function):
    """lse_i = log sum_j exp(h_i . w_j + c_j) over the (i, j) not in ``hits``, for a (n, k) logit
    matrix that is never materialised more than once.

    Why a custom function: on a CPU the (n, k) passes, not the matmul FLOPs, dominate a sampled
    softmax with thousands of negatives (cat, masked_fill, .float(), log_softmax and their
    backwards each read and write the whole matrix). Here the forward is addmm, row max, and an
    in-place exp whose result is kept; the backward scales that buffer in place into the gradient
    of the logits, so one (n, k) buffer serves both passes. Under CPU/CUDA autocast the matrix is
    in the autocast dtype (bf16: AMX matmuls, half the memory traffic); sums are in fp32.
    """

    @staticmethod
    def forward(ctx, h, w, c, hit_rows, hit_cols):
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        with torch.autocast(device, enabled=False):
            hc, wc = h.to(dtype), w.to(dtype)
            acc = torch.promote_types(dtype, torch.float32)  # sums never below fp32
            e = torch.addmm(c.to(dtype), hc, wc.T)  # (n, k) logits
            m = e.amax(1, keepdim=True).to(acc)  # (n, 1): finite, the hits are masked after the shift
            e.sub_(m.to(dtype)).exp_()
            e[hit_rows, hit_cols] = 0
            s = e.sum(1, dtype=acc)  # (n,)
        ctx.save_for_backward(hc, wc, e, s)
        ctx.dtypes, ctx.done = (h.dtype, w.dtype, c.dtype), False
        return m.squeeze(1) + s.log()

    @staticmethod
    def backward(ctx, g):
        if ctx.done:  # the buffer was turned into the gradient in place
            raise RuntimeError("sampled_softmax_nll: backward through the same graph twice is not supported")
        ctx.done = True
        hc, wc, e, s = ctx.saved_tensors
        p = e.mul_((g.to(s.dtype) / s.clamp(min=1e-30)).to(e.dtype)[:, None])  # (n, k) softmax * upstream
        h_dtype, w_dtype, c_dtype = ctx.dtypes
        return (p @ wc).to(h_dtype), (p.T @ hc).to(w_dtype), p.sum(0, dtype=s.dtype).to(c_dtype), None, None


def sampled_softmax_nll(
    h: torch.Tensor, pos: torch.Tensor, neg_w: torch.Tensor, neg_bias: torch.Tensor, neg_ids: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Per-row -log softmax of the target's logit against negatives shared by all rows.

    h (n, d) states; pos (n,) the targets' logits; neg_w (k, d), neg_bias (k,) the negatives'
    output vectors and biases (a sampled-softmax correction such as -log(k q) goes into the bias);
    neg_ids (k,) their item ids, any order; targets (n,). A negative equal to its row's target is
    left out of that row. Returns (n,) losses log(exp(pos) + sum_j exp(neg_ij)) - pos.
    """
    # Accidental hits from the sorted negatives: row i hits the columns whose id equals targets[i].
    ids, order = torch.sort(neg_ids)
    left = torch.searchsorted(ids, targets)
    count = torch.searchsorted(ids, targets, right=True) - left  # (n,), mostly 0
    rows = torch.repeat_interleave(torch.arange(len(targets), device=h.device), count)
    within = torch.arange(len(rows), device=h.device) - torch.repeat_interleave(count.cumsum(0) - count, count)
    cols = order[torch.repeat_interleave(left, count) + within]
    lse = _SampledLogSumExp.apply(h, neg_w, neg_bias, rows, cols)
    pos = pos.to(lse.dtype)
    return torch.logaddexp(pos, lse) - pos


def score_candidates(user: torch.Tensor, table: torch.Tensor, lo: int, hi: int, candidates: torch.Tensor | None) -> torch.Tensor:
    """Dot-product scores. user (B, d); table (n_items(+1), d); candidates (B, C) global ids or None
    for every item lo..hi-1. Returns (B, C) or (B, hi - lo)."""
    if candidates is None:
        return user @ table[lo:hi].T
    return torch.einsum("bd,bcd->bc", user, table[candidates])


class StackedLinear(nn.Module):
    """S independent linear maps applied to S stacked inputs in one batched matmul."""

    def __init__(self, n_stack: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_stack, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(n_stack, 1, d_out))
        bound = d_in**-0.5
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S, B, L, d = x.shape
        return (torch.baddbmm(self.bias, x.reshape(S, B * L, d), self.weight)).view(S, B, L, -1)

    def columns(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Output columns start..end-1 only: forward(x)[..., start:end] without computing the others."""
        S, B, L, d = x.shape
        return torch.baddbmm(self.bias[..., start:end], x.reshape(S, B * L, d), self.weight[..., start:end]).view(S, B, L, -1)


class StackedLayerNorm(nn.Module):
    def __init__(self, n_stack: int, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_stack, 1, 1, d))
        self.bias = nn.Parameter(torch.zeros(n_stack, 1, 1, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class StackedBlock(nn.Module):
    """S pre-norm transformer blocks with separate weights, run as one batched computation."""

    def __init__(self, n_stack: int, d: int, n_heads: int, dropout: float):
        super().__init__()
        assert d % n_heads == 0, f"width {d} must divide into {n_heads} heads"
        self.n_heads, self.dropout = n_heads, dropout
        self.ln1, self.ln2 = StackedLayerNorm(n_stack, d), StackedLayerNorm(n_stack, d)
        self.qkv = StackedLinear(n_stack, d, 3 * d)
        self.proj = StackedLinear(n_stack, d, d)
        self.ff1, self.ff2 = StackedLinear(n_stack, d, d), StackedLinear(n_stack, d, d)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        S, B, L, d = x.shape
        H = self.n_heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)  # (S, B, L, d) each
        q, k, v = (t.reshape(S * B, L, H, d // H).transpose(1, 2) for t in (q, k, v))  # (S*B, H, L, dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(S, B, L, d)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.ln2(x))))))

    def forward_last(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """forward(x, mask)[:, :, -1:], (S, B, 1, d): the last position's output needs the keys and values of
        every position but the query, projection and feed-forward of that position only."""
        S, B, L, d = x.shape
        H = self.n_heads
        h = self.ln1(x)
        q = self.qkv.columns(h[:, :, -1:], 0, d).reshape(S * B, 1, H, d // H).transpose(1, 2)  # (S*B, H, 1, dh)
        k, v = (t.reshape(S * B, L, H, d // H).transpose(1, 2) for t in self.qkv.columns(h, d, 3 * d).split(d, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[..., -1:, :], dropout_p=self.dropout if self.training else 0.0)
        x = x[:, :, -1:] + self.drop(self.proj(y.transpose(1, 2).reshape(S, B, 1, d)))
        return x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.ln2(x))))))


class StackedSequenceEncoder(nn.Module):
    """S causal self-attention encoders (same width, separate weights) over S sequences of one width.

    Equivalent to S SequenceEncoders, but each layer is one batched matmul over the stack, which
    is what makes LLM-EMF's nine encoders cheap: one stacked call per modality serves X, Y and XY.
    Input (S, B, L, d) vectors and (S, B, L) validity -> (S, B, L, d), or with ``last_only`` the last
    position's states (S, B, d), for which the last block computes that position's row only.
    """

    def __init__(self, n_stack: int, d: int, max_len: int, n_blocks: int = 2, n_heads: int = 1, dropout: float = 0.2):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(n_stack, max_len, d) * 0.02)
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList([StackedBlock(n_stack, d, n_heads, dropout) for _ in range(n_blocks)])
        self.ln_f = StackedLayerNorm(n_stack, d)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        S, B, L, d = x.shape
        # (S, L, d): last column gets position 0. Gathered rather than sliced and flipped: torch.compile would
        # specialise a slice that spans all max_len positions (serving/compiled.py compiles for any length)
        pos = self.pos[:, torch.arange(L - 1, -1, -1, device=x.device)]
        keep = valid[..., None].to(x.dtype)
        x = self.drop(x + pos[:, None]) * keep
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        mask = (causal & valid.reshape(S * B, 1, L)) | torch.eye(L, dtype=torch.bool, device=x.device)
        mask = mask[:, None]  # (S*B, 1, L, L)
        if not last_only:
            for block in self.blocks:
                x = block(x, mask) * keep
            return self.ln_f(x)
        for block in self.blocks[:-1]:
            x = block(x, mask) * keep
        x = self.blocks[-1].forward_last(x, mask) * keep[:, :, -1:]
        return self.ln_f(x)[:, :, 0]


class MergedSequenceModel(Recommender):
    """Shared scoring for models with one state per merged-sequence position (SASRec, GRU4Rec):
    subclasses define ``encode(xy) -> (B, L, d)`` and an ``item`` embedding whose rows are both
    inputs and output vectors, optionally an ``out_bias`` (n_items + 1,) per-item output bias;
    each target is scored over its own domain's items."""

    item: nn.Embedding

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def _bias(self) -> torch.Tensor | None:
        return getattr(self, "out_bias", None)

    def _logits(self, h: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        s = h @ self.item.weight[lo:hi].T
        return s if self._bias is None else s + self._bias[lo:hi]

    def loss(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch.xy)  # (B, L, d)
        total, count = domain_cross_entropy(self._logits, h, batch.xy_target, self.domain_ranges, self.pad_id)
        return total / max(count, 1)

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        h = self.encode(batch.xy)[:, -1]  # (B, d) state after the last real item
        lo, hi = self.domain_ranges[domain]
        if candidates is None:
            return self._logits(h, lo, hi)
        s = score_candidates(h, self.item.weight, lo, hi, candidates)
        return s if self._bias is None else s + self._bias[candidates]
