"""LLM-EMF cost against catalogue size (issue 15, item 3): the same users, 10k to 1M items per domain.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_catalogue.py [--sizes 10000,100000,1000000] [--users 2048]
        [--steps 3] [--threads 1] [--d-id 64] [--negatives 4096] [--max-logits-gib 3]

Each catalogue is a two-domain dataset built in memory (ids only: no images or text, which this
size does not need): --users users with 8-14 interactions each, alternating domains, items drawn
from a Zipf(1.1) law over the catalogue with the same random stream for every size, so that the
users and their sequence lengths are the same and only the catalogue grows. For each size, in a
fresh child process: LLM-EMF (ID only, d_id=--d-id, bf16 autocast where native) seconds per
training step with the trainer's optimiser (training/loop.py:make_optimizer), median of --steps
after 2 warm-ups: with the sampled softmax (uniform, --negatives) and train.lazy_adam (sparse ID
gradients, lazy Adam rows), the same with Adam (dense gradients, every row updated), and the full
softmax (skipped, with the reason, where its (rows x items) logits alone would exceed
--max-logits-gib); and the seconds of one full-protocol evaluation of the validation split (every
item of the target's domain ranked; eval batches of 128 users). Also printed: the seconds of the
optimiser step alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from llmemf import runtime


def make_catalogue(n_per_domain: int, n_users: int, seed: int = 0):
    """Two domains of n_per_domain items; the same users and sequence lengths for every size."""
    import pandas as pd

    from llmemf.data.dataset import Dataset, DomainInfo, Manifest, make_items_frame, split_history_target

    rng = np.random.default_rng(seed)
    n = 2 * n_per_domain
    rows = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        length = int(rng.integers(8, 15))
        ranks = rng.zipf(1.1, size=length + 2)  # 1, 2, ... (heavy tail): the same draws for every size
        domains = (np.arange(length + 2) + u) % 2
        seq = [int(d * n_per_domain + (r - 1) % n_per_domain) for d, r in zip(domains, ranks, strict=True)]
        ts = list(range(1000 * u, 1000 * u + len(seq)))
        rows["train"].append({"user": f"u{u}", "items": seq[:-2], "timestamps": ts[:-2]})
        for split, end in (("valid", -1), ("test", None)):
            s, t = (seq[:end], ts[:end]) if end else (seq, ts)
            hist, hts, target, tts = split_history_target(s, t)
            rows[split].append(
                {
                    "user": f"u{u}",
                    "items": hist,
                    "timestamps": hts,
                    "target": target,
                    "target_domain": int(target >= n_per_domain),
                    "target_timestamp": tts,
                }
            )
    items = make_items_frame([n_per_domain, n_per_domain])
    manifest = Manifest(name=f"catalogue-{n_per_domain}", domains=[DomainInfo("X", n_per_domain, 0), DomainInfo("Y", n_per_domain, n_per_domain)])
    assert len(items) == n
    return Dataset(manifest=manifest, items=items, splits={k: pd.DataFrame(v) for k, v in rows.items()})


def child(n_items: int, args) -> dict:
    import torch

    from llmemf.config import TrainConfig
    from llmemf.data.batching import DataBundle
    from llmemf.evaluation.protocols import Evaluator
    from llmemf.models.base import build_model
    from llmemf.training.trainer import cpu_has_native_bf16, make_optimizer

    torch.set_num_threads(args.threads)
    bf16 = cpu_has_native_bf16()
    bundle = DataBundle(make_catalogue(n_items, args.users), 15)
    batches = list(bundle.train.iter_batches(256, shuffle=True, seed=0, by_length=True))
    batches = [batches[i % len(batches)] for i in range(args.steps + 2)]
    out: dict = {"n_batches": len(list(bundle.train.iter_batches(256)))}
    # mode -> (negatives, train.lazy_adam)
    modes = {"sampled": (args.negatives, True), "sampled_adam": (args.negatives, False), "full": (0, False)}
    for mode, (negatives, lazy) in modes.items():
        # the largest per-domain (rows x items) logit matrix of a full-softmax step, fp32
        rows = max(int(((b.xy_target >= 0) & (b.xy_target < bundle.pad_id)).sum()) for b in batches) * 3 // 2
        logits_gib = rows * n_items * 4 / 2**30
        if mode == "full" and logits_gib > args.max_logits_gib:
            out[mode] = f"skipped: its logits alone ~{logits_gib:.0f} GiB (> --max-logits-gib {args.max_logits_gib})"
            continue
        torch.manual_seed(0)
        model = build_model("llmemf", {"modalities": ["id"], "d_id": args.d_id, "train_negatives": negatives, "negative_sampler": "uniform"}, bundle)
        opt = make_optimizer(model, TrainConfig(lazy_adam=lazy))  # the trainer's optimiser
        times, opt_times = [], []
        for i, batch in enumerate(batches):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t_opt = time.perf_counter()
            opt.step()
            if i >= 2:
                times.append(time.perf_counter() - t)
                opt_times.append(time.perf_counter() - t_opt)
        out[mode] = float(np.median(times))
        out[f"{mode}_optimizer"] = float(np.median(opt_times))
        if mode == "sampled":
            ev = Evaluator(bundle, "valid", "full", batch_size=128)
            t = time.perf_counter()
            ev.evaluate(model, "cpu", bf16)
            out["eval_full"] = time.perf_counter() - t
            out["eval_users"] = len(bundle.splits["valid"].target)
        del model, opt
    return out


def main() -> None:
    allocator = runtime.setup_allocator()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="items per domain, comma-separated")
    ap.add_argument("--users", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--d-id", type=int, default=64, help="ID width (64 keeps a 2M-row table and its Adam state in 1.5 GiB)")
    ap.add_argument("--negatives", type=int, default=4096)
    ap.add_argument("--max-logits-gib", type=float, default=3.0)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)))
        return
    print(
        f"users {args.users}, d_id {args.d_id}, K {args.negatives}, threads {args.threads}, "
        f"allocator {allocator}; "
        f"load average {os.getloadavg()[0]:.1f} (a shared machine: read the ratios)\n"
    )
    print(
        "| items/domain | sampled, lazy Adam: s/step | vs smallest | its optimizer s | sampled, Adam: s/step | vs smallest | its optimizer s "
        "| full softmax, Adam: s/step | eval full (valid) s | vs smallest |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = None
    for n in (int(x) for x in args.sizes.split(",")):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--child", str(n)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"| {n} | FAILED rc={proc.returncode}: {proc.stderr.strip().splitlines()[-1:]} |||||", flush=True)
            continue
        r = json.loads(line[0][7:])
        base = base or r
        full = f"{r['full']:.2f}" if isinstance(r["full"], float) else r["full"]
        print(
            f"| {n} | {r['sampled']:.2f} | {r['sampled'] / base['sampled']:.2f}x | {r['sampled_optimizer']:.2f} "
            f"| {r['sampled_adam']:.2f} | {r['sampled_adam'] / base['sampled_adam']:.2f}x | {r['sampled_adam_optimizer']:.2f} "
            f"| {full} | {r['eval_full']:.1f} ({r['eval_users']} users) | {r['eval_full'] / base['eval_full']:.2f}x |",
            flush=True,
        )
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
