"""What the cross-domain models share: per-domain subsequences of a merged batch and their
alignment back to merged positions, next-in-domain targets, in-domain negatives, the per-domain
recurrent encoders (TF1's GRU cell and dropout, as the pi-Net / MIFN code uses them), and the
scoring of models with one representation per domain.

Which positions belong to which domain has one definition, ``llmemf.data.batching.domain_masks``;
everything here takes such a mask. A merged row is left-padded (data/batching.py); a domain's
subsequence is the row's items where the mask holds, in order.
"""

from __future__ import annotations

import torch
from torch import nn

from llmemf.data.batching import Batch
from llmemf.models.base import Recommender
from llmemf.models.layers import Dropout, LogitFn, domain_cross_entropy, score_candidates


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


def sample_in_domain(pos: torch.Tensor, domain_ranges: list[tuple[int, int]], n: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """(...,) global positive ids -> (..., n) ids drawn uniformly from each positive's own domain
    (a negative may rarely equal the positive; with thousands of items per domain this is noise)."""
    (lo0, hi0), (lo1, hi1) = domain_ranges
    in1 = (pos >= lo1)[..., None]
    lo = torch.where(in1, lo1, lo0)
    size = torch.where(in1, hi1 - lo1, hi0 - lo0)
    return lo + (torch.rand(*pos.shape, n, device=pos.device, generator=generator) * size).long().clamp_max(size - 1)


def pack(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) mask -> order (B, W): the masked positions of each row first, in order (then the others), W the
    most any row has; and index (B, L): at each merged position, the packed slot of the row's last masked
    position at or before it (-1 before the first). ``x.gather(1, order)`` puts each row's selected inputs at
    the LEFT of a compact tensor (right padding), ``align(states, index)`` brings states back."""
    width = max(int(mask.sum(1).max()), 1)
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
    return order, mask.long().cumsum(1) - 1


class TFGRUCell(nn.Module):
    """The GRU cell of TensorFlow 1 (``tf.nn.rnn_cell.GRUCell``), which the TF baselines (pi-Net, MIFN) use:
    [r, u] = sigmoid([x, h] W_g + b_g), c = tanh([x, r * h] W_c + b_c), h' = u * h + (1 - u) * c, with the
    reset applied before the candidate's matmul (torch's GRU applies it after), the gate bias starting at 1.0,
    the candidate bias at 0, and Glorot-normal kernels (the baselines pass xavier_initializer(uniform=False))."""

    def __init__(self, d_in: int, d: int):
        super().__init__()
        self.gate, self.cand = nn.Linear(d_in + d, 2 * d), nn.Linear(d_in + d, d)
        with torch.no_grad():
            for lin, b in ((self.gate, 1.0), (self.cand, 0.0)):
                nn.init.xavier_normal_(lin.weight)
                lin.bias.fill_(b)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        r, u = torch.sigmoid(self.gate(torch.cat([x, h], -1))).chunk(2, -1)
        c = torch.tanh(self.cand(torch.cat([x, r * h], -1)))
        return u * h + (1 - u) * c


class DomainRNN(nn.Module):
    """A recurrent ``cell(x, h) -> h'`` run over the positions of a merged batch where ``mask`` holds (one
    domain's items, or every real item), with its outputs and states returned at merged positions.

    The cell never steps over a position outside the mask: the selected positions are packed to the LEFT
    of a compact tensor (``pack``), so a row's state after its k-th selected item has read exactly those k
    inputs from a zero state, whatever the batch's width or the other rows hold (a cell run over left
    padding would drift through its biases on the zero-input pad steps, so a user's state would depend on
    the longest row of the batch). Slots after a row's last item are computed and never read.

    Dropout as TF1's ``DropoutWrapper(input_keep_prob, output_keep_prob, state_keep_prob)`` with one rate:
    on the input, on the output, and on the state carried to the next step (its own mask each), in training.
    """

    def __init__(self, cell: nn.Module, d: int, dropout: float = 0.0):
        super().__init__()
        self.cell, self.d = cell, d
        self.drop_in, self.drop_out, self.drop_state = Dropout(dropout), Dropout(dropout), Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, d_in) inputs at merged positions, mask (B, L) -> (outputs, states), each (B, L, d): at t,
        after the last masked position <= t (zeros before the row's first). Equal outside training."""
        B, L, d_in = x.shape
        order, index = pack(mask)
        xs = self.drop_in(x.gather(1, order[..., None].expand(-1, -1, d_in)))  # (B, W, d_in)
        h = x.new_zeros(B, self.d)
        outs, states = [], []
        for t in range(xs.shape[1]):  # <= max_len steps
            new = self.cell(xs[:, t], h)
            h = self.drop_state(new)
            outs.append(self.drop_out(new))
            states.append(h)
        return align(torch.stack(outs, 1), index), align(torch.stack(states, 1), index)


class DomainGRU(DomainRNN):
    """DomainRNN of a TF1 GRU cell (the per-domain encoders and transfer GRUs of pi-Net, PSJNet, MIFN)."""

    def __init__(self, d_in: int, d: int | None = None, dropout: float = 0.0):
        super().__init__(TFGRUCell(d_in, d or d_in), d or d_in, dropout)


def per_domain_cross_entropy(
    logit_fn: LogitFn, states: list[torch.Tensor], targets: torch.Tensor, domain_ranges: list[tuple[int, int]], pad_id: int
) -> torch.Tensor:
    """Mean cross-entropy where a target of domain d is predicted from ``states[d]`` (B, L, h) at its
    position (models with one representation per domain: pi-Net, PSJNet)."""
    total, count = targets.new_zeros((), dtype=torch.float), 0
    for d, (lo, hi) in enumerate(domain_ranges):
        t = torch.where((targets >= lo) & (targets < hi), targets, pad_id)
        s, c = domain_cross_entropy(logit_fn, states[d], t, domain_ranges, pad_id)
        total, count = total + s, count + c
    return total / max(count, 1)


class PerDomainStateModel(Recommender):
    """Shared scoring for models that keep one user representation per domain (pi-Net, PSJNet):
    subclasses define ``domain_states(xy) -> [states_X, states_Y]`` (each (B, L, h)) and a decoder
    ``out`` (n_items, h) with per-item ``out_bias`` (n_items,): the dense layer to each domain's items
    (rows lo..hi-1 are domain d's); a target of domain d is scored from states_d."""

    out: nn.Parameter
    out_bias: nn.Parameter

    def domain_states(self, xy: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def _logits(self, h: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        return h @ self.out[lo:hi].T + self.out_bias[lo:hi]

    def loss(self, batch: Batch) -> torch.Tensor:
        return per_domain_cross_entropy(self._logits, self.domain_states(batch.xy), batch.xy_target, self.domain_ranges, self.pad_id)

    def scores(self, batch: Batch, domain: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        u = self.domain_states(batch.xy)[domain][:, -1]  # (B, h) after the last real item
        lo, hi = self.domain_ranges[domain]
        if candidates is None:
            return self._logits(u, lo, hi)
        return score_candidates(u, self.out, lo, hi, candidates) + self.out_bias[candidates]


def domain_xavier_normal_(weight: torch.Tensor, domain_ranges: list[tuple[int, int]]) -> None:
    """Glorot-normal init of a table whose row blocks are per-domain matrices (the TF baselines keep one
    matrix per domain): block d of shape (n_d, h) gets std sqrt(2 / (n_d + h))."""
    with torch.no_grad():
        for lo, hi in domain_ranges:
            nn.init.normal_(weight[lo:hi], std=(2.0 / (hi - lo + weight.shape[1])) ** 0.5)


def stacked_item_table(n_items: int, d: int, pad_id: int, domain_ranges: list[tuple[int, int]]) -> nn.Embedding:
    """The two domains' item tables of the TF baselines stacked into one embedding (+ a zero pad row),
    each domain's block Glorot-normal as its own matrix."""
    table = nn.Embedding(n_items + 1, d, padding_idx=pad_id)
    domain_xavier_normal_(table.weight, domain_ranges)
    with torch.no_grad():
        table.weight[pad_id].zero_()
    return table


def domain_decoder(n_items: int, d_in: int, domain_ranges: list[tuple[int, int]]) -> tuple[nn.Parameter, nn.Parameter]:
    """The TF baselines' dense layer to each domain's items, stacked: a kernel (n_items, d_in) whose rows lo..hi-1
    are domain d's (Glorot-normal per domain) and a zero per-item bias (n_items,)."""
    kernel = nn.Parameter(torch.empty(n_items, d_in))
    domain_xavier_normal_(kernel, domain_ranges)
    return kernel, nn.Parameter(torch.zeros(n_items))
