"""Train the single-domain baselines on a prepared dataset and print one per-domain table.

    .venv/bin/python benchmarks/bench_single_baselines.py /tmp/ds_Food-Kitchen --epochs 5 \
        --models itemknn,bprmf,ncf_mlp,gru4rec,srgnn --out /tmp/runs_bench

Each model trains through the real trainer from its configs/models/NAME.yaml (plus --epochs and any
``key=value`` overrides), one run directory per model under --out, one model at a time. Prints the
test table (c2dsr protocol by default) with MRR / NDCG@5 / NDCG@10 per domain, and the median
seconds per training epoch and wall seconds of each run, all measured in this one invocation.
Resumes: a run directory that already holds last.pt continues from it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from llmemf.config import load_config
from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset
from llmemf.evaluation.protocols import format_table
from llmemf.training.trainer import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="a dataset directory written by `llmemf prepare`")
    ap.add_argument("--models", default="pop,itemknn,bprmf,ncf_mlp,gru4rec,srgnn")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs of the gradient models (early stopping still applies)")
    ap.add_argument("--out", default="runs/bench_single", help="parent of the per-model run directories")
    ap.add_argument("--protocol", default="c2dsr", choices=["c2dsr", "full"], help="protocol of the printed table")
    ap.add_argument("--split", default="test", choices=["valid", "test"])
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every model (e.g. train.threads=2)")
    args = ap.parse_intermixed_args()

    max_len = load_config(None, args.overrides).max_len
    bundle = DataBundle(Dataset.load(args.dataset), max_len)  # loaded once, shared by every model
    rows, timing = [], []
    for name in args.models.split(","):
        path = CONFIGS / f"{name}.yaml"
        ov = [f"model.name={name}", f"dataset={args.dataset}", f"out={Path(args.out) / name}", f"train.epochs={args.epochs}", "train.progress=false"]
        cfg = load_config(path if path.exists() else None, ov + list(args.overrides))
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        result = train(cfg, bundle)
        wall = time.perf_counter() - t0
        res = (result.test if args.split == "test" else result.valid)[args.protocol]
        rows.append((name, res))
        sec = float(np.median(result.epoch_seconds)) if result.epoch_seconds else 0.0
        timing.append((name, sec, len(result.epoch_seconds), result.best_epoch, wall))

    print()
    print(format_table(rows, columns=("MRR", "NDCG@5", "NDCG@10")))
    print()
    print("| model | s/epoch (median) | epochs run | best epoch | wall s |")
    print("|---|---|---|---|---|")
    for name, sec, n, best, wall in timing:
        print(f"| {name} | {sec:.1f} | {n} | {best} | {wall:.0f} |")


if __name__ == "__main__":
    main()
