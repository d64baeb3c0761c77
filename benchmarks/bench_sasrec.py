"""Issue 2 benchmark: C2DSR scenario -> llmemf dataset -> Pop + SASRec -> per-domain tables and costs.

    .venv/bin/python benchmarks/bench_sasrec.py /path/to/c2dsr/Food-Kitchen [--epochs 10] [--out runs/bench_sasrec]

Prints: import time, the c2dsr-protocol and full-ranking test tables for Pop and SASRec (best
validation epoch), median seconds per training epoch, evaluation seconds and peak RSS.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from llmemf.config import load_config
from llmemf.data.batching import DataBundle
from llmemf.data.c2dsr import import_c2dsr
from llmemf.data.dataset import Dataset
from llmemf.evaluation.protocols import format_table
from llmemf.training.trainer import peak_rss_mib, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario", type=Path, help="C2DSR scenario directory")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_sasrec"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    ds = import_c2dsr(args.scenario)
    ds.save(args.out / "dataset")
    bundle = DataBundle(Dataset.load(args.out / "dataset"), 15)
    print(f"import + save + tensors: {time.perf_counter() - t0:.1f}s; torch threads {torch.get_num_threads()}")

    rows = {}
    for name, extra in (("pop", []), ("sasrec", [f"train.epochs={args.epochs}", f"train.patience={args.patience}", f"train.bf16={args.bf16}"])):
        cfg = load_config(None, [f"model.name={name}", f"dataset={args.out / 'dataset'}", f"out={args.out / name}", "train.progress=false", *extra])
        res = train(cfg, bundle, resume=False)
        rows[name] = res
        secs = sorted(res.epoch_seconds)
        med = secs[len(secs) // 2] if secs else 0.0
        evals = ", ".join(f"{p} {r.seconds:.1f}" for p, r in res.test.items())
        print(f"{name}: best epoch {res.best_epoch}, median s/epoch {med:.1f}, test eval s {evals}")
    for proto in ("c2dsr", "full"):
        print()
        print(format_table([(n, r.test[proto]) for n, r in rows.items()]))
    print(f"\npeak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
