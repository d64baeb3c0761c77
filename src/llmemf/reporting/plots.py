"""Training curves and the ablation chart as PNG (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curves(run_dirs: dict[str, Path], out: Path) -> Path:
    """Loss and validation MRR per epoch, one line per run."""
    fig, (ax_loss, ax_mrr) = plt.subplots(1, 2, figsize=(11, 4))
    for label, run in run_dirs.items():
        log = Path(run) / "metrics.jsonl"
        if not log.exists():
            continue
        recs = [json.loads(line) for line in log.read_text().splitlines() if line]
        epochs = [r["epoch"] for r in recs]
        ax_loss.plot(epochs, [r["loss"] for r in recs], marker="o", label=label)
        ax_mrr.plot(epochs, [100 * r["valid_mrr"] for r in recs], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_mrr.set(xlabel="epoch", ylabel="validation MRR (%, mean of domains)", title="validation MRR")
    ax_mrr.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def ablation_chart(labels: list[str], per_domain: dict[str, list[tuple[float, float]]], out: Path, title: str) -> Path:
    """Grouped bars: configuration x domain, height = mean MRR (%), error bar = std."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(10, 4))
    x = np.arange(len(labels))
    width = 0.8 / max(len(per_domain), 1)
    for k, (domain, vals) in enumerate(per_domain.items()):
        means = [v[0] for v in vals]
        stds = [v[1] for v in vals]
        ax.bar(x + k * width, means, width, yerr=stds, capsize=3, label=domain)
    ax.set_xticks(x + width * (len(per_domain) - 1) / 2, labels, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="test MRR (%)", title=title)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def sensitivity_plot(curves: dict[str, list[tuple[float, dict[str, float]]]], out: Path, title: str) -> Path:
    """Figure 5's layout: one panel per parameter, validation MRR (%) per domain against its value."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.4), squeeze=False)
    for ax, (param, points) in zip(axes[0], curves.items(), strict=True):
        xs = [x for x, _ in points]
        for domain in points[0][1]:
            ax.plot(xs, [ys[domain] for _, ys in points], marker="o", label=domain)
        ax.set(xlabel=param.replace("model.", "").replace("+", " = "), ylabel="validation MRR (%)")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
