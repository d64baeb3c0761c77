"""Tables laid out like the paper's tables 2-4, from run directories' results.json."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

PAPER_COLUMNS = ("MRR", "NDCG@5", "NDCG@10")


def load_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results (is the run finished?)")
    return json.loads(path.read_text())


def run_seconds(run_dir: str | Path, res: dict) -> float:
    """Wall seconds a run took over all its resumes: results.json's ``wall_seconds``, or for runs
    written before it was recorded, the per-epoch train + validation seconds of metrics.jsonl."""
    if "wall_seconds" in res:
        return float(res["wall_seconds"])
    log = Path(run_dir) / "metrics.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []
    return float(sum(r["train_seconds"] + r["eval_seconds"] for r in lines))


def run_threads(run_dir: str | Path) -> str:
    """torch threads of a run's last invocation, from its config.yaml ("all" for torch's default):
    runs of one comparison may have been trained under different settings, and their seconds say
    so only next to this."""
    path = Path(run_dir) / "config.yaml"
    threads = OmegaConf.select(OmegaConf.load(path), "train.threads", default=0) if path.exists() else 0
    return str(threads) if threads else "all"


def cost_rows(runs: dict[str, tuple[Path, dict]]) -> tuple[list[str], list[list]]:
    """header, rows: what each run cost, plus a total row (label -> (run dir, results))."""
    header = ["model", "epochs (best)", "threads", "train s/epoch", "bf16", "peak RSS MiB", "wall s"]
    rows, total = [], 0.0
    for label, (run_dir, res) in runs.items():
        wall = run_seconds(run_dir, res)
        total += wall
        epochs = f"{res['epochs_run']} ({res['best_epoch']})" if res["epochs_run"] else "-"
        bf16 = "yes" if res.get("train_bf16") else "no"
        rows.append([label, epochs, run_threads(run_dir), res["median_epoch_seconds"], bf16, res["peak_rss_mib"], wall])
    rows.append(["total", "", "", "", "", "", total])
    return header, rows


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
                cells.append(f"{vals.mean():.2f} ± {vals.std(ddof=1):.2f}" if len(vals) > 1 else f"{vals.mean():.2f}")  # sample std
        rows.append(cells)
    return header, rows
