"""LLM-EMF training cost (issue 15, item 7): seconds per epoch, FLOP/s, CPU user/sys and memory, one run.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_llmemf.py DATASET_DIR [--steps 6] [--threads 2]
        [--official-c2dsr CHECKOUT] [--only llmemf,sasrec,official] [--negatives 4096] [--frozen-width 128]

Every variant runs in its own child process (so that its peak RSS and CPU times are its own) and
times --steps training steps after 2 warm-up steps on length-bucketed batches of 256 spread over
the epoch (the optimizer `llmemf train` makes: fused Adam, sparse gradients for the tables read by rows); the
step of a middle-length batch is counted by torch's FlopCounterMode. Per variant:
median seconds per step, the epoch estimate (median x batches per epoch), GFLOP per step, achieved
GFLOP/s and its share of the matmul peak of the same dtype measured first in this run, user and
sys CPU seconds of the timed steps (getrusage) with sys's share, and the child's peak RSS.

Variants: LLM-EMF with every modality (full softmax and sampled at the features' own widths, fp32 and
bf16; "its softmax alone": the full softmax's logits, cross-entropy and backward without the encoders
(their queries computed before the timed steps), for its share of the matmul peak; with --frozen-width W
also both in bf16 with the frozen features projected to W principal components; and LLM-EMF's default
mode, fp32 and bf16), LLM-EMF ID only with the full softmax (bf16), SASRec (fp32, bf16), and with
--official-c2dsr the official C2DSR code (a checkout of cjx96/C2DSR holding C2DSR_src/, never copied
here): its train_rec.py defaults on the CPU, where ``Tensor.cuda`` is made a no-op at run time and the
dataset is written to a temporary directory in
its file format (Alist/Blist, traindata_new.txt); nothing in the checkout is edited.

If the dataset has no ``img`` / ``txt_llm`` features, random 512-d unit features stand in for the
speed measurement only, in a temporary copy of the dataset (stated in the output).

The process sets up the allocator as the ``llmemf`` command does (llmemf.runtime, default: mimalloc;
LLMEMF_ALLOCATOR=off for plain glibc); so does each child.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llmemf import runtime

BATCH = 256


def matmul_peak(dtype_name: str, n: int = 4096, k: int = 1280, m: int = 16384, reps: int = 5) -> float:
    """GFLOP/s of one large matmul of the dtype (a shape like the full-softmax scoring), median of reps."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, k, dtype=dtype), torch.randn(m, k, dtype=dtype)
    a @ b.T
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b.T
        times.append(time.perf_counter() - t)
    return 2 * n * k * m / float(np.median(times)) / 1e9


def ensure_features(root: Path, n_items: int) -> tuple[Path, str]:
    """The dataset itself if it has img and txt_llm; otherwise a temporary copy with random ones added
    (never written into the user's dataset)."""
    from llmemf.features.store import Feature, FeatureManifest, list_features, save_feature

    have = list_features(root)
    if "img" in have and "txt_llm" in have:
        return root, "dataset features: " + ", ".join(have)
    copy = Path(tempfile.mkdtemp(prefix="bench_llmemf_")) / root.name
    shutil.copytree(root, copy)
    rng = np.random.default_rng(0)
    for name in ("img", "txt_title", "txt_llm"):
        if name not in have:
            v = rng.normal(size=(n_items, 512)).astype(np.float32)
            save_feature(copy, Feature(FeatureManifest(name, "random-benchmark-only", "none", 512, n_items, "float32"), v, np.ones(n_items, bool)))
    return copy, f"RANDOM 512-d features for missing img/txt in a temporary copy {copy} (speed only, not accuracy)"


def time_steps(step, batches) -> dict:
    """Run step(batch) over batches: 2 warm-up steps, FLOPs counted on step index 2 (not timed)."""
    from torch.utils.flop_counter import FlopCounterMode

    times, flops = [], 0.0
    r0 = None  # CPU times of the timed steps (index 3..) only
    for i, batch in enumerate(batches):
        if i == 2:
            counter = FlopCounterMode(display=False)
            with counter:
                step(batch)
            flops = float(counter.get_total_flops())
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            continue
        t = time.perf_counter()
        step(batch)
        if i >= 3:
            times.append(time.perf_counter() - t)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "step_s": float(np.median(times)),
        "flops": flops,
        "user_s": r1.ru_utime - r0.ru_utime,
        "sys_s": r1.ru_stime - r0.ru_stime,
        "rss_mib": r1.ru_maxrss / 1024,
        "cpu_step_s": (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / len(times),
    }


def pick(items: list, steps: int) -> list:
    """steps + 3 batches spread over the epoch (the length buckets); the middle one is FLOP-counted."""
    idx = np.linspace(0, len(items) - 1, steps + 3).astype(int)
    chosen = [items[i] for i in idx]
    mid = chosen.pop(len(chosen) // 2)
    return chosen[:2] + [mid] + chosen[2:]


def softmax_steps(model, batches: list, bf16: bool) -> tuple[list, object]:
    """The full softmax's own work in LLM-EMF's training step, apart from its encoders: per batch, the nine
    encoders' queries are computed first (not timed) as leaves, and the timed step is the logits of every
    target against its domain's items, the cross-entropy and their backward (to the queries and the ID table)."""
    import torch
    import torch.nn.functional as F

    model.train()
    prepared = []
    for batch in batches:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            q_all = model._fused_queries(model.encode(batch, last_only=False))
        width = batch.xy.shape[1]
        targets = torch.stack([F.pad(t, (width - t.shape[1], 0), value=model.pad_id) for t in (batch.x_target, batch.y_target, batch.xy_target)])
        prepared.append(({m: v.detach().requires_grad_() for m, v in q_all.items()}, targets))

    def step(item) -> None:
        q_all, targets = item
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            total = 0.0
            for lo, hi in model.domain_ranges:
                sel = (targets >= lo) & (targets < hi)
                logits = model._domain_scores({m: qm[sel] for m, qm in q_all.items()}, lo, hi)
                total = total + F.cross_entropy(logits.float(), targets[sel] - lo, reduction="sum")
        total.backward()

    return prepared, step


def child_ours(root: Path, model_name: str, params: dict, bf16: bool, steps: int, softmax_only: bool = False) -> dict:
    import torch

    from llmemf.config import TrainConfig
    from llmemf.data.batching import DataBundle
    from llmemf.data.dataset import Dataset
    from llmemf.models.base import build_model
    from llmemf.training.loop import make_optimizer

    bundle = DataBundle(Dataset.load(root), 15)
    all_batches = list(bundle.train.iter_batches(BATCH, shuffle=True, seed=0, by_length=True))
    torch.manual_seed(0)
    model = build_model(model_name, params, bundle)
    opt = make_optimizer(model, TrainConfig(lr=1e-3))  # the optimizer `llmemf train` uses

    def step(batch) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if softmax_only:
        prepared, softmax_step = softmax_steps(model, pick(all_batches, steps), bf16)
        out = time_steps(softmax_step, prepared)
    else:
        out = time_steps(step, pick(all_batches, steps))
    out["n_batches"] = len(all_batches)
    return out


def child_official(checkout: Path, dataset: Path, steps: int) -> dict:
    """The official C2DSR trainer's train_batch, train_rec.py's defaults, on the CPU."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from official_c2dsr import official_trainer

    from llmemf.data.dataset import Dataset

    trainer, loader = official_trainer(checkout, Dataset.load(dataset))
    # Only the batches timed are built (the loader prepares each batch when it is indexed).
    out = time_steps(trainer.train_batch, [loader[int(i)] for i in pick(list(range(len(loader))), steps)])
    out["n_batches"] = len(loader)
    return out


def variants(negatives: int, frozen_width: int) -> list[dict]:
    """Every LLM-EMF variant names its training knobs, so a row means the same whatever the defaults."""
    out = []
    for bf16 in (False, True):
        out.append({"label": "sasrec d=256", "model": "sasrec", "params": {"hidden": 256}, "bf16": bf16, "group": "sasrec"})
    id_only = {"modalities": ["id"], "train_negatives": 0}
    out.append({"label": "llmemf id only, full", "model": "llmemf", "params": id_only, "bf16": True, "group": "llmemf"})
    for bf16 in (False, True):
        full = {"train_negatives": 0, "frozen_width": 0}
        out.append({"label": "llmemf all, full", "model": "llmemf", "params": full, "bf16": bf16, "group": "llmemf"})
        out.append({"label": "  its softmax alone", "model": "llmemf", "params": full, "bf16": bf16, "group": "llmemf", "softmax_only": True})
        sampled = {"train_negatives": negatives, "frozen_width": 0}
        out.append({"label": f"llmemf all, sampled {negatives}", "model": "llmemf", "params": sampled, "bf16": bf16, "group": "llmemf"})
    if frozen_width:
        for label, params in (("full", {"train_negatives": 0}), (f"sampled {negatives}", {"train_negatives": negatives})):
            params = {**params, "frozen_width": frozen_width}
            out.append({"label": f"llmemf all/{frozen_width}, {label}", "model": "llmemf", "params": params, "bf16": True, "group": "llmemf"})
    for bf16 in (False, True):
        out.append({"label": "llmemf all, default mode", "model": "llmemf", "params": {}, "bf16": bf16, "group": "llmemf"})
    return out


def main() -> None:
    allocator = runtime.setup_allocator()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant (after 2 warm-up steps and 1 FLOP-counted step)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--negatives", type=int, default=4096, help="K of the sampled variants")
    ap.add_argument("--frozen-width", type=int, default=0, help="also time LLM-EMF with frozen features projected to this width")
    ap.add_argument("--official-c2dsr", type=Path, help="checkout of cjx96/C2DSR (the directory holding C2DSR_src/)")
    ap.add_argument("--only", default="sasrec,llmemf,official", help="comma-separated groups to run")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        spec = json.loads(args.child)
        if spec["model"] == "official":
            result = child_official(Path(spec["checkout"]), args.dataset, args.steps)
        else:
            result = child_ours(Path(spec["root"]), spec["model"], spec["params"], spec["bf16"], args.steps, spec.get("softmax_only", False))
        print("RESULT " + json.dumps(result))
        return

    from llmemf.data.dataset import Dataset

    groups = set(args.only.split(","))
    ds = Dataset.load(args.dataset)
    root, note = (args.dataset, "no modalities needed") if "llmemf" not in groups else ensure_features(args.dataset, ds.n_items)
    print(note)
    peaks = {d: matmul_peak(d) for d in ("float32", "bfloat16")}
    print(f"threads {args.threads}; allocator {allocator}; load average {os.getloadavg()[0]:.1f} (a shared machine: read ratios within this run)")
    print(f"matmul peak measured now: fp32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s\n")
    todo = [v for v in variants(args.negatives, args.frozen_width) if v["group"] in groups]
    if args.official_c2dsr and "official" in groups:
        todo.insert(0, {"label": "official C2DSR code", "model": "official", "checkout": str(args.official_c2dsr.resolve()), "bf16": False})
    header = f"| {'variant':30s} | dtype | s/step | CPU s/step | s/epoch est | GFLOP/step | GFLOP/s | % peak | user s | sys s | sys % | RSS MiB |"
    print(header + "\n|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|", flush=True)
    results = []
    for v in todo:
        spec = dict(v, root=str(root))
        cmd = [sys.executable, __file__, str(args.dataset), "--steps", str(args.steps), "--threads", str(args.threads), "--child", json.dumps(spec)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"| {v['label']:30s} | FAILED rc={proc.returncode}: {proc.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        r = json.loads(line[0][7:])
        dtype = "bf16" if v["bf16"] else "fp32"
        rate = r["flops"] / r["step_s"] / 1e9
        peak = peaks["bfloat16" if v["bf16"] else "float32"]
        share = r["sys_s"] / max(r["user_s"] + r["sys_s"], 1e-9)
        epoch = r["step_s"] * r["n_batches"]
        results.append((v["label"], dtype, epoch))
        print(
            f"| {v['label']:30s} | {dtype:5s} | {r['step_s']:6.2f} | {r['cpu_step_s']:10.2f} | {epoch:11.1f} | {r['flops'] / 1e9:10.1f} "
            f"| {rate:7.0f} "
            f"| {100 * rate / peak:5.0f}% | {r['user_s']:6.1f} | {r['sys_s']:5.1f} | {100 * share:4.0f}% | {r['rss_mib']:7.0f} |",
            flush=True,
        )
    official = [e for label, _, e in results if label.startswith("official")]
    if official:
        print("\nofficial C2DSR s/epoch : variant s/epoch (same run; the issue's goal is >= 8 for the default LLM-EMF mode)")
        for label, dtype, e in results:
            if not label.startswith("official"):
                print(f"  {label:28s} {dtype}: {official[0] / e:5.2f}x")
    print("\ns/epoch est = median wall s/step x batches per epoch of", BATCH, "; CPU s/step = (user + sys) / timed steps (steadier under load)")
    print("% peak = achieved GFLOP/s / the same dtype's matmul peak above; above 100% means the load changed between the two, or")
    print("FlopCounterMode miscounted (the official code's sparse graph products are counted as dense)")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
