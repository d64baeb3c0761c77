"""LLM-EMF evaluation seconds on a split (issue 15, item 4): full protocol + c2dsr protocol.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_eval.py DATASET_DIR [--split test] [--threads 2] [--reps 2]
        [--dtypes fp32,bf16]

An untrained LLM-EMF, ID only (evaluation cost does not depend on the weights), evaluated by
llmemf.evaluation on --split under the full protocol (every item of the target's domain ranked) and
the c2dsr protocol (999 sampled negatives), in fp32 and/or under bf16 autocast: each protocol on its
own (``Evaluator.evaluate``), and both in one pass (``evaluate_together``, which scores each batch
once). Median wall seconds of --reps runs and the CPU (user + sys) seconds of the process per run;
the machine may be shared: read ratios. With PYTHONPATH at an older checkout that has no
``evaluate_together``, only the "alone" rows are measured: a before/after in one session.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from llmemf import runtime
from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset
from llmemf.evaluation import protocols
from llmemf.models.base import build_model


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    allocator = runtime.setup_allocator()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (autocast), comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = DataBundle(Dataset.load(args.dataset), 15)
    torch.manual_seed(0)
    model = build_model("llmemf", {"modalities": ["id"]}, bundle).eval()
    evaluators = [protocols.Evaluator(bundle, args.split, p) for p in ("full", "c2dsr")]
    together = getattr(protocols, "evaluate_together", None)
    n_users = len(bundle.splits[args.split].target)
    print(f"{args.dataset.name} {args.split}: {n_users} users; threads {args.threads}; allocator {allocator}; load average {os.getloadavg()[0]:.1f}")
    print("| protocols | how | dtype | wall s (median) | CPU s per run |\n|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        bf16 = dtype == "bf16"
        cases = [(ev.protocol, "alone", lambda ev=ev, bf16=bf16: ev.evaluate(model, "cpu", bf16)) for ev in evaluators]
        if together is not None:
            cases.append(("full + c2dsr", "together", lambda bf16=bf16: together(evaluators, model, "cpu", bf16)))
        for label, how, run in cases:
            walls, cpu0 = [], cpu_seconds()
            for _ in range(args.reps):
                t = time.perf_counter()
                run()
                walls.append(time.perf_counter() - t)
            cpu = (cpu_seconds() - cpu0) / args.reps
            print(f"| {label} | {how} | {dtype} | {np.median(walls):.1f} | {cpu:.1f} |", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
