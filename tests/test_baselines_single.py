"""The single-domain baselines (ItemKNN, BPRMF, NCF-MLP, GRU4Rec, SR-GNN) learn through the real
trainer, and ItemKNN's similarity is the cosine of a hand-computed case."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_data import make_tiny_dataset

from llmemf.config import load_config
from llmemf.data.batching import Batch, DataBundle
from llmemf.data.dataset import Dataset, DomainInfo, Manifest, make_items_frame, split_history_target
from llmemf.models.base import NO_USER, build_model
from llmemf.models.itemknn import cooccurrence
from llmemf.training.trainer import make_optimizer, train


def make_dataset(sequences: dict[str, list[int]], n_x: int, n_y: int) -> Dataset:
    """A dataset from whole per-user sequences, split leave-one-out like the C2DSR files: train is
    all but the last two items, valid predicts the second-to-last, test the last."""
    items = make_items_frame([n_x, n_y])
    rows = {"train": [], "valid": [], "test": []}
    for u, seq in sequences.items():
        ts = list(range(len(seq)))
        rows["train"].append({"user": u, "items": seq[:-2], "timestamps": ts[:-2]})
        for split, end in (("valid", len(seq) - 1), ("test", len(seq))):
            hist, hts, target, tts = split_history_target(seq[:end], ts[:end])
            rows[split].append(
                {"user": u, "items": hist, "timestamps": hts, "target": target, "target_domain": int(target >= n_x), "target_timestamp": tts}
            )
    manifest = Manifest(name="t", domains=[DomainInfo("X", n_x, 0), DomainInfo("Y", n_y, n_x)], source="tests")
    return Dataset(manifest=manifest, items=items, splits={k: pd.DataFrame(v) for k, v in rows.items()})


def make_group_dataset(n_groups: int = 8, per_x: int = 6, per_y: int = 6, n_users: int = 240, seed: int = 0) -> Dataset:
    """Users of a hidden taste group draw items, without repeats and in random order, from their
    group's items of both domains: learnable without order (the non-sequential models' setting),
    and every item about equally popular, so Pop is no better than chance. Histories are short
    next to a group, so that the still-unseen group items (where targets are) outnumber the seen ones
    a user-taste model also ranks high."""
    rng = np.random.default_rng(seed)
    n_x = n_groups * per_x
    groups = [np.r_[np.arange(g * per_x, (g + 1) * per_x), n_x + np.arange(g * per_y, (g + 1) * per_y)] for g in range(n_groups)]
    seqs = {f"u{u}": [int(i) for i in rng.permutation(groups[u % n_groups])[: int(rng.integers(6, 9))]] for u in range(n_users)}
    return make_dataset(seqs, n_x, n_groups * per_y)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, and the trainer's ``threads`` is process-wide: restore it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def valid_mrr(name: str, bundle: DataBundle, out, overrides: list[str]) -> float:
    """Train through the real trainer; mean over both domains of the validation MRR (full ranking)."""
    cfg = load_config(
        None,
        [f"model.name={name}", f"out={out}", "train.progress=false", "train.threads=1", "train.batch_size=32"]
        + ["eval.protocols=[full]", "eval.select_protocol=full"]
        + overrides,
    )
    return train(cfg, bundle, log=lambda *a: None).valid["full"].mean_mrr()


def chance_mrr(bundle: DataBundle) -> float:
    """Expected MRR of a random ranking of each domain, averaged over the two domains."""
    sizes = [hi - lo for lo, hi in (bundle.domain_range(0), bundle.domain_range(1))]
    return float(np.mean([sum(1 / r for r in range(1, n + 1)) / n for n in sizes]))


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("itemknn", []),
        ("bprmf", ["train.epochs=20", "train.lr=0.05"]),
        ("ncf_mlp", ["train.epochs=20", "train.lr=0.01"]),
    ],
)
def test_non_sequential_models_learn_taste_groups(name, overrides, tmp_path, one_thread):
    torch.manual_seed(0)
    bundle = DataBundle(make_group_dataset(), max_len=12)
    pop = valid_mrr("pop", bundle, tmp_path / "pop", [])
    mrr = valid_mrr(name, bundle, tmp_path / name, overrides)
    # A group holds 6 items per domain out of 48: knowing the user's group ranks the target among those few.
    assert mrr > 2 * max(pop, chance_mrr(bundle)), (name, mrr, pop)


@pytest.mark.parametrize("name, extra, floor", [("gru4rec", [], 0.4), ("srgnn", [], 0.4), ("sasrec", ["train.epochs=12", "model.dropout=0.2"], 0.3)])
def test_sequential_models_learn_the_walk(name, extra, floor, tmp_path, one_thread):
    """SASRec with the paper's one-negative BCE loss; its Amazon dropout 0.5 is too much for 80 users
    (valid MRR 0.14 here against 0.36 at 0.2)."""
    bundle = DataBundle(make_tiny_dataset(), max_len=10)
    pop = valid_mrr("pop", bundle, tmp_path / "pop", [])
    mrr = valid_mrr(name, bundle, tmp_path / name, ["train.epochs=5", "train.lr=0.01", *extra])
    # The next item is 3 or 4 steps along the user's walk: an order-aware model ranks it near the top.
    assert mrr > floor and mrr > 3 * pop, (name, mrr, pop)


def mrr_of(model, bundle: DataBundle, new_users: bool) -> float:
    """Validation MRR over full domain rankings, mean over domains; ``new_users``: every row scored as a
    history of no known user (what `llmemf recommend` sends), under inference mode as recommend runs."""
    split, ranks = bundle.splits["valid"], {0: [], 1: []}
    with torch.inference_mode():
        for b in split.iter_batches(64):
            user = torch.full_like(b.user, NO_USER) if new_users else b.user
            for d in (0, 1):
                sel = b.target_domain == d
                batch = Batch(user=user[sel], xy=b.xy[sel], x=b.x[sel], y=b.y[sel])
                s = model.scores(batch, d)
                t = s.gather(1, (b.target[sel] - bundle.domain_range(d)[0])[:, None])
                ranks[d] += (1 + (s > t).sum(1)).tolist()
    return float(np.mean([np.mean([1 / r for r in ranks[d]]) for d in (0, 1)]))


@pytest.mark.parametrize("name, overrides", [("bprmf", ["train.epochs=20", "train.lr=0.05"]), ("ncf_mlp", ["train.epochs=20", "train.lr=0.01"])])
def test_user_id_models_fold_in_a_new_history(name, overrides, tmp_path, one_thread):
    """recommend's rows carry no known user (NO_USER): the model fits a user vector to the given history
    with its own loss, instead of scoring whichever user has index 0. Folded-in users rank about as well
    as the trained ones, far above chance; the same history gives the same scores."""
    torch.manual_seed(0)
    bundle = DataBundle(make_group_dataset(), max_len=12)
    args = [f"model.name={name}", f"out={tmp_path}", "train.progress=false", "train.threads=1", "train.batch_size=32"]
    cfg = load_config(None, [*args, "eval.protocols=[full]", "eval.select_protocol=full", *overrides])
    model = train(cfg, bundle, log=lambda *a: None).model.eval()
    known, folded = mrr_of(model, bundle, False), mrr_of(model, bundle, True)
    assert folded > 2 * chance_mrr(bundle) and folded > 0.7 * known, (name, folded, known)
    b = next(bundle.splits["valid"].iter_batches(4))
    new = Batch(user=torch.full_like(b.user, NO_USER), xy=b.xy, x=b.x, y=b.y)
    with torch.no_grad():
        torch.testing.assert_close(model.scores(new, 1), model.scores(new, 1))
        assert not torch.allclose(model.scores(new, 1)[0], model.scores(Batch(user=torch.zeros_like(b.user), xy=b.xy, x=b.x, y=b.y), 1)[0])


def test_itemknn_similarity_hand_case():
    # X items 0, 1, 2 and Y items 3, 4. Training sets: a {0, 1, 3}, b {0, 1}, c {1, 2, 4}.
    ds = make_dataset({"a": [0, 1, 3, 2, 4], "b": [0, 1, 2, 3], "c": [1, 2, 4, 0, 3]}, n_x=3, n_y=2)
    rows, cols, counts, item_users = cooccurrence(list(ds.splits["train"]["items"]), 5)
    np.testing.assert_array_equal(item_users, [2, 3, 1, 1, 1])
    pairs = {(int(r), int(c)): float(n) for r, c, n in zip(rows, cols, counts, strict=True)}
    assert pairs[(0, 1)] == pairs[(1, 0)] == 2 and pairs[(1, 4)] == 1 and (0, 2) not in pairs and (0, 0) not in pairs

    bundle = DataBundle(ds, max_len=5)
    pad = bundle.pad_id

    def scores(params: dict, history: list[int], domain: int) -> torch.Tensor:
        model = build_model("itemknn", {"pop_tiebreak": 0.0, **params}, bundle)
        model.fit(bundle)
        xy = torch.tensor([[pad] * (3 - len(history)) + history])
        return model.scores(Batch(user=torch.tensor([0]), xy=xy, x=xy, y=xy), domain)[0]

    s6, s3, s2 = math.sqrt(6), math.sqrt(3), math.sqrt(2)
    # History {0, 1}: item 0 gets sim(1, 0) (no self-similarity), item 2 gets sim(1, 2) + sim(0, 2) = 1/sqrt(3) + 0.
    torch.testing.assert_close(scores({}, [0, 1], 0), torch.tensor([2 / s6, 2 / s6, 1 / s3]))
    torch.testing.assert_close(scores({}, [0, 1], 1), torch.tensor([1 / s2 + 1 / s3, 1 / s3]))
    # A repeated history item counts twice.
    torch.testing.assert_close(scores({}, [1, 0, 1], 1), torch.tensor([1 / s2 + 2 / s3, 2 / s3]))
    # Shrinkage enters the denominator.
    torch.testing.assert_close(scores({"shrink": 1.0}, [1], 0), torch.tensor([2 / (s6 + 1), 0.0, 1 / (s3 + 1)]))
    # k = 1 keeps one neighbour per domain: item 1's Y neighbours 3 and 4 tie, the lower id stays.
    torch.testing.assert_close(scores({"k": 1}, [1], 1), torch.tensor([1 / s3, 0.0]))
    torch.testing.assert_close(scores({"k": 1}, [1], 0), torch.tensor([2 / s6, 0.0, 0.0]))


def test_itemknn_tiebreak_orders_unrelated_items_by_popularity():
    ds = make_dataset({"a": [0, 3, 1, 4], "b": [1, 3, 0, 4], "c": [1, 3, 2, 4], "d": [2, 3, 0, 4]}, n_x=3, n_y=2)
    bundle = DataBundle(ds, max_len=5)
    model = build_model("itemknn", {}, bundle)
    model.fit(bundle)
    xy = torch.tensor([[bundle.pad_id, 4]])  # item 4 co-occurs with nothing in training
    s = model.scores(Batch(user=torch.tensor([0]), xy=xy, x=xy, y=xy), 0)[0]
    # X items 0, 1, 2 have 1, 2, 1 training users: item 1 first, and the bonus stays tiny.
    assert s[1] > s[0] == s[2] > 0 and s.max() <= 1e-6


def test_srgnn_session_graph_of_every_prefix():
    from llmemf.models.srgnn import session_graphs

    pad = 9
    alias, adj = session_graphs(torch.tensor([[pad, pad, 1, 2, 1, 3]]), pad)  # items 1 2 1 3
    assert alias.tolist() == [[6, 6, 2, 3, 2, 5]]  # the repeated 1 shares the node of its first position
    full = torch.zeros(6, 6)
    full[2, 3] = full[3, 2] = full[2, 5] = 1  # 1 -> 2, 2 -> 1, 1 -> 3
    torch.testing.assert_close(adj[0, 5], full)
    only_first = torch.zeros(6, 6)
    only_first[2, 3] = 1  # the prefix "1 2" has one edge
    torch.testing.assert_close(adj[0, 3], only_first)
    assert adj[0, 2].sum() == 0


def test_gru4rec_official_pieces(tiny_bundle):
    """Glorot-uniform item table (the official init_parameter_matrix), a zero per-item output bias that enters
    the scores, and one-step truncated backpropagation in training (the official h.detach_() per step)."""
    torch.manual_seed(0)
    model = build_model("gru4rec", {"dropout_hidden": 0.0}, tiny_bundle)
    n, h = tiny_bundle.n_items, 100
    bound = math.sqrt(6 / (n + h))
    w = model.item.weight.detach()
    assert float(w[:n].abs().max()) <= bound and float(w[:n].abs().max()) > 0.9 * bound and not w[n].any()
    assert model.out_bias.shape == (n + 1,) and not model.out_bias.any()
    seq = torch.tensor([[tiny_bundle.pad_id, 3, 7, 11, 40]])
    model.train()
    model.encode(seq)[:, -1].sum().backward()
    rows = model.item.weight.grad.abs().sum(1).nonzero().flatten().tolist()
    assert rows == [40]  # only the last input: earlier steps are cut off
    model.eval()
    with torch.no_grad():
        model.out_bias[5] = 10.0
        b = Batch(user=torch.zeros(1, dtype=torch.long), xy=seq, x=seq, y=seq)
        assert int(model.scores(b, 0)[0].argmax()) == 5


def test_sasrec_block_is_the_official_layout(tiny_bundle):
    """One block by hand, as kang205/SASRec's modules.py computes it: normalised queries, raw keys and values,
    no output projection, the attention residual on the normalised queries, a ReLU feed-forward with its
    residual on its normalised input, padding rows zeroed, a final LayerNorm; tied item vectors."""
    torch.manual_seed(0)
    model = build_model("sasrec", {"hidden": 8, "n_blocks": 1, "n_heads": 2}, tiny_bundle).eval()
    pad = tiny_bundle.pad_id
    seq = torch.tensor([[pad, 4, 9, 31]])
    b = model.blocks[0]
    ln = lambda m, x: torch.nn.functional.layer_norm(x, (8,), m.weight, m.bias, 1e-8)  # noqa: E731
    x = (model.item(seq) * 8**0.5 + model.pos(torch.tensor([3, 2, 1, 0]))[None]) * (seq != pad)[..., None]
    q_in = ln(b.ln_q, x)
    heads = lambda t: t.view(1, 4, 2, 4).transpose(1, 2)  # noqa: E731
    q, k, v = heads(b.q(q_in)), heads(b.k(x)), heads(b.v(x))
    allowed = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    att = torch.softmax(((q @ k.transpose(-1, -2)) / 2.0).masked_fill(~allowed, -(2.0**32) + 1), -1)
    a = (att @ v).transpose(1, 2).reshape(1, 4, 8) + q_in
    y = ln(b.ln_ff, a)
    out = ln(model.ln_f, (b.ff2(torch.relu(b.ff1(y))) + y) * (seq != pad)[..., None])
    with torch.no_grad():
        torch.testing.assert_close(model.encode(seq), out)
        batch = Batch(user=torch.zeros(1, dtype=torch.long), xy=seq, x=seq, y=seq)
        torch.testing.assert_close(model.scores(batch, 1)[0], out[0, -1] @ model.item.weight[30:70].T)
    # kang205/SASRec's optimiser: Adam with beta2 0.98, which the shared trainer takes from the model
    assert make_optimizer(model, load_config(None, ["model.name=sasrec"]).train).param_groups[0]["betas"] == (0.9, 0.98)


def test_lr_step_decay_is_a_function_of_the_epoch(tmp_path, one_thread):
    """train.lr_step / lr_gamma (SR-GNN's official x0.1 every 3 epochs): epoch e trains at lr * gamma ** (e // step),
    and the optimizer saved after the last epoch holds that rate."""
    bundle = DataBundle(make_tiny_dataset(n_users=20), max_len=6)
    args = ["model.name=srgnn", "model.hidden=8", f"out={tmp_path}", "train.progress=false", "train.threads=1", "train.epochs=5"]
    cfg = load_config(None, [*args, "train.lr=0.01", "train.lr_step=2", "train.lr_gamma=0.5", "eval.protocols=[full]", "eval.select_protocol=full"])
    train(cfg, bundle, log=lambda *a: None)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.5 ** (4 // 2))
