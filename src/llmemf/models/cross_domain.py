"""What the cross-domain models share: per-domain subsequences of a merged batch and their
alignment back to merged positions, next-in-domain targets, in-domain negatives, and the
per-domain GRU.

Which positions belong to which domain has one definition, ``llmemf.data.batching.domain_masks``;
everything here takes such a mask. A merged row is left-padded (data/batching.py); a domain's
subsequence is the row's items where the mask holds, in order.
"""

from __future__ import annotations

import torch
from torch import nn


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


class DomainGRU(nn.Module):
    """A GRU over the positions of a merged batch where ``mask`` holds (one domain's items, or every
    real item), with its states returned at merged positions.

    The GRU never steps over a position outside the mask: the selected positions are packed to the
    LEFT of a compact tensor (right padding), so a row's state after its k-th selected item has read
    exactly those k inputs from a zero state, whatever the batch's width or the other rows hold (a
    GRU run over left padding would drift through its biases on the zero-input pad steps, so a user's
    state would depend on the longest row of the batch). The garbage after a row's last item in the
    compact tensor is never read.
    """

    def __init__(self, d_in: int, d: int | None = None):
        super().__init__()
        self.gru = nn.GRU(d_in, d or d_in, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, d_in) inputs at merged positions, mask (B, L) -> (B, L, d): at t, the state after the
        last masked position <= t (zeros before the row's first one)."""
        B, L, d_in = x.shape
        width = max(int(mask.sum(1).max()), 1)
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]  # (B, W) masked positions first, in order
        out, _ = self.gru(x.gather(1, order[..., None].expand(-1, -1, d_in)))  # (B, W, d)
        return align(out, mask.long().cumsum(1) - 1)
