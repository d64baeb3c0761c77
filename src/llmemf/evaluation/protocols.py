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

Cost. ``evaluate_together`` runs several protocols of one split in one pass over its users: each
batch is encoded and scored over its whole target domain once, and where the model's candidate
scores are columns of those scores anyway (``Recommender.candidate_scores_are_full_columns``), the
c2dsr protocol picks its candidates' columns instead of scoring again. Users are batched in order of
history length (ranks come back in the split's row order). A rank is one comparison
pass over a row per count its ties policy needs (pessimistic and strict: one; average: two).
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


def _count(above: torch.Tensor) -> torch.Tensor:
    """(B,) number of True per row of a (B, C) comparison."""
    return above.sum(1, dtype=torch.int32)


def _rank(competitors: torch.Tensor, target: torch.Tensor, ties: str, target_among: bool) -> torch.Tensor:
    """1-based rank (float64) of ``target`` (B, 1) against ``competitors`` (B, C) scores, which include the
    target's own score once if ``target_among``. Ties with the target count as ``ties`` says."""
    if ties == "strict":
        return 1.0 + _count(competitors > target).double()
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    higher_or_equal = _count(competitors >= target).double() - float(target_among)
    if ties == "pessimistic":
        return 1.0 + higher_or_equal
    higher = _count(competitors > target).double()
    return 1.0 + higher + (higher_or_equal - higher) / 2.0


def rank_sampled(scores: torch.Tensor, ties: str = "pessimistic") -> torch.Tensor:
    """scores (B, 1 + K): column 0 is the target, the rest its sampled negatives."""
    return _rank(scores[:, 1:], scores[:, :1], ties, target_among=False)


def rank_full(scores: torch.Tensor, target_local: torch.Tensor, ties: str = "pessimistic") -> torch.Tensor:
    """scores (B, n_domain_items); target_local (B,) the target's index within its domain."""
    return _rank(scores, scores.gather(1, target_local[:, None]), ties, target_among=True)


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

    def evaluate(self, model: torch.nn.Module, device: str = "cpu", autocast_bf16: bool = False, world: World = SINGLE) -> EvalResult:
        """Rank every user's target (``evaluate_together`` with this protocol alone)."""
        return evaluate_together([self], model, device, autocast_bf16, world)[0]

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


def _by_length(data, rows: np.ndarray) -> np.ndarray:
    """The order (indices into ``rows``) that sorts them by merged-history length, stably. Batches of
    similar lengths are trimmed to short widths (``SplitTensors.batch``), so the encoders skip most of
    the left padding that row order would give every batch; ranks are put back in row order after."""
    return np.argsort(data.xy_len[rows], kind="stable")


def _has_nan(scores: torch.Tensor) -> bool:
    # A row's max is NaN iff the row holds one: a reduction, cheaper than a (B, N) mask.
    return bool(torch.isnan(scores.amax(1)).any())


@torch.inference_mode()
def evaluate_together(
    evaluators: list[Evaluator], model: torch.nn.Module, device: str = "cpu", autocast_bf16: bool = False, world: World = SINGLE
) -> list[EvalResult]:
    """Each evaluator's result, from one pass over the users of their common split and batching: a
    batch is scored over its whole target domain once if any protocol is "full", and a c2dsr
    protocol picks its candidates from those scores where the model's own candidate scores are
    those columns (the results are then those of evaluating each alone, bit for bit). Each result's
    ``seconds`` is the whole pass's. Distributed: rank r scores batches r, r + size, ... of the
    one-process batching (the same rows in the same batches, so the same scores), then every rank
    gathers all ranks' per-user ranks and computes the metrics of the whole split."""
    first = evaluators[0]
    if any(ev.bundle is not first.bundle or (ev.split, ev.batch_size) != (first.split, first.batch_size) for ev in evaluators):
        raise ValueError("evaluate_together needs evaluators of one bundle, split and batch size")
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    bundle, data = first.bundle, first.bundle.splits[first.split]
    device_type = torch.device(device).type
    any_full = any(ev.protocol == "full" for ev in evaluators)
    columns_of = getattr(model, "candidate_scores_are_full_columns", lambda n, d: False)
    mine: list[dict[int, list[tuple[int, np.ndarray]]]] = [{d: [] for d in first.rows_by_domain} for _ in evaluators]
    order = {d: _by_length(data, rows) for d, rows in first.rows_by_domain.items()}
    for d, rows in first.rows_by_domain.items():
        name = bundle.dataset.domain_names[d]
        lo, _ = bundle.domain_range(d)
        rows = rows[order[d]]
        for k, i in enumerate(range(0, len(rows), first.batch_size)):
            if k % world.size != world.rank:
                continue
            batch = data.batch(rows[i : i + first.batch_size]).to(device)
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast_bf16 and device_type in ("cpu", "cuda")):
                full = model.scores(batch, d, None).float() if any_full else None
                if full is not None and _has_nan(full):
                    raise FloatingPointError(f"{type(model).__name__} produced NaN scores on {first.split}/{name}")
                for ev, out in zip(evaluators, mine, strict=True):
                    if ev.protocol == "full":
                        r = rank_full(full, batch.target - lo, ev.ties)
                    else:
                        cand = torch.from_numpy(ev.candidates[d][order[d][i : i + first.batch_size]]).to(device)
                        if full is not None and columns_of(cand.shape[1], d):
                            scores = full.gather(1, cand - lo)
                        else:
                            scores = model.scores(batch, d, cand).float()
                            if _has_nan(scores):
                                raise FloatingPointError(f"{type(model).__name__} produced NaN scores on {first.split}/{name}")
                        r = rank_sampled(scores, ev.ties)
                    out[d].append((k, r.cpu().numpy()))
    gathered = world.all_gather(mine) if world.distributed else [mine]
    seconds = time.perf_counter() - start
    results = []
    for e, ev in enumerate(evaluators):
        metrics, counts, all_ranks = {}, {}, {}
        for d in ev.rows_by_domain:
            name = bundle.dataset.domain_names[d]
            ranks = [r for _, r in sorted((kr for part in gathered for kr in part[e][d]), key=lambda kr: kr[0])]
            in_order = np.zeros(len(order[d]))  # back from length order to the split's row order
            in_order[order[d]] = np.concatenate(ranks) if ranks else np.zeros(0)
            all_ranks[name] = in_order
            metrics[name] = ranking_metrics(all_ranks[name])
            counts[name] = len(all_ranks[name])
        results.append(EvalResult(ev.protocol, ev.split, metrics, counts, seconds, all_ranks))
    model.train(was_training)
    return results


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
