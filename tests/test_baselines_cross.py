"""Cross-domain sequential baselines: π-Net, PSJNet, C2DSR, Tri-CDR, MIFN.

Each trains a few epochs on the tiny learnable dataset through the real trainer and must beat
Pop on validation MRR; the graph constructions and the merged/domain alignment are checked on
hand-made cases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_data import make_tiny_dataset

from llmemf.config import load_config
from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset
from llmemf.models.c2dsr import align, next_in_domain, split_domain
from llmemf.models.mifn import build_knowledge_graph
from llmemf.training.trainer import train

CROSS = ["pinet", "psjnet", "c2dsr", "tricdr", "mifn"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cross") / "tiny"
    make_tiny_dataset().save(path)
    return path


def _train(name: str, data, out, extra=()):
    overrides = [
        f"dataset={data}",
        f"out={out}",
        f"model.name={name}",
        "max_len=10",
        "train.epochs=5",
        "train.threads=1",  # one thread: far faster than two when the cores are shared
        "train.lr=5e-3",
        "train.progress=false",
        "eval.protocols=[c2dsr]",
        "eval.n_negatives=20",
        *extra,
    ]
    return train(load_config(None, overrides), log=lambda *_: None)


@pytest.fixture(scope="module")
def pop_mrr(tiny_dir, tmp_path_factory):
    return _train("pop", tiny_dir, tmp_path_factory.mktemp("pop")).valid["c2dsr"].mean_mrr()


@pytest.mark.parametrize("name", CROSS)
def test_trains_and_beats_pop(name, tiny_dir, pop_mrr, tmp_path):
    res = _train(name, tiny_dir, tmp_path / name, ["model.hidden=32"])
    mrr = res.valid["c2dsr"].mean_mrr()
    assert np.isfinite(mrr)
    assert mrr > pop_mrr + 0.03, f"{name}: valid MRR {mrr:.3f} vs Pop {pop_mrr:.3f}"


def test_c2dsr_sampled_softmax_learns(tiny_dir, pop_mrr, tmp_path):
    res = _train("c2dsr", tiny_dir, tmp_path / "s", ["model.hidden=32", "model.train_negatives=10"])
    assert res.valid["c2dsr"].mean_mrr() > pop_mrr + 0.03


def test_c2dsr_samples_only_where_a_domain_is_larger_than_k(tiny_dir):
    from llmemf.models.base import build_model

    bundle = DataBundle(Dataset.load(tiny_dir), max_len=10)
    batch = next(bundle.train.iter_batches(16, shuffle=False))
    largest = max(hi - lo for lo, hi in (bundle.domain_range(0), bundle.domain_range(1)))
    losses = {}
    for k in (0, largest, largest - 1):
        torch.manual_seed(0)
        model = build_model("c2dsr", {"hidden": 16, "dropout": 0.0, "train_negatives": k}, bundle)
        torch.manual_seed(1)  # the same corrupted sequences for every k
        losses[k] = model.loss(batch).item()
    assert losses[largest] == losses[0]  # k covers both domains: the exact full softmax
    assert losses[largest - 1] != losses[0]  # the larger domain samples


def test_c2dsr_corrected_sampled_softmax_estimates_the_full_one(tiny_dir):
    """With each negative weighted n_domain / k, the sampled cross-entropy (target + negatives + the
    padding class) is a consistent estimate of the full softmax's; without the weight it measures a
    partition function k / n_domain too small (here k = 40 n_domain: far too large)."""
    from llmemf.models.base import build_model

    bundle = DataBundle(Dataset.load(tiny_dir), max_len=10)
    torch.manual_seed(0)
    model = build_model("c2dsr", {"hidden": 16}, bundle)
    with torch.no_grad():
        for head in (model.lin_x, model.lin_y):
            head.weight.mul_(8.0)  # spread the logits so that the partition function is not flat
        h = torch.randn(32, 16)
        pad_logit = torch.randn(32)
        k = 40 * max(hi - lo for lo, hi in model.domain_ranges)
        for d, (lo, hi) in enumerate(model.domain_ranges):
            t = torch.randint(0, hi - lo, (32,))
            model.config.sampled_correction = True
            full = model._nll(d, h, pad_logit, t)
            corrected = model._sampled_nll(d, h, pad_logit, t, k)
            model.config.sampled_correction = False
            uncorrected = model._sampled_nll(d, h, pad_logit, t, k)
            assert abs(corrected / full - 1) < 0.03, (float(corrected), float(full))
            assert uncorrected > 1.15 * full
        # Popularity-proportional negatives, weighted 1 / (k q): the same estimate.
        pop = build_model("c2dsr", {"hidden": 16, "negative_sampler": "popularity"}, bundle)
        pop.load_state_dict(model.state_dict())
        assert not torch.allclose(pop.neg_q[0], model.neg_q[0])
        t = torch.randint(0, model.n_x, (32,))
        full = model._nll(0, h, pad_logit, t)
        assert abs(pop._sampled_nll(0, h, pad_logit, t, k) / full - 1) < 0.03


def test_alignment_helpers():
    pad, n_x = 9, 4  # X = 0..3, Y = 4..8
    xy = torch.tensor([[pad, 0, 5, 1, 6], [pad, pad, 7, 8, 2]])
    is_x = xy < n_x
    x, ix = split_domain(xy, is_x, pad)
    assert x.tolist() == [[0, 1], [pad, 2]]
    assert ix.tolist() == [[-1, 0, 0, 1, 1], [-1, -1, -1, -1, 1]]
    states = torch.arange(4.0).view(2, 2, 1)  # state value = compact index (+2 for row 1)
    assert align(states, ix).squeeze(-1).tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 3]]
    tgt = torch.tensor([[pad, 5, 1, 6, 3], [pad, pad, 8, 2, 4]])
    assert next_in_domain(tgt, 0, n_x, pad).tolist() == [[1, 1, 1, 3, 3], [2, 2, 2, 2, pad]]
    assert next_in_domain(tgt, n_x, pad, pad).tolist() == [[5, 5, 6, 6, pad], [8, 8, 8, 4, 4]]


def test_mifn_knowledge_graph_hand_made():
    titles = ["red apple pie", "apple juice", "steel pan", "red pan", None]
    g = build_knowledge_graph([[0, 2, 4]], titles, n_items=5, window=1, max_word_items=2).toarray()
    # co-occurrence 0-2, 2-4; rare shared words: apple (0, 1), red (0, 3), pan (2, 3).
    expected = np.eye(5)
    for a, b in [(0, 2), (2, 4), (0, 1), (0, 3), (2, 3)]:
        expected[a, b] = expected[b, a] = 1
    np.testing.assert_array_equal(g, expected)
    # A word naming more than max_word_items items links nothing.
    g2 = build_knowledge_graph([], ["a x", "b x", "c x"], n_items=3, window=1, max_word_items=2).toarray()
    np.testing.assert_array_equal(g2, np.eye(3))


def test_tiny_dataset_fixture_is_two_domain(tiny_dataset: Dataset):
    assert tiny_dataset.manifest.domains[0].n_items == 30
