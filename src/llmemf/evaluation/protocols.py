"""The two evaluation protocols, implemented once and used by every model.

c2dsr  The paper's protocol: the target plus 999 negatives drawn uniformly *with replacement*
       from the target's domain, excluding the target, drawn once per evaluation set from a fixed
       seed. rank = 1 + #negatives scoring above the target.
full   Rank against every item of the target domain.

Ties. The c2dsr rule as written counts only negatives *strictly* above the target, so a model
that gives every item the same score would rank every target first (MRR 1.0). By default llmemf
counts a tie against the model (``ties="pessimistic"``) in both protocols; ``"average"`` counts
half of the ties, ``"strict"`` reproduces the literal rule. With a non-degenerate model, ties are
vanishingly rare and the three coincide; with Pop (many items of equal count) they do not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from llmemf.data.batching import DataBundle
from llmemf.distributed import SINGLE, World
from llmemf.evaluation.metrics import METRIC_NAMES, ranking_metrics

PROTOCOLS = ("c2dsr", "full")
TIES = ("pessimistic", "average", "strict")


def ranks_from_counts(higher: torch.Tensor, equal: torch.Tensor, ties: str) -> torch.Tensor:
    """1-based rank from the number of competitors scoring above / equal to the target."""
    higher, equal = higher.double(), equal.double()
    if ties == "pessimistic":
        return 1.0 + higher + equal
    if ties == "average":
        return 1.0 + higher + equal / 2.0
    if ties == "strict":
        return 1.0 + higher
    raise ValueError(f"ties must be one of {TIES}, got {ties!r}")


def rank_sampled(scores: torch.Tensor, ties: str = "pessimistic") -> torch.Tensor:
    """scores (B, 1 + K): column 0 is the target, the rest its sampled negatives."""
    target = scores[:, :1]
    negatives = scores[:, 1:]
    return ranks_from_counts((negatives > target).sum(1), (negatives == target).sum(1), ties)


def rank_full(scores: torch.Tensor, target_local: torch.Tensor, ties: str = "pessimistic") -> torch.Tensor:
    """scores (B, n_domain_items); target_local (B,) the target's index within its domain."""
    target = scores.gather(1, target_local[:, None])
    return ranks_from_counts((scores > target).sum(1), (scores == target).sum(1) - 1, ties)


def sample_negatives(targets_local: np.ndarray, n_domain: int, k: int, seed: int) -> np.ndarray:
    """(N, k) local ids drawn uniformly with replacement from the domain minus each row's target."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_domain - 1, size=(len(targets_local), k))
    return draws + (draws >= targets_local[:, None])  # skip over the target


@dataclass
class EvalResult:
    protocol: str
    split: str
    metrics: dict[str, dict[str, float]]  # domain name -> metric -> value in [0, 1]
    counts: dict[str, int]  # domain name -> number of evaluated users
    seconds: float = 0.0
    ranks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def mean_mrr(self) -> float:
        return float(np.mean([m["MRR"] for m in self.metrics.values()]))

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "split": self.split, "metrics": self.metrics, "counts": self.counts, "seconds": self.seconds}


class Evaluator:
    """Evaluates any model exposing ``scores(batch, domain, candidates)`` on one split."""

    def __init__(
        self,
        bundle: DataBundle,
        split: str = "valid",
        protocol: str = "c2dsr",
        n_negatives: int = 999,
        seed: int = 2022,
        ties: str = "pessimistic",
        batch_size: int = 512,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if ties not in TIES:
            raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
        self.bundle, self.split, self.protocol, self.ties, self.batch_size = bundle, split, protocol, ties, batch_size
        data = bundle.splits[split]
        self.rows_by_domain: dict[int, np.ndarray] = {}
        self.candidates: dict[int, np.ndarray] = {}
        for d in range(2):
            rows = np.nonzero(data.target_domain == d)[0]
            self.rows_by_domain[d] = rows
            lo, hi = bundle.domain_range(d)
            if protocol == "c2dsr" and len(rows):
                t_local = data.target[rows] - lo
                # A different stream per domain, fixed by (seed, domain): the set never changes.
                neg = sample_negatives(t_local, hi - lo, n_negatives, seed + d)
                self.candidates[d] = np.concatenate([data.target[rows, None], neg + lo], axis=1)

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, device: str = "cpu", autocast_bf16: bool = False, world: World = SINGLE) -> EvalResult:
        """Rank every user's target. Distributed: rank r scores batches r, r + size, ... of the
        one-process batching (the same rows in the same batches, so the same scores), then every
        rank gathers all ranks' per-user ranks and computes the metrics of the whole split."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        data = self.bundle.splits[self.split]
        device_type = torch.device(device).type
        mine: dict[int, list[tuple[int, np.ndarray]]] = {}
        for d, rows in self.rows_by_domain.items():
            name = self.bundle.dataset.domain_names[d]
            lo, _ = self.bundle.domain_range(d)
            mine[d] = []
            for k, i in enumerate(range(0, len(rows), self.batch_size)):
                if k % world.size != world.rank:
                    continue
                sel = rows[i : i + self.batch_size]
                batch = data.batch(sel).to(device)
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast_bf16 and device_type in ("cpu", "cuda")):
                    if self.protocol == "c2dsr":
                        cand = torch.from_numpy(self.candidates[d][i : i + self.batch_size]).to(device)
                        scores = model.scores(batch, d, cand).float()
                        r = rank_sampled(scores, self.ties)
                    else:
                        scores = model.scores(batch, d, None).float()
                        r = rank_full(scores, batch.target - lo, self.ties)
                if torch.isnan(scores).any():
                    raise FloatingPointError(f"{type(model).__name__} produced NaN scores on {self.split}/{name}")
                mine[d].append((k, r.cpu().numpy()))
        gathered = world.all_gather(mine) if world.distributed else [mine]
        metrics, counts, all_ranks = {}, {}, {}
        for d in self.rows_by_domain:
            name = self.bundle.dataset.domain_names[d]
            ranks = [r for _, r in sorted((kr for part in gathered for kr in part[d]), key=lambda kr: kr[0])]
            ranks_arr = np.concatenate(ranks) if ranks else np.zeros(0)
            metrics[name] = ranking_metrics(ranks_arr)
            counts[name] = len(ranks_arr)
            all_ranks[name] = ranks_arr
        model.train(was_training)
        return EvalResult(self.protocol, self.split, metrics, counts, time.perf_counter() - start, all_ranks)

    def restrict(self, result: EvalResult, target_items: np.ndarray) -> EvalResult:
        """The same result over only the users whose target is in ``target_items`` (e.g. cold-start items)."""
        data = self.bundle.splits[self.split]
        metrics, counts, ranks = {}, {}, {}
        for d, rows in self.rows_by_domain.items():
            name = self.bundle.dataset.domain_names[d]
            keep = np.isin(data.target[rows], target_items)
            ranks[name] = result.ranks[name][keep]
            metrics[name] = ranking_metrics(ranks[name])
            counts[name] = int(keep.sum())
        return EvalResult(result.protocol, result.split, metrics, counts, result.seconds, ranks)


def format_table(results: list[tuple[str, EvalResult]], columns: tuple[str, ...] = METRIC_NAMES) -> str:
    """A Markdown table, one row per (label, result), metrics in percent, per target domain."""
    if not results:
        return ""
    domains = list(results[0][1].metrics)
    header = ["model"] + [f"{d} {c}" for d in domains for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, res in results:
        cells = [label] + [f"{100 * res.metrics[d][c]:.2f}" for d in domains for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    proto = results[0][1]
    note = f"({proto.split} split, {proto.protocol} protocol, metrics in %; n = " + ", ".join(f"{d}: {n}" for d, n in proto.counts.items()) + ")"
    return "\n".join(lines + [note])
