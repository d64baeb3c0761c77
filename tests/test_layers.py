"""Shared layers: the sampled-softmax loss against its plain definition, and the cheap dropout."""

import pytest
import torch
import torch.nn.functional as F

from llmemf.models.layers import Dropout, sampled_softmax_nll


def _sampled_case(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    n, k, d = 50, 30, 8
    h = torch.randn(n, d, dtype=dtype, generator=g, requires_grad=True)
    w = torch.randn(k, d, dtype=dtype, generator=g, requires_grad=True)
    c = torch.randn(k, dtype=dtype, generator=g, requires_grad=True)
    ids = torch.randint(0, 20, (k,), generator=g)  # repeats: some targets hit several columns
    t = torch.randint(0, 20, (n,), generator=g)
    pos = (h * torch.randn(n, d, dtype=dtype, generator=g)).sum(1)
    return h, w, c, ids, t, pos


def test_sampled_softmax_nll_matches_masked_cross_entropy():
    h, w, c, ids, t, pos = _sampled_case()
    assert (ids[None] == t[:, None]).sum(1).max() >= 2  # the case has rows with repeated hits
    weight = torch.arange(len(t), dtype=h.dtype)  # distinct upstream gradients per row
    ours = sampled_softmax_nll(h, pos, w, c, ids, t)
    g_ours = torch.autograd.grad((ours * weight).sum(), [h, w, c], retain_graph=True)
    neg = (h @ w.T + c).masked_fill(ids[None] == t[:, None], float("-inf"))
    ref = F.cross_entropy(torch.cat([pos[:, None], neg], 1), torch.zeros_like(t), reduction="none")
    g_ref = torch.autograd.grad((ref * weight).sum(), [h, w, c])
    torch.testing.assert_close(ours, ref)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_sampled_softmax_nll_under_bf16_autocast_is_close_and_fp32():
    h, w, c, ids, t, pos = _sampled_case(torch.float32)
    exact = sampled_softmax_nll(h, pos, w, c, ids, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = sampled_softmax_nll(h, pos, w, c, ids, t)
    assert low.dtype == torch.float32
    assert (low - exact).abs().max() < 0.1 * exact.abs().max()
    low.sum().backward()
    assert h.grad.dtype == torch.float32 and torch.isfinite(h.grad).all()


def test_sampled_softmax_nll_backward_twice_is_refused():
    h, w, c, ids, t, pos = _sampled_case()
    loss = sampled_softmax_nll(h, pos, w, c, ids, t).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_dropout_rate_scale_and_seed():
    x = torch.ones(400, 500, requires_grad=True)
    drop = Dropout(0.2)
    torch.manual_seed(1)
    y = drop(x)
    assert abs(float((y == 0).float().mean()) - 0.2) < 0.005
    assert torch.all((y == 0) | (y == 1.25))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * keep / (1 - p)) / dx
    torch.manual_seed(1)
    assert torch.equal(drop(x), y)  # the default generator's seed fixes the mask
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError):
        Dropout(1.0)
