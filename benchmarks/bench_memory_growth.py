"""Resident memory of a real training run over time, under each allocator setting (docs/cost.md, 1b).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_memory_growth.py DATASET_DIR --work SCRATCH
        [--settings mimalloc,glibc,off] [--seconds 120] [--threads 2] [--limit-gib 16] [overrides ...]

Each setting runs ``llmemf train`` (LLM-EMF, full softmax, ID + titles where the dataset has them: the
run that exposed unbounded heap growth) in a fresh process with LLMEMF_ALLOCATOR set, one after the
other, for --seconds, and samples the resident memory of the training process every 2 s (the process
itself, or the child it re-executed into under mimalloc). A setting whose process passes --limit-gib
is stopped there, so that the benchmark never takes the machine down. Prints per setting: resident
memory at each quarter of the time, the maximum, the growth over the second half (MiB per minute: a
bounded allocator levels off), training steps completed, and user/sys CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

STEP = re.compile(r"(\d+)/(\d+) \[")


def rss_mib(pid: int) -> float:
    """Resident memory of pid in MiB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def steps_done(log: Path) -> int:
    """Training steps completed so far, from the tqdm lines of the log (epochs add up)."""
    text = log.read_text(errors="replace").replace("\r", "\n") if log.exists() else ""
    total, last_epoch_steps, prev = 0, 0, 0
    for m in STEP.finditer(text):
        n = int(m.group(1))
        if n < prev:  # a new epoch's bar
            total += last_epoch_steps
        last_epoch_steps, prev = n, n
    return total + last_epoch_steps


def run_setting(setting: str, args, overrides: list[str]) -> dict:
    out = Path(args.work) / f"growth_{setting}"
    log = out.with_suffix(".log")
    cmd = [
        sys.executable,
        "-m",
        "llmemf.cli",
        "train",
        "-m",
        "llmemf",
        "-d",
        args.dataset,
        "-o",
        str(out),
        "--fresh",
        f"train.threads={args.threads}",
        "train.epochs=50",
        *overrides,
    ]
    env = {**os.environ, "LLMEMF_ALLOCATOR": setting}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    samples: list[tuple[float, float]] = []
    start, stopped = time.monotonic(), ""
    while time.monotonic() - start < args.seconds and proc.poll() is None:
        time.sleep(2)
        samples.append((time.monotonic() - start, rss_mib(proc.pid)))  # execve keeps the pid under mimalloc
        if samples[-1][1] > args.limit_gib * 1024:
            stopped = f"stopped at {args.limit_gib} GiB"
            break
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, -signal.SIGKILL):
        stopped = stopped or f"exit {proc.returncode} (see {log})"

    def at(frac: float) -> float:
        t_want = frac * args.seconds
        return max((r for s, r in samples if s <= t_want), default=0.0) if samples else 0.0

    half = [(s, r) for s, r in samples if s >= samples[-1][0] / 2] if samples else []
    growth = (half[-1][1] - half[0][1]) / max(half[-1][0] - half[0][0], 1e-9) * 60 if len(half) > 1 else float("nan")
    return {
        "setting": setting,
        "quarters": [at(f) for f in (0.25, 0.5, 0.75, 1.0)],
        "max": max((r for _, r in samples), default=0.0),
        "growth": growth,
        "steps": steps_done(log),
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
        "note": stopped,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--work", required=True, help="scratch directory for the run directories and logs")
    ap.add_argument("--settings", default="mimalloc,glibc,off")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-gib", type=float, default=16)
    ap.add_argument("overrides", nargs="*", help="key=value for the training run (default: ID + titles)")
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    has_titles = (Path(args.dataset) / "features" / "txt_title.npy").exists()
    overrides = args.overrides or (["model.modalities=[id,txt]", "model.txt_feature=txt_title"] if has_titles else ["model.modalities=[id]"])
    print(
        f"dataset {args.dataset}; {' '.join(overrides)}; threads {args.threads}; {args.seconds:.0f} s per setting; "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    rows = [run_setting(s.strip(), args, overrides) for s in args.settings.split(",")]
    q = args.seconds / 4
    print(
        f"\n| setting | RSS MiB at {q:.0f} / {2 * q:.0f} / {3 * q:.0f} / {4 * q:.0f} s | max MiB | MiB/min, 2nd half | steps | "
        "user s | sys s | sys % | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cpu = r["user"] + r["sys"]
        print(
            f"| {r['setting']} | {' / '.join(f'{v:.0f}' for v in r['quarters'])} | {r['max']:.0f} | {r['growth']:.0f} | {r['steps']} | "
            f"{r['user']:.1f} | {r['sys']:.1f} | {100 * r['sys'] / max(cpu, 1e-9):.0f}% | {r['note']} |"
        )
    print(f"\nload average at end {os.getloadavg()[0]:.1f} (a shared machine: compare settings within this run)")


if __name__ == "__main__":
    main()
