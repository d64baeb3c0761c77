"""Adam's step: the default foreach implementation against the fused one, on real models.

    .venv/bin/python benchmarks/bench_optimizer.py /tmp/ds_Food-Kitchen --threads 1

For each model (built on the dataset with its configs/models defaults; LLM-EMF ID only), times
whole training steps (loss, backward, Adam with L2) with each implementation, alternating
between them so that load on a shared machine hits both alike, and prints median seconds per
step, the optimizer step alone, and the ratios. The trainer uses the fused one
(training/trainer.py:make_optimizer).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from llmemf.config import load_config
from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset
from llmemf.experiments.runner import model_config_file
from llmemf.models.base import build_model

MODELS = {"sasrec": [], "llmemf": ["model.modalities=[id]"], "c2dsr": []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per implementation and model")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Dataset.load(args.dataset)
    print(f"{args.dataset}: {data.n_items} items; torch threads {torch.get_num_threads()}; {args.steps} steps each, alternating\n")
    print("| model | parameters | step s (foreach) | step s (fused) | Adam s (foreach) | Adam s (fused) | step ratio | Adam ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        cfg = load_config(model_config_file(name), [f"model.name={name}", f"dataset={args.dataset}", *MODELS[name]])
        bundle = DataBundle(data, cfg.max_len)
        batches = list(bundle.train.iter_batches(cfg.train.batch_size, shuffle=True, seed=0, by_length=False))[: args.steps + 1]
        torch.manual_seed(0)
        model = build_model(name, cfg.model_params, bundle)
        opts = {
            impl: torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, **{impl: True})
            for impl in ("foreach", "fused")
        }
        times: dict[str, list[tuple[float, float]]] = {impl: [] for impl in opts}
        for i, batch in enumerate(batches):
            for impl, opt in opts.items():
                t0 = time.perf_counter()
                loss = model.loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                t1 = time.perf_counter()
                opt.step()
                t2 = time.perf_counter()
                if i:  # the first step allocates the optimizer state
                    times[impl].append((t2 - t0, t2 - t1))
        step = {k: float(np.median([t[0] for t in v])) for k, v in times.items()}
        adam = {k: float(np.median([t[1] for t in v])) for k, v in times.items()}
        n = sum(p.numel() for p in model.parameters())
        print(
            f"| {name} | {n / 1e6:.1f} M | {step['foreach']:.3f} | {step['fused']:.3f} | {adam['foreach']:.3f} | {adam['fused']:.3f} "
            f"| {step['foreach'] / step['fused']:.2f}x | {adam['foreach'] / adam['fused']:.2f}x |"
        )


if __name__ == "__main__":
    main()
