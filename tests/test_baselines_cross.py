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
    res = _train(name, tiny_dir, tmp_path / name, ["model.hidden=32", *(["model.n_nodes=16"] if name == "mifn" else [])])
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


def test_mifn_knowledge_graph_hand_made():
    titles = ["red apple pie", "apple juice", "steel pan", "red pan", None]
    co, words = (g.toarray() for g in build_knowledge_graph([[0, 2, 4]], titles, n_items=5, window=1, max_word_items=2))
    # co-occurrence 0-2, 2-4; rare shared words: apple (0, 1), red (0, 3), pan (2, 3); no self-loops.
    for g, pairs in ((co, [(0, 2), (2, 4)]), (words, [(0, 1), (0, 3), (2, 3)])):
        expected = np.zeros((5, 5))
        for a, b in pairs:
            expected[a, b] = expected[b, a] = 1
        np.testing.assert_array_equal(g, expected)
    # A word naming more than max_word_items items links nothing.
    _, g2 = build_knowledge_graph([], ["a x", "b x", "c x"], n_items=3, window=1, max_word_items=2)
    assert g2.nnz == 0


def test_mifn_subgraph_nodes_and_availability():
    """A sequence's subgraph: its items most recent first, then neighbours most-linked first; a node is
    available from the first position whose item is it or links to it (no look-ahead to later items)."""
    from scipy import sparse as sp

    from llmemf.models.mifn import subgraphs

    pad = 9
    union = sp.csr_matrix(np.array([[0, 1, 0, 0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 1, 1, 0, 0, 0], *np.zeros((7, 9))]))
    union = (union + union.T).tocsr()
    union.data[:] = 1
    nodes, since = subgraphs(np.array([[pad, 0, 3, 1]]), pad, union, n_nodes=5)
    # items 1 (t=3), 3 (t=2), 0 (t=1); neighbours: 4 (linked from 0 and 1), 5 (from 1)
    assert nodes.tolist() == [[1, 3, 0, 4, 5]] and since.tolist() == [[3, 2, 1, 1, 3]]
    nodes, since = subgraphs(np.array([[pad, 0, 3, 1]]), pad, union, n_nodes=4)
    assert nodes.tolist() == [[1, 3, 0, 4]]


def test_mifn_loss_pushes_explore_when_the_target_is_outside_the_subgraph(tiny_bundle):
    """The official extra term -log P_explore applies exactly to targets that are no available node."""
    from llmemf.models.base import build_model

    torch.manual_seed(0)
    model = build_model("mifn", {"hidden": 8, "n_nodes": 6, "dropout": 0.0}, tiny_bundle).eval()
    batch = next(tiny_bundle.train.iter_batches(4))
    with torch.no_grad():
        base = model.loss(batch)
        model.switch[0].bias += 3.0  # more exploit in X: the term grows for X targets outside the subgraph
        model.switch[1].bias += 3.0
        assert model.loss(batch) > base


def test_tiny_dataset_fixture_is_two_domain(tiny_dataset: Dataset):
    assert tiny_dataset.manifest.domains[0].n_items == 30


def test_pinet_filter_cell_is_the_official_recurrence():
    """mamuyang/PINet FilterCell: per member k, f_k = sigmoid([own ; other ; s] W_f + b_f + m_k V_f),
    c_k = tanh([own ; s] W_s + b_s + m_k V_f) (the code's candidate adds V_f's member term), and
    s' = mean_k f_k * s + (1 - f_k) * c_k: the new state depends on the previous one."""
    from llmemf.models.pinet import FilterCell

    torch.manual_seed(0)
    cell = FilterCell(3, n_members=2)
    assert bool((cell.w_f.bias == 1).all()) and bool((cell.w_s.bias == 1).all())
    x, s = torch.randn(4, 6), torch.randn(4, 3)
    u = cell.members @ cell.v_f.weight.T  # (K, d)
    f = torch.sigmoid((torch.cat([x, s], 1) @ cell.w_f.weight.T + cell.w_f.bias)[:, None] + u)
    c = torch.tanh((torch.cat([x[:, :3], s], 1) @ cell.w_s.weight.T + cell.w_s.bias)[:, None] + u)
    torch.testing.assert_close(cell(x, s), (f * s[:, None] + (1 - f) * c).mean(1))
    assert not torch.allclose(cell(x, s), cell(x, torch.zeros_like(s)))
