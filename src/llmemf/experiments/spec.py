"""Experiment specs: one YAML file per scenario naming everything a paper table needs.

A spec (``experiments/paper_food_kitchen.yaml``) names the dataset, the rows (models, or a model
under fixed overrides), one tuning grid every trainable model searches with the same budget, one
epoch cap and patience for all, the seeds, which rows get every seed, LLM-EMF's own grid, the
ablation rows and the one-at-a-time sensitivity sweeps of figure 5. ``run_spec`` runs it:

1. each row searches the shared grid at the first seed and keeps the point with the best mean
   validation MRR (``eval.select_protocol``; never test);
2. a row with its own grid then searches it at that point (LLM-EMF: beta, gamma_S / gamma_XY);
3. the selected point runs the remaining seeds: every seed for LLM-EMF rows and the strongest
   baselines, which ``strongest`` names (a list of labels) or counts (``strongest: 3``: the three
   trainable baselines with the best validation MRR at their selected point, chosen once every
   baseline has run its first seed);
4. the ablation rows and the sensitivity sweeps run around LLM-EMF's selected point.

The multi-seed rows run first (LLM-EMF's, then the named strongest baselines'), then the ablation, the
other rows and the sensitivity sweeps: a spec stopped part way has its headline comparison. With a
counted ``strongest``, every baseline's first seed runs before the ablation, then the chosen rows' seeds.

A spec with ``reuse_selection`` (Movie-Book) searches nothing: every row runs the point another
spec selected (its ``selection.json``). Every run is an ordinary run directory, reused when its
config matches, so an interrupted spec resumes where it stopped. ``plan.json`` lists every run.
Several processes can run one spec together (``compare --spec --workers N``; see ``run_spec``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llmemf.config import RunConfig, config_to_yaml
from llmemf.errors import UserError
from llmemf.experiments.runner import slug
from llmemf.io import atomic_write_bytes, file_lock

Point = dict[str, Any]  # override key -> value; a key "a+b" sets a and b from a pair of values
STRONGEST = "the strongest baselines' seeds"  # the unit (and estimate row) of a counted ``strongest``
CLAIMS_FILE = ".experiments.json"  # hash of a normalised config -> the run directory that trains it (``_claim``); a dotfile: not collected
STRONGEST_FILE = "strongest.json"  # {"rows": [...], "valid_mrr": {label: score}}: the choice and what it rested on


@dataclass
class Row:
    label: str  # the table row's name (and its run directory)
    model: str  # registry name
    overrides: list[str] = field(default_factory=list)  # fixed for this row, on top of the spec's
    tune: bool = True  # search the shared grid (trainable models only)
    grid: dict[str, list] = field(default_factory=dict)  # the row's own axes, searched at its selected shared point
    all_seeds: bool = False  # run every seed (LLM-EMF rows are always; the spec's `strongest` gives the others)
    config: str = ""  # a named config variant, configs/models/<config>.yaml (e.g. mifn_small); default <model>.yaml


@dataclass
class Ablation:
    base: str = "llmemf"  # the row whose selected point every ablation row starts from
    seeds: list[int] = field(default_factory=lambda: [1])
    table4: list[int] = field(default_factory=list)  # rows of the paper's table 4 (runner.ABLATIONS, 1-based)
    extra: dict[str, list[str]] = field(default_factory=dict)  # label -> overrides (beyond the paper)

    def left_out(self) -> dict[str, list[str]]:
        """The paper's table-4 rows this spec does not run -> the features each needs ("LLM text", "item images")."""
        from llmemf.experiments.runner import ABLATIONS

        needs = {"txt_llm": "LLM text", "img": "item images"}
        return {
            label: [what for key, what in needs.items() if any(key in o for o in overrides)]
            for i, (label, overrides) in enumerate(ABLATIONS.items(), start=1)
            if i not in self.table4
        }


@dataclass
class Sensitivity:
    base: str = "llmemf"
    seed: int = 1
    axes: dict[str, list] = field(default_factory=dict)  # each axis swept alone around the selected point


@dataclass
class Spec:
    scenario: str  # results/<scenario>/ and the report's section name
    title: str  # the report's heading
    dataset: str  # a dataset directory (dataset=... on the command line overrides it)
    out: str  # where the run directories go
    rows: list[Row]
    epochs: int  # one cap for every trainable model
    patience: int
    overrides: list[str] = field(default_factory=list)  # every run
    grid: dict[str, list] = field(default_factory=dict)  # every trainable row, same budget
    seeds: list[int] = field(default_factory=lambda: [1])  # the first selects; the rest repeat the selected point
    # The baselines that get every seed: their labels, or how many, chosen on validation (STRONGEST_FILE).
    strongest: list[str] | int = field(default_factory=list)
    reuse_selection: str = ""  # another spec file: run its selected points instead of searching
    ablation: Ablation | None = None
    sensitivity: Sensitivity | None = None
    # The paper's own test MRR % per domain and model, as it reports them (``{Food: {llmemf: 9.24, mifn: 8.55}}``):
    # the report sets its gain over its closest competitor beside ours. Quoted, never measured here.
    paper: dict[str, dict[str, float]] = field(default_factory=dict)
    path: str = ""  # the spec file this came from

    def row(self, label: str) -> Row:
        for r in self.rows:
            if r.label == label:
                return r
        raise UserError(f"{self.path}: no row labelled {label!r} (rows: {', '.join(r.label for r in self.rows)})")

    def run_counts(self) -> dict[str, int]:
        """Runs per row label (and ablation / sensitivity): ``count_runs``."""
        return count_runs(self)

    @property
    def n_strongest_by_validation(self) -> int:
        """N for ``strongest: N`` (chosen on validation while the spec runs); 0 when it names the rows."""
        return self.strongest if isinstance(self.strongest, int) else 0

    @property
    def named_strongest(self) -> list[str]:
        """The labels ``strongest`` names; none when it counts."""
        return self.strongest if isinstance(self.strongest, list) else []

    def chosen_strongest(self, root: Path) -> list[str]:
        """The baselines a counted ``strongest`` chose, from ``root``'s strongest.json (the spec's out or its
        collected results); none before the choice."""
        path = root / STRONGEST_FILE
        return json.loads(path.read_text())["rows"] if path.is_file() else []

    def strongest_text(self, chosen: list[str]) -> str:
        """Which baselines get every seed, in words."""
        if not self.n_strongest_by_validation:
            return ", ".join(self.named_strongest) or "no baseline"
        which = ", ".join(chosen) if chosen else "chosen once every baseline has run its first seed"
        return f"the {self.n_strongest_by_validation} baselines with the best validation MRR at their selected point ({which})"

    def planned_table_runs(self, chosen: list[str]) -> int:
        """Runs of the main tables' selected points over their seeds, a counted ``strongest`` not chosen yet included."""
        # before the choice: as many as there are candidates, up to N (after it, the chosen rows count their seeds)
        unchosen = 0 if chosen else min(self.n_strongest_by_validation, len(strongest_candidates(self))) * (len(self.seeds) - 1)
        return sum(len(self.seeds_of(r, chosen)) for r in self.rows) + unchosen

    def seeds_of(self, row: Row, chosen: list[str] | tuple[str, ...] = ()) -> list[int]:
        """The seeds ``row`` runs; ``chosen``: the strongest baselines chosen on validation so far."""
        every = row.all_seeds or row.model == "llmemf" or row.label in self.named_strongest or row.label in chosen
        return list(self.seeds) if every else list(self.seeds[:1])


SPEC_KEYS = {f.name for f in dataclasses.fields(Spec)} - {"path"}


def load_spec(path: str | Path, overrides: list[str] | None = None) -> tuple[Spec, list[str]]:
    """The spec, with ``key=value`` overrides of its own fields (``dataset=``, ``seeds=[1]``); the
    other overrides are returned to be applied to every run (``train.threads=1``), or with a model
    name in front to that model's rows only (``llmemf.model.modalities=[id]``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--spec {path}: no such file")
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - YAML syntax errors come as several exception types
        raise UserError(f"--spec {path}: not readable YAML ({' '.join(str(e).split())})") from None
    own, run = [], []
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value (e.g. dataset=data/fk or train.threads=1)")
        (own if item.split("=", 1)[0].split(".")[0] in SPEC_KEYS else run).append(item)
    try:
        if own:
            raw = OmegaConf.merge(raw, OmegaConf.from_dotlist(own))
        data = OmegaConf.to_container(raw, resolve=True)
    except OmegaConfBaseException as e:
        raise UserError(f"--spec {path}: {' '.join(str(e).split())}") from None
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise UserError(f"--spec {path}: unknown field(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}")
    missing = [k for k in ("scenario", "dataset", "out", "rows", "epochs", "patience") if k not in data]
    if missing:
        raise UserError(f"--spec {path}: missing field(s) {missing}")
    rows = []
    for i, r in enumerate(data.pop("rows")):
        r = {"label": r, "model": r} if isinstance(r, str) else dict(r)
        r.setdefault("label", r.get("model"))
        try:
            rows.append(Row(**r))
        except TypeError as e:
            raise UserError(f"--spec {path}: rows[{i}]: {e}") from None
    try:
        ablation = Ablation(**data.pop("ablation")) if data.get("ablation") else None
        sensitivity = Sensitivity(**data.pop("sensitivity")) if data.get("sensitivity") else None
    except TypeError as e:
        raise UserError(f"--spec {path}: {e}") from None
    data.pop("ablation", None), data.pop("sensitivity", None)
    data.setdefault("title", data["scenario"])
    spec = Spec(rows=rows, ablation=ablation, sensitivity=sensitivity, path=str(path), **data)
    if not spec.seeds:
        raise UserError(f"--spec {path}: seeds is empty; give at least one")
    labels = [r.label for r in rows]
    if len(set(labels)) != len(labels):
        raise UserError(f"--spec {path}: row labels repeat: {labels}")
    if not (isinstance(spec.strongest, list) or (type(spec.strongest) is int and spec.strongest >= 0)):  # a bool is no count
        raise UserError(f"--spec {path}: strongest={spec.strongest!r}: give row labels, or how many baselines (0 or more)")
    for name in spec.named_strongest:
        spec.row(name)
    _check_points(spec)
    return spec, run


def _check_points(spec: Spec) -> None:
    """Every grid, ablation and sensitivity field checked before anything trains: a mistake in the sensitivity
    sweep must not surface hours later, after the tables' runs."""
    from llmemf.experiments.runner import ABLATIONS

    axes = {**spec.grid, **{k: v for r in spec.rows for k, v in r.grid.items()}, **(spec.sensitivity.axes if spec.sensitivity else {})}
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"--spec {spec.path}: axis {key!r}: give a list of values, got {values!r}")
        for v in values:
            try:
                point_overrides({key: v})  # a joint axis a+b needs [a, b] per value
            except UserError as e:
                raise UserError(f"--spec {spec.path}: {e.one_line()}") from None
    if spec.ablation:
        spec.row(spec.ablation.base)
        bad = [i for i in spec.ablation.table4 if not (isinstance(i, int) and 1 <= i <= len(ABLATIONS))]
        if bad:
            raise UserError(f"--spec {spec.path}: ablation.table4 {bad}: the paper's table-4 rows are 1..{len(ABLATIONS)}")
    if spec.sensitivity:
        spec.row(spec.sensitivity.base)
    for domain, reported in spec.paper.items():
        numbers = isinstance(reported, dict) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in reported.values())
        if not numbers or "llmemf" not in reported or len(reported) < 2:
            raise UserError(
                f"--spec {spec.path}: paper.{domain}: give the paper's MRR % of llmemf and of at least one baseline, "
                f"e.g. {{llmemf: 9.24, mifn: 8.55}}; got {reported!r}"
            )


def point_overrides(point: Point) -> list[str]:
    """{'train.lr': 0.001, 'model.gamma_s+model.gamma_xy': [0.3, 1.0]} -> key=value overrides."""
    out = []
    for key, value in point.items():
        keys = key.split("+")
        values = value if len(keys) > 1 else [value]
        if not isinstance(values, list) or len(values) != len(keys):
            raise UserError(f"grid axis {key!r}: each value must list {len(keys)} numbers, got {value!r}")
        out += [f"{k}={_fmt(v)}" for k, v in zip(keys, values, strict=True)]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


def grid_product(grid: dict[str, list]) -> list[Point]:
    keys = list(grid)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(grid[k] for k in keys))] or [{}]


def point_slug(point: Point) -> str:
    return slug("_".join(point_overrides(point))) if point else "default"


@dataclass
class PlannedRun:
    kind: str  # grid | own_grid | seed | ablation | sensitivity
    label: str  # table row (or ablation row / sensitivity axis)
    model: str
    point: Point  # what was searched or fixed for this run
    seed: int
    run: str  # run directory, relative to spec.out
    overrides: list[str]  # everything given to load_config after the model's config file
    config_name: str = ""  # configs/models/<config_name>.yaml instead of <model>.yaml (a named variant)

    def config(self, spec: Spec) -> RunConfig:
        from llmemf.config import load_config
        from llmemf.experiments.runner import model_config_file

        name = self.config_name or self.model
        path = model_config_file(name)
        if self.config_name and path is None:
            raise UserError(f"{spec.path}: row {self.label!r}: no configs/models/{name}.yaml")
        return load_config(path, [f"model.name={self.model}", f"dataset={spec.dataset}", f"out={Path(spec.out) / self.run}", *self.overrides])


def _point_run(kind: str, row: Row, point: Point, seed: int, overrides: list[str]) -> PlannedRun:
    """A run of ``row`` at ``point`` and ``seed``, in its run directory ``<label>/<point>/seed<seed>``."""
    return PlannedRun(kind, row.label, row.model, point, seed, f"{slug(row.label)}/{point_slug(point)}/seed{seed}", overrides, config_name=row.config)


def _common(spec: Spec, row: Row, run_overrides: list[str]) -> list[str]:
    """The spec's cap and overrides, the row's, then the command line's (``NAME.key=value``: rows of model NAME only)."""
    from llmemf.experiments.runner import route_overrides
    from llmemf.models.base import REGISTRY

    mine = route_overrides(list(REGISTRY), run_overrides)[row.model]
    return [f"train.epochs={spec.epochs}", f"train.patience={spec.patience}", *spec.overrides, *row.overrides, *mine]


def _trainable(model: str) -> bool:
    from llmemf.models.base import model_class

    try:
        return model_class(model).trainable
    except KeyError as e:
        raise UserError(f"model {model!r}: {e.args[0]} (see `llmemf models`)") from None


def row_search(spec: Spec, row: Row, run_overrides: list[str]) -> tuple[list[PlannedRun], list[PlannedRun]]:
    """The row's shared-grid runs and own-grid runs at the first seed (own-grid points are relative:
    the selected shared point is filled in by ``run_spec``)."""
    seed = spec.seeds[0]
    base = [*_common(spec, row, run_overrides), f"seed={seed}"]
    shared = grid_product(spec.grid) if row.tune and _trainable(row.model) else [{}]
    grid = [_point_run("grid", row, p, seed, [*base, *point_overrides(p)]) for p in shared]
    own = (
        [
            PlannedRun("own_grid", row.label, row.model, p, seed, "", [*base, *point_overrides(p)], config_name=row.config)
            for p in grid_product(row.grid)
        ]
        if row.grid
        else []
    )
    return grid, own


def count_runs(spec: Spec) -> dict[str, int]:
    """Runs per row label (and ablation / sensitivity), whatever the selection turns out to be."""
    counts: dict[str, int] = {}
    for row in spec.rows:
        if spec.reuse_selection:
            n_search = 1
        else:
            shared = len(grid_product(spec.grid)) if row.tune and _trainable(row.model) else 1
            n_search = shared + (len(grid_product(row.grid)) if row.grid else 0)
        counts[row.label] = n_search + len(spec.seeds_of(row)) - 1
    if spec.n_strongest_by_validation:
        counts[STRONGEST] = spec.n_strongest_by_validation * (len(spec.seeds) - 1)
    if spec.ablation:
        counts["ablation"] = (len(spec.ablation.table4) + len(spec.ablation.extra)) * len(spec.ablation.seeds)
    if spec.sensitivity:
        counts["sensitivity"] = sum(len(v) for v in spec.sensitivity.axes.values())
    return counts


def valid_score(res: dict, protocol: str) -> float:
    """Mean validation MRR of the domains under ``protocol``: what every selection maximises. A domain without
    validation users has no MRR (NaN); a NaN would win or lose ``max`` by its place in the list, so it ranks last."""
    score = float(np.mean([m["MRR"] for m in res["valid"][protocol]["metrics"].values()]))
    return score if score == score else float("-inf")


def selection_file(spec: Spec) -> Path:
    return Path(spec.out) / "selection.json"


def strongest_candidates(spec: Spec) -> list[Row]:
    """The rows a counted ``strongest`` chooses from: trainable baselines (another seed of Pop changes nothing)."""
    return [r for r in spec.rows if r.model != "llmemf" and _trainable(r.model) and not r.all_seeds]


def results_dir(spec: Spec, root: str | Path = "results") -> Path:
    return Path(root) / spec.scenario


def _finished(spec: Spec, sub: str, pattern: str) -> int:
    """Runs under ``sub`` finished in the spec's out, or collected in results/ (restored when the spec runs)."""
    return len({p.relative_to(root) for root in (Path(spec.out), results_dir(spec)) for p in (root / sub).glob(pattern)})


def _finished_records(spec: Spec, kinds: tuple[str, ...], label: str | None = None) -> int:
    """Records of ``kinds`` (of row ``label``) in the spec's plan whose run has finished: a record equal to a run
    already made points at that run's directory (an ablation row at the selected point is the selected run, an
    own-grid point at the defaults the grid's run)."""
    done = set()
    for root in (Path(spec.out), results_dir(spec)):
        plan = root / "plan.json"
        if plan.is_file():
            for r in json.loads(plan.read_text()):
                if r["kind"] in kinds and label in (None, r["label"]) and (root / r["run"] / "results.json").is_file():
                    done.add((r["label"], r["seed"], json.dumps(r["point"], sort_keys=True)))
    return len(done)


def reused_selection(spec: Spec) -> tuple[dict[str, dict], Path]:
    """Another spec's selected points (its out/selection.json, else its collected results/<scenario>/), and
    the file they came from. A spec still running has selected only some of its rows so far."""
    other, _ = load_spec(spec.reuse_selection)
    unknown = [r.label for r in spec.rows if r.label not in {o.label for o in other.rows}]
    if unknown:
        raise UserError(f"{spec.path}: row(s) {unknown} are not rows of {other.path}, whose selection it reuses; add them there and run it first")
    for path in (selection_file(other), results_dir(other) / "selection.json"):
        if path.is_file():
            return json.loads(path.read_text()), path
    raise UserError(
        f"reuse_selection={spec.reuse_selection}: its selection is not there yet "
        f"({selection_file(other)} or {results_dir(other) / 'selection.json'}); run `llmemf compare --spec {other.path}` first"
    )


class _Waiting(Exception):
    """A unit of the spec (a row, the ablation, ...) needs runs another process is training now, or a
    selection that waits on them: it is tried again after the units that can go on."""


class _NotSelected(Exception):
    """A unit needs a point the spec named by ``reuse_selection`` has not selected yet: it is left out of
    this invocation (nothing here can select it), and the spec ends with an error naming it."""


def _write_shared_json(out: Path, path: Path, value: Any, merge: Callable[[Any], Any] | None) -> None:
    """Write ``value`` as JSON to ``path`` atomically under the spec's plan lock; with ``merge``, what the
    file holds is passed through it first (the records other processes of the same spec wrote)."""
    with file_lock(out / ".plan.lock"):
        if merge is not None and path.exists():
            value = merge(json.loads(path.read_text()))
        atomic_write_bytes(path, (json.dumps(value, indent=2, default=str) + "\n").encode())


def _claim(out: Path, key: str, run: str, holds: Callable[[str], bool]) -> str:
    """The run directory that trains the experiment ``key`` (a normalised config) for every process of the
    spec: the first one claimed for it, if ``holds`` (that directory is not set up yet, or holds this
    experiment: a spec edited since may have put another there), else ``run``. Each process knows the equal
    experiments it has run itself; this tells it of those another process has started under another name
    (an own-grid point equal to a grid point, a sensitivity point equal to an ablation run), which it
    would otherwise train a second time."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = out / CLAIMS_FILE
    with file_lock(out / ".plan.lock"):
        claims = json.loads(path.read_text()) if path.exists() else {}
        other = claims.get(digest)
        if other is not None and other != run and holds(other):
            return other
        if other != run:
            claims[digest] = run
            atomic_write_bytes(path, (json.dumps(claims, indent=2) + "\n").encode())
    return run


def run_spec(
    spec: Spec,
    run_overrides: list[str],
    log: Callable[[str], None] = print,
    train_fn: Callable[[RunConfig, Any], dict] | None = None,
    poll_s: float = 30.0,
) -> list[dict]:
    """Run (or reuse) every run of the spec; returns and writes plan.json (one record per run).

    Several processes may run one spec on one ``out`` together (``compare --spec --workers N``):
    each run directory is locked while it trains, so a process skips a run another is training,
    goes on with what does not depend on it, and comes back for it (polling every ``poll_s``
    seconds when nothing else is left). Every process ends with every run finished."""
    from llmemf.data.batching import DataBundle
    from llmemf.data.dataset import Dataset
    from llmemf.experiments.runner import restore_stages, run_or_reuse
    from llmemf.training.rundir import RunDirBusy, matches_stored_experiment

    data = Dataset.load(spec.dataset)
    bundles: dict[int, DataBundle] = {}
    done: dict[str, tuple[dict, str]] = {}  # normalised config -> (results, run), so that one config trains once
    plan: dict[tuple, dict] = {}  # (kind, label, run) -> record, in the order first reached
    busy: set[str] = set()  # runs found locked by another process and not finished since
    out = Path(spec.out)

    def execute(p: PlannedRun) -> dict:
        cfg = p.config(spec)
        key = _normalised(cfg)
        if key in done:  # the same experiment under another name (an own-grid point equal to the row's defaults)
            p.run = done[key][1]
        else:

            def holds(other: str) -> bool:
                stored = out / other
                return not (stored / "config.yaml").exists() or matches_stored_experiment(stored, cfg, dataset_hash=data.manifest.content_hash)

            claimed = _claim(out, key, p.run, holds)
            if claimed != p.run:  # ... that another process of this spec has started: train (or wait for) it there
                p.run = claimed
                cfg = p.config(spec)
            if cfg.max_len not in bundles:
                bundles[cfg.max_len] = DataBundle(data, cfg.max_len)
            if p.run not in busy:
                log(f"[{p.label}] {p.kind} {' '.join(point_overrides(p.point)) or '(row config)'} seed {p.seed}")
            kept = results_dir(spec) / p.run
            if restore_stages(kept, cfg, data.manifest.content_hash):
                log(f"  restored from {kept} (the same experiment on the same data, collected earlier)")
            try:
                done[key] = ((train_fn or run_or_reuse)(cfg, bundles[cfg.max_len], log), p.run)
            except RunDirBusy:
                if p.run not in busy:
                    log(f"  {cfg.out} is being trained by another process: going on without it")
                busy.add(p.run)
                raise
            busy.discard(p.run)
        plan.setdefault((p.kind, p.label, p.run), {**dataclasses.asdict(p), "selected": False})
        write_plan()  # after every run: an interrupted spec's finished runs can be collected and reported
        return done[key][0]

    def execute_all(runs: list[PlannedRun], then: Callable[[PlannedRun], None] = lambda p: None) -> list[tuple[PlannedRun, dict]]:
        """Each run executed (``then`` after each), those another process is training skipped; _Waiting
        once the rest have run, if any was skipped."""
        results, skipped = [], []
        for p in runs:
            try:
                results.append((p, execute(p)))
            except RunDirBusy:
                skipped.append(p.run)
                continue
            then(p)
        if skipped:
            raise _Waiting(", ".join(skipped))
        return results

    def write_plan(final: bool = False) -> None:
        """plan.json: this process's records, and until it has finished, the records of runs only another
        process of the same spec has reached so far (read under a lock, so none is dropped)."""
        records = list(plan.values())
        mine = {(r["kind"], r["label"], r["run"]) for r in records}
        others = None if final else lambda old: records + [r for r in old if (r["kind"], r["label"], r["run"]) not in mine]
        _write_shared_json(out, out / "plan.json", records, others)

    def mark_selected(p: PlannedRun) -> None:
        for r in plan.values():
            if r["run"] == p.run:
                r["selected"] = True
        write_plan()  # a seed collected before the next run ends counts as the selected point's

    def best(runs: list[tuple[PlannedRun, dict]]) -> PlannedRun:
        protocol = _select_protocol(spec, runs[0][0])
        return max(runs, key=lambda pr: valid_score(pr[1], protocol))[0]

    def selected_point(label: str) -> Point:
        if spec.reuse_selection and label not in chosen_prev:
            raise _NotSelected(label)
        if label not in selection:
            raise _Waiting(f"the selection of {label}")
        return selection[label]["point"]

    def write_selection(complete: bool = False) -> None:
        """selection.json after every row's selection, so that a spec reusing it can start before this one
        ends: this process's, and until it is complete, the rows only another process has selected so far."""
        _write_shared_json(out, selection_file(spec), dict(selection), None if complete else lambda old: old | selection)

    selection: dict[str, dict] = {}
    selected_runs: dict[str, PlannedRun] = {}  # label -> the run of its selected point at the first seed
    chosen_prev, chosen_from = reused_selection(spec) if spec.reuse_selection else ({}, None)

    def newly_reused() -> list[str]:
        """Rows the reused spec has selected since this one read its selection (the two often run side by side);
        a row already read keeps its point, so that its seeds never straddle two points."""
        nonlocal chosen_from
        got, chosen_from = reused_selection(spec)
        new = [label for label in got if label not in chosen_prev]
        for label in new:
            chosen_prev[label] = got[label]
        return new

    def run_row(row: Row) -> None:
        seed0 = spec.seeds[0]
        base = [*_common(spec, row, run_overrides), f"seed={seed0}"]
        if spec.reuse_selection:
            if row.label not in chosen_prev:
                raise _NotSelected(row.label)
            point = chosen_prev[row.label]["point"]
            sel = _point_run("grid", row, point, seed0, [*base, *point_overrides(point)])
            execute_all([sel])
        else:
            grid, own = row_search(spec, row, run_overrides)
            sel = best(execute_all(grid))
            if own:
                points = [{**sel.point, **p.point} for p in own]
                runs = [(sel, done[_normalised(sel.config(spec))][0])]
                runs += execute_all([_point_run("own_grid", row, pt, seed0, [*base, *point_overrides(pt)]) for pt in points])
                sel = best(runs)
        selection[row.label] = {"model": row.model, "point": sel.point, "run": sel.run}
        selected_runs[row.label] = sel
        mark_selected(sel)
        write_selection()
        run_seeds(row, spec.seeds_of(row)[1:])

    def run_seeds(row: Row, seeds: list[int]) -> None:
        point = selection[row.label]["point"]
        common = _common(spec, row, run_overrides)
        execute_all([_point_run("seed", row, point, seed, [*common, f"seed={seed}", *point_overrides(point)]) for seed in seeds], then=mark_selected)

    def run_strongest_seeds(n: int) -> None:
        """Every seed for the n candidates with the best validation MRR at their selected point (seed 1),
        once each has one; the choice is written to strongest.json before their seeds run."""
        candidates = strongest_candidates(spec)
        for row in candidates:
            selected_point(row.label)
        results = {run: res for res, run in done.values()}
        scores = {r.label: valid_score(results[selection[r.label]["run"]], _select_protocol(spec, selected_runs[r.label])) for r in candidates}
        chosen = sorted(scores, key=scores.get, reverse=True)[:n]
        if spec.chosen_strongest(out) != chosen:
            log(f"the {n} strongest baselines on validation: {', '.join(chosen)}")
        _write_shared_json(out, out / STRONGEST_FILE, {"rows": chosen, "valid_mrr": scores}, None)
        for label in chosen:
            run_seeds(spec.row(label), spec.seeds[1:])

    def run_ablation(ab: Ablation) -> None:
        from llmemf.experiments.runner import ABLATIONS

        row = spec.row(ab.base)
        base_point = point_overrides(selected_point(row.label))
        labels = list(ABLATIONS)
        rows = {labels[i - 1]: ABLATIONS[labels[i - 1]] for i in ab.table4} | dict(ab.extra)
        runs = [
            PlannedRun(
                "ablation",
                label,
                row.model,
                {},
                seed,
                f"ablation/{slug(label)}/seed{seed}",
                [*_common(spec, row, run_overrides), *base_point, *extra, f"seed={seed}"],
                config_name=row.config,
            )
            for label, extra in rows.items()
            for seed in ab.seeds
        ]
        execute_all(runs)

    def complete_selection() -> None:
        for row in spec.rows:
            selected_point(row.label)
        write_selection(complete=True)

    def run_sensitivity(sens: Sensitivity) -> None:
        row = spec.row(sens.base)
        sel_point = selected_point(row.label)
        runs = []
        for axis, values in sens.axes.items():
            for v in values:
                point = {**sel_point, axis: v}
                ov = [*_common(spec, row, run_overrides), *point_overrides(point), f"seed={sens.seed}"]
                run = f"sensitivity/{slug(axis)}/{point_slug({axis: v})}"
                runs.append(PlannedRun("sensitivity", axis, row.model, {axis: v}, sens.seed, run, ov, config_name=row.config))
        execute_all(runs)

    # What a reader compares first runs first, so that a spec stopped part way (a long one spans several
    # sessions) already answers it: the multi-seed rows (LLM-EMF's, then the strongest baselines'), the
    # ablation, the other baselines, the sensitivity sweeps.
    multi_seed = [r for r in spec.rows if len(spec.seeds_of(r)) > 1]
    first = sorted(multi_seed, key=lambda r: r.model != "llmemf")
    units: list[tuple[str, Callable[[], None]]] = [(r.label, functools.partial(run_row, r)) for r in first]
    rest = [(r.label, functools.partial(run_row, r)) for r in spec.rows if r not in multi_seed]
    if spec.n_strongest_by_validation:  # the choice needs every baseline's first seed
        units += [*rest, (STRONGEST, functools.partial(run_strongest_seeds, spec.n_strongest_by_validation))]
        rest = []
    if spec.ablation:
        units.append(("ablation", functools.partial(run_ablation, spec.ablation)))
    units += rest
    units.append(("selection.json", complete_selection))
    if spec.sensitivity:
        units.append(("sensitivity", functools.partial(run_sensitivity, spec.sensitivity)))
    all_units = list(units)
    left_out: list[str] = []  # units that need a selection the reused spec has not made yet
    while units:
        finished_before, waiting = len(done), []
        for name, unit in units:
            try:
                unit()
            except _Waiting as e:
                waiting.append((name, unit, str(e)))
            except _NotSelected:
                if name != "selection.json":
                    left_out.append(name)
        units = [(name, unit) for name, unit, _ in waiting]
        if waiting and len(done) == finished_before:  # nothing moved: every unit left waits on another process
            log(f"waiting for runs other processes are training ({'; '.join(f'{n}: {why}' for n, _, why in waiting)})")
            time.sleep(poll_s)
        if not units and left_out and (new := newly_reused()):
            log(f"{chosen_from} has selected {', '.join(new)} since this started: running what waited on them")
            units = [(name, unit) for name, unit in all_units if name in left_out or name == "selection.json"]
            left_out = []
    write_plan(final=True)
    if left_out:
        unselected = ", ".join(r.label for r in spec.rows if r.label not in chosen_prev)
        raise UserError(
            f"{spec.path}: not run: {', '.join(left_out)}, because {chosen_from} has no selected point for "
            f"{unselected} yet; run `llmemf compare --spec {spec.reuse_selection}` further (and "
            "`llmemf report --collect` it), then this command again: the runs done now are reused"
        )
    return list(plan.values())


def _select_protocol(spec: Spec, p: PlannedRun) -> str:
    return p.config(spec).eval.select_protocol


def _normalised(cfg: RunConfig) -> str:
    from llmemf.models.base import check_model_params

    cls = check_model_params(cfg.model_name, cfg.model_params)
    model = {"name": cfg.model_name, **dataclasses.asdict(cls.Config(**cfg.model_params))}
    train = dataclasses.replace(cfg.train, threads=0, progress=True)
    return config_to_yaml(dataclasses.replace(cfg, out="", model=model, train=train))


# ---------------------------------------------------------------------------------------------
# Compute estimate: a few timed training steps per row, scaled to the spec's runs.


def time_steps(cfg: RunConfig, bundle, n_steps: int = 5) -> tuple[float, int]:
    """(mean seconds of one training step, steps per epoch) for a trainable model; for a closed-form one,
    (seconds of its fit, 1). The timed steps are spread evenly over one epoch's batches in the trainer's
    order: batched by length, the first few batches of an epoch are not its average (docs/cost.md,
    "The paper specs"), and an epoch costs the sum of its steps, so the mean. One warm-up step is not
    counted."""
    import torch

    from llmemf.models.base import build_model
    from llmemf.training.trainer import make_optimizer, seed_everything, train_in_bf16

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    model = build_model(cfg.model_name, cfg.model_params, bundle)
    t0 = time.perf_counter()
    model.fit(bundle)
    fit_s = time.perf_counter() - t0
    if not model.trainable:
        return fit_s, 1
    opt = make_optimizer(model, cfg.train)
    bf16 = train_in_bf16(cfg, model)
    model.train()
    epoch = list(bundle.train.iter_batches(cfg.train.batch_size, shuffle=True, seed=cfg.seed, by_length=cfg.train.by_length))
    picked = [epoch[0]] + [epoch[round(i)] for i in np.linspace(0, len(epoch) - 1, n_steps)]  # warm-up, then the sample
    times = []
    for i, batch in enumerate(picked):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.mean(times), len(epoch)


def estimate(spec: Spec, run_overrides: list[str], n_steps: int = 5, log: Callable[[str], None] = print) -> tuple[list[str], list[list], float]:
    """header, rows, total hours: per row, mean step seconds x steps per epoch x epoch cap x runs
    (an upper bound on training: early stopping ends most runs sooner; per-epoch validation not included)."""
    from llmemf.data.batching import DataBundle
    from llmemf.data.dataset import Dataset
    from llmemf.experiments.runner import training_stages

    data = Dataset.load(spec.dataset)
    bundles: dict[int, Any] = {}
    counts = count_runs(spec)
    header = ["row", "model", "stages", "step s (mean, last stage)", "steps/epoch", "epoch cap", "runs", "finished", "hours (cap)", "hours left"]
    rows, total = [], 0.0
    per_model: dict[str, tuple[float, int, float]] = {}  # normalised config -> (step s, steps, seconds per run)
    configs = {}  # every row's config first: a bad key fails before anything is timed
    for row in spec.rows:
        grid, _ = row_search(spec, row, run_overrides) if not spec.reuse_selection else (None, None)
        configs[row.label] = (
            grid[0].config(spec)
            if grid
            else PlannedRun("grid", row.label, row.model, {}, spec.seeds[0], "x", _common(spec, row, run_overrides), config_name=row.config).config(
                spec
            )
        )
    run_seconds: dict[str, float] = {}
    for row in spec.rows:
        cfg = configs[row.label]
        if cfg.max_len not in bundles:
            bundles[cfg.max_len] = DataBundle(data, cfg.max_len)
        # A model with a pre-training stage (Tri-CDR) costs both; the last stage is timed from scratch
        # (its init_from run does not exist yet), which costs the same per step.
        stages = [*training_stages(cfg)[:-1], cfg]
        seconds = 0.0
        for stage in stages:
            key = _normalised(dataclasses.replace(stage, seed=0, out=""))
            if key not in per_model:
                step_s, steps = time_steps(stage, bundles[cfg.max_len], n_steps)
                per_model[key] = (step_s, steps, step_s * steps * (stage.train.epochs if _trainable(stage.model_name) else 1))
                log(f"  timed {row.label}{' (pre-training stage)' if stage is not cfg else ''}: {step_s:.3f}s per step")
            seconds += per_model[key][2]
        step_s, steps, _ = per_model[_normalised(dataclasses.replace(cfg, seed=0, out=""))]
        run_seconds[row.label] = seconds
        n = counts[row.label]
        # a counted strongest's seeds are its own row
        made = max(_finished(spec, slug(row.label), "*/seed*/results.json"), _finished_records(spec, ("grid", "own_grid", "seed"), row.label))
        finished = min(made, n)
        left = seconds * (n - finished) / 3600
        total += left
        epochs = str(cfg.train.epochs) if _trainable(row.model) else "-"
        rows.append([row.label, row.model, str(len(stages)), f"{step_s:.4f}", str(steps), epochs, str(n), str(finished), seconds * n / 3600, left])
    if STRONGEST in counts:  # the chosen rows' runs; before the choice, the costliest candidates' (an upper bound)
        chosen = spec.chosen_strongest(Path(spec.out)) or spec.chosen_strongest(results_dir(spec))
        candidates = [spec.row(label) for label in chosen] or strongest_candidates(spec)
        seconds = sum(sorted((run_seconds[r.label] for r in candidates), reverse=True)[: spec.n_strongest_by_validation]) * (len(spec.seeds) - 1)
        seed_runs = sum(_finished(spec, slug(label), f"*/seed{s}/results.json") for label in chosen for s in spec.seeds[1:])
        finished = min(seed_runs, counts[STRONGEST])
        left = seconds * (1 - finished / max(counts[STRONGEST], 1)) / 3600
        total += left
        rows.append([STRONGEST, "-", "-", "-", "-", str(spec.epochs), str(counts[STRONGEST]), str(finished), seconds / 3600, left])
    for extra in ("ablation", "sensitivity"):
        if extra in counts:
            base = spec.row(getattr(spec, extra).base)
            match = next(r for r in rows if r[0] == base.label)
            seconds = run_seconds[base.label]
            finished = max(_finished(spec, extra, "**/results.json"), _finished_records(spec, (extra,)))
            left = seconds * max(counts[extra] - finished, 0) / 3600
            total += left
            rows.append(
                [extra, base.model, match[2], match[3], match[4], match[5], str(counts[extra]), str(finished), seconds * counts[extra] / 3600, left]
            )
    return header, rows, total
