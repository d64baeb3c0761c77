"""RecBole atomic files: export -> import gives back the same dataset; raw .inter files take `prepare log`'s construction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tiny_data import make_tiny_dataset
from typer.testing import CliRunner

from llmemf.data.dataset import Dataset, DatasetError
from llmemf.data.logs import LogOptions, SplitOptions, import_log
from llmemf.data.recbole import export_recbole, import_recbole, read_atomic

OPTS = dict(min_count=3, min_per_domain=2, max_len=8, eval_fraction=0.15)


def awkward_dataset() -> Dataset:
    """Leave-one-out splits (a user in all three), ids not in original-id order, domains not in sorted order, odd titles."""
    ds = make_tiny_dataset(n_x=12, n_y=15, n_users=30, seed=3)
    n = ds.n_items
    ds.items["original_id"] = [f"Z{n - i:04d}" for i in range(n)]  # descending: the import must keep the .item order
    ds.items["title"] = [f"Crème brûlée n°{i}\twith a tab" if i % 5 == 0 else (None if i % 7 == 0 else f"item {i}") for i in range(n)]
    ds.items["image"] = [f"https://img/{i}.jpg" if i % 2 else None for i in range(n)]
    ds.manifest.domains[0].name, ds.manifest.domains[1].name = "Movie", "Book"
    return ds


def test_export_import_round_trip(tmp_path):
    ds = awkward_dataset()
    ds.save(tmp_path / "ds")
    ds = Dataset.load(tmp_path / "ds")
    written = export_recbole(ds, tmp_path / "rb")
    assert sorted(p.name for p in written) == ["tiny.inter", "tiny.item", "tiny.test.inter", "tiny.train.inter", "tiny.valid.inter"]
    header = (tmp_path / "rb" / "tiny.inter").read_text().splitlines()[0]
    assert header == "user_id:token\titem_id:token\ttimestamp:float\tdomain:token"
    back, report = import_recbole(tmp_path / "rb")
    assert report.layout == "pre-split" and back.domain_names == ["Movie", "Book"] and back.manifest.name == "tiny"
    back.save(tmp_path / "back")
    assert back.manifest.content_hash == ds.manifest.content_hash
    for s in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(back.splits[s], ds.splits[s], check_dtype=False)
    pd.testing.assert_series_equal(back.items["original_id"], ds.items["original_id"])

    def text(col, tab=" "):
        return [t.replace("\t", tab) if isinstance(t, str) else None for t in col]

    assert text(back.items["title"]) == text(ds.items["title"])  # tabs become spaces: atomic files have no quoting
    assert text(back.items["image"]) == text(ds.items["image"]) and sum(t is None for t in text(back.items["title"])) == 3


def raw_rows(seed=0, n_users=50):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(0, 10**6))
        for j in range(int(rng.integers(6, 14))):
            dom = "Food" if j % 2 == 0 else "Kitchen"
            rows.append((f"u{u}", f"{dom[0]}{int(rng.integers(8))}", dom, start + 60 * j))
    return rows


def write_inter(path, rows, with_domain):
    path.parent.mkdir(parents=True, exist_ok=True)
    head = "user_id:token\titem_id:token\trating:float\ttimestamp:float" + ("\tdomain:token" if with_domain else "")
    body = [f"{u}\t{i}\t5.0\t{t}.0" + (f"\t{d}" if with_domain else "") for u, i, d, t in rows]
    path.write_text("\n".join([head, *body]) + "\n")


@pytest.mark.parametrize("layout", ["single", "cdr-dirs", "cdr-files"])
def test_raw_inter_files_take_the_log_importers_construction(tmp_path, layout):
    rows = raw_rows()
    log = tmp_path / "log.csv"
    pd.DataFrame(rows, columns=["user", "item", "domain", "timestamp"]).to_csv(log, index=False)
    want, _ = import_log(log, LogOptions(**OPTS))
    rb = tmp_path / "rb"
    if layout == "single":
        write_inter(rb / "fk.inter", rows, with_domain=True)
        (rb / "fk.item").write_text("item_id:token\tdomain:token\ttitle:token_seq\nF1\tFood\tGreen tea\n")
    else:
        for d in ("Food", "Kitchen"):
            write_inter(rb / d / f"{d}.inter" if layout == "cdr-dirs" else rb / f"{d}.inter", [r for r in rows if r[2] == d], with_domain=False)
    got, report = import_recbole(rb, SplitOptions(**OPTS))
    assert got.domain_names == ["Food", "Kitchen"] and report.layout == layout.split("-")[0]
    assert got.items["original_id"].tolist() == want.items["original_id"].tolist()
    for s in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(got.splits[s], want.splits[s])
    assert "filter to fixed point" in str(report)
    if layout == "single":
        assert got.items.set_index("original_id").loc["F1", "title"] == "Green tea"


def test_cdr_layout_export_reads_back(tmp_path):
    ds = awkward_dataset()
    written = export_recbole(ds, tmp_path / "cdr", layout="cdr")
    assert sorted(str(p.relative_to(tmp_path / "cdr")) for p in written) == [
        "Book/Book.inter",
        "Book/Book.item",
        "Movie/Movie.inter",
        "Movie/Movie.item",
    ]
    inter = read_atomic(tmp_path / "cdr" / "Movie" / "Movie.inter")
    assert list(inter.columns) == ["user_id", "item_id", "timestamp"]
    back, report = import_recbole(
        tmp_path / "cdr", SplitOptions(min_count=1, min_per_domain=1, max_len=50, eval_fraction=0.1), domains=("Movie", "Book")
    )
    assert report.layout == "cdr" and back.domain_names == ["Movie", "Book"]
    assert set(back.items["original_id"]) <= set(ds.items["original_id"])


def test_malformed_atomic_files_name_file_and_line(tmp_path):
    rb = tmp_path / "rb"
    rb.mkdir()
    (rb / "x.inter").write_text("user_id\titem_id:token\ttimestamp:float\nu\ti\t1\n")
    with pytest.raises(DatasetError, match=r"x.inter:1: column 1 header 'user_id'"):
        import_recbole(rb)
    (rb / "x.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu\ti\t1\n")
    with pytest.raises(DatasetError, match="needs a domain field"):
        import_recbole(rb)
    (rb / "x.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\tdomain:token\nu\ti\t1\tA\nu\ti\tnever\tB\n")
    with pytest.raises(DatasetError, match=r"x.inter:3: missing user_id, item_id, domain or a numeric timestamp"):
        import_recbole(rb)


def test_cli_export_then_prepare_recbole(tmp_path):
    from llmemf.cli import app

    awkward_dataset().save(tmp_path / "ds")
    runner = CliRunner()
    res = runner.invoke(app, ["export", "recbole", str(tmp_path / "ds"), str(tmp_path / "rb")])
    assert res.exit_code == 0, res.output
    assert "tiny.train.inter" in res.output
    res = runner.invoke(app, ["prepare", "recbole", str(tmp_path / "rb"), str(tmp_path / "back")])
    assert res.exit_code == 0, res.output
    assert "split taken as given" in res.output
    assert Dataset.load(tmp_path / "back").manifest.content_hash == Dataset.load(tmp_path / "ds").manifest.content_hash
    missing = runner.invoke(app, ["prepare", "recbole", str(tmp_path / "nope"), str(tmp_path / "o")])
    assert missing.exit_code == 2 and "nope" in missing.output
