"""Issue 18 benchmark: training steps per second, one process against several (torchrun, DDP).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_distributed.py DATASET [--model sasrec] [--epochs 2] [--out runs/bench_distributed]
    PYTHONPATH=src .venv/bin/python benchmarks/bench_distributed.py DATASET --gpus 8       # on a machine with 8 GPUs

CPU (default): 1 process x 2 threads against 2 processes x 1 thread (``--threads`` changes the 2), the same
global batch, so the same steps; and, for context, 1 process x 1 thread. GPU (``--gpus N``): 1 GPU against N GPUs (nccl). Each configuration is
an ordinary `llmemf train` run (``--nproc`` for the distributed one) in its own run directory, started
fresh; a step is one global batch, and its time is the training part of each epoch (metrics.jsonl
``train_seconds``, without validation). Prints a table: median seconds per epoch, steps/s and
samples/s (median over epochs), and the speed-up against the first row (1 process x N threads) measured in the same
invocation. Run it on an otherwise idle machine: other processes competing for the cores move both
rows (say so next to any number taken on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq


def run(label: str, nproc: int, threads: int, device: str, args, n_train: int) -> dict:
    out = args.out / label.replace(" ", "_")
    common = [
        f"--model={args.model}",
        f"--dataset={args.dataset}",
        f"--out={out}",
        "--fresh",
        f"train.epochs={args.epochs}",
        f"train.patience={args.epochs}",
        f"train.batch_size={args.batch_size}",
        f"train.threads={threads}",
        "train.progress=false",
        f"device={device}",
        "eval.protocols=[c2dsr]",
        *args.overrides,
    ]
    cmd = [sys.executable, "-m", "llmemf.cli", "train", *([f"--nproc={nproc}"] if nproc > 1 else []), *common]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{label} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    epochs = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    secs = [e["train_seconds"] for e in epochs]
    steps = math.ceil(n_train / args.batch_size)
    med = statistics.median(secs)
    return {"label": label, "s_epoch": med, "steps_s": steps / med, "samples_s": n_train / med, "wall": wall, "losses": [e["loss"] for e in epochs]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="CPU: threads of the one process = processes of the distributed run")
    ap.add_argument("--gpus", type=int, default=0, help="compare 1 GPU against this many (needs CUDA)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_distributed"))
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for both runs, e.g. model.hidden=64")
    args = ap.parse_intermixed_args()
    n_train = pq.read_metadata(args.dataset / "train.parquet").num_rows
    if args.gpus:
        rows = [run("1 GPU", 1, 1, "cuda", args, n_train), run(f"{args.gpus} GPUs", args.gpus, 1, "cuda", args, n_train)]
    else:
        n = args.threads
        rows = [run(f"1 process x {n} threads", 1, n, "cpu", args, n_train), run(f"{n} processes x 1 thread", n, 1, "cpu", args, n_train)]
        # Context, not the comparison asked for: threads that other jobs' processes keep descheduled make every
        # parallel region wait for the slowest, which a single-threaded process never does.
        rows.append(run("1 process x 1 thread", 1, 1, "cpu", args, n_train))
    base = rows[0]["steps_s"]
    print(f"{args.model} on {args.dataset} ({n_train} training sequences, global batch {args.batch_size}, {args.epochs} epochs)\n")
    print("| configuration | s/epoch (train) | steps/s | samples/s | vs first row | wall s (incl. start, eval) | epoch losses |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        losses = " ".join(f"{v:.4f}" for v in r["losses"])
        cells = [r["label"], f"{r['s_epoch']:.2f}", f"{r['steps_s']:.2f}", f"{r['samples_s']:.0f}", f"{r['steps_s'] / base:.2f}x"]
        cells += [f"{r['wall']:.0f}", losses]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
