"""Every registered model (the whole REGISTRY: a module that fails to import fails here) trains a step and
scores under both call shapes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmemf.models.base import REGISTRY, build_model, model_class

# MIFN's official size (width 256, 200 subgraph nodes, a GRU over 1024-wide node inputs) costs ~40 s here; the
# interface is the same at a small size.
SMALL = {"mifn": {"hidden": 32, "n_nodes": 16}}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_model_interface(name, tiny_bundle):
    torch.manual_seed(0)
    model = build_model(name, SMALL.get(name, {}), tiny_bundle)
    model.fit(tiny_bundle)
    batch = next(tiny_bundle.train.iter_batches(16))
    if model.trainable:
        loss = model.loss(batch)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert any(p.grad is not None for p in model.parameters())
    model.eval()
    ev = next(tiny_bundle.splits["valid"].iter_batches(8))
    for d in (0, 1):
        lo, hi = tiny_bundle.domain_range(d)
        full = model.scores(ev, d, None)
        assert full.shape == (ev.size, hi - lo)
        cand = torch.randint(lo, hi, (ev.size, 5))
        sub = model.scores(ev, d, cand)
        assert sub.shape == (ev.size, 5)
        # The two call shapes agree on the same items.
        torch.testing.assert_close(sub, full.gather(1, cand - lo), rtol=1e-4, atol=1e-4)
        # Scores never read the held-out target the evaluation batch carries (no leak into the ranking).
        blind = dataclasses.replace(ev, target=None, target_domain=None)
        torch.testing.assert_close(model.scores(blind, d, None), full, rtol=0, atol=0)


def test_sasrec_init_modes(tiny_bundle):
    """xavier (default, the official TF1 Glorot-uniform): item rows with std sqrt(2 / (rows + d)), smaller than
    normal's 1/sqrt(d) and far smaller on a real catalogue; pad row zero; bad names rejected."""
    torch.manual_seed(0)
    xavier = build_model("sasrec", {"hidden": 16}, tiny_bundle)
    normal = build_model("sasrec", {"hidden": 16, "init": "normal"}, tiny_bundle)
    rows = xavier.item.weight.shape[0]
    assert abs(float(xavier.item.weight[:-1].detach().std()) - (2 / (rows + 16)) ** 0.5) < 0.03
    assert abs(float(normal.item.weight[:-1].detach().std()) - 16**-0.5) < 0.03
    assert not xavier.item.weight[xavier.pad_id].any()
    with pytest.raises(ValueError, match="init"):
        build_model("sasrec", {"init": "kaiming"}, tiny_bundle)


def test_registry_import_errors_are_not_hidden(monkeypatch):
    """A registered model whose module is missing raises the import error (no 'not implemented' fallback);
    an unknown name is a KeyError naming the known ones."""
    monkeypatch.setitem(REGISTRY, "ghost", "llmemf.models.no_such_module:Ghost")
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        model_class("ghost")
    with pytest.raises(KeyError, match="known: pop"):
        model_class("nope")
