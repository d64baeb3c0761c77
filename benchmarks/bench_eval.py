"""LLM-EMF evaluation seconds on a split (issue 15, item 4): full protocol + c2dsr protocol, one run.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_eval.py DATASET_DIR [--split test] [--threads 2] [--reps 2]

An untrained LLM-EMF, ID only (evaluation cost does not depend on the weights), evaluated by
llmemf.evaluation.Evaluator under the full protocol (every item of the target's domain ranked) and
the c2dsr protocol (999 sampled negatives), in fp32 and under bf16 autocast; for the c2dsr
protocol both candidate paths of LLMEMF.scores (gather the candidates' keys, or score the whole
domain and pick columns: ``LLMEMF.candidates_via_full``). Median wall seconds of --reps runs and
the CPU (user + sys) seconds of the process over them; the machine may be shared: read ratios.
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
from llmemf.evaluation.protocols import Evaluator
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = DataBundle(Dataset.load(args.dataset), 15)
    torch.manual_seed(0)
    model = build_model("llmemf", {"modalities": ["id"]}, bundle).eval()
    evaluators = {p: Evaluator(bundle, args.split, p) for p in ("full", "c2dsr")}
    n_users = len(bundle.splits[args.split].target)
    print(f"{args.dataset.name} {args.split}: {n_users} users; threads {args.threads}; allocator {allocator}; load average {os.getloadavg()[0]:.1f}")
    print("| protocol | candidates | dtype | wall s (median) | CPU s per run |\n|---|---|---|---|---|")
    cases = [("full", None, False), ("full", None, True)]
    cases += [("c2dsr", via, bf16) for bf16 in (False, True) for via in (False, True)]
    for protocol, via, bf16 in cases:
        model.candidates_via_full = via
        walls, cpu0 = [], cpu_seconds()
        for _ in range(args.reps):
            t = time.perf_counter()
            evaluators[protocol].evaluate(model, "cpu", bf16)
            walls.append(time.perf_counter() - t)
        cpu = (cpu_seconds() - cpu0) / args.reps
        path = "-" if via is None else ("score domain, pick" if via else "gather keys")
        print(f"| {protocol} | {path} | {'bf16' if bf16 else 'fp32'} | {np.median(walls):.1f} | {cpu:.1f} |", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
