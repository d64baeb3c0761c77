"""Cold start: MRR on test targets that never occur in training (cold_items.json of the synthetic
shop), for finished LLM-EMF runs, with the untrained ID vectors of cold items ("learned", the paper)
vs a neutral ID score ("neutral": the user's mean ID score over warm items, so image/text rank them)
vs ID vectors predicted from image/text features by ridge regression on the warm items ("content").

    .venv/bin/python benchmarks/bench_cold_start.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from llmemf.evaluation.protocols import Evaluator
from llmemf.models.llmemf import COLD_ID_MODES
from llmemf.training.trainer import load_run


def main() -> None:
    print(f"{'run':48s} {'cold_id':8s} {'cold-target MRR % (per domain)':34s} {'all-target MRR %':20s}")
    for run in map(Path, sys.argv[1:]):
        cfg, bundle, model = load_run(run)
        cold = np.asarray(json.loads((Path(cfg.dataset) / "cold_items.json").read_text())["items"])
        ev = Evaluator(bundle, "test", "full")
        for mode in COLD_ID_MODES:
            if mode == "content" and model.frozen_keys.shape[1] == 0:
                continue  # an ID-only run has no features to predict ID vectors from
            model.set_cold_id(mode)
            res = ev.evaluate(model)
            sub = ev.restrict(res, cold)
            fmt = lambda r: " / ".join(f"{100 * m['MRR']:.2f}" for m in r.metrics.values())  # noqa: E731
            print(f"{run.parent.name[:48]:48s} {mode:8s} {fmt(sub) + f' (n={sum(sub.counts.values())})':34s} {fmt(res):20s}")


if __name__ == "__main__":
    main()
