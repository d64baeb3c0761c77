"""docs/results.md and its CSVs, generated from an experiment spec's collected runs.

``collect`` copies each finished run's small files (config.yaml, results.json, metrics.jsonl,
ranks.npz; never checkpoints) and the spec's plan.json / selection.json from its run directory into
``results/<scenario>/``, so that ``build_report`` needs nothing but the repository. Every number in
the report is read from those files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llmemf.errors import UserError
from llmemf.evaluation.ranks import load_ranks
from llmemf.io import atomic_write_bytes
from llmemf.reporting.significance import paired_comparison
from llmemf.reporting.tables import PAPER_COLUMNS, mean_std_rows, run_seconds, to_csv, to_markdown
from llmemf.training.rundir import SMALL_FILES

PROTOCOLS = ("c2dsr", "full")
TEST_COLUMNS = ("paired t p", "bootstrap 95% CI of ΔMRR", "Wilcoxon p", "users")
COLD = "A target is cold when it never occurs in the training split."


def cold_note(protocol: str, n_negatives: int) -> str:
    """What a cold target's MRR means under the protocol: the last place and random ranking among its candidates."""
    if protocol != "c2dsr":
        return COLD
    n = n_negatives + 1
    random = sum(1.0 / k for k in range(1, n + 1)) / n  # the mean of 1/rank over ranks 1..n
    return (
        f"{COLD} Ranked last of its {n:,} candidates ({n_negatives:,} sampled negatives) a target scores MRR "
        f"{100 / n:.2g}%, at random about {100 * random:.2g}%: a model that met an item only as a negative (or, like Pop, "
        "never) tends to rank it near the bottom."
    )


DATASET_FILE = "dataset.json"  # in results/<scenario>/: the content hash and per-domain content coverage of the data
CONTENT = {"title": "a title", "image": "an image", "llm_text": "LLM text"}


def describe_dataset(dataset: Path) -> dict:
    """The scenario's data as the report states it: content hash, and per domain its items and how many of them
    carry each kind of content (a title, an image, LLM text)."""
    from llmemf.data.dataset import Dataset

    ds = Dataset.load(dataset)
    domains = {}
    for i, d in enumerate(ds.manifest.domains):
        items = ds.items[ds.items["domain"] == i]
        present = {c: int((items[c].notna() & (items[c].astype(str).str.len() > 0)).sum()) for c in CONTENT if c in items}
        domains[d.name] = {"items": len(items), **present}
    return {"content_hash": ds.manifest.content_hash, "domains": domains}


def coverage_sentence(described: dict) -> str:
    """'Items with a title: Food 29% (...), Kitchen 64% (...).' per kind of content some domain has."""
    out = []
    for c, words in CONTENT.items():
        if any(d.get(c) for d in described["domains"].values()):
            shares = [(name, d.get(c, 0), d["items"]) for name, d in described["domains"].items()]
            per = ", ".join(f"{name} {100 * k / max(n, 1):.0f}% ({k:,} of {n:,})" for name, k, n in shares)
            out.append(f"Items with {words}: {per}.")
    return " ".join(out) or "No item has a title, an image or LLM text."


def collect(runs_root: Path, dest: Path, dataset: Path | None = None) -> int:
    """Copy the spec's plan and every finished run's small files, and ``dataset``'s description (where the
    dataset is on this machine); returns how many runs were copied.

    The plan is merged, not replaced: a spec resumed on a new machine writes a plan of the runs it has
    reached so far, and the runs collected on earlier machines (their files already in ``dest``) keep
    their records until the spec reaches them again."""
    if not (runs_root / "plan.json").is_file():
        raise UserError(f"{runs_root}: no plan.json; run `llmemf compare --spec FILE` first (it writes one when it finishes)")
    plan = json.loads((runs_root / "plan.json").read_text())
    reached = {r["run"] for r in plan}
    if (dest / "plan.json").is_file():
        earlier = json.loads((dest / "plan.json").read_text())
        plan += [r for r in earlier if r["run"] not in reached and (dest / r["run"] / "results.json").is_file()]
    if dataset is not None and (dataset / "manifest.json").is_file():
        atomic_write_bytes(dest / DATASET_FILE, (json.dumps(describe_dataset(dataset), indent=2) + "\n").encode())
    for src in runs_root.iterdir():  # the spec's own files: selection.json, estimate.md, strongest.json
        if src.is_file() and not src.name.startswith(".") and src.name != "plan.json":
            atomic_write_bytes(dest / src.name, src.read_bytes())
    n = 0
    for run in sorted(reached):
        src = runs_root / run
        if not (src / "results.json").is_file():
            continue
        # the run's and each earlier stage's it keeps in a subfolder (Tri-CDR's pretrain/): a run is restored whole
        for stage in [Path(), *(d.relative_to(src) for d in sorted(src.iterdir()) if (d / "results.json").is_file())]:
            for name in SMALL_FILES:
                if (src / stage / name).is_file():
                    atomic_write_bytes(dest / run / stage / name, (src / stage / name).read_bytes())
        n += 1
    atomic_write_bytes(dest / "plan.json", (json.dumps(plan, indent=2, default=str) + "\n").encode())  # last: it indexes the files above
    return n


def _features(run_dir: Path) -> str:
    """What a run's model read, e.g. "ID + titles (PCA 128)", from its config with every field resolved."""
    from llmemf.models.base import model_class
    from llmemf.training.rundir import load_run_config

    cfg = load_run_config(run_dir / "config.yaml")
    if cfg.model_name != "llmemf":
        return "ID"
    model = model_class("llmemf").Config(**cfg.model_params)
    parts = ["ID"]
    if "txt" in model.modalities:
        parts.append({"txt_title": "titles", "txt_llm": "titles + LLM text"}.get(model.txt_feature, model.txt_feature))
    if "img" in model.modalities:
        parts.append("images")
    width = f" (PCA {model.frozen_width})" if model.frozen_width and len(parts) > 1 else ""
    return " + ".join(parts) + width


def _point(point: dict) -> str:
    return ", ".join(f"{k.replace('model.', '').replace('train.', '')}={v}" for k, v in point.items()) or "-"


class Collected:
    """One scenario's collected runs, grouped the way the tables need them, checked to be comparable: one
    dataset (content hash) and one evaluation (negatives, their seed, ties) for every run, and one
    configuration, up to its seed, for every run of a table row."""

    def __init__(self, root: Path, order: list[str] | None = None, seeds: dict[str, list[int]] | None = None):
        if not (root / "plan.json").is_file():
            raise UserError(f"{root}: no plan.json; collect the runs first (`llmemf report --spec FILE --collect`)")
        self.root = root
        self.order = order or []  # row labels in the spec's order (the plan runs multi-seed rows first)
        self.seeds = seeds  # row label -> the seeds the spec plans for it; None: every selected run counts
        self.plan = json.loads((root / "plan.json").read_text())
        self.results: dict[str, dict] = {}
        self._configs: dict[str, object] = {}
        for rec in self.plan:
            path = root / rec["run"] / "results.json"
            if path.is_file():
                self.results[rec["run"]] = json.loads(path.read_text())
        self.dataset_hash = self._one("dataset content hash", lambda run, res, cfg: res.get("dataset_content_hash") or "not recorded")
        evaluation = self._one("evaluation", lambda run, res, cfg: f"{cfg.eval.n_negatives} negatives, seed {cfg.eval.seed}, ties {cfg.eval.ties}")
        self.n_negatives = int(evaluation.split()[0]) if evaluation else 999
        self.outside: dict[str, list[str]] = {}  # row label -> selected runs the spec no longer plans (not in the tables)
        self._rows = self._main_rows()

    def config(self, run: str):
        """The run's config.yaml, read once (the identity checks, the row checks and the tables all ask)."""
        from llmemf.training.rundir import load_run_config

        if run not in self._configs:
            self._configs[run] = load_run_config(self.root / run / "config.yaml")
        return self._configs[run]

    def _one(self, what: str, key: Callable) -> str:
        """The one value of ``key(run, results, config)`` over every run, or a UserError naming two runs that differ."""
        seen: dict[str, str] = {}
        for run, res in self.results.items():
            seen.setdefault(key(run, res, self.config(run)), run)
        if len(seen) > 1:
            (a, ra), (b, rb) = list(seen.items())[:2]
            raise UserError(
                f"{self.root}: runs that differ in {what} cannot share tables: {ra} ({a}) and {rb} ({b}); "
                "remove the runs that do not belong to this scenario from it (and from its plan.json)"
            )
        return next(iter(seen), "")

    def _main_rows(self) -> dict[str, list[str]]:
        from llmemf.training.rundir import same_experiment

        rows: dict[str, list[str]] = {}
        for rec in self.plan:
            if rec["kind"] not in ("grid", "own_grid", "seed"):
                continue
            runs = rows.setdefault(rec["label"], [])
            if not rec["selected"] or rec["run"] not in self.results or rec["run"] in runs:
                continue
            planned = self.seeds is None or rec["seed"] in self.seeds.get(rec["label"], ())
            (runs if planned else self.outside.setdefault(rec["label"], [])).append(rec["run"])
        for label, runs in rows.items():
            first = self.config(runs[0]) if runs else None
            for run in runs[1:]:
                cfg = self.config(run)
                if not same_experiment(first, dataclasses.replace(cfg, seed=first.seed, dataset=first.dataset)):
                    raise UserError(
                        f"{self.root}: row {label!r} has runs of different configurations, {runs[0]} and {run}: a seed was run "
                        "at a point the row no longer selects; remove the stale run from it (and its plan.json record) or rerun it"
                    )
        rank = {label: i for i, label in enumerate(self.order)}
        return {k: v for k, v in sorted(rows.items(), key=lambda kv: rank.get(kv[0], len(rank))) if v}

    def main_rows(self) -> dict[str, list[str]]:
        """label -> run dirs of its selected point (one per planned seed), in the spec's row order."""
        return self._rows

    def record(self, run: str) -> dict:
        return next(r for r in self.plan if r["run"] == run)

    def kind_groups(self, kind: str) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for rec in self.plan:
            if rec["kind"] == kind and rec["run"] in self.results and rec["run"] not in groups.get(rec["label"], []):
                groups.setdefault(rec["label"], []).append(rec["run"])
        return groups


def _mean_std(values: list[float]) -> str:
    v = np.asarray(values)
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"  # the sample standard deviation


def main_table(c: Collected, protocol: str, reused: str) -> tuple[list[str], list[list]]:
    rows = c.main_rows()
    domains = list(c.results[next(iter(rows.values()))[0]]["test"][protocol]["metrics"])
    header = ["model", "features", "selected (validation)", "seeds"] + [f"{d} {m}" for d in domains for m in PAPER_COLUMNS]
    out = []
    for label, runs in rows.items():
        point = _point(c.record(runs[0])["point"]) + (f" ({reused})" if reused else "")
        cells = [label, _features(c.root / runs[0]), point, str(len(runs))]
        for d in domains:
            for m in PAPER_COLUMNS:
                cells.append(_mean_std([100 * c.results[r]["test"][protocol]["metrics"][d][m] for r in runs]))
        out.append(cells)
    return header, out


def _mean_rr(c: Collected, runs: list[str], protocol: str, domain: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-user reciprocal rank averaged over the runs' seeds, with the user ids and cold flags."""
    loaded = [load_ranks(c.root / r) for r in runs]
    if any(x is None for x in loaded):
        return None
    parts = [x[("test", protocol, domain)] for x in loaded]
    for p in parts[1:]:
        if not (p["users_sha"] == parts[0]["users_sha"] and np.array_equal(p["targets"], parts[0]["targets"])):
            raise UserError(f"{c.root}: runs {runs} ranked different test users; were they trained on one dataset?")
    return parts[0]["users_sha"], np.mean([1.0 / p["ranks"] for p in parts], axis=0), parts[0]["cold"]


def _mean_mrr(c: Collected, runs: list[str], protocol: str, domain: str) -> float:
    """Test MRR % of a row on one domain, mean over its seeds (the tables' number)."""
    return 100 * float(np.mean([c.results[r]["test"][protocol]["metrics"][domain]["MRR"] for r in runs]))


def significance_table(c: Collected, protocol: str, ours: str) -> tuple[list[str], list[list]]:
    """LLM-EMF (row ``ours``) against the baseline with the best mean test MRR, per domain."""
    rows = c.main_rows()
    if ours not in rows:
        return [], []
    baselines = {k: v for k, v in rows.items() if c.results[v[0]]["model"] != "llmemf"}
    domains = list(c.results[rows[ours][0]]["test"][protocol]["metrics"])
    header = ["domain", "best baseline", "seeds paired", f"{ours} MRR", "its MRR", "gain %", *TEST_COLUMNS]
    out = []
    for d in domains:
        if not baselines:
            break
        mrr = {k: _mean_mrr(c, v, protocol, d) for k, v in baselines.items()}
        best = max(mrr, key=mrr.get)
        cells = _paired_cells(c, (ours, rows[ours]), (best, baselines[best]), protocol, d)
        out.append([d, best, *(cells or ["", "", "", "", "no ranks.npz", "", "", ""])])
    return header, out


def paper_table(c: Collected, spec, ours: str) -> tuple[list[str], list[list]]:
    """Per domain the spec quotes the paper for: the paper's LLM-EMF MRR, its best other model and the gain,
    beside ours under the paper's (c2dsr) protocol: our LLM-EMF row, our best baseline and the gain (table
    means), and our run of the paper's competitor where that row has run."""
    rows = c.main_rows()
    baselines = {k: v for k, v in rows.items() if c.results[v[0]]["model"] != "llmemf"}
    header = ["domain", "paper: llmemf MRR", "paper: closest competitor", "its MRR", "paper's gain %"]
    header += [f"here: {ours} MRR", "here: best baseline", "its MRR", "gain %", "here: the paper's competitor"]
    out = []
    domains = list(c.results[rows[ours][0]]["test"]["c2dsr"]["metrics"])
    for d, numbers in spec.paper.items():
        if d not in domains:
            raise UserError(f"{spec.path}: paper.{d}: the runs have no domain {d!r} (theirs: {', '.join(domains)})")
        rival = max((m for m in numbers if m != "llmemf"), key=numbers.get)
        paper = [d, numbers["llmemf"], rival, numbers[rival], 100 * (numbers["llmemf"] / numbers[rival] - 1)]
        if not baselines:
            out.append([*paper, "", "no baseline run yet", "", "", ""])
            continue
        mrr = {k: _mean_mrr(c, v, "c2dsr", d) for k, v in baselines.items()}
        best = max(mrr, key=mrr.get)
        mine = _mean_mrr(c, rows[ours], "c2dsr", d)
        same = next((k for k, v in baselines.items() if k == rival or c.results[v[0]]["model"] == rival), None)
        here = f"{same}: {mrr[same]:.2f}" if same else f"{rival}: not run yet"
        out.append([*paper, mine, best, mrr[best], 100 * (mine / mrr[best] - 1), here])
    return header, out


def _paired_cells(c: Collected, a: tuple[str, list[str]], b: tuple[str, list[str]], protocol: str, domain: str) -> list | None:
    """[seeds paired, MRR a, MRR b, relative gain % of a over b, paired t p, bootstrap CI, Wilcoxon p, users] of rows a
    and b (label, runs) on one domain, from their per-user reciprocal ranks averaged over the seeds both ran;
    None where a run has no ranks.npz. The same seeds on both sides: a mean of three seeds' reciprocal ranks
    against one seed's is skewed towards the mean even between equal models, which the signed-rank test
    reads as a difference."""
    seed = {r: c.record(r)["seed"] for r in (*a[1], *b[1])}
    shared = sorted({seed[r] for r in a[1]} & {seed[r] for r in b[1]})
    if shared:
        runs_a, runs_b = [r for r in a[1] if seed[r] in shared], [r for r in b[1] if seed[r] in shared]
    else:  # no seed in common: as many runs of each
        k = min(len(a[1]), len(b[1]))
        runs_a, runs_b = a[1][:k], b[1][:k]
    ra, rb = _mean_rr(c, runs_a, protocol, domain), _mean_rr(c, runs_b, protocol, domain)
    if ra is None or rb is None:
        return None
    if ra[0] != rb[0]:
        raise UserError(f"{c.root}: {a[0]} and {b[0]} ranked different test users")
    paired = ", ".join(str(x) for x in shared) if shared else f"{len(runs_a)} runs each"
    if len(ra[1]) == 0:
        return [paired, "", "", "", "no test users", "", "", "0"]
    pc = paired_comparison(1.0 / ra[1], 1.0 / rb[1])
    ci = f"[{100 * pc.bootstrap_low:.2f}, {100 * pc.bootstrap_high:.2f}]"
    return [paired, 100 * pc.mrr_a, 100 * pc.mrr_b, 100 * pc.relative_gain, f"{pc.ttest_p:.2g}", ci, f"{pc.wilcoxon_p:.2g}", str(pc.n_users)]


def against_reference_table(c: Collected, protocol: str, reference: str) -> tuple[list[str], list[list]]:
    """Every other row against row ``reference``, per domain: for a spec whose rows are variants of one
    model (no baseline to beat), e.g. LLM-EMF's sampled softmax against its full softmax."""
    rows = c.main_rows()
    if reference not in rows:
        return [], []
    domains = list(c.results[rows[reference][0]]["test"][protocol]["metrics"])
    header = ["domain", "row", "seeds paired", "its MRR", f"{reference} MRR", "difference %", *TEST_COLUMNS]
    out = []
    for label, runs in rows.items():
        if label == reference:
            continue
        for d in domains:
            cells = _paired_cells(c, (label, runs), (reference, rows[reference]), protocol, d)
            out.append([d, label, *(cells or ["", "", "", "", "no ranks.npz", "", "", ""])])
    return header, out


def warm_cold_table(c: Collected, protocol: str) -> tuple[list[str], list[list]]:
    rows = c.main_rows()
    first = next(iter(rows.values()))[0]
    domains = list(c.results[first]["test"][protocol]["metrics"])
    header = ["model"] + [f"{d} {h}" for d in domains for h in ("warm n", "warm MRR", "cold n", "cold MRR")]
    out = []
    for label, runs in rows.items():
        cells: list = [label]
        for d in domains:
            got = _mean_rr(c, runs, protocol, d)
            if got is None:
                cells += ["", "no ranks.npz", "", ""]
                continue
            _, rr, cold = got
            for part in (~cold, cold):
                cells += [str(int(part.sum())), 100 * float(rr[part].mean()) if part.any() else "-"]
        out.append(cells)
    return header, out


def _stages_seconds(run_dir: Path, res: dict) -> float:
    """Wall seconds of a run and of each earlier stage it keeps in a subfolder (Tri-CDR's pretrain/)."""
    stages = [d for d in sorted(run_dir.iterdir()) if (d / "results.json").is_file()] if run_dir.is_dir() else []
    return run_seconds(run_dir, res) + sum(run_seconds(d, json.loads((d / "results.json").read_text())) for d in stages)


def cost_table(c: Collected) -> tuple[list[str], list[list]]:
    """Per row label / ablation row / sensitivity axis: runs, each run's best epoch of the epochs it ran (its
    last stage's), how many runs had their best epoch at the epoch cap (still improving when the cap stopped
    them), how many had it at the first of several (falling from the second epoch on), wall hours (every
    stage's); and the spec's total."""
    per: dict[str, list[tuple[float, str, bool, bool]]] = {}
    seen = set()
    for rec in c.plan:
        run, res = rec["run"], c.results.get(rec["run"])
        if res is None or run in seen:
            continue
        seen.add(run)
        label = rec["label"] if rec["kind"] not in ("ablation", "sensitivity") else f"{rec['kind']}: {rec['label']}"
        best, ran = res.get("best_epoch", -1), res.get("epochs_run", 0)  # -1 / 0: a model with no epochs (Pop, ItemKNN)
        at_cap = ran > 0 and best == c.config(run).train.epochs
        at_first = ran > 1 and best == 1
        per.setdefault(label, []).append((_stages_seconds(c.root / run, res), f"{best}/{ran}" if ran > 0 else "-", at_cap, at_first))

    def counts(v: list) -> list:
        return [str(sum(cap for _, _, cap, _ in v)), str(sum(first for *_, first in v)), sum(t for t, *_ in v) / 3600]

    rows = [[label, str(len(v)), ", ".join(e for _, e, *_ in v), *counts(v)] for label, v in per.items()]
    total = [x for v in per.values() for x in v]
    rows.append(["total", str(len(total)), "", *counts(total)])
    return ["row", "runs", "best epoch / epochs run", "best at the cap", "best at epoch 1", "wall hours"], rows


def code_summary(c: Collected) -> str:
    """Which llmemf code finished the spec's runs (results.json's ``code``), most runs first."""
    counts: dict[str, int] = {}
    for res in c.results.values():
        code = res.get("code")
        if code is None:
            key = "not recorded (finished before results.json recorded it)"
        elif code.get("commit"):
            key = f"commit {code['commit'][:7]}" + (" with uncommitted changes" if code.get("dirty") else "")
        else:
            key = f"llmemf {code.get('llmemf')} (no git checkout)"
        counts[key] = counts.get(key, 0) + 1
    return "Code that finished the runs: " + "; ".join(f"{k}: {n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])) + "."


def _write(tables_dir: Path, stem: str, header: list[str], rows: list[list]) -> None:
    atomic_write_bytes(tables_dir / f"{stem}.csv", to_csv(header, rows).encode())


def stale_reuse(spec, root: Path, c: Collected) -> str:
    """For a spec that reuses another's selection: the rows whose runs are at a point the other spec no longer
    selects (its collected selection.json beside ``root``, else its out's), as a sentence; "" when none."""
    from llmemf.experiments.spec import load_spec, selection_file

    if not spec.reuse_selection:
        return ""
    other, _ = load_spec(spec.reuse_selection)
    path = next((p for p in (root.parent / other.scenario / "selection.json", selection_file(other)) if p.is_file()), None)
    now = json.loads(path.read_text()) if path else {}
    changed = [
        f"{label} ran at {_point(c.record(runs[0])['point'])}, {other.scenario} now selects {_point(now[label]['point'])}"
        for label, runs in c.main_rows().items()
        if label in now and c.record(runs[0])["point"] != now[label]["point"]
    ]
    return "; ".join(changed)


def _value(cfg, key: str):
    """A config's value of ``train.lr`` / ``model.beta``-style keys."""
    section, _, name = key.partition(".")
    return cfg.model_params.get(name) if section == "model" else getattr(getattr(cfg, section), name, None)


def stale_sweeps(spec, c: Collected) -> str:
    """The ablation and sensitivity runs made around another point than the one their base row selects now
    (a grid rerun since, or a reused selection that changed), as a sentence; "" when none."""
    from llmemf.experiments.runner import ABLATIONS

    out = []
    for kind, part in (("ablation", spec.ablation), ("sensitivity", spec.sensitivity)):
        if part is None or part.base not in c.main_rows():
            continue
        base_run = c.main_rows()[part.base][0]
        base_cfg = c.config(base_run)
        keys = [k for key in c.record(base_run)["point"] for k in key.split("+")]
        defined = {**ABLATIONS, **part.extra} if kind == "ablation" else {}
        for label, runs in c.kind_groups(kind).items():
            own = {o.split("=", 1)[0] for o in defined[label]} if label in defined else set(label.split("+"))  # what the row itself sets
            for run in runs:
                cfg = c.config(run)
                moved = [k for k in keys if k not in own and _value(cfg, k) != _value(base_cfg, k)]
                if moved:
                    was = ", ".join(f"{k.split('.', 1)[1]}={_value(cfg, k)}" for k in moved)
                    now = ", ".join(f"{k.split('.', 1)[1]}={_value(base_cfg, k)}" for k in moved)
                    out.append(f"{kind} '{label}' ({run}) ran at {was}, {part.base} now selects {now}")
    return "; ".join(out)


def collected(spec, root: Path, chosen: list[str]) -> Collected:
    """A scenario's runs as the spec plans them: its rows in its order, each with the seeds it plans."""
    return Collected(root, [r.label for r in spec.rows], {r.label: list(spec.seeds_of(r, chosen)) for r in spec.rows})


def scenario_section(spec, root: Path, doc_dir: Path, log: Callable[[str], None] = print) -> str:
    from llmemf.reporting.plots import sensitivity_plot

    chosen = spec.chosen_strongest(root)
    c = collected(spec, root, chosen)
    tables = root / "tables"
    parts = [f"## {spec.title}", ""]
    reused = f"reused from {Path(spec.reuse_selection).stem}" if spec.reuse_selection else ""
    searched = (
        f"runs at the grid point selected on validation by {Path(spec.reuse_selection).stem} (no search of its own)"
        if spec.reuse_selection
        else f"searched {json.dumps(spec.grid) if spec.grid else 'no grid'} and was selected on validation MRR"
    )
    budgets = [r.label for r in spec.rows if any(o.startswith(("train.epochs=", "train.patience=")) for o in r.overrides)]
    own_budget = f" ({', '.join(budgets)}: the budget its label names)" if budgets else ""
    parts.append(
        f"Dataset `{spec.dataset}` (content hash {c.dataset_hash}, the same for every run); every trainable model {searched}, "
        f"at its own L2, epoch cap {spec.epochs}, patience {spec.patience}{own_budget}; seeds {spec.seeds} "
        f"for LLM-EMF and {spec.strongest_text(chosen)}, seed {spec.seeds[0]} for the rest. "
        "Test split, metrics in %, mean ± sample standard deviation over seeds."
    )
    if (root / DATASET_FILE).is_file():
        described = json.loads((root / DATASET_FILE).read_text())
        if described["content_hash"] != c.dataset_hash:
            raise UserError(
                f"{root / DATASET_FILE} describes dataset content hash {described['content_hash']}, but the runs were trained on "
                f"{c.dataset_hash}: collect again with the runs' dataset (`--set dataset=DIR`)"
            )
        parts.append(coverage_sentence(described))
    mixed = [label for label, runs in c.main_rows().items() if len({c.results[r].get("train_bf16") for r in runs}) > 1]
    if mixed:
        parts.append(f"Rows whose seeds trained in bf16 and in fp32 (machines with and without native bf16): {', '.join(mixed)}.")
    if c.outside:
        extra = "; ".join(f"{label}: {len(runs)} ({', '.join(runs)})" for label, runs in c.outside.items())
        parts.append(f"Runs collected but not in the tables (seeds or rows the spec no longer plans): {extra}.")
    stale = "; ".join(x for x in (stale_reuse(spec, root, c), stale_sweeps(spec, c)) if x)
    if stale:
        parts.append(f"**Stale**: {stale}. Run `llmemf compare --spec {spec.path}` again: it trains the points selected now.")
    main = c.main_rows()
    if not main:  # a spec stopped before its first row's selection
        parts += ["", "No row has finished its grid yet: the tables come once the first row's selected point has run."]
    pending = [
        f"{r.label} ({len(main.get(r.label, []))} of {len(spec.seeds_of(r, chosen))} seeds)"
        for r in spec.rows
        if len(main.get(r.label, [])) < len(spec.seeds_of(r, chosen))
    ]
    if spec.n_strongest_by_validation and not chosen:
        pending.append(f"the {spec.n_strongest_by_validation} strongest baselines' other seeds (chosen once every baseline has run its first seed)")
    planned = spec.run_counts()
    for kind in ("ablation", "sensitivity"):
        done = sum(1 for rec in c.plan if rec["kind"] == kind and rec["run"] in c.results)
        if kind in planned and done < planned[kind]:
            pending.append(f"{kind} ({done} of {planned[kind]} runs)")
    if pending:
        parts += ["", "**The spec has not finished**: the tables below hold the runs done so far. Still to run: " + ", ".join(pending) + "."]
    ours = "llmemf" if "llmemf" in main else next((k for k, v in main.items() if c.results[v[0]]["model"] == "llmemf"), "")
    for protocol in PROTOCOLS if main else ():
        header, rows = main_table(c, protocol, reused)
        _write(tables, f"main_{protocol}", header, rows)
        parts += ["", f"### Tables 2-3 layout, {protocol} protocol", "", to_markdown(header, rows)]
        if any(c.results[v[0]]["model"] != "llmemf" for v in main.values()):
            header, rows = significance_table(c, protocol, ours)
            pairs = f"{ours} against the baseline with the best mean test MRR per domain"
            title = "Paired significance"
        else:  # variants of one model: every row against the first
            header, rows = against_reference_table(c, protocol, next(iter(main), ""))
            pairs = f"each row against the first, {header[4].removesuffix(' MRR')}" if rows else ""
            title = "Paired comparison"
        if rows:
            _write(tables, f"significance_{protocol}", header, rows)
            parts += [
                "",
                f"{title}, {protocol} protocol: {pairs}; "
                "per-user reciprocal ranks of the same test users (and, under the c2dsr protocol, the same sampled "
                "negatives), averaged over the seeds both rows ran (the same number on each side: a mean of several "
                "seeds against one seed would favour the averaged row in the signed-rank test), so MRRs here can "
                "differ from the table's means. The paired t-test and the bootstrap (over users, 2000 resamples, "
                "95% percentile interval) test the MRR difference itself; the Wilcoxon signed-rank test (two-sided), "
                "which recommender papers usually report, asks whether one row ranks most targets higher, and with "
                "thousands of users gives a small p even where the MRR difference is not resolved.",
                "",
                to_markdown(header, rows),
            ]
    if spec.paper and ours in main:
        header, rows = paper_table(c, spec, ours)
        _write(tables, "paper", header, rows)
        parts += [
            "",
            "### Against the paper's reported numbers",
            "",
            f"The paper's own test MRR %, as {spec.path} quotes them (its comment says from where), "
            "beside this spec's table means under the c2dsr protocol. The paper does not state its candidate set "
            "(how many negatives each target is ranked against) and trained up to 100 epochs with patience 10, so "
            "absolute levels need not match; each side's gain over its own best baseline is the comparable part.",
            "",
            to_markdown(header, rows),
        ]
    for protocol in PROTOCOLS if main else ():
        header, rows = warm_cold_table(c, protocol)
        _write(tables, f"warm_cold_{protocol}", header, rows)
        parts += ["", f"### Warm and cold test targets, {protocol} protocol", "", cold_note(protocol, c.n_negatives), ""]
        parts.append(to_markdown(header, rows))
    ab = c.kind_groups("ablation")
    if ab:
        for protocol in PROTOCOLS:
            groups = {k: [c.results[r] for r in v] for k, v in ab.items()}
            header, rows = mean_std_rows(groups, "test", protocol)
            header = [header[0], "features", *header[1:]]
            rows = [[r[0], _features(c.root / ab[r[0]][0]), *r[1:]] for r in rows]
            _write(tables, f"ablation_{protocol}", header, rows)
            parts += [
                "",
                f"### Table 4 layout (ablation at LLM-EMF's selected point), test MRR %, {protocol} protocol",
                "",
                to_markdown(header, rows),
            ]
        left_out = spec.ablation.left_out() if spec.ablation else {}
        if left_out:
            rows_needing = "; ".join(label + (f" (needs {' and '.join(needs)})" if needs else "") for label, needs in left_out.items())
            parts += ["", f"The paper's table-4 rows not run in this spec: {rows_needing}; {spec.path} says why."]
    sens = c.kind_groups("sensitivity")
    if sens:
        curves: dict[str, list[tuple[float, dict[str, float]]]] = {}
        for axis, runs in sens.items():
            pts = []
            for r in runs:
                # the sensitivity record's own point: the selected point's run is also a grid run, with another point
                value = next(x for x in c.plan if x["run"] == r and x["kind"] == "sensitivity" and x["label"] == axis)["point"][axis]
                x = float(value[0] if isinstance(value, list) else value)
                pts.append((x, {d: 100 * m["MRR"] for d, m in c.results[r]["valid"]["c2dsr"]["metrics"].items()}))
            curves[axis] = sorted(pts, key=lambda p: p[0])
        png = sensitivity_plot(curves, root / "sensitivity.png", f"{spec.title}: validation MRR (c2dsr protocol) against each parameter")
        header = ["parameter", "value"] + list(curves[next(iter(curves))][0][1])
        rows = [[axis, f"{x:g}", *ys.values()] for axis, pts in curves.items() for x, ys in pts]
        _write(tables, "sensitivity", header, rows)
        parts += [
            "",
            "### Figure 5 layout: validation MRR against one parameter at a time",
            "",
            f"![sensitivity]({os.path.relpath(png, doc_dir)})",
            "",
            to_markdown(header, rows),
        ]
    header, rows = cost_table(c)
    _write(tables, "cost", header, rows)
    parts += [
        "",
        "### Compute",
        "",
        to_markdown(
            header,
            rows,
            "(a run whose best epoch is the cap was still improving when the cap stopped it; a run whose best epoch is the "
            "first of several peaked after one pass over the data and fell from the second epoch on (a learning rate too "
            "high for this scenario, or a loss that dips before it converges), so its row may understate the model"
            + ("; this spec reuses another scenario's selection" if spec.reuse_selection else "")
            + "; wall hours: the timed phases "
            "of every run of the spec, training epochs and their validation summed over all its resumes plus its final "
            "evaluation, and those of a pre-training stage the run keeps, on the machine that ran it; runs trained side by "
            "side overlap, so their total exceeds the elapsed time)",
        ),
        "",
        code_summary(c),
    ]
    log(f"{spec.title}: {len(c.results)} runs read from {root}")
    return "\n".join(parts)


HEADLINE_START, HEADLINE_END = "<!-- headline: generated by llmemf report --readme -->", "<!-- end of headline -->"


def headline(specs: list, results_root: Path, doc: Path, command: str) -> str:
    """The README's one table per scenario: test MRR per domain under the paper's (c2dsr) protocol, mean ±
    std over seeds, for every row whose selected point has run; a spec not finished says so."""
    parts = [f"Generated by `{command}` from `results/`; all tables, both protocols, significance tests: [{doc}]({doc})."]
    for spec in specs:
        root = results_root / spec.scenario
        chosen = spec.chosen_strongest(root)
        c = collected(spec, root, chosen) if (root / "plan.json").is_file() else None
        main = c.main_rows() if c else {}
        parts += ["", f"**{spec.title}** (`llmemf compare --spec {spec.path}`)"]
        if not main:
            parts += ["", "Not run yet."]
            continue
        header, rows = main_table(c, "c2dsr", "")
        keep = [0, 1, 3] + [i for i, h in enumerate(header) if h.endswith(" MRR")]
        header = [header[i].replace(" MRR", " MRR %") for i in keep]
        parts += ["", to_markdown(header, [[r[i] for i in keep] for r in rows])]
        planned = spec.planned_table_runs(chosen)
        finished = sum(len(main.get(r.label, [])) for r in spec.rows)
        if finished < planned:
            parts += ["", f"The spec is part way: {finished} of its {planned} table runs have finished; the rows above are those done so far."]
    return "\n".join(parts)


def write_headline(readme: Path, block: str) -> None:
    """Replace what stands between the headline markers of ``readme`` by ``block``."""
    text = readme.read_text() if readme.is_file() else ""
    if HEADLINE_START not in text or HEADLINE_END not in text.split(HEADLINE_START, 1)[1]:
        raise UserError(f"--readme {readme}: no headline markers; put the lines {HEADLINE_START!r} and {HEADLINE_END!r} where the table goes")
    before, rest = text.split(HEADLINE_START, 1)
    after = rest.split(HEADLINE_END, 1)[1]
    atomic_write_bytes(readme, (before + HEADLINE_START + "\n" + block + "\n" + HEADLINE_END + after).encode())


def build_report(specs: list, results_root: Path, doc: Path, commands: list[str], log: Callable[[str], None] = print) -> Path:
    header = [
        "# Results",
        "",
        "Generated by " + " and ".join(f"`{c}`" for c in commands) + " from the runs collected under `results/`;",
        "do not edit by hand. Each table's CSV is in `results/<scenario>/tables/`.",
    ]
    sections = []
    for s in specs:
        if (results_root / s.scenario / "plan.json").is_file():
            sections.append(scenario_section(s, results_root / s.scenario, doc.parent, log))
        else:
            log(f"{s.title}: nothing collected in {results_root / s.scenario} yet")
            sections.append(f"## {s.title}\n\nNot run yet: `llmemf compare --spec {s.path}`, then `llmemf report --spec {s.path} --collect`.")
    atomic_write_bytes(doc, ("\n".join(header) + "\n\n" + "\n\n".join(sections) + "\n").encode())
    return doc
