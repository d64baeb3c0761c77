"""Per-user ranks of a finished run on disk (``ranks.npz``), for paired significance and warm/cold splits.

``EvalResult.ranks`` holds each evaluated user's 1-based target rank per domain, in the order of the
evaluator's rows (the split's rows whose target lies in that domain). This module writes them next
to results.json with what makes them comparable across runs and readable without the dataset:

    <split>__<protocol>__<domain>__users    user ids as in the dataset (str)
    <split>__<protocol>__<domain>__targets  global target item ids (int64)
    <split>__<protocol>__<domain>__ranks    1-based ranks (float64: ties may count half)
    <split>__<protocol>__<domain>__cold     target never occurs in the training split (bool)

Two runs of one dataset and protocol rank the same users' targets against the same candidates
(the c2dsr negatives are drawn once from eval.seed), so their rank arrays pair up user by user.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from llmemf.data.batching import DataBundle
from llmemf.io import atomic_write_bytes

RANKS_FILE = "ranks.npz"


def training_items(bundle: DataBundle) -> np.ndarray:
    """Every global item id that occurs in a training sequence (a target outside it is cold)."""
    seqs = bundle.dataset.splits["train"]["items"]
    return np.unique(np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])) if len(seqs) else np.zeros(0, np.int64)


def save_ranks(run_dir: str | Path, results: dict[str, dict], bundle: DataBundle) -> Path:
    """Write ``run_dir/ranks.npz`` from ``{split: {protocol: EvalResult}}`` (atomically)."""
    warm = training_items(bundle)
    arrays: dict[str, np.ndarray] = {}
    for split, by_protocol in results.items():
        data = bundle.splits[split]
        users = np.asarray(bundle.dataset.splits[split]["user"].astype(str).to_numpy(), dtype=str)
        for protocol, res in by_protocol.items():
            for d, name in enumerate(bundle.dataset.domain_names):
                rows = np.nonzero(data.target_domain == d)[0]  # the evaluator's row order
                ranks = np.asarray(res.ranks.get(name, np.zeros(0)), dtype=np.float64)
                if len(ranks) != len(rows):
                    raise ValueError(f"{split}/{protocol}/{name}: {len(ranks)} ranks for {len(rows)} users")
                key = f"{split}__{protocol}__{name}"
                targets = data.target[rows]
                arrays[f"{key}__users"] = users[rows]
                arrays[f"{key}__targets"] = targets
                arrays[f"{key}__ranks"] = ranks
                arrays[f"{key}__cold"] = ~np.isin(targets, warm)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path = Path(run_dir) / RANKS_FILE
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_ranks(run_dir: str | Path) -> dict[tuple[str, str, str], dict[str, np.ndarray]] | None:
    """``{(split, protocol, domain): {"users", "targets", "ranks", "cold"}}``, or None without a ranks file."""
    path = Path(run_dir) / RANKS_FILE
    if not path.is_file():
        return None
    out: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            split, protocol, domain, field = key.split("__")
            out.setdefault((split, protocol, domain), {})[field] = z[key]
    return out
