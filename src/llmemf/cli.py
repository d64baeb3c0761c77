"""The `llmemf` command: one sub-command per pipeline stage. Thin: parse, call the library, print."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.core import TyperGroup

from llmemf.errors import UserError


class _ErrorPolicyGroup(TyperGroup):
    """Applies llmemf.errors' policy to every command: a UserError is one line on stderr and exit 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            typer.secho(f"error: {e.one_line()}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_ErrorPolicyGroup,
    add_completion=False,
    no_args_is_help=True,
    help="LLM-EMF and baselines for cross-domain sequential recommendation.",
)
prepare_app = typer.Typer(no_args_is_help=True, help="Build a dataset directory (Parquet + manifest).")
app.add_typer(prepare_app, name="prepare")


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _summarise_dataset(ds, out: Path) -> None:
    m = ds.manifest
    typer.echo(f"wrote {out}  ({m.name}, hash {m.content_hash})")
    for d in m.domains:
        typer.echo(f"  domain {d.name}: {d.n_items} items (global ids {d.offset}..{d.offset + d.n_items - 1})")
    for split in ("train", "valid", "test"):
        df = ds.splits[split]
        line = f"  {split}: {len(df)} sequences"
        if "target_domain" in df:
            per = df["target_domain"].value_counts().sort_index()
            line += " (targets " + ", ".join(f"{m.domains[int(k)].name} {int(v)}" for k, v in per.items()) + ")"
        typer.echo(line)
    join = ds.items.attrs.get("metadata_join")
    if join:
        typer.echo(f"  metadata from {join['file']}: {join['matched_items']} items matched, filled {join['filled']}")


@prepare_app.command("c2dsr")
def prepare_c2dsr(
    directory: Path = typer.Argument(..., help="C2DSR scenario directory (Alist.txt, Blist.txt, *data_new.txt)"),
    out: Path = typer.Argument(..., help="output dataset directory"),
    items: Path | None = typer.Option(None, "--items", help="item metadata CSV/TSV/Parquet keyed by ASIN / original_id"),
    domains: str | None = typer.Option(None, help="domain names 'X,Y' (default: from the directory name)"),
) -> None:
    """Import a C2DSR-format scenario (e.g. Food-Kitchen)."""
    from llmemf.data.c2dsr import import_c2dsr
    from llmemf.data.dataset import DatasetError

    names = tuple(domains.split(",")) if domains else None
    try:
        ds = import_c2dsr(directory, names, items)
        ds.save(out)
    except (DatasetError, FileNotFoundError) as e:
        _fail(str(e))
    _summarise_dataset(ds, out)


@prepare_app.command("synthetic")
def prepare_synthetic(
    out: Path = typer.Argument(Path("data/synthetic"), help="output dataset directory"),
    overrides: list[str] = typer.Argument(None, help="size/seed overrides, e.g. n_users=2000 seed=1"),
) -> None:
    """Generate the embedded two-domain shop (items, titles, descriptions, PNG images, users)."""
    from llmemf.data.synthetic import SyntheticConfig, generate_synthetic

    try:
        cfg = SyntheticConfig.from_overrides(overrides or [])
    except ValueError as e:
        _fail(str(e))
    ds = generate_synthetic(cfg, out)
    _summarise_dataset(ds, out)


@prepare_app.command("log")
def prepare_log(
    file: Path = typer.Argument(..., help="interaction log CSV/TSV/Parquet: user, item, domain, timestamp"),
    out: Path = typer.Argument(..., help="output dataset directory"),
    items: Path | None = typer.Option(None, "--items", help="item metadata file keyed by item id"),
    domains: str | None = typer.Option(None, help="the two domain values, in X,Y order (default: sorted)"),
    min_count: int = typer.Option(10, help="drop users and items with fewer interactions (to a fixed point)"),
    min_per_domain: int = typer.Option(3, help="keep users with at least this many items in each domain"),
    max_len: int = typer.Option(15, help="cap sequences at this many most recent interactions"),
    eval_fraction: float = typer.Option(0.1, help="fraction of sequences (the latest) for validation, and again for test"),
    max_bad_fraction: float = typer.Option(0.01, help="fail if more than this fraction of rows is unusable"),
) -> None:
    """Build a dataset from a generic two-domain interaction log with the paper's filters and split."""
    from llmemf.data.dataset import DatasetError
    from llmemf.data.logs import LogOptions, import_log

    opts = LogOptions(
        domains=tuple(domains.split(",")) if domains else None,
        min_count=min_count,
        min_per_domain=min_per_domain,
        max_len=max_len,
        eval_fraction=eval_fraction,
        max_bad_fraction=max_bad_fraction,
    )
    try:
        ds, report = import_log(file, opts, items_file=items)
        ds.save(out)
    except (DatasetError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(report.summary())
    _summarise_dataset(ds, out)


@prepare_app.command("subset")
def prepare_subset(
    dataset: Path = typer.Argument(..., help="an existing dataset directory"),
    out: Path = typer.Argument(..., help="output dataset directory"),
    top_items: int = typer.Option(..., "--top-items", help="keep this many of each domain's most frequent training items"),
) -> None:
    """Cut a dataset down to each domain's most popular items, keeping its users, splits and protocol."""
    from llmemf.data.dataset import Dataset, DatasetError
    from llmemf.data.subset import popular_subset

    try:
        ds = popular_subset(Dataset.load(dataset), top_items)
        ds.save(out)
    except (DatasetError, FileNotFoundError) as e:
        _fail(str(e))
    _summarise_dataset(ds, out)
    typer.echo("  feature files are not carried over: run `llmemf embed` on the subset")


@app.command()
def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML run config"),
    model: str | None = typer.Option(None, "--model", "-m", help="model name (see `llmemf models`)"),
    dataset: Path | None = typer.Option(None, "--dataset", "-d"),
    out: Path | None = typer.Option(None, "--out", "-o", help="run directory"),
    fresh: bool = typer.Option(False, "--fresh", help="ignore an existing last.pt instead of resuming"),
    overrides: list[str] = typer.Argument(None, help="key=value config overrides, e.g. train.lr=3e-4 model.hidden=128"),
) -> None:
    """Train one model; resumes from RUN_DIR/last.pt if present. Prints the per-domain test tables."""
    from llmemf.config import RunConfig, load_config
    from llmemf.training.trainer import train as run_training

    ov = list(overrides or [])
    if model:
        ov.append(f"model.name={model}")
    if dataset:
        ov.append(f"dataset={dataset}")
    if out:
        ov.append(f"out={out}")
    cfg = load_config(config, ov)
    if out is None and not any(o.startswith("out=") for o in ov) and cfg.out == RunConfig.out:
        cfg.out = f"runs/{Path(cfg.dataset).name}/{cfg.model_name}"  # unless the YAML names a run directory
    typer.echo(f"training {cfg.model_name} on {cfg.dataset} -> {cfg.out}")
    result = run_training(cfg, resume=not fresh, log=typer.echo)
    trained = f"best epoch {result.best_epoch}" if result.best_epoch > 0 else "closed-form model (no training epochs)"
    typer.echo(f"\n{trained}; run directory {result.run_dir}\n")
    typer.echo(result.table(cfg.model_name))


@app.command()
def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="run directory or a .pt file inside one"),
    split: str = typer.Option("test", help="valid | test"),
    protocol: list[str] = typer.Option(["c2dsr", "full"], help="c2dsr and/or full"),
    dataset: Path | None = typer.Option(None, help="evaluate on another dataset directory with the same items"),
) -> None:
    """Evaluate a trained model and print the per-domain tables."""
    from llmemf.evaluation.protocols import format_table
    from llmemf.training.trainer import evaluate_all, load_run

    cfg, bundle, model = load_run(checkpoint, dataset=str(dataset) if dataset else None)
    cfg.eval.protocols = list(protocol)
    for res in evaluate_all(model, cfg, bundle, split).values():
        typer.echo(format_table([(cfg.model_name, res)]) + "\n")


@app.command("models")
def list_models() -> None:
    """List the models with their references."""
    from llmemf.models.base import REGISTRY, model_class

    for name in REGISTRY:
        try:
            cls = model_class(name)
            typer.echo(f"{name:9s} {cls.summary}\n{'':9s} [{cls.reference}]")
        except KeyError as e:
            typer.echo(f"{name:9s} (not available: {e})")


@app.command()
def show(path: Path = typer.Argument(..., help="a dataset directory or a run directory")) -> None:
    """Print a dataset manifest or a run's results.json."""
    for name in ("manifest.json", "results.json"):
        if (path / name).exists():
            typer.echo(json.dumps(json.loads((path / name).read_text()), indent=2))
            return
    _fail(f"{path}: neither a dataset (manifest.json) nor a run (results.json)")


def _register_optional_commands() -> None:
    """Stage modules that add their own commands (features, experiments, serving)."""
    import importlib

    for module in ("llmemf.features.commands", "llmemf.experiments.commands", "llmemf.serving.commands"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name not in (module, module.rpartition(".")[0]):  # the stage (or its package) is not installed
                raise
            continue
        mod.register(app)


_register_optional_commands()


if __name__ == "__main__":
    app()
