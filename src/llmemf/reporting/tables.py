"""Tables laid out like the paper's tables 2-4, from run directories' results.json."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

PAPER_COLUMNS = ("MRR", "NDCG@5", "NDCG@10")


def load_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results (is the run finished?)")
    return json.loads(path.read_text())


def paper_rows(runs: dict[str, dict], split: str = "test", protocol: str = "c2dsr", columns=PAPER_COLUMNS) -> tuple[list[str], list[list]]:
    """header, rows: one row per run label, metrics in percent, domains side by side."""
    first = next(iter(runs.values()))
    domains = list(first[split][protocol]["metrics"])
    header = ["model"] + [f"{d} {c}" for d in domains for c in columns]
    rows = []
    for label, res in runs.items():
        m = res[split][protocol]["metrics"]
        rows.append([label] + [100 * m[d][c] for d in domains for c in columns])
    return header, rows


def to_markdown(header: list[str], rows: list[list], caption: str = "") -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else f"{c:.2f}" for c in row) + " |")
    return "\n".join(lines + ([caption] if caption else []))


def to_csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for row in rows:
        w.writerow([c if isinstance(c, str) else f"{c:.4f}" for c in row])
    return buf.getvalue()


def mean_std_rows(groups: dict[str, list[dict]], split: str, protocol: str, columns=("MRR",)) -> tuple[list[str], list[list[str]]]:
    """Ablation-style rows: label -> several seeds' results, printed as mean ± std."""
    first = next(iter(groups.values()))[0]
    domains = list(first[split][protocol]["metrics"])
    header = ["configuration", "seeds"] + [f"{d} {c}" for d in domains for c in columns]
    rows = []
    for label, results in groups.items():
        cells = [label, str(len(results))]
        for d in domains:
            for c in columns:
                vals = np.array([100 * r[split][protocol]["metrics"][d][c] for r in results])
                cells.append(f"{vals.mean():.2f} ± {vals.std():.2f}" if len(vals) > 1 else f"{vals.mean():.2f}")
        rows.append(cells)
    return header, rows
