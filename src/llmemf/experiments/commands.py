"""CLI commands that run or read many runs: compare, ablate, tune, report."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import typer

from llmemf.errors import UserError
from llmemf.io import atomic_write_bytes
from llmemf.reporting.tables import PAPER_COLUMNS, cost_rows, load_results, mean_std_rows, paper_rows, to_csv, to_markdown


def _write_tables(out: Path, stem: str, runs: dict[str, dict], columns=PAPER_COLUMNS) -> str:
    """Markdown + CSV for both protocols; returns the Markdown."""
    parts = []
    for proto in ("c2dsr", "full"):
        if not all(proto in r["test"] for r in runs.values()):
            continue
        header, rows = paper_rows(runs, "test", proto, columns)
        md = to_markdown(header, rows, f"(test split, {proto} protocol, %)")
        parts.append(md)
        atomic_write_bytes(out / f"{stem}_{proto}.csv", to_csv(header, rows).encode())
    text = "\n\n".join(parts)
    atomic_write_bytes(out / f"{stem}.md", (text + "\n").encode())
    return text


def check_run(checkpoint: Path) -> None:
    """A clear error for a --checkpoint that is not a trained run, before anything loads."""
    run_dir = checkpoint.parent if checkpoint.is_file() else checkpoint
    if not checkpoint.exists():
        raise UserError(f"--checkpoint {checkpoint}: no such run directory or file; train one with `llmemf train`")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"--checkpoint {checkpoint}: not a llmemf run directory (no config.yaml)")
    if checkpoint.is_dir() and not (run_dir / "best.pt").is_file():
        raise UserError(f"--checkpoint {checkpoint}: no best.pt (training has not finished an epoch); train it with `llmemf train`")


def _parse_seeds(spec: str) -> list[int]:
    try:
        seeds = [int(s) for s in spec.split(",")]
    except ValueError:
        raise UserError(f"--seeds {spec!r}: give integers separated by commas, e.g. 1,2,3") from None
    return seeds


def _check_overrides(overrides: list[str]) -> None:
    """Load the config once so that a bad key=value is one line now, not after the first run trained."""
    from llmemf.config import load_config

    load_config(None, overrides)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _write_estimate(spec, run_overrides: list[str], out: Path) -> None:
    """Time each row's steps, print the spec's compute hours and write them to OUT/estimate.md."""
    from llmemf.experiments.spec import estimate

    typer.echo(f"{spec.title}: timing a few training steps of each row on {spec.dataset}")
    load = os.getloadavg()[0]
    header, rows, hours = estimate(spec, run_overrides, log=typer.echo)
    note = (
        "(training only, at the epoch cap: early stopping ends most runs sooner; per-epoch validation not included; "
        "a run equal to one already made, e.g. an ablation row at the selected point, is counted though it is reused)"
    )
    if load >= 0.5 * (os.cpu_count() or 1):
        # steps timed beside other work are slower than the runs will be (docs/cost.md, "The paper specs")
        note += f"\n(timed at load average {load:.1f} on {os.cpu_count()} cores: other work on the cores inflates these hours)"
    text = to_markdown(header, rows, note)
    typer.echo("\n" + text + f"\n\nestimated compute left: {hours:.2f} h")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "estimate.md", (text + f"\n\nestimated compute left: {hours:.2f} h\n").encode())


def _spec_worker(path: Path, overrides: list[str], worker: int) -> None:
    """One of ``compare --spec --workers N``'s processes after the first (a spawned child): the spec's
    runs that no other process is training, until every run is finished."""
    from llmemf import runtime
    from llmemf.experiments.spec import load_spec, run_spec

    runtime.setup_allocator()  # inherited from the first process under mimalloc; glibc's mallopt is per process
    try:
        spec, run_overrides = load_spec(path, overrides)
        run_spec(spec, [*run_overrides, "train.progress=false"], log=lambda s: typer.echo(f"[worker {worker}] {s}"))
    except UserError as e:  # the CLI's error policy, in this process
        typer.secho(f"error: [worker {worker}] {e.one_line()}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None


def _compare_spec(path: Path, overrides: list[str], estimate_only: bool, workers: int = 1, no_estimate: bool = False) -> None:
    """`llmemf compare --spec FILE`: print the compute estimate, then run the spec resumably."""
    from llmemf.experiments.spec import load_spec, run_spec

    spec, run_overrides = load_spec(path, overrides)
    if not Path(spec.dataset).is_dir():
        raise UserError(f"--spec {path}: dataset {spec.dataset} is not a directory; prepare it or give dataset=DIR")
    if estimate_only and no_estimate:
        raise UserError("--estimate-only with --no-estimate: choose one")
    out = Path(spec.out)
    if not no_estimate:
        _write_estimate(spec, run_overrides, out)
    if estimate_only:
        return
    t0 = time.perf_counter()
    # More processes than one share the spec's runs through the run directories' locks (run_spec);
    # each should be given its share of the cores (train.threads).
    children = [multiprocessing.get_context("spawn").Process(target=_spec_worker, args=(path, overrides, i)) for i in range(2, workers + 1)]
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if children else None
    try:
        for child in children:
            child.start()
        plan = run_spec(spec, run_overrides, log=(lambda s: typer.echo(f"[worker 1] {s}")) if children else typer.echo)
        for i, child in enumerate(children, start=2):
            child.join()
            if child.exitcode:
                raise UserError(f"--spec {path}: worker {i} stopped with exit code {child.exitcode} (its error is above); run again to resume")
    finally:  # stopped, or failed: the other workers stop with it (each run they had begun resumes from its checkpoint)
        for child in children:
            if child.is_alive():
                child.terminate()
                child.join()
        if children:
            signal.signal(signal.SIGTERM, previous)
    typer.echo(f"\n{len(plan)} runs in {out} ({time.perf_counter() - t0:.0f}s this invocation); selection in {out}/selection.json")
    typer.echo(f"next: `llmemf report --spec {path} --collect` copies their small files into results/ and writes docs/results.md")


def _report_spec(paths: list[Path], collect: bool, results: Path, doc: Path, overrides: list[str], readme: Path | None = None) -> None:
    from llmemf.experiments.spec import load_spec
    from llmemf.reporting.paper import build_report, headline, write_headline
    from llmemf.reporting.paper import collect as collect_runs

    specs = [load_spec(p, overrides)[0] for p in paths]
    if collect:
        for s in specs:
            n = collect_runs(Path(s.out), results / s.scenario, Path(s.dataset))
            typer.echo(f"{s.title}: {n} finished runs collected from {s.out} into {results / s.scenario}")
    command = "llmemf report " + " ".join(f"--spec {p}" for p in paths)
    path = build_report(specs, results, doc, [command], log=typer.echo)
    typer.echo(f"wrote {path}; CSVs in " + ", ".join(str(results / s.scenario / "tables") for s in specs))
    if readme is not None:
        write_headline(readme, headline(specs, results, doc, f"{command} --readme {readme}"))
        typer.echo(f"wrote the headline tables into {readme}")


DEFAULT_MODELS = "pop,itemknn,bprmf,ncf_mlp,gru4rec,sasrec,srgnn,pinet,psjnet,c2dsr,tricdr,mifn,llmemf"


def register(app: typer.Typer) -> None:
    @app.command()
    def compare(
        dataset: Path | None = typer.Option(None, "--dataset", "-d"),
        spec: Path | None = typer.Option(
            None, "--spec", help="an experiment spec (experiments/*.yaml): key=value then overrides its fields or every run"
        ),
        estimate_only: bool = typer.Option(False, "--estimate-only", help="with --spec: print the estimated compute hours and stop"),
        no_estimate: bool = typer.Option(
            False, "--no-estimate", help="with --spec: resume without timing every row first (OUT/estimate.md stays as it was)"
        ),
        workers: int = typer.Option(
            1, "--workers", min=1, help="with --spec: train N runs at once, in N processes (give each its share of the cores: train.threads=T)"
        ),
        models: str = typer.Option(DEFAULT_MODELS, "--models"),
        out: Path | None = typer.Option(None, "--out", "-o", help="default runs/<dataset>/compare"),
        fresh: bool = typer.Option(False, "--fresh", help="retrain every model from epoch 0 instead of reusing or resuming its run"),
        nproc: int = typer.Option(0, "--nproc", help="train each model on N processes of this machine (runs torchrun; docs/distributed.md)"),
        overrides: list[str] = typer.Argument(
            None, help="key=value overrides for every model (train.epochs=20); NAME.key=value for model NAME only (llmemf.model.beta=1.0)"
        ),
    ) -> None:
        """Train and evaluate several models under one protocol; print the paper's tables 2-3 layout."""
        from llmemf.distributed import env_world, teardown
        from llmemf.experiments.runner import compare as run_compare
        from llmemf.experiments.runner import compare_configs

        if spec is not None:
            ignored = {"--dataset": dataset is not None, "--out": out is not None, "--fresh": fresh, "--nproc": nproc != 0}
            ignored["--models"] = models != DEFAULT_MODELS
            given = [k for k, v in ignored.items() if v]
            if given:
                raise UserError(
                    f"compare --spec: {', '.join(given)} apply without a spec only; the spec names its dataset, out and rows "
                    "(override them with dataset=DIR, out=DIR, rows=[...]), and reuses or resumes every run"
                )
            return _compare_spec(spec, list(overrides or []), estimate_only, workers, no_estimate)
        if dataset is None:
            raise UserError("compare: give --dataset DIR (with --models) or --spec FILE")
        if nproc:
            from llmemf.training.launch import torchrun_train

            args = [f"--dataset={dataset}", f"--models={models}", *([f"--out={out}"] if out else []), *(["--fresh"] if fresh else [])]
            raise typer.Exit(torchrun_train(nproc, [*args, *(overrides or [])], module=("llmemf.cli", "compare")))
        world = env_world()  # under torchrun: all ranks train each model in turn, rank 0 writes and prints
        out = out or Path("runs") / dataset.name / "compare"
        t0 = time.perf_counter()
        names = [m.strip() for m in models.split(",") if m.strip()]
        if not names:
            raise UserError(f"--models {models!r}: name at least one model (see `llmemf models`)")
        try:
            configs = compare_configs(dataset, names, out, list(overrides or []))
        except UserError as e:  # an unknown model, or a model-specific field given to every model
            hint = "prefix a field with a model name to give it to that model only, e.g. llmemf.model.beta=1.0"
            raise UserError(f"{e.one_line()} ({hint})") from None
        results = run_compare(configs, log=typer.echo if world.is_main else (lambda _: None), fresh=fresh)
        teardown()
        if not world.is_main:
            return
        typer.echo("\n" + _write_tables(out, "table", results))
        header, rows = cost_rows({name: (out / name, res) for name, res in results.items()})
        cost = to_markdown(header, rows, "(cost of each run over all its resumes; wall = fit + training + per-epoch validation + final evaluation)")
        atomic_write_bytes(out / "cost.md", (cost + "\n").encode())
        typer.echo("\n" + cost)
        typer.echo(f"\nwall time of this invocation {time.perf_counter() - t0:.0f}s; tables in {out}/table.md, table_*.csv and cost.md")

    @app.command()
    def ablate(
        dataset: Path = typer.Option(..., "--dataset", "-d"),
        seeds: str = typer.Option("42", help="comma-separated seeds; mean ± std over them"),
        rows: str = typer.Option("", help="which rows of table 4, e.g. 1,2,3 for a dataset without images (default all six)"),
        out: Path | None = typer.Option(None, "--out", "-o", help="default runs/<dataset>/ablate"),
        overrides: list[str] = typer.Argument(None, help="key=value overrides for every configuration"),
    ) -> None:
        """The paper's table 4: six LLM-EMF configurations, same seeds, MRR per domain, both protocols."""
        from llmemf.experiments.runner import ablate as run_ablate
        from llmemf.experiments.runner import parse_ablation_rows
        from llmemf.reporting.plots import ablation_chart

        out = out or Path("runs") / dataset.name / "ablate"
        seed_list = _parse_seeds(seeds)
        try:
            row_list = parse_ablation_rows(rows)
        except ValueError as e:
            raise UserError(str(e)) from None
        _check_overrides(["model.name=llmemf", *(overrides or [])])
        groups = run_ablate(dataset, out, seed_list, list(overrides or []), log=typer.echo, rows=row_list)
        texts = []
        for proto in ("c2dsr", "full"):
            header, rows = mean_std_rows(groups, "test", proto)
            texts.append(to_markdown(header, rows, f"(test MRR %, {proto} protocol, mean ± std over seeds {seeds})"))
            atomic_write_bytes(out / f"ablation_{proto}.csv", to_csv(header, rows).encode())
        cold = {label: [r["test_cold_targets"] for r in rs] for label, rs in groups.items() if rs[0].get("test_cold_targets")}
        if cold:
            header, rows = mean_std_rows({k: [{"test": c} for c in v] for k, v in cold.items()}, "test", "full")
            texts.append(to_markdown(header, rows, "(cold-start targets only: items never seen in training; test MRR %, full protocol)"))
        text = "\n\n".join(texts)
        atomic_write_bytes(out / "ablation.md", (text + "\n").encode())
        typer.echo("\n" + text)
        domains = list(next(iter(groups.values()))[0]["test"]["c2dsr"]["metrics"])

        def mean_std(v: list[float]) -> tuple[float, float]:
            return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0  # the sample standard deviation

        per_domain = {d: [mean_std([100 * r["test"]["c2dsr"]["metrics"][d]["MRR"] for r in rs]) for rs in groups.values()] for d in domains}
        png = ablation_chart(list(groups), per_domain, out / "ablation.png", f"LLM-EMF ablation on {dataset.name} (c2dsr protocol)")
        typer.echo(f"\nchart: {png}")

    @app.command()
    def tune(
        dataset: Path = typer.Option(..., "--dataset", "-d"),
        model: str = typer.Option("llmemf", "--model", "-m"),
        grid: list[str] = typer.Option(["train.lr=1e-3,3e-4", "train.weight_decay=0,1e-5"], "--grid", help="key=v1,v2 (repeat)"),
        out: Path | None = typer.Option(None, "--out", "-o"),
        overrides: list[str] = typer.Argument(None),
    ) -> None:
        """Grid search selecting on validation MRR (c2dsr protocol), one run directory per point."""
        from llmemf.experiments.runner import grid_points
        from llmemf.experiments.runner import tune as run_tune

        out = out or Path("runs") / dataset.name / f"tune_{model}"
        try:
            points = grid_points(list(grid))
        except ValueError as e:
            raise UserError(f"--grid: {e}") from None
        _check_overrides([f"model.name={model}", *(overrides or []), *points[0]])  # the model and the keys, before anything trains
        results = run_tune(dataset, model, list(grid), out, list(overrides or []), log=typer.echo)
        results.sort(key=lambda pr: -np.mean([m["MRR"] for m in pr[1]["valid"]["c2dsr"]["metrics"].values()]))
        domains = list(results[0][1]["valid"]["c2dsr"]["metrics"])
        header = ["point", "valid MRR (mean)"] + [f"valid {d} MRR" for d in domains] + [f"test {d} MRR" for d in domains]
        rows = []
        for point, r in results:
            v, t = r["valid"]["c2dsr"]["metrics"], r["test"]["c2dsr"]["metrics"]
            mean_valid = 100 * np.mean([v[d]["MRR"] for d in domains])
            rows.append([" ".join(point), mean_valid] + [100 * v[d]["MRR"] for d in domains] + [100 * t[d]["MRR"] for d in domains])
        text = to_markdown(header, rows, "(c2dsr protocol, %, sorted by validation MRR; select on validation, not test)")
        atomic_write_bytes(out / "summary.md", (text + "\n").encode())
        atomic_write_bytes(out / "summary.csv", to_csv(header, rows).encode())
        typer.echo("\n" + text + f"\n\nbest: {rows[0][0]}")

    @app.command()
    def report(
        runs: list[Path] = typer.Argument(None, help="run directories (each with results.json)"),
        out: Path = typer.Option(Path("runs/report"), "--out", "-o"),
        spec: list[Path] = typer.Option(None, "--spec", help="experiment spec(s): write --doc from results/<scenario>/ (repeat for several)"),
        collect: bool = typer.Option(False, "--collect", help="with --spec: first copy each finished run's small files into results/<scenario>/"),
        results: Path = typer.Option(Path("results"), "--results", help="with --spec: where collected runs live"),
        doc: Path = typer.Option(Path("docs/results.md"), "--doc", help="with --spec: the Markdown report"),
        overrides: list[str] = typer.Option(None, "--set", help="with --spec: key=value for the spec (out=DIR, dataset=DIR)"),
        readme: Path | None = typer.Option(None, "--readme", help="with --spec: one headline table per scenario between this file's markers"),
    ) -> None:
        """Tables (Markdown + CSV, the paper's layout) and training curves (PNG) for finished runs;
        with --spec, docs/results.md: tables 2-4, significance, warm/cold targets, figure 5."""
        from llmemf.reporting.plots import training_curves

        if spec:
            return _report_spec(list(spec), collect, results, doc, list(overrides or []), readme)
        if not runs:
            raise UserError("report: give run directories, or --spec FILE")
        loaded = {}
        for run in runs:
            if not (run / "results.json").is_file():
                raise UserError(f"{run}: no results.json (not a finished run); finish it with `llmemf train` or leave it out")
            res = load_results(run)
            label = res["model"] if res["model"] not in loaded else f"{res['model']} ({run.name})"
            loaded[label] = (run, res)
        typer.echo(_write_tables(out, "table", {k: v[1] for k, v in loaded.items()}))
        png = training_curves({k: v[0] for k, v in loaded.items()}, out / "curves.png")
        typer.echo(f"\ntables: {out}/table.md, {out}/table_c2dsr.csv, {out}/table_full.csv; curves: {png}")
