"""LLM-EMF on a CUDA device: every tensor on the model's device, autocast by device type. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from llmemf.models.base import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU path of LLM-EMF is untested on this machine")


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"train_negatives": 0},
        {"train_negatives": 20},
        {"train_negatives": 20, "negative_sampler": "uniform"},
        {"train_negatives": 1, "negative_sampler": "in_batch"},
        {"fusion": "probabilities", "train_negatives": 0},
        {"cold_id": "content"},
        {"cold_id": "neutral"},
    ],
)
def test_train_step_and_scores_on_cuda(tiny_bundle, params):
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16, **params}, tiny_bundle).to("cuda")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = next(tiny_bundle.train.iter_batches(32)).to("cuda")
    bf16 = torch.cuda.is_bf16_supported()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        loss = model.loss(batch)
    loss.backward()
    opt.step()
    assert loss.device.type == "cuda" and torch.isfinite(loss)
    model.eval()
    valid = next(tiny_bundle.splits["valid"].iter_batches(8)).to("cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        for domain, (lo, hi) in enumerate(model.domain_ranges):
            full = model.scores(valid, domain)
            assert full.shape == (8, hi - lo) and full.device.type == "cuda"
            cand = torch.randint(lo, hi, (8, 5), device="cuda")
            assert model.scores(valid, domain, cand).shape == (8, 5)


def test_cuda_scores_match_cpu_in_fp32(tiny_bundle):
    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16}, tiny_bundle).eval()
    batch = next(tiny_bundle.splits["valid"].iter_batches(8))
    with torch.no_grad():
        cpu = model.scores(batch, 0)
        gpu = model.to("cuda").scores(batch.to("cuda"), 0).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)


def test_lazy_adam_moves_only_the_rows_read_on_cuda(tiny_bundle):
    from llmemf.config import TrainConfig
    from llmemf.training.loop import make_optimizer

    torch.manual_seed(0)
    model = build_model("llmemf", {"d_id": 16, "train_negatives": 5}, tiny_bundle).to("cuda")
    opt = make_optimizer(model, TrainConfig(lazy_adam=True, lr=1e-2))
    before = model.item_id.weight.detach().clone()
    model.loss(next(tiny_bundle.train.iter_batches(2)).to("cuda")).backward()
    grad = model.item_id.weight.grad
    assert grad.is_sparse and grad.device.type == "cuda"
    read = torch.zeros(len(before), dtype=torch.bool, device="cuda")
    read[grad.coalesce().indices()[0]] = True
    opt.step()
    moved = (model.item_id.weight != before).any(1)
    assert moved.any() and not (moved & ~read).any()
