"""Kernel (sys) share of CPU time and step time of training steps under different malloc settings.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_allocator.py DATASET_DIR [DATASET_DIR ...] [--steps 20] [--threads 1]
    PYTHONPATH=src .venv/bin/python benchmarks/bench_allocator.py . --probe   # no dataset: 128 MB blocks only

Each (dataset, model, allocator setting) runs in a fresh child process (an allocator is chosen at
process start), which times --steps training steps after 2 warm-up steps on length-bucketed
batches of 256 and reports the user and sys CPU seconds of those steps (getrusage of the child).
Settings: glibc as it is; glibc with tunables that keep freed memory in the heap
(``llmemf.runtime.GLIBC_TUNABLES``), and the same set in-process by mallopt (LLMEMF_ALLOCATOR=glibc);
mimalloc from the cmeel-mimalloc wheel, default options and with purging off
(``llmemf.runtime.MIMALLOC_ENV``: the ``llmemf`` command's default).
Models (--models): ``llmemf``, LLM-EMF ID only in its default training (sampled softmax);
``llmemf-full``, the same with the full softmax (``train_negatives=0``: the (rows x items) logits
every step); ``sasrec`` (d 256). bf16 autocast where the CPU has native bf16; the optimizer
``llmemf train`` uses (training.loop.make_optimizer, default train settings).
Prints per setting the median wall seconds per step, its ratio to glibc's, CPU (user + sys) seconds per
step (steadier than wall time on a loaded machine), sys / (user + sys), peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from llmemf import runtime


def child(dataset: Path, model_name: str, steps: int, threads: int) -> None:
    import torch

    from llmemf.config import TrainConfig
    from llmemf.data.batching import DataBundle
    from llmemf.data.dataset import Dataset
    from llmemf.models.base import build_model
    from llmemf.training.loop import make_optimizer
    from llmemf.training.trainer import cpu_has_native_bf16

    runtime.setup_allocator()  # only the "glibc mallopt" setting asks it to do something
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    bundle = DataBundle(Dataset.load(dataset), 15)
    all_batches = list(bundle.train.iter_batches(256, shuffle=True, seed=0, by_length=True))
    pick = np.linspace(0, len(all_batches) - 1, steps + 2).astype(int)
    batches = [all_batches[i] for i in pick]
    params = {"llmemf": {"modalities": ["id"]}, "llmemf-full": {"modalities": ["id"], "train_negatives": 0}}.get(model_name, {"hidden": 256})
    model = build_model(model_name.removesuffix("-full"), params, bundle)
    opt = make_optimizer(model, TrainConfig())
    bf16 = cpu_has_native_bf16()
    times = []
    for i, batch in enumerate(batches):
        if i == 2:
            r0 = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out = {
        "step_s": float(np.median(times)),
        "user_s": r1.ru_utime - r0.ru_utime,
        "sys_s": r1.ru_stime - r0.ru_stime,
        "rss_mib": r1.ru_maxrss / 1024,
        "n_batches": len(all_batches),
        "bf16": bf16,
        "steps": steps,
    }
    print("RESULT " + json.dumps(out))


def probe(threaded: bool) -> None:
    """40 x (allocate a 128 MB tensor, write it, one op, free), on the main thread or another one."""
    import threading

    import torch

    runtime.setup_allocator()
    torch.set_num_threads(1)

    def work() -> None:
        for _ in range(40):
            x = torch.empty(4000, 8192).fill_(1.0)
            y = x * 2
            del x, y

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    if threaded:
        t = threading.Thread(target=work)
        t.start()
        t.join()
    else:
        work()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({"user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime, "minflt": r1.ru_minflt - r0.ru_minflt}))


def run_probe() -> None:
    print(f"{'thread':7s} {'setting':20s} {'user s':>7s} {'sys s':>7s} {'minor faults':>12s}")
    for threaded in (False, True):
        for label, extra in settings():
            env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", runtime.ACTIVE)}
            env.update(extra)
            cmd = [sys.executable, __file__, ".", "--probe-child", str(int(threaded))]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"{'other' if threaded else 'main':7s} {label:20s} FAILED rc={proc.returncode}: {proc.stderr.strip()[-300:]}")
                continue
            r = json.loads(line[0][7:])
            print(f"{'other' if threaded else 'main':7s} {label:20s} {r['user_s']:7.2f} {r['sys_s']:7.2f} {r['minflt']:12d}", flush=True)


def settings() -> list[tuple[str, dict[str, str]]]:
    lib = runtime.mimalloc_path()
    out = [
        ("glibc default", {runtime.SWITCH: "off"}),
        ("glibc tunables", {runtime.SWITCH: "off", "GLIBC_TUNABLES": runtime.GLIBC_TUNABLES}),
        ("glibc mallopt", {runtime.SWITCH: "glibc"}),
    ]
    if lib:
        out.append(("mimalloc default", {runtime.SWITCH: "off", "LD_PRELOAD": str(lib)}))
        out.append(("mimalloc purge off", {runtime.SWITCH: "off", "LD_PRELOAD": str(lib), **runtime.MIMALLOC_ENV}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", type=Path, nargs="+")
    # a process faults in its heap over its first steps: fewer timed steps overstate the kernel share
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="llmemf,llmemf-full,sasrec")
    ap.add_argument("--settings", help="comma-separated setting labels to run (default: all)")
    ap.add_argument("--probe", action="store_true", help="only the allocation probe (128 MB blocks, main thread and another thread)")
    ap.add_argument("--child", nargs=2, metavar=("DATASET", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("--probe-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe_child is not None:
        probe(bool(args.probe_child))
        return
    if args.probe:
        run_probe()
        return
    if args.child:
        child(Path(args.child[0]), args.child[1], args.steps, args.threads)
        return
    print(f"load average at start {os.getloadavg()[0]:.1f} (a shared machine: ratios within a block are what to read)")
    cols = f"{'s/step':>7s} {'vs glibc':>8s} {'CPU s/step':>10s} {'user s':>7s} {'sys s':>7s} {'sys %':>6s} {'RSS MiB':>8s}"
    print(f"{'dataset':14s} {'model':11s} {'setting':20s} {cols}")
    for ds in args.datasets:
        for model in args.models.split(","):
            base = None
            for label, extra in settings():
                if args.settings and label not in args.settings.split(","):
                    continue
                env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", runtime.ACTIVE)}
                env.update(extra)
                cmd = [sys.executable, __file__, str(ds), "--steps", str(args.steps), "--threads", str(args.threads), "--child", str(ds), model]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    print(f"{ds.name:14s} {model:11s} {label:20s} FAILED rc={proc.returncode}: {proc.stderr.strip()[-300:]}")
                    continue
                r = json.loads(line[0][7:])
                base = base or r["step_s"]
                share = r["sys_s"] / max(r["user_s"] + r["sys_s"], 1e-9)
                cpu = (r["user_s"] + r["sys_s"]) / r["steps"]
                print(
                    f"{ds.name:14s} {model:11s} {label:20s} {r['step_s']:7.3f} {r['step_s'] / base:8.2f} {cpu:10.2f} "
                    f"{r['user_s']:7.1f} {r['sys_s']:7.1f} {100 * share:5.1f}% {r['rss_mib']:8.0f}",
                    flush=True,
                )
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
