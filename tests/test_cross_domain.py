"""models/cross_domain.py (per-domain subsequences, alignment, next-in-domain targets, in-domain negatives,
the per-domain GRU) on hand-made cases, and padding invariance of every registered model: a user's scores
must not depend on the batch they are scored in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmemf.data.batching import domain_masks
from llmemf.models.base import REGISTRY, build_model
from llmemf.models.cross_domain import DomainGRU, TFGRUCell, align, next_in_domain, sample_in_domain, split_domain


def test_alignment_helpers():
    pad, n_x = 9, 4  # X = 0..3, Y = 4..8
    xy = torch.tensor([[pad, 0, 5, 1, 6], [pad, pad, 7, 8, 2]])
    is_x, is_y = domain_masks(xy, n_x, pad)
    x, ix = split_domain(xy, is_x, pad)
    assert x.tolist() == [[0, 1], [pad, 2]]
    assert ix.tolist() == [[-1, 0, 0, 1, 1], [-1, -1, -1, -1, 1]]
    states = torch.arange(4.0).view(2, 2, 1)  # state value = compact index (+2 for row 1)
    assert align(states, ix).squeeze(-1).tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 3]]
    y, _ = split_domain(xy, is_y, pad)
    assert y.tolist() == [[5, 6], [7, 8]]
    tgt = torch.tensor([[pad, 5, 1, 6, 3], [pad, pad, 8, 2, 4]])
    assert next_in_domain(tgt, 0, n_x, pad).tolist() == [[1, 1, 1, 3, 3], [2, 2, 2, 2, pad]]
    assert next_in_domain(tgt, n_x, pad, pad).tolist() == [[5, 5, 6, 6, pad], [8, 8, 8, 4, 4]]


def test_sample_in_domain_stays_in_the_positives_domain():
    ranges = [(0, 4), (4, 9)]
    pos = torch.tensor([[0, 5, 3], [8, 1, 4]])
    neg = sample_in_domain(pos, ranges, 50, torch.Generator().manual_seed(0))
    assert neg.shape == (2, 3, 50)
    in_y = pos >= 4
    assert bool(((neg >= 4) == in_y[..., None]).all()) and int(neg.min()) >= 0 and int(neg.max()) <= 8
    assert torch.equal(neg, sample_in_domain(pos, ranges, 50, torch.Generator().manual_seed(0)))  # seeded


def test_domain_gru_reads_only_its_positions():
    """At merged position t the state is the cell run over exactly the masked inputs up to t, from zero,
    whatever sits at the other positions; outputs equal states outside training."""
    torch.manual_seed(0)
    gru = DomainGRU(3, 4, dropout=0.3).eval()
    x = torch.randn(2, 5, 3)
    mask = torch.tensor([[False, True, False, True, True], [False, False, False, False, True]])
    out, state = gru(x, mask)
    assert out.shape == (2, 5, 4)
    torch.testing.assert_close(out, state)

    def run(seq: torch.Tensor) -> list[torch.Tensor]:
        h, hs = torch.zeros(1, 4), []
        for t in range(seq.shape[0]):
            h = gru.cell(seq[t : t + 1], h)
            hs.append(h[0])
        return hs

    r0 = run(x[0, [1, 3, 4]])  # row 0's items, no padding at all
    torch.testing.assert_close(out[0, [1, 2, 3, 4]], torch.stack([r0[0], r0[0], r0[1], r0[2]]))
    assert not out[0, 0].any() and not out[1, :4].any()  # before a row's first item: zeros
    torch.testing.assert_close(out[1, 4], run(x[1, [4]])[0])
    x2 = x.clone()
    x2[~mask] = 100.0  # what sits at the other positions does not matter
    torch.testing.assert_close(gru(x2, mask)[0], out)


def test_tf_gru_cell_is_tensorflows():
    """TF1 GRUCell: the reset gate multiplies the state before the candidate's matmul; gate bias starts at 1."""
    torch.manual_seed(0)
    cell = TFGRUCell(2, 3)
    assert bool((cell.gate.bias == 1).all()) and not cell.cand.bias.any()
    x, h = torch.randn(4, 2), torch.randn(4, 3)
    r, u = torch.sigmoid(torch.cat([x, h], 1) @ cell.gate.weight.T + cell.gate.bias).split(3, 1)
    c = torch.tanh(torch.cat([x, r * h], 1) @ cell.cand.weight.T + cell.cand.bias)
    torch.testing.assert_close(cell(x, h), u * h + (1 - u) * c)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_scores_do_not_depend_on_the_batch(name, tiny_bundle):
    """A user scored alone (the batch is as wide as their history) and inside a batch with the longest
    row (so left padding is added to theirs) gets the same scores, in both domains."""
    torch.manual_seed(0)
    model = build_model(name, {}, tiny_bundle)
    model.fit(tiny_bundle)
    model.eval()
    split = tiny_bundle.splits["valid"]
    lengths = split.xy_len
    short, long = int(np.argmin(lengths)), int(np.argmax(lengths))
    assert lengths[short] < lengths[long]
    alone, together = split.batch(np.array([short])), split.batch(np.array([short, long]))
    with torch.no_grad():
        for d in (0, 1):
            a = model.scores(alone, d)[0]
            torch.testing.assert_close(model.scores(together, d)[0], a, rtol=1e-4, atol=1e-5)
