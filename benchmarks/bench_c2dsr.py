"""C2DSR training cost per epoch: the official loss, the fast variant, and the official code, in one run.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_c2dsr.py DATASET [--official CHECKOUT] [--steps 6] [--threads 1]

DATASET is an llmemf dataset of a C2DSR scenario (e.g. Food-Kitchen); CHECKOUT a checkout of cjx96/C2DSR
(holding ``C2DSR_src/``; run from there at run time, never copied here). A full epoch on a loaded 2-core
machine takes minutes per variant, so the cost of an epoch is estimated: ``--steps`` training steps
(forward, backward, optimiser step) after ``--warmup`` untimed ones, median seconds per step x steps per
epoch. Variants:

* ``c2dsr.yaml``: llmemf's C2DSR with configs/models/c2dsr.yaml (the official model and loss: full softmax, fp32),
* ``c2dsr_fast.yaml``: configs/models/c2dsr_fast.yaml (sampled softmax with 4096 popularity negatives, bf16
  autocast where the CPU has native bf16),
* ``official``: ``CDSRTrainer.train_batch`` of the official code with its defaults, on the CPU (``.cuda()``
  made a no-op at run time), batches from its own loader.

Prints a table with the ratio of each to the official code's seconds per epoch measured in the same run.
Timings depend on the machine's load: say so next to any number taken from here.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def time_steps(step, batches, warmup: int, steps: int) -> list[float]:
    out = []
    for i, b in enumerate(batches):
        if i >= warmup + steps:
            break
        t0 = time.perf_counter()
        step(b)
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def bench_llmemf(config: Path, dataset: Path, bundle, warmup: int, steps: int) -> tuple[list[float], int, str]:
    from llmemf.config import load_config
    from llmemf.models.base import build_model
    from llmemf.training.trainer import make_optimizer, train_in_bf16

    cfg = load_config(config, [f"dataset={dataset}"])
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model_name, cfg.model_params, bundle)
    opt = make_optimizer(model, cfg)
    bf16 = train_in_bf16(cfg, model)
    model.train()

    def step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    batches = bundle.train.iter_batches(cfg.train.batch_size, shuffle=True, seed=cfg.seed, by_length=cfg.train.by_length)
    per_epoch = math.ceil(len(bundle.train) / cfg.train.batch_size)
    return time_steps(step, batches, warmup, steps), per_epoch, "bf16" if bf16 else "fp32"


def bench_official(checkout: Path, ds, warmup: int, steps: int) -> tuple[list[float], int, str]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from official_c2dsr import official_trainer

    trainer, train_batches = official_trainer(checkout, ds)
    return time_steps(trainer.train_batch, iter(train_batches), warmup, steps), len(train_batches), "fp32"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--official", type=Path, help="checkout of cjx96/C2DSR (holds C2DSR_src/)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from llmemf.data.batching import DataBundle
    from llmemf.data.dataset import Dataset

    ds = Dataset.load(args.dataset)
    bundle = DataBundle(ds, max_len=15)
    results = {}
    for name in ("c2dsr.yaml", "c2dsr_fast.yaml"):
        results[name] = bench_llmemf(REPO / "configs" / "models" / name, args.dataset, bundle, args.warmup, args.steps)
        print(f"{name}: {' '.join(f'{t:.2f}' for t in results[name][0])} s/step", flush=True)
    if args.official:
        results["official"] = bench_official(args.official, ds, args.warmup, args.steps)
        print(f"official: {' '.join(f'{t:.2f}' for t in results['official'][0])} s/step", flush=True)

    base = None
    if "official" in results:
        t, n, _ = results["official"]
        base = statistics.median(t) * n
    print(f"\n{args.dataset}, {args.threads} thread(s), median of {args.steps} steps after {args.warmup} warm-up (shared machine: indicative)\n")
    print("| variant | precision | median s/step | steps/epoch | est. s/epoch | official s/epoch / this |")
    print("|---|---|---|---|---|---|")
    for name, (t, n, prec) in results.items():
        med = statistics.median(t)
        ratio = f"{base / (med * n):.2f}x" if base else "-"
        print(f"| {name} | {prec} | {med:.2f} | {n} | {med * n:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
