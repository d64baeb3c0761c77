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


OVERWRITE_HELP = "replace the dataset already in OUT (its tables and features/ are removed first)"


def _save_prepared(ds, out: Path, overwrite: bool) -> None:
    """Remove what an old dataset in OUT owned (refused without --overwrite), then write ``ds``."""
    from llmemf.data.dataset import prepare_output_dir

    removed = prepare_output_dir(out, overwrite)
    if removed:
        typer.echo(f"--overwrite: removed the old dataset's {', '.join(removed)}")
    ds.save(out)


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


def _domain_names(spec: str | None) -> tuple[str, str] | None:
    if spec is None:
        return None
    names = tuple(n.strip() for n in spec.split(","))
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise UserError(f"--domains {spec!r}: give two distinct names separated by a comma, e.g. Food,Kitchen")
    return names


@prepare_app.command("c2dsr")
def prepare_c2dsr(
    directory: Path = typer.Argument(..., help="C2DSR scenario directory (Alist.txt, Blist.txt, *data_new.txt)"),
    out: Path = typer.Argument(..., help="output dataset directory"),
    items: Path | None = typer.Option(None, "--items", help="item metadata CSV/TSV/Parquet keyed by ASIN / original_id"),
    domains: str | None = typer.Option(None, help="domain names 'X,Y' (default: from the directory name)"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Import a C2DSR-format scenario (e.g. Food-Kitchen)."""
    from llmemf.data.c2dsr import import_c2dsr
    from llmemf.data.dataset import prepare_output_dir

    prepare_output_dir(out, overwrite, remove=False)  # refuse before the work, remove after it succeeded
    names = _domain_names(domains)
    ds = import_c2dsr(directory, names, items)
    _save_prepared(ds, out, overwrite)
    _summarise_dataset(ds, out)


@prepare_app.command("synthetic")
def prepare_synthetic(
    out: Path = typer.Argument(Path("data/synthetic"), help="output dataset directory"),
    overrides: list[str] = typer.Argument(None, help="size/seed overrides, e.g. n_users=2000 seed=1"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Generate the embedded two-domain shop (items, titles, descriptions, PNG images, users)."""
    from llmemf.data.dataset import prepare_output_dir
    from llmemf.data.synthetic import SyntheticConfig, generate_synthetic

    cfg = SyntheticConfig.from_overrides(overrides or [])
    removed = prepare_output_dir(out, overwrite)  # the generator writes images into OUT as it goes
    if removed:
        typer.echo(f"--overwrite: removed the old dataset's {', '.join(removed)}")
    ds = generate_synthetic(cfg, out)
    _summarise_dataset(ds, out)


# The filters and time split every log-like importer shares (data/logs.py build_splits); pre-split RecBole files skip them.
MIN_COUNT = typer.Option(10, help="drop users and items with fewer interactions (to a fixed point)")
MIN_PER_DOMAIN = typer.Option(3, help="keep users with at least this many items in each domain")
MAX_LEN = typer.Option(15, help="cap sequences at this many most recent interactions")
EVAL_FRACTION = typer.Option(0.1, help="fraction of sequences (the latest) for validation, and again for test")


@prepare_app.command("log")
def prepare_log(
    file: Path = typer.Argument(..., help="interaction log CSV/TSV/Parquet: user, item, domain, timestamp"),
    out: Path = typer.Argument(..., help="output dataset directory"),
    items: Path | None = typer.Option(None, "--items", help="item metadata file keyed by item id"),
    domains: str | None = typer.Option(None, help="the two domain values, in X,Y order (default: sorted)"),
    min_count: int = MIN_COUNT,
    min_per_domain: int = MIN_PER_DOMAIN,
    max_len: int = MAX_LEN,
    eval_fraction: float = EVAL_FRACTION,
    max_bad_fraction: float = typer.Option(0.01, help="fail if more than this fraction of rows is unusable"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Build a dataset from a generic two-domain interaction log with the paper's filters and split."""
    from llmemf.data.dataset import prepare_output_dir
    from llmemf.data.logs import LogOptions, import_log

    prepare_output_dir(out, overwrite, remove=False)
    opts = LogOptions(
        domains=_domain_names(domains),
        min_count=min_count,
        min_per_domain=min_per_domain,
        max_len=max_len,
        eval_fraction=eval_fraction,
        max_bad_fraction=max_bad_fraction,
    )
    ds, report = import_log(file, opts, items_file=items)
    _save_prepared(ds, out, overwrite)
    typer.echo(report.summary())
    _summarise_dataset(ds, out)


@prepare_app.command("amazon")
def prepare_amazon(
    out: Path = typer.Argument(..., help="output dataset directory"),
    domain: list[str] = typer.Option(..., "--domain", help="NAME=REVIEWS[:META], twice (X first); 2014/2018/2023 dumps, gzip or plain"),
    name: str | None = typer.Option(None, help="dataset name (default: the domain names joined by '-')"),
    min_count: int = MIN_COUNT,
    min_per_domain: int = MIN_PER_DOMAIN,
    max_len: int = MAX_LEN,
    eval_fraction: float = EVAL_FRACTION,
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Build a dataset from Amazon review dumps (+ metadata) with the filters and time split of `prepare log`."""
    from llmemf.data.amazon import DomainSource, import_amazon
    from llmemf.data.dataset import prepare_output_dir
    from llmemf.data.logs import SplitOptions

    prepare_output_dir(out, overwrite, remove=False)
    opts = SplitOptions(min_count=min_count, min_per_domain=min_per_domain, max_len=max_len, eval_fraction=eval_fraction)
    ds, report = import_amazon([DomainSource.parse(d) for d in domain], opts, name=name)
    _save_prepared(ds, out, overwrite)
    typer.echo(report.summary())
    _summarise_dataset(ds, out)


@prepare_app.command("recbole")
def prepare_recbole(
    directory: Path = typer.Argument(
        ..., help="RecBole atomic files: NAME.inter (+ .item), per-domain DOMAIN/DOMAIN.inter, or NAME.train/valid/test.inter"
    ),
    out: Path = typer.Argument(..., help="output dataset directory"),
    domains: str | None = typer.Option(None, help="the two domain values, in X,Y order (default: sorted)"),
    name: str | None = typer.Option(None, help="dataset name (default: the directory's name)"),
    min_count: int = MIN_COUNT,
    min_per_domain: int = MIN_PER_DOMAIN,
    max_len: int = MAX_LEN,
    eval_fraction: float = EVAL_FRACTION,
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Build a dataset from RecBole atomic files; pre-split benchmark files are taken as they are."""
    from llmemf.data.dataset import prepare_output_dir
    from llmemf.data.logs import SplitOptions
    from llmemf.data.recbole import import_recbole

    prepare_output_dir(out, overwrite, remove=False)
    opts = SplitOptions(min_count=min_count, min_per_domain=min_per_domain, max_len=max_len, eval_fraction=eval_fraction)
    ds, report = import_recbole(directory, opts, domains=tuple(domains.split(",")) if domains else None, name=name)
    _save_prepared(ds, out, overwrite)
    typer.echo(report)
    _summarise_dataset(ds, out)


@prepare_app.command("subset")
def prepare_subset(
    dataset: Path = typer.Argument(..., help="an existing dataset directory"),
    out: Path = typer.Argument(..., help="output dataset directory"),
    top_items: int = typer.Option(..., "--top-items", help="keep this many of each domain's most frequent training items"),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Cut a dataset down to each domain's most popular items, keeping its users, splits and protocol."""
    from llmemf.data.dataset import Dataset, prepare_output_dir
    from llmemf.data.subset import popular_subset

    if Path(out).resolve() == Path(dataset).resolve():
        raise UserError(f"{out}: the subset cannot replace the dataset it is cut from; choose another output directory")
    prepare_output_dir(out, overwrite, remove=False)
    ds = popular_subset(Dataset.load(dataset), top_items)
    _save_prepared(ds, out, overwrite)
    _summarise_dataset(ds, out)
    typer.echo("  feature files are not carried over: run `llmemf embed` on the subset")


@app.command()
def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML run config"),
    model: str | None = typer.Option(None, "--model", "-m", help="model name (see `llmemf models`)"),
    dataset: Path | None = typer.Option(None, "--dataset", "-d"),
    out: Path | None = typer.Option(None, "--out", "-o", help="run directory"),
    fresh: bool = typer.Option(False, "--fresh", help="ignore an existing last.pt instead of resuming"),
    nproc: int = typer.Option(0, "--nproc", help="train on N processes of this machine (runs torchrun; see docs/distributed.md)"),
    nnodes: int = typer.Option(1, "--nnodes", help="with --nproc: machines in the job (run this command on each)"),
    rdzv_endpoint: str = typer.Option("", "--rdzv-endpoint", help="with --nnodes > 1: HOST:PORT of the first node, the same everywhere"),
    rdzv_timeout: float = typer.Option(300.0, "--rdzv-timeout", help="seconds to wait for every node to join"),
    overrides: list[str] = typer.Argument(None, help="key=value config overrides, e.g. train.lr=3e-4 model.hidden=128"),
) -> None:
    """Train one model; resumes from RUN_DIR/last.pt if present. Prints the per-domain test tables."""
    from llmemf.config import RunConfig, load_config
    from llmemf.distributed import env_world, teardown
    from llmemf.experiments.runner import train_stages

    if nproc:
        from llmemf.training.launch import torchrun_train

        args = [f"--{k}={v}" for k, v in (("config", config), ("model", model), ("dataset", dataset), ("out", out)) if v is not None]
        rc = torchrun_train(nproc, [*args, *(["--fresh"] if fresh else []), *(overrides or [])], nnodes, rdzv_endpoint, rdzv_timeout)
        raise typer.Exit(rc)
    world = env_world()
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
    if world.is_main:
        typer.echo(f"training {cfg.model_name} on {cfg.dataset} -> {cfg.out}" + (f" on {world.size} processes" if world.distributed else ""))
    # a model's pre-training stage first (Tri-CDR)
    result = train_stages(cfg, resume=not fresh, log=typer.echo if world.is_main else (lambda _: None))
    teardown()
    if not world.is_main:
        return
    trained = f"best epoch {result.best_epoch}" if result.best_epoch > 0 else "closed-form model (no training epochs)"
    typer.echo(f"\n{trained}; run directory {result.run_dir}\n")
    typer.echo(result.table(cfg.model_name))


@app.command()
def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="run directory or a .pt file inside one"),
    split: str = typer.Option("test", help="valid | test"),
    protocol: list[str] = typer.Option(["c2dsr", "full"], help="c2dsr and/or full"),
    dataset: Path | None = typer.Option(None, help="the dataset at another path (its content hash must be the run's)"),
) -> None:
    """Evaluate a trained model and print the per-domain tables."""
    from llmemf.distributed import setup, teardown
    from llmemf.evaluation.protocols import PROTOCOLS, format_table
    from llmemf.experiments.commands import check_run
    from llmemf.training.trainer import evaluate_all, load_run

    if split not in ("valid", "test"):
        raise UserError(f"--split {split!r}: choose valid or test")
    if bad := [p for p in protocol if p not in PROTOCOLS]:
        raise UserError(f"--protocol {bad[0]!r}: choose from {', '.join(PROTOCOLS)}")
    check_run(checkpoint)
    cfg, bundle, model = load_run(checkpoint, dataset=str(dataset) if dataset else None)
    cfg.eval.protocols = list(protocol)
    world, cfg.device = setup(cfg.device)  # under torchrun: every rank scores its share of the users
    results = evaluate_all(model.to(cfg.device), cfg, bundle, split, world)
    teardown()
    for res in results.values() if world.is_main else ():
        typer.echo(format_table([(cfg.model_name, res)]) + "\n")


@app.command("models")
def list_models() -> None:
    """List the models with their references."""
    from llmemf.models.base import REGISTRY, model_class

    for name in REGISTRY:  # an import error is a bug: it is raised, never hidden
        cls = model_class(name)
        typer.echo(f"{name:9s} {cls.summary}\n{'':9s} [{cls.reference}]")


@app.command()
def show(path: Path = typer.Argument(..., help="a dataset directory or a run directory")) -> None:
    """Print a dataset manifest or a run's results.json."""
    for name in ("manifest.json", "results.json"):
        if (path / name).exists():
            try:
                doc = json.loads((path / name).read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise UserError(f"{path / name}: unreadable JSON ({e}); the file is damaged") from None
            typer.echo(json.dumps(doc, indent=2))
            return
    raise UserError(f"{path}: neither a dataset (manifest.json) nor a run (results.json)")


export_app = typer.Typer(no_args_is_help=True, help="Write a dataset in another library's format.")
app.add_typer(export_app, name="export")


@export_app.command("recbole")
def export_recbole_cmd(
    dataset: Path = typer.Argument(..., help="a dataset directory"),
    out: Path = typer.Argument(..., help="output directory (RecBole's data_path/NAME)"),
    layout: str = typer.Option("single", help="single: NAME.inter with a domain field + the split files; cdr: DOMAIN/DOMAIN.inter per domain"),
) -> None:
    """Write a dataset as RecBole atomic files (field:type headers), so it can be run in RecBole and imported back."""
    from llmemf.data.dataset import Dataset
    from llmemf.data.recbole import export_recbole

    for path in export_recbole(Dataset.load(dataset), out, layout=layout):
        typer.echo(f"wrote {path}")


def _register_stage_commands() -> None:
    """Stage modules that add their own commands (their heavy imports stay inside the commands)."""
    from llmemf.experiments import commands as experiment_commands
    from llmemf.features import commands as feature_commands
    from llmemf.serving import commands as serving_commands

    feature_commands.register(app)
    experiment_commands.register(app)
    serving_commands.register(app)


_register_stage_commands()


def main() -> None:
    """The `llmemf` console script: choose the memory allocator first (llmemf.runtime), then run."""
    from llmemf import runtime

    runtime.setup_allocator()
    app()


if __name__ == "__main__":
    main()
