"""The fault matrix of docs/errors.md, one test per row: user errors are one line and exit 2 before any
work is done, data identity is checked wherever features are read, and faults (dead image links,
failing LLM servers, a second concurrent run) are recorded and survived. Servers are real, on loopback."""

from __future__ import annotations

import fcntl
import sqlite3
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from tiny_data import make_tiny_dataset
from typer.testing import CliRunner

from llmemf.cli import app
from llmemf.features.store import Feature, FeatureError, FeatureManifest, inputs_hash, load_feature, save_feature

sys.path.insert(0, str(Path(__file__).parent / "features"))
from servers import GOOD, OTHER, openai_server, read_log, serve_images  # noqa: E402

FAST = ["train.threads=1", "train.progress=false", "eval.n_negatives=20"]
REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 2, f"exit {res.exit_code}: {res.stdout!r} {res.stderr!r} {res.exception!r}"
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def ds_dir(tmp_path) -> Path:
    make_tiny_dataset(n_x=10, n_y=12, n_users=20).save(tmp_path / "ds")
    return tmp_path / "ds"


def train(ds, out, *overrides, model="pop"):
    return run("train", "--model", model, "--dataset", ds, "--out", out, *FAST, *overrides)


# ---- user errors: datasets ------------------------------------------------------------------------


def _damage(kind: str, ds: Path) -> Path:
    if kind == "nonexistent":
        return ds.parent / "nope"
    if kind == "empty directory":
        (ds.parent / "empty").mkdir()
        return ds.parent / "empty"
    if kind == "truncated manifest":
        (ds / "manifest.json").write_text((ds / "manifest.json").read_text()[:40])
    elif kind == "truncated parquet":
        (ds / "train.parquet").write_bytes((ds / "train.parquet").read_bytes()[:200])
    elif kind == "renamed column":
        t = pq.read_table(ds / "train.parquet")
        pq.write_table(t.rename_columns(["userid", "items", "timestamps"]), ds / "train.parquet")
    elif kind == "missing table":
        (ds / "valid.parquet").unlink()
    return ds


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("nonexistent", "no manifest.json"),
        ("empty directory", "no manifest.json"),
        ("truncated manifest", "manifest.json: unreadable"),
        ("truncated parquet", "train.parquet: unreadable"),
        ("renamed column", "no column(s) ['user']"),
        ("missing table", "valid.parquet: missing"),
    ],
)
def test_broken_dataset_is_one_line(kind, needle, ds_dir, tmp_path):
    one_line_error(train(_damage(kind, ds_dir), tmp_path / "run"), needle, "llmemf prepare")


# ---- user errors: configs, checked before any data loads ------------------------------------------


@pytest.mark.parametrize(
    "model, overrides, needle",
    [
        ("nope", [], "unknown model 'nope'"),
        ("pop", ["train.epoch=3"], "Did you mean: 'epochs'?"),
        ("pop", ["train.lr=abc"], "train.lr"),
        ("sasrec", ["model.hidden=abc"], "model.hidden='abc': expected int"),
        ("sasrec", ["train.lr=0"], "train.lr=0.0: must be > 0"),
        ("sasrec", ["train.batch_size=0"], "train.batch_size=0: must be > 0"),
        ("sasrec", ["model.hidden=0"], "model.hidden=0: must be > 0"),
        ("sasrec", ["model.hidden=10", "model.n_heads=3"], "multiple of model.n_heads=3"),
        ("sasrec", ["eval.protocols=[foo]"], "eval.protocols"),
        ("sasrec", ["train.epochs=-3"], "train.epochs=-3: must be >= 0"),
        ("sasrec", ["train.epochs=0"], "needs at least 1 epoch"),
        ("sasrec", ["train.patience=0"], "would stop before its first epoch"),
        ("llmemf", ["model.modalities=[img]"], "must include 'id'"),
    ],
)
def test_bad_config_is_one_line_before_any_work(model, overrides, needle, tmp_path):
    # The dataset does not even exist: the config is refused first, and nothing is trained or written.
    res = train(tmp_path / "no-dataset", tmp_path / "run", *overrides, model=model)
    one_line_error(res, needle)
    assert not (tmp_path / "run").exists()


def test_closed_form_model_accepts_zero_epochs(ds_dir, tmp_path):
    assert train(ds_dir, tmp_path / "run", "train.epochs=0").exit_code == 0


# ---- user errors: evaluate / recommend ------------------------------------------------------------


@pytest.fixture
def pop_run(ds_dir, tmp_path) -> Path:
    assert train(ds_dir, tmp_path / "pop").exit_code == 0
    return tmp_path / "pop"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--split", "training"], "--split 'training'"),
        (["--protocol", "foo"], "--protocol 'foo'"),
    ],
)
def test_evaluate_bad_choice(args, needle, pop_run):
    one_line_error(run("evaluate", "--checkpoint", pop_run, *args), needle)


def test_missing_checkpoint(tmp_path):
    one_line_error(run("evaluate", "--checkpoint", tmp_path / "none"), "no such run directory")
    (tmp_path / "half").mkdir()
    one_line_error(run("recommend", "--checkpoint", tmp_path / "half", "--history", "0", "--domain", "X"), "not a llmemf run directory")


def test_recommend_k_must_be_positive(pop_run):
    one_line_error(run("recommend", "--checkpoint", pop_run, "--history", "0,1", "--domain", "X", "-k", "0"), "-k 0")


# ---- user errors: importers -----------------------------------------------------------------------


def _scenario(d: Path) -> Path:
    d.mkdir()
    for name, prefix in (("Alist.txt", "A"), ("Blist.txt", "B")):
        (d / name).write_text("".join(f"r{i}\t{prefix}{i}\t{i}\n" for i in range(3)))
    for f in ("traindata_new.txt", "validdata_new.txt", "testdata_new.txt"):
        (d / f).write_text("u1\t0\t0|1|d|\t3|2|d|\t1|3|d|\n")
    return d


def test_c2dsr_non_utf8_and_empty_split(tmp_path):
    sc = _scenario(tmp_path / "sc")
    (sc / "Blist.txt").write_bytes(b"r0\tB0\t0\nr1\t\xff\xfeB\t1\n")
    one_line_error(run("prepare", "c2dsr", sc, tmp_path / "out"), "Blist.txt:2: not UTF-8")
    sc2 = _scenario(tmp_path / "sc2")
    (sc2 / "testdata_new.txt").write_text("")
    one_line_error(run("prepare", "c2dsr", sc2, tmp_path / "out"), "testdata_new.txt: no sequences")
    assert not (tmp_path / "out").exists()


def test_empty_csv(tmp_path):
    (tmp_path / "log.csv").write_text("")
    one_line_error(run("prepare", "log", tmp_path / "log.csv", tmp_path / "out"), "log.csv: empty file")


# ---- identity -------------------------------------------------------------------------------------


def _feature(root: Path, name: str, ds) -> None:
    """A feature written as `llmemf embed` writes it: with the dataset's hash and its inputs' hash."""
    cols = {"img": ["image"], "txt_llm": ["title", "llm_text"]}[name]
    m = FeatureManifest(name=name, encoder="test", weights="none", dim=8, n_items=ds.n_items, dtype="float32")
    m.dataset_hash, m.inputs, m.inputs_hash = ds.manifest.content_hash, cols, inputs_hash(ds.items, cols)
    rng = np.random.default_rng(0)
    save_feature(root, Feature(m, rng.normal(size=(ds.n_items, 8)).astype(np.float32), np.ones(ds.n_items, bool)))


def test_features_of_a_regenerated_dataset_are_refused(tmp_path):
    old = make_tiny_dataset(seed=0)
    old.save(tmp_path / "ds")
    for name in ("img", "txt_llm"):
        _feature(tmp_path / "ds", name, old)
    assert load_feature(tmp_path / "ds", "img").manifest.dataset_hash == old.manifest.content_hash
    new = make_tiny_dataset(seed=1)  # same item count, other sequences: written in place behind prepare's back
    new.save(tmp_path / "ds")
    with pytest.raises(FeatureError, match=f"{old.manifest.content_hash}.*{new.manifest.content_hash}.*llmemf embed"):
        load_feature(tmp_path / "ds", "img")
    line = one_line_error(train(tmp_path / "ds", tmp_path / "run", "train.epochs=1", "model.d_id=8", model="llmemf"), "llmemf embed")
    assert old.manifest.content_hash in line and new.manifest.content_hash in line


def test_embed_recomputes_for_a_regenerated_dataset_with_the_same_texts(tmp_path):
    """The way out the error names works: embed does not call the old feature up to date."""
    from feature_helpers import make_image_dataset

    from llmemf.features.embed import EmbedConfig, embed

    make_image_dataset(tmp_path / "ds", n_x=6, n_y=6, seed=0)
    cfg = EmbedConfig(features=["txt_title"], progress=False)
    assert list(embed(tmp_path / "ds", cfg, log=lambda s: None).written) == ["txt_title"]
    make_image_dataset(tmp_path / "ds", n_x=6, n_y=6, seed=1)  # same titles, other users: another dataset
    with pytest.raises(FeatureError, match="was computed for dataset"):
        load_feature(tmp_path / "ds", "txt_title")
    assert list(embed(tmp_path / "ds", cfg, log=lambda s: None).written) == ["txt_title"]
    assert load_feature(tmp_path / "ds", "txt_title").manifest.n_items == 12


def test_features_computed_before_the_text_changed_are_refused(tmp_path):
    ds = make_tiny_dataset()
    ds.save(tmp_path / "ds")
    _feature(tmp_path / "ds", "txt_llm", ds)
    ds.items["llm_text"] = ["new text"] * ds.n_items  # enrich ran after embed
    ds.save_items()
    with pytest.raises(FeatureError, match="title/llm_text.*llmemf embed"):
        load_feature(tmp_path / "ds", "txt_llm")


def test_prepare_into_a_dataset_refuses_then_overwrite_removes_what_it_owned(tmp_path):
    sc = _scenario(tmp_path / "sc")
    out = tmp_path / "out"
    assert run("prepare", "c2dsr", sc, out).exit_code == 0
    (out / "features").mkdir()
    (out / "features" / "img.npy").write_bytes(b"old")
    (out / "llm_cache.sqlite").write_bytes(b"cache")
    before = (out / "manifest.json").read_text()
    one_line_error(run("prepare", "c2dsr", sc, out), "already holds a dataset", "--overwrite")
    assert (out / "manifest.json").read_text() == before and (out / "features/img.npy").exists()
    res = run("prepare", "c2dsr", sc, out, "--overwrite")
    assert res.exit_code == 0 and "removed the old dataset's" in res.stdout
    assert not (out / "features").exists() and (out / "manifest.json").exists()
    assert (out / "llm_cache.sqlite").read_bytes() == b"cache"  # keyed by prompt + model: right for any dataset
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    one_line_error(run("prepare", "c2dsr", sc, tmp_path / "mine", "--overwrite"), "not a llmemf dataset")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"  # nothing of the user's is deleted


def _enrich(ds, url, model, *extra):
    return run("enrich", ds, "--backend", "openai", "--base-url", url, "--model", model, "--order", "id", "--no-progress", *extra)


def test_enrich_never_mixes_two_models(tmp_path):
    make_tiny_dataset(n_x=3, n_y=3, n_users=6).save(tmp_path / "ds")
    with openai_server("scripted", tmp_path / "server.log") as url:
        first = _enrich(tmp_path / "ds", url, "model-a", "--limit", "4")
        assert first.exit_code == 0, first.stderr
        assert "4 by openai:model-a" in first.stdout
        one_line_error(_enrich(tmp_path / "ds", url, "model-b", "--limit", "2"), "4 items have LLM text by openai:model-a", "--replace-model")
        n_calls = len(read_log(tmp_path / "server.log"))
        assert n_calls == 4  # the refusal sent nothing
        again = _enrich(tmp_path / "ds", url, "model-b", "--limit", "2", "--replace-model")
        assert again.exit_code == 0, again.stderr
    items = pd.read_parquet(tmp_path / "ds/items.parquet")
    assert items["llm_model"].dropna().unique().tolist() == ["openai:model-b"]
    assert items["llm_text"].notna().sum() == 4  # the 4 old items regenerated (2 of them selected anyway)
    assert "4 by openai:model-b" in again.stdout


# ---- faults ---------------------------------------------------------------------------------------


def test_enrich_exits_non_zero_with_the_count_when_items_fail(tmp_path):
    ds = make_tiny_dataset(n_x=2, n_y=2, n_users=6)
    ds.items["title"] = ["ALWAYS500 a", "fine b", "ALWAYS500 c", "fine d"]
    ds.save(tmp_path / "ds")
    with openai_server("scripted", tmp_path / "server.log") as url:
        res = _enrich(tmp_path / "ds", url, "m", "--max-retries", "0")
    assert res.exit_code == 3
    assert [x for x in res.stderr.splitlines() if x.strip()] == [
        "error: 2 of 4 items failed after retries (recorded in the cache's failures table); rerun `llmemf enrich` to retry them"
    ]
    assert len(read_log(tmp_path / "server.log")) == 4  # 1 try each: bounded


def test_second_enrich_on_a_dataset_is_refused(tmp_path):
    make_tiny_dataset(n_x=2, n_y=2, n_users=6).save(tmp_path / "ds")
    with open(tmp_path / "ds/.enrich.lock", "a") as held:  # what a running enrich holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        one_line_error(run("enrich", tmp_path / "ds", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"), "is locked")
        fcntl.flock(held, fcntl.LOCK_UN)


def test_images_record_every_failure_and_keep_the_downloads_in_flight(tmp_path):
    ds = make_tiny_dataset(n_x=3, n_y=3, n_users=6)
    with serve_images() as (base, hits):
        tls = base.replace("http://", "https://")  # TLS to a plain-HTTP server: the handshake fails
        ds.items["image"] = [f"{base}/loop.png", f"{tls}/good.png", f"{base}/slow-1.png", f"{base}/slow-other.png", f"{base}/slow-2.png", None]
        ds.save(tmp_path / "ds")
        args = ["images", tmp_path / "ds", "--no-progress", "--max-retries", "1", "--timeout", "5"]
        res = run(*args)
        assert res.exit_code == 0, res.stdout + res.stderr
        assert "3 downloaded, 2 failed" in res.stdout and "TooManyRedirects" in res.stdout
        with sqlite3.connect(tmp_path / "ds/images_store/index.sqlite") as db:
            failed = dict(db.execute("SELECT url, error FROM failures").fetchall())
        assert set(failed) == {f"{base}/loop.png", f"{tls}/good.png"} and "TooManyRedirects" in failed[f"{base}/loop.png"]
        stored = sorted(p.name for p in (tmp_path / "ds/images_store").glob("*.png"))
        assert len(stored) == 2  # slow-1 and slow-2 are the same bytes: stored once; slow-other
        n_loop = hits["/loop.png"]
        assert n_loop <= 25  # httpx gives up after 20 redirects; permanent: not retried
        rerun = run(*args)  # recorded failures are skipped
        assert rerun.exit_code == 0 and "2 URLs failed in an earlier run and were skipped" in rerun.stdout
        assert hits["/loop.png"] == n_loop
        retry = run(*args, "--retry-failed")
        assert retry.exit_code == 0 and "2 failed" in retry.stdout and hits["/loop.png"] > n_loop
    assert {(tmp_path / "ds/images_store" / n).read_bytes() for n in stored} == {GOOD, OTHER}


def test_every_imported_package_is_declared():
    """What the code imports is what pyproject declares (scipy came only through sentence-transformers)."""
    import ast
    import importlib.metadata as md
    import re

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    makefile = (REPO / "Makefile").read_text()  # the --no-deps installs
    names = {re.split(r"[<>=!\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}
    names |= {m.lower().replace("_", "-") for m in re.findall(r'"([A-Za-z0-9_.-]+)>=', makefile)}
    modules = set()
    for path in (REPO / "src/llmemf").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    dists = md.packages_distributions()
    undeclared = {
        m: dists.get(m)
        for m in modules - set(sys.stdlib_module_names) - {"llmemf"}
        if not {d.lower().replace("_", "-") for d in dists.get(m, [m])} & names
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    assert "scipy" in {re.split(r"[<>=]", d)[0] for d in project["dependencies"]}


def test_stage_commands_are_registered_without_a_fallback():
    text = (REPO / "src/llmemf/cli.py").read_text()
    assert "ModuleNotFoundError" not in text
    names = {c.name for c in __import__("typer").main.get_command(app).commands.values()}
    assert {"enrich", "images", "embed", "compare", "ablate", "tune", "report", "recommend"} <= names
