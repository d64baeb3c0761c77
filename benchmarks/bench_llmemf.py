"""Issue 4 speed benchmark, one process: LLM-EMF vs SASRec training steps on a prepared dataset.

    .venv/bin/python benchmarks/bench_llmemf.py DATASET_DIR [--steps 8] [--full-epoch]

For each variant it times --steps training steps (after 2 warm-up steps) on length-bucketed
batches of 256, counts the step's FLOPs with torch's FlopCounterMode, and prints median seconds per
step, the epoch estimate (median x batches per epoch), achieved GFLOP/s and the fraction of the
matmul peak measured in this same process (a plain torch.matmul of the same dtype and a shape like
the softmax scoring). If the dataset has no `img` / `txt_*` features, random 512-d unit features are
used for the speed measurement only, in a temporary copy of the dataset (stated in the output).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset
from llmemf.features.store import Feature, FeatureManifest, list_features, save_feature
from llmemf.models.base import build_model
from llmemf.training.trainer import peak_rss_mib


def matmul_peak(dtype: torch.dtype, n: int = 4096, k: int = 1280, m: int = 32768, reps: int = 5) -> float:
    a, b = torch.randn(n, k, dtype=dtype), torch.randn(m, k, dtype=dtype)
    a @ b.T
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b.T
        times.append(time.perf_counter() - t)
    return 2 * n * k * m / np.median(times) / 1e9


def ensure_features(root: Path, n_items: int) -> tuple[Path, str]:
    """The dataset itself if it has img and txt_llm; otherwise a temporary copy with random ones added
    (never written into the user's dataset)."""
    have = list_features(root)
    if "img" in have and "txt_llm" in have:
        return root, "dataset features: " + ", ".join(have)
    copy = Path(tempfile.mkdtemp(prefix="bench_llmemf_")) / root.name
    shutil.copytree(root, copy)
    root = copy
    rng = np.random.default_rng(0)
    for name in ("img", "txt_title", "txt_llm"):
        if name not in have:
            v = rng.normal(size=(n_items, 512)).astype(np.float32)
            save_feature(root, Feature(FeatureManifest(name, "random-benchmark-only", "none", 512, n_items, "float32"), v, np.ones(n_items, bool)))
    return root, f"RANDOM 512-d features for missing img/txt in a temporary copy {root} (speed only, not accuracy)"


def time_steps(model, batches, bf16: bool) -> tuple[float, float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times, flops = [], []
    for i, batch in enumerate(batches):
        counter = FlopCounterMode(display=False) if i == 2 else None
        t = time.perf_counter()
        with counter if counter else torch.autograd.profiler.record_function("step"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        dt = time.perf_counter() - t
        if counter:
            flops.append(counter.get_total_flops())
        elif i >= 2:
            times.append(dt)
    return float(np.median(times)), float(flops[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    ds = Dataset.load(args.dataset)
    root, note = ensure_features(args.dataset, ds.n_items)
    print(note)
    bundle = DataBundle(Dataset.load(root), 15)
    n_batches = int(np.ceil(len(bundle.train) / args.batch_size))
    all_batches = list(bundle.train.iter_batches(args.batch_size, shuffle=True, seed=0, by_length=True))
    # A representative sample: batches spread over the length buckets.
    pick = np.linspace(0, len(all_batches) - 1, args.steps + 3).astype(int)
    batches = [all_batches[i] for i in pick]
    # The FLOP-counted step (index 2) runs the middle-length batch.
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"threads {torch.get_num_threads()}; matmul peak fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    variants = [
        ("sasrec d=256", "sasrec", {"hidden": 256}, False),
        ("sasrec d=256", "sasrec", {"hidden": 256}, True),
        ("llmemf id only", "llmemf", {"modalities": ["id"]}, False),
        ("llmemf id only", "llmemf", {"modalities": ["id"]}, True),
        ("llmemf all (full softmax)", "llmemf", {}, False),
        ("llmemf all (full softmax)", "llmemf", {}, True),
        ("llmemf all (sampled 4096)", "llmemf", {"train_negatives": 4096}, False),
        ("llmemf all (sampled 4096)", "llmemf", {"train_negatives": 4096}, True),
    ]
    print(f"\n{'variant':28s} {'dtype':5s} {'s/step':>7s} {'epoch est s':>11s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} {'% peak':>7s} {'floor s':>8s}")
    base = None
    for label, name, params, bf16 in variants:
        torch.manual_seed(0)
        model = build_model(name, params, bundle)
        step, flops = time_steps(model, batches, bf16)
        dtype = "bf16" if bf16 else "fp32"
        rate = flops / step / 1e9
        epoch = step * n_batches
        base = base or epoch
        floor = flops * n_batches / (peaks[dtype] * 1e9)  # the epoch at 100% of the matmul peak
        print(f"{label:28s} {dtype:5s} {step:7.3f} {epoch:11.1f} {flops / 1e9:10.1f} {rate:8.0f} {100 * rate / peaks[dtype]:6.0f}% {floor:8.1f}")
    print(f"\n{n_batches} batches/epoch; epoch estimate = median step x batches; the official C2DSR needs ~450 s/epoch here (issue's figure)")
    print("floor s = the counted step's FLOPs x batches / matmul peak: no implementation of that variant can run an epoch faster here")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
