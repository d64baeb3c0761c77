"""C2DSR pinned to the official code (cjx96/C2DSR at 89d4b92, C2DSR_src/) on small hand-made inputs.

Graphs (utils/GraphMaker.py), which domain each corruption randomises and which discriminator reads it
(utils/loader.py, model/trainer.py), the shared and specific heads' targets, the infomax weight, the
GNN layer, and the optimiser settings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmemf.config import load_config
from llmemf.data.batching import Batch, DataBundle, domain_masks
from llmemf.models.base import build_model
from llmemf.models.c2dsr import C2DSR
from llmemf.models.graph import domain_transition_graphs, receptive_field, transition_graph
from llmemf.training.trainer import make_optimizer

# ---------------------------------------------------------------- graphs

# X items 0, 1, 2; Y items 3, 4, 5 (global ids, as the official files number them).
TOY_LOG = [
    [0, 3, 1, 4, 0],
    [1, 0, 3, 3, 5],
    [2, 4, 0, 2],
]


def test_mixed_graph_is_directed_count_weighted_row_normalised():
    mixed, _, _ = domain_transition_graphs(TOY_LOG, 3, 3)
    # Consecutive pairs: 0>3 (twice), 3>1, 1>4, 4>0 (twice), 1>0, 3>3 (repeat: self-loop), 3>5, 2>4, 0>2.
    expected = np.zeros((6, 6))
    expected[0, 3], expected[0, 2] = 2 / 3, 1 / 3
    expected[1, 4], expected[1, 0] = 1 / 2, 1 / 2
    expected[2, 4] = 1.0
    expected[3, 1] = expected[3, 3] = expected[3, 5] = 1 / 3
    expected[4, 0] = 1.0
    # item 5 is never followed: an empty row (official normalize: 1/0 -> 0)
    np.testing.assert_allclose(mixed.toarray(), expected, rtol=1e-6)


def test_single_domain_graphs_link_each_domains_own_subsequence():
    _, x, y = domain_transition_graphs(TOY_LOG, 3, 3)
    # X subsequences [0, 1, 0], [1, 0], [2, 0, 2]: 0>1, 1>0 (twice), 2>0, 0>2. The 0>1 edge of user 1 joins items
    # that are not adjacent in the merged sequence (a Y item sits between them).
    ex = np.zeros((3, 3))
    ex[0, 1] = ex[0, 2] = 1 / 2
    ex[1, 0] = 1.0
    ex[2, 0] = 1.0
    np.testing.assert_allclose(x.toarray(), ex, rtol=1e-6)
    # Y subsequences (Y-local ids: 3 -> 0, 4 -> 1, 5 -> 2) [0, 1], [0, 0, 2], [1]: 0>1, 0>0, 0>2.
    ey = np.zeros((3, 3))
    ey[0] = 1 / 3
    np.testing.assert_allclose(y.toarray(), ey, rtol=1e-6)


def test_transition_graph_matches_the_official_graphmaker_loop():
    """The official preprocess loop, transcribed (its duplicate check reads a set that is never filled)."""
    rng = np.random.default_rng(0)
    n_x, n_y = 7, 5
    log = [list(rng.integers(0, n_x + n_y, rng.integers(2, 9))) for _ in range(40)]
    edges, single = [], []
    for seq in log:
        source = target = pre = -1
        for d in seq:
            if d < n_x:
                if source != -1:
                    single.append((source, d))
                source = d
            else:
                if target != -1:
                    single.append((target, d))
                target = d
            if pre != -1:
                edges.append((pre, d))
            pre = d

    def official(pairs):
        a = np.zeros((n_x + n_y, n_x + n_y))
        for i, j in pairs:
            a[i, j] += 1
        s = a.sum(1, keepdims=True)
        return np.divide(a, s, out=np.zeros_like(a), where=s > 0)

    mixed, x, y = domain_transition_graphs(log, n_x, n_y)
    np.testing.assert_allclose(mixed.toarray(), official(edges), rtol=1e-6)
    block = official(single)
    np.testing.assert_allclose(x.toarray(), block[:n_x, :n_x], rtol=1e-6)
    np.testing.assert_allclose(y.toarray(), block[n_x:, n_x:], rtol=1e-6)
    assert not block[:n_x, n_x:].any() and not block[n_x:, :n_x].any()


def test_receptive_field_keeps_output_rows_for_layer_sums():
    adj = transition_graph([[0, 1, 2, 3]], 5)  # a chain: 0>1>2>3
    plan = receptive_field(adj, np.array([0]), 2)
    assert [cols.tolist() for cols, _ in plan] == [[0, 1, 2], [0, 1]]


# ---------------------------------------------------------------- model on a tiny bundle


@pytest.fixture
def model(tiny_bundle) -> C2DSR:
    torch.manual_seed(0)
    return build_model("c2dsr", {"hidden": 8, "dropout": 0.0}, tiny_bundle)


def _batch(rows: list[list[int]], pad: int, users: list[int] | None = None) -> Batch:
    """Training batch from full sequences s (inputs s[:-1], targets s[1:]), left-padded."""
    width = max(len(s) for s in rows) - 1
    xy = torch.full((len(rows), width), pad)
    tgt = torch.full((len(rows), width), pad)
    for i, s in enumerate(rows):
        xy[i, width - len(s) + 1 :] = torch.tensor(s[:-1])
        tgt[i, width - len(s) + 1 :] = torch.tensor(s[1:])
    user = torch.tensor(users if users is not None else list(range(len(rows))))
    empty = torch.full((len(rows), 1), pad)
    return Batch(user=user, xy=xy, x=empty, y=empty, xy_target=tgt, x_target=empty, y_target=empty)


def test_head_targets_immediate_next_item_in_its_own_domain(model, monkeypatch):
    assert model.n_x == 30  # X = 0..29, Y = 30..69 in the tiny dataset
    calls = {}

    def record(domain, h, pad_logit, t):
        calls[domain] = t.tolist()
        return h.sum() * 0

    monkeypatch.setattr(model, "_nll", record)
    # s = X0 Y30 Y31 X1 Y32: inputs X0 Y30 Y31 X1, targets Y30 Y31 X1 Y32.
    model.loss(_batch([[0, 30, 31, 1, 32]], model.pad_id))
    # X head: shared h_xy at Y31 -> X1 (the immediate next item only); specific at X0 -> X1 (the next X item).
    # X1 is the last X and the final item is Y: it leaves the X view (no specific target).
    assert calls[0] == [1, 1]
    # Y head (Y-local ids): shared X0 -> 30, Y30 -> 31, X1 -> 32; specific Y30 -> 31, Y31 -> 32 (final item is Y).
    assert calls[1] == [0, 1, 2, 1, 2]


def test_rows_without_a_specific_target_in_both_domains_are_not_trained(model, monkeypatch):
    calls = {}

    def record(domain, h, pad_logit, t):
        calls[domain] = t.tolist()
        return h.sum() * 0

    monkeypatch.setattr(model, "_nll", record)
    # Row 0: one X item then only Y: no X position has a next X item (official "pass sequence x").
    # Row 1: ends with the first Y item (30): the official `ground[-1] > source_item_num` drops its last Y
    # target, and with it the row's only one ("pass sequence y").
    model.loss(_batch([[0, 31, 32, 33], [0, 1, 31, 30]], model.pad_id))
    assert calls == {0: [], 1: []}
    # Ending with another Y item keeps the row: shared 0 -> 1 (X), 1 -> 31, 31 -> 32 (Y); specific X 0 -> 1; Y 31 -> 32.
    model.loss(_batch([[0, 1, 31, 32]], model.pad_id))
    assert calls == {0: [1, 1], 1: [1, 2, 2]}


def test_corruptions_randomise_the_other_domain_and_feed_the_right_discriminator(model, monkeypatch):
    pad, n_x = model.pad_id, model.n_x
    batch = _batch([[0, 30, 1, 31, 2, 32]], pad)
    L = model.max_len
    rand_x = torch.full((1, L), 7)  # every random X item: 7
    rand_y = torch.full((1, L), 66)  # every random Y item: 66
    monkeypatch.setattr(model, "corruptions", lambda b, xy: (rand_x, rand_y))
    seen = {}
    view_inputs = model._view_inputs

    def record_view(view, ids):
        if view == 0:
            seen["merged"] = ids.clone()
        return view_inputs(view, ids)

    monkeypatch.setattr(model, "_view_inputs", record_view)
    enc_out = {}
    model.enc_xy.register_forward_hook(lambda m, i, o: enc_out.setdefault("h", o.detach()))
    disc_in = {}
    model.disc_x.register_forward_hook(lambda m, i, o: disc_in.setdefault("x", []).append(i[0].detach()))
    model.disc_y.register_forward_hook(lambda m, i, o: disc_in.setdefault("y", []).append(i[0].detach()))
    model.loss(batch)

    real, corru_x, corru_y = seen["merged"].split(1)
    xy = real[0]
    is_x, is_y = domain_masks(xy, n_x, pad)
    # corru_x keeps X and randomises Y (loader.py:254, 263); corru_y keeps Y and randomises X (loader.py:258, 266).
    assert torch.equal(corru_x[0][is_x], xy[is_x]) and (corru_x[0][is_y] == 66).all()
    assert torch.equal(corru_y[0][is_y], xy[is_y]) and (corru_y[0][is_x] == 7).all()
    assert (corru_x[0][xy == pad] == pad).all() and (corru_y[0][xy == pad] == pad).all()
    # D_X's negative is corru_y's encoding pooled over the Y positions with a target, D_Y's corru_x's over X ones.
    h_real, h_cx, h_cy = enc_out["h"].split(1)
    at_y = is_y.clone()  # every Y position has a next Y item here (the final item, 32, is Y)
    at_x = is_x & (torch.arange(L) != int(torch.nonzero(is_x).max()))  # the last X leaves: the final item is Y
    torch.testing.assert_close(disc_in["x"][0], h_real[:, at_y].mean(1))
    torch.testing.assert_close(disc_in["x"][1], h_cy[:, at_y].mean(1))
    torch.testing.assert_close(disc_in["y"][0], h_real[:, at_x].mean(1))
    torch.testing.assert_close(disc_in["y"][1], h_cx[:, at_x].mean(1))


def test_infomax_weight_is_one_minus_lambda_on_the_sum_of_both_terms(model, monkeypatch):
    batch = _batch([[0, 30, 1, 31, 2, 32], [3, 4, 40, 41, 5]], model.pad_id)
    scores = []
    model.disc_x.register_forward_hook(lambda m, i, o: scores.append(o.detach()))
    model.disc_y.register_forward_hook(lambda m, i, o: scores.append(o.detach()))

    def loss_at(lam):
        model.config.lam = lam
        scores.clear()
        return float(model.loss(batch).detach())

    pred, mi, mixed = loss_at(1.0), loss_at(0.0), loss_at(0.7)
    real_x, false_x, real_y, false_y = scores
    ones, zeros = torch.ones_like(real_x), torch.zeros_like(real_x)
    bce = F.binary_cross_entropy_with_logits
    x_mi = bce(real_x, ones) + bce(false_x, zeros)
    y_mi = bce(real_y, ones) + bce(false_y, zeros)
    assert mi == pytest.approx(float(x_mi + y_mi), rel=1e-5)  # not halved
    assert mixed == pytest.approx(0.7 * pred + 0.3 * mi, rel=1e-5)


def test_gnn_is_the_official_layer_over_the_whole_table(tiny_bundle):
    """(e + A dropout(e) + b) / 2 per view (2 layers: (e + h1 + h2) / 3), computed on the receptive field only."""
    torch.manual_seed(0)
    for layers in (1, 2):
        m = build_model("c2dsr", {"hidden": 8, "gnn_layers": layers}, tiny_bundle).eval()
        with torch.no_grad():
            for view, (table, gnn) in enumerate([(m.item_xy, m.gnn_xy), (m.item_x, m.gnn_x), (m.item_y, m.gnn_y)]):
                e = table.weight[:-1]
                a = torch.from_numpy(m.adj[view].toarray())
                h, total = e, e
                for b in gnn.bias:
                    h = a @ h + b
                    total = total + h
                expected = (e + total / (layers + 1)) * 8**0.5
                ids = torch.tensor([0, 3, 5, len(e)])  # the last id is padding
                got = m._view_inputs(view, ids)
                torch.testing.assert_close(got[:3], expected[ids[:3]], rtol=1e-5, atol=1e-5)
                assert not got[3].any()


def test_scores_do_not_depend_on_the_batch_width(model):
    """Every row is padded to max_len (as the official loader does): a row scores the same alone or next to a
    longer one, although padding is attended to."""
    model.eval()
    pad = model.pad_id
    short, long = [0, 30, 1], [2, 31, 3, 32, 33, 4, 34]

    def ev(rows):
        width = max(map(len, rows))
        xy = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        return Batch(user=torch.zeros(len(rows), dtype=torch.long), xy=xy, x=xy, y=xy)

    with torch.no_grad():
        for d in (0, 1):
            alone = model.scores(ev([short]), d)
            together = model.scores(ev([short, long]), d)[:1]
            torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)


def test_a_history_without_the_domain_is_scored_from_the_last_position(model):
    """Official X_last / Y_last = -1 when the history has no item of the domain (loader.py:159-171)."""
    model.eval()
    xy = torch.tensor([[model.pad_id, 0, 1]])  # X items only
    batch = Batch(user=torch.zeros(1, dtype=torch.long), xy=xy, x=xy, y=xy)
    with torch.no_grad():
        scores = model.scores(batch, 1)
        padded = model._left_pad(xy)
        merged = model.enc_xy(model._view_inputs(0, padded), padded != model.pad_id)[:, -1]
        y_view = model._domain_view(padded, torch.zeros_like(padded, dtype=torch.bool), 1)[:, -1]
    torch.testing.assert_close(scores, model.lin_y(merged + y_view))


def test_fixed_corruptions_are_the_same_every_step(tiny_bundle):
    torch.manual_seed(0)
    fixed = build_model("c2dsr", {"hidden": 8}, tiny_bundle)
    fresh = build_model("c2dsr", {"hidden": 8, "fixed_corruptions": False}, tiny_bundle)
    batch = next(tiny_bundle.train.iter_batches(4))
    first = fixed.corruptions(batch, batch.xy)
    assert all(torch.equal(a, b) for a, b in zip(first, fixed.corruptions(batch, batch.xy), strict=True))
    assert not torch.equal(fresh.corruptions(batch, batch.xy)[0], fresh.corruptions(batch, batch.xy)[0])
    rand_x, rand_y = first
    assert (rand_x < fixed.n_x).all() and (rand_y >= fixed.n_x).all() and (rand_y < fixed.n_items).all()


# ---------------------------------------------------------------- optimiser


def test_official_config_has_no_l2(tiny_bundle):
    cfg = load_config("configs/models/c2dsr.yaml", ["model.hidden=8"])
    m = build_model(cfg.model_name, cfg.model_params, tiny_bundle)
    assert cfg.train.weight_decay == 0.0 and cfg.train.grad_clip == 0.0 and cfg.train.bf16 is False
    assert cfg.model_params["train_negatives"] == 0  # the paper's full softmax
    assert make_optimizer(m, cfg.train).param_groups[0]["weight_decay"] == 0.0
    assert C2DSR.adam_betas == (0.9, 0.98)


def test_only_the_sampled_variant_trains_in_bf16_and_only_where_the_cpu_has_it(tiny_bundle, monkeypatch):
    """The official loss stays fp32; the fast variant asks for bf16, which the trainer grants only on a CPU with
    native bf16 (emulated bf16 autocast is many times slower than fp32)."""
    from llmemf.training import trainer

    official = load_config("configs/models/c2dsr.yaml", ["model.hidden=8"])
    fast = load_config("configs/models/c2dsr_fast.yaml", ["model.hidden=8"])
    assert fast.train.bf16 is None and fast.model_params["train_negatives"] > 0
    m_official = build_model(official.model_name, official.model_params, tiny_bundle)
    m_fast = build_model(fast.model_name, fast.model_params, tiny_bundle)
    assert not m_official.prefers_bf16 and m_fast.prefers_bf16
    for native in (True, False):
        monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda native=native: native)
        assert trainer.train_in_bf16(fast, m_fast) is native
        assert trainer.train_in_bf16(official, m_official) is False


def test_trainer_gives_c2dsr_the_official_betas(tiny_bundle):
    cfg = load_config("configs/models/c2dsr.yaml", ["model.hidden=8"])
    m = build_model(cfg.model_name, cfg.model_params, tiny_bundle)
    assert make_optimizer(m, cfg.train).param_groups[0]["betas"] == (0.9, 0.98)


def test_bundle_max_len_sizes_the_positions(tiny_bundle: DataBundle, model):
    # positions 1..max_len and 0 for padding
    assert model.enc_xy.pos.num_embeddings == tiny_bundle.max_len + 1
