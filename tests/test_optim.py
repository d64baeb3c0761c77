"""LazyAdam (training/optim.py): Adam where every row is touched, rows left alone where not, checkpoints
that continue exactly; gradient clipping that takes sparse gradients."""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F
from torch import nn

from llmemf.training.optim import LazyAdam, clip_grad_norm_


def _table(seed: int, sparse: bool) -> nn.Embedding:
    torch.manual_seed(seed)
    return nn.Embedding(12, 4, sparse=sparse)


def _step(table: nn.Embedding, opt: torch.optim.Optimizer, ids: torch.Tensor, target: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    out = F.embedding(ids, table.weight, sparse=table.sparse)
    ((out - target) ** 2).sum().backward()


def test_every_row_touched_is_adam_with_l2():
    ids = torch.arange(12).repeat(2)  # every row, twice: the sparse gradient has duplicates to sum
    target = torch.randn(24, 4, generator=torch.Generator().manual_seed(1))
    lazy, dense = _table(0, True), _table(0, False)
    lazy_opt = LazyAdam(lazy.parameters(), lr=0.05, betas=(0.9, 0.98), weight_decay=0.01)
    adam = torch.optim.Adam(dense.parameters(), lr=0.05, betas=(0.9, 0.98), weight_decay=0.01)
    for _ in range(5):
        _step(lazy, lazy_opt, ids, target)
        _step(dense, adam, ids, target)
        assert lazy.weight.grad.is_sparse and not dense.weight.grad.is_sparse
        lazy_opt.step()
        adam.step()
    torch.testing.assert_close(lazy.weight, dense.weight)
    for key in ("step", "exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(lazy_opt.state[lazy.weight][key], adam.state[dense.weight][key])


def test_not_lazy_is_adam_on_the_dense_gradient_even_for_rows_a_step_does_not_touch():
    """lazy=False: a sparse gradient made dense gives torch's fused Adam update, moments of untouched rows
    decaying and their weights moving on momentum, as with a dense gradient."""
    target = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    sparse, dense = _table(0, True), _table(0, False)
    opt = LazyAdam(sparse.parameters(), lr=0.05, weight_decay=0.01, fused=True, lazy=False)
    adam = torch.optim.Adam(dense.parameters(), lr=0.05, weight_decay=0.01, fused=True)
    for ids in ([0, 1, 1], [2, 3, 3], [2, 5, 0]):
        _step(sparse, opt, torch.tensor(ids), target)
        _step(dense, adam, torch.tensor(ids), target)
        assert sparse.weight.grad.is_sparse
        opt.step()
        adam.step()
    torch.testing.assert_close(sparse.weight, dense.weight)
    assert not torch.equal(sparse.weight[1], _table(0, False).weight[1]) and opt.state[sparse.weight]["exp_avg"][1].abs().sum() > 0


def test_rows_a_step_does_not_touch_keep_weights_and_moments():
    table = _table(0, True)
    opt = LazyAdam(table.parameters(), lr=0.1, weight_decay=0.1)
    target = torch.ones(3, 4)
    _step(table, opt, torch.tensor([0, 1, 2]), target)
    opt.step()
    before = table.weight.detach().clone()
    moments = {k: opt.state[table.weight][k].clone() for k in ("exp_avg", "exp_avg_sq")}
    _step(table, opt, torch.tensor([2, 3, 3]), target)
    opt.step()
    moved = (table.weight != before).any(1)
    assert moved.tolist() == [False, False, True, True] + [False] * 8
    for k, m in moments.items():
        assert torch.equal(opt.state[table.weight][k][:2], m[:2])  # no decay of rows 0 and 1's moments
        assert torch.equal(opt.state[table.weight][k][4:], m[4:])


def test_a_checkpoint_continues_exactly():
    """Weights and optimiser state through torch.save / load(weights_only=True), as last.pt does."""
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randint(0, 12, (6,), generator=gen), torch.randn(6, 4, generator=gen)) for _ in range(6)]

    def run(table, opt, steps):
        for ids, target in steps:
            _step(table, opt, ids, target)
            opt.step()

    straight = _table(0, True)
    straight_opt = LazyAdam(straight.parameters(), lr=0.05, fused=True)
    run(straight, straight_opt, batches)

    first = _table(0, True)
    first_opt = LazyAdam(first.parameters(), lr=0.05, fused=True)
    run(first, first_opt, batches[:3])
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = _table(5, True)  # other initial weights: the checkpoint must replace them
    resumed.load_state_dict(saved["model"])
    resumed_opt = LazyAdam(resumed.parameters(), lr=0.05, fused=True)
    resumed_opt.load_state_dict(saved["optimizer"])
    run(resumed, resumed_opt, batches[3:])
    assert torch.equal(resumed.weight, straight.weight)


def test_dense_parameters_get_torchs_adam():
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    opts = LazyAdam(a.parameters(), lr=0.1, fused=True), torch.optim.Adam(b.parameters(), lr=0.1, fused=True)
    x = torch.randn(5, 3)
    for _ in range(3):
        for layer, opt in zip((a, b), opts, strict=True):
            opt.zero_grad()
            layer(x).pow(2).sum().backward()
            opt.step()
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_clipping_counts_sparse_gradients_like_dense_ones():
    sparse, dense = _table(0, True), _table(0, False)
    lin_s, lin_d = nn.Linear(4, 1), nn.Linear(4, 1)
    lin_d.load_state_dict(lin_s.state_dict())
    ids = torch.tensor([1, 1, 5, 7])
    for table, lin in ((sparse, lin_s), (dense, lin_d)):
        (lin(F.embedding(ids, table.weight, sparse=table.sparse)) * 10).sum().backward()
    norm_s = clip_grad_norm_([sparse.weight, *lin_s.parameters()], 0.5)
    norm_d = torch.nn.utils.clip_grad_norm_([dense.weight, *lin_d.parameters()], 0.5)
    torch.testing.assert_close(norm_s, norm_d)
    assert norm_d > 0.5  # the clip did something
    torch.testing.assert_close(sparse.weight.grad.to_dense(), dense.weight.grad)
    torch.testing.assert_close(lin_s.weight.grad, lin_d.weight.grad)


def test_lazy_adam_is_the_trainers_choice(tiny_bundle):
    from llmemf.config import TrainConfig
    from llmemf.models.base import build_model
    from llmemf.training.loop import make_optimizer

    for lazy in (False, True):
        model = build_model("llmemf", {"d_id": 8, "modalities": ["id"], "train_negatives": 5}, tiny_bundle)
        opt = make_optimizer(model, TrainConfig(lazy_adam=lazy, weight_decay=0.1))
        assert model.item_id.sparse and opt.lazy is lazy  # sparse gradients either way; lazy updates by choice
        model.loss(next(tiny_bundle.train.iter_batches(4))).backward()
        assert model.item_id.weight.grad.is_sparse
        before = model.item_id.weight.detach().clone()
        untouched = ~torch.isin(torch.arange(len(before)), model.item_id.weight.grad.coalesce().indices()[0])
        opt.step()
        assert torch.equal(model.item_id.weight[untouched], before[untouched]) is lazy  # Adam's weight decay moves them
