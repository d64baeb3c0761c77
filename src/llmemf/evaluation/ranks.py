"""Per-user test ranks of a finished run on disk (``ranks.npz``), for paired significance and warm/cold splits.

``EvalResult.ranks`` holds each evaluated user's 1-based target rank per domain, in the order of the
evaluator's rows (the split's rows whose target lies in that domain). This module writes them next
to results.json, small enough to keep in the repository (results/), with what makes them
comparable across runs and readable without the dataset:

    <split>__<domain>__users_sha        sha256 of the user ids in row order (two runs pair up iff equal)
    <split>__<domain>__targets          global target item ids (int32)
    <split>__<domain>__cold             target never occurs in the training split (bool)
    <split>__<protocol>__<domain>__ranks 1-based ranks (float32: exact for integers and halves below 2^23)

Two runs of one dataset and protocol rank the same users' targets against the same candidates
(the c2dsr negatives are drawn once from eval.seed), so their rank arrays pair up user by user.
"""

from __future__ import annotations

import hashlib
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
        users = bundle.dataset.splits[split]["user"].astype(str).to_numpy()
        for d, name in enumerate(bundle.dataset.domain_names):
            rows = np.nonzero(data.target_domain == d)[0]  # the evaluator's row order
            targets = data.target[rows]
            arrays[f"{split}__{name}__users_sha"] = np.array(hashlib.sha256("\n".join(users[rows]).encode()).hexdigest())
            arrays[f"{split}__{name}__targets"] = targets.astype(np.int32)
            arrays[f"{split}__{name}__cold"] = ~np.isin(targets, warm)
            for protocol, res in by_protocol.items():
                ranks = np.asarray(res.ranks.get(name, np.zeros(0)), dtype=np.float32)
                if len(ranks) != len(rows):
                    raise ValueError(f"{split}/{protocol}/{name}: {len(ranks)} ranks for {len(rows)} users")
                arrays[f"{split}__{protocol}__{name}__ranks"] = ranks
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path = Path(run_dir) / RANKS_FILE
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_ranks(run_dir: str | Path) -> dict[tuple[str, str, str], dict[str, np.ndarray]] | None:
    """``{(split, protocol, domain): {"users_sha", "targets", "cold", "ranks"}}``, or None without a ranks file."""
    path = Path(run_dir) / RANKS_FILE
    if not path.is_file():
        return None
    shared: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    ranks: dict[tuple[str, str, str], np.ndarray] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            parts = key.split("__")
            if len(parts) == 4:
                ranks[tuple(parts[:3])] = z[key].astype(np.float64)
            else:
                shared.setdefault((parts[0], parts[1]), {})[parts[2]] = z[key]
    return {(s, p, d): {**shared[(s, d)], "ranks": r} for (s, p, d), r in ranks.items()}
