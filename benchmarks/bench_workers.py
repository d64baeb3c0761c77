"""One process with every thread, or several processes with one thread each: which finishes a spec sooner.

    .venv/bin/python benchmarks/bench_workers.py SPEC.yaml dataset=DIR [--rows "llmemf,c2dsr"] [--cores 2] [--steps 8]

For each row of the spec (its first grid point, as ``llmemf compare --spec --estimate-only`` times it),
the mean training step (``experiments.spec.time_steps``: steps spread over one epoch's batches) is timed
(a) in one process with ``--cores`` threads and (b) in ``--cores`` processes at once, one thread each,
each timing the same row. Each timing runs in a fresh process (``llmemf`` starts under mimalloc, so
these do too). Throughput of (b) against (a): cores x step(a) / mean step(b); above 1, ``compare --spec
--workers N train.threads=1`` trains the spec sooner than one process with N threads. Run it on an
otherwise idle machine: every process here competes for the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from llmemf import runtime


def child(spec_path: str, overrides: list[str], label: str, threads: int, steps: int) -> None:
    from llmemf.data.batching import DataBundle
    from llmemf.data.dataset import Dataset
    from llmemf.experiments.spec import PlannedRun, _common, load_spec, row_search, time_steps

    spec, run_overrides = load_spec(spec_path, [*overrides, f"train.threads={threads}"])
    row = spec.row(label)
    grid, _ = row_search(spec, row, run_overrides)
    planned = grid[0] if grid else PlannedRun("grid", row.label, row.model, {}, spec.seeds[0], "x", _common(spec, row, run_overrides))
    cfg = planned.config(spec)
    step_s, _ = time_steps(cfg, DataBundle(Dataset.load(spec.dataset), cfg.max_len), steps)
    print(json.dumps({"step_s": step_s}))


def timed(args, label: str, threads: int, n_procs: int) -> list[float]:
    cmd = [sys.executable, __file__, args.spec, *args.overrides, "--child", label, "--threads", str(threads), "--steps", str(args.steps)]
    env = runtime.mimalloc_env(os.environ, runtime.mimalloc_path()) if runtime.mimalloc_path() else dict(os.environ)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) for _ in range(n_procs)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"{label}: a timing process failed; run it alone: {' '.join(cmd)}")
    return [json.loads(o.strip().splitlines()[-1])["step_s"] for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec")
    ap.add_argument("overrides", nargs="*", help="key=value, as for `llmemf compare --spec` (dataset=DIR)")
    ap.add_argument("--rows", default="", help="comma-separated row labels (default: every trainable row)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.spec, args.overrides, args.child, args.threads, args.steps)

    from llmemf.experiments.spec import _trainable, load_spec

    spec, _ = load_spec(args.spec, args.overrides)
    labels = [s.strip() for s in args.rows.split(",") if s.strip()] or [r.label for r in spec.rows if _trainable(r.model)]
    print(f"{spec.title}: {args.cores} cores, load average at start {os.getloadavg()[0]:.1f}, {args.steps} timed steps per process\n")
    print(f"| row | 1 process x {args.cores} threads: s/step | {args.cores} processes x 1 thread: s/step (mean) | throughput, processes vs threads |")
    print("|---|---|---|---|")
    ratios = []
    for label in labels:
        one = timed(args, label, args.cores, 1)[0]
        many = statistics.mean(timed(args, label, 1, args.cores))
        ratios.append(args.cores * one / many)
        print(f"| {label} | {one:.3f} | {many:.3f} | {ratios[-1]:.2f}x |", flush=True)
    print(f"\nmedian throughput ratio: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
