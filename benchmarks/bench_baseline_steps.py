"""Seconds per training step of the rebuilt baselines at their configs' sizes, and the epoch time that implies.

    .venv/bin/python benchmarks/bench_baseline_steps.py /tmp/ds_Food-Kitchen --threads 1 --steps 4

Each model is built from configs/models/NAME.yaml (NAME=CONFIG pairs pick another config, e.g.
mifn=mifn_small), then trains ``--steps`` steps (forward, backward, Adam) on length-grouped shuffled
batches of its config's batch size; prints the median step time over all but the first step and
median x (training users / batch size) as an epoch estimate. Say next to any number whether the
machine was shared.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from llmemf.config import load_config
from llmemf.data.batching import DataBundle
from llmemf.data.dataset import Dataset
from llmemf.models.base import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--models", default="gru4rec,sasrec,srgnn,pinet,psjnet,mifn,mifn=mifn_small")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = DataBundle(Dataset.load(args.dataset), 15)
    n_users = len(bundle.train)
    print(f"| model (config) | batch | s / step (median of {args.steps - 1}) | est. min / epoch |\n|---|---|---|---|")
    for spec in args.models.split(","):
        name, _, conf = spec.partition("=")
        path = CONFIGS / f"{conf or name}.yaml"
        cfg = load_config(path if path.exists() else None, [f"model.name={name}"])
        torch.manual_seed(0)
        model = build_model(cfg.model_name, cfg.model_params, bundle).train()
        opt = torch.optim.Adam(model.parameters(), cfg.train.lr)
        batches = bundle.train.iter_batches(cfg.train.batch_size, shuffle=True, seed=0, by_length=True)
        times = []
        for _ in range(args.steps):
            batch = next(batches)
            t0 = time.perf_counter()
            loss = model.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        med = float(np.median(times[1:]))
        print(f"| {name} ({path.stem}) | {cfg.train.batch_size} | {med:.2f} | {med * n_users / cfg.train.batch_size / 60:.1f} |", flush=True)


if __name__ == "__main__":
    main()
