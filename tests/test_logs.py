"""`prepare log`: the paper's filters on hand-made logs, the time split, bad rows, ISO dates, the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from llmemf.data.dataset import Dataset, DatasetError
from llmemf.data.logs import LogOptions, import_log


def write_log(path, rows, header=("user", "item", "domain", "timestamp"), sep=","):
    lines = [sep.join(header)] + [sep.join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def core_rows(n_users=10, items_x=("x1", "x2", "x3"), items_y=("y1", "y2", "y3"), t0=1000):
    """Every core user touches every core item; user k's last interaction is at t0 + 100k + 5."""
    rows = []
    for k in range(n_users):
        seq = [(it, "X") for it in items_x] + [(it, "Y") for it in items_y]
        for j, (it, dom) in enumerate(seq):
            rows.append((f"u{k:02d}", it, dom, t0 + 100 * k + j))
    return rows


def test_filter_iterates_to_a_fixed_point(tmp_path):
    rows = core_rows()
    # A chain that a single pass would keep: x9 is rare -> e loses its only X item -> e goes ->
    # y9 (seen by d and e) becomes rare -> d loses its only Y item -> d goes.
    rows += [("d", "x1", "X", 50), ("d", "y9", "Y", 51), ("e", "y9", "Y", 52), ("e", "x9", "X", 53)]
    opts = LogOptions(min_count=2, min_per_domain=1, eval_fraction=0.2)
    ds, report = import_log(write_log(tmp_path / "log.csv", rows), opts)
    users = set().union(*(set(ds.splits[s]["user"]) for s in ("train", "valid", "test")))
    assert users == {f"u{k:02d}" for k in range(10)}
    assert sorted(ds.items["original_id"]) == ["x1", "x2", "x3", "y1", "y2", "y3"]
    assert report.filter_rounds >= 3 and report.before == (12, 8, 64) and report.after == (10, 6, 60)
    assert "users 12 -> 10, items 8 -> 6" in report.summary()


def test_per_domain_minimum_and_global_ids(tmp_path):
    rows = core_rows()
    rows += [("f", it, "X", 10 + j) for j, it in enumerate(("x1", "x2", "x3", "x1"))] + [("f", "y1", "Y", 20)]
    rows += [("g", it, "Y", 10 + j) for j, it in enumerate(("y3", "y2", "y1"))] + [("g", "x2", "X", 30), ("g", "x3", "X", 31)]
    ds, _ = import_log(write_log(tmp_path / "log.csv", rows), LogOptions(min_count=2, min_per_domain=2, eval_fraction=0.2))
    users = set().union(*(set(ds.splits[s]["user"]) for s in ("train", "valid", "test")))
    assert "f" not in users and "g" in users  # f has one Y interaction, g has two of each
    # X items first, then Y, each domain in original-id order; originals kept.
    assert ds.items["original_id"].tolist() == ["x1", "x2", "x3", "y1", "y2", "y3"]
    assert ds.items["domain"].tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.domain_names == ["X", "Y"]


def random_log(seed=0, n_users=60, n_items=12, per_user=(8, 20)):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(0, 10_000))
        n = int(rng.integers(*per_user))
        for j in range(n):
            dom = "Food" if rng.random() < 0.5 else "Kitchen"
            rows.append((f"user{u}", f"{dom[0]}{int(rng.integers(n_items))}", dom, start + 7 * j + int(rng.integers(0, 3))))
    rng.shuffle(rows)  # a log is not grouped by user
    return rows


def test_time_split_has_no_leakage(tmp_path):
    rows = random_log()
    opts = LogOptions(min_count=3, min_per_domain=2, max_len=10, eval_fraction=0.15)
    ds, report = import_log(write_log(tmp_path / "log.tsv", rows, sep="\t"), opts)
    tr, va, te = (ds.splits[s] for s in ("train", "valid", "test"))
    assert not (set(tr["user"]) & set(va["user"])) and not (set(va["user"]) & set(te["user"])) and not (set(tr["user"]) & set(te["user"]))
    n_users = report.after[0]
    assert len(va) == len(te) == round(0.15 * n_users)
    cut = min(va["target_timestamp"].min(), te["target_timestamp"].min())
    assert cut == report.cut_time
    assert max(max(t) for t in tr["timestamps"]) < cut  # no training interaction at or after any eval target
    assert va["target_timestamp"].max() <= te["target_timestamp"].min()  # test users end latest
    # Each eval line is the user's max_len most recent interactions; the target is the latest.
    log = pd.DataFrame(rows, columns=["user", "item", "domain", "ts"])
    oid = ds.items["original_id"].to_numpy()
    for df in (va, te):
        for row in df.itertuples():
            full = log[log["user"] == row.user].sort_values("ts", kind="stable")
            assert row.target_timestamp == full["ts"].max()
            assert len(row.items) + 1 == min(len(full), 10)
            assert all(a <= b for a, b in zip(row.timestamps, list(row.timestamps[1:]) + [row.target_timestamp], strict=True))
            assert row.target_domain == (row.target >= ds.manifest.domains[0].n_items)
            assert oid[row.target][0] == ("F" if row.target_domain == 0 else "K")
    assert tr["items"].map(len).max() <= 10 and tr["items"].map(len).min() >= 2


def test_bad_rows_are_reported_with_lines_and_the_threshold_is_fatal(tmp_path):
    rows = core_rows()
    rows[3] = ("", "x1", "X", 5)  # file line 5 (header is line 1)
    rows[5] = ("u00", "x2", "Garden", 7)  # line 7
    rows[7] = ("u01", "x2", "X", "yesterday")  # line 9
    path = write_log(tmp_path / "log.csv", rows)
    opts = LogOptions(domains=("X", "Y"), min_count=2, min_per_domain=1, eval_fraction=0.2, max_bad_fraction=0.1)
    ds, report = import_log(path, opts)
    assert dict(report.bad) == {"missing user id": 1, "unknown domain": 1, "unparsable timestamp": 1}
    text = report.summary()
    for line in (5, 7, 9):
        assert f"{path}:{line}:" in text
    assert "'Garden'" in text and "'yesterday'" in text
    with pytest.raises(DatasetError, match=r"3 of 60 rows .*max_bad_fraction=0.01") as e:
        import_log(path, LogOptions(domains=("X", "Y"), min_count=2, min_per_domain=1, eval_fraction=0.2, max_bad_fraction=0.01))
    assert f"{path}:5:" in str(e.value)
    # Without --domains, a third domain value is an error that lists the values.
    with pytest.raises(DatasetError, match="3 distinct values"):
        import_log(path, LogOptions(min_count=2, min_per_domain=1, eval_fraction=0.2, max_bad_fraction=0.1))


def test_iso_timestamps_named_columns_and_metadata(tmp_path):
    rows = []
    for u, day0 in (("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)):
        for j, (it, dom) in enumerate((("p", "Books"), ("q", "Books"), ("r", "Movies"), ("s", "Movies"))):
            rows.append((u, it, dom, f"2021-03-{day0 + j:02d}T12:00:00"))
    rows[0] = ("a", "p", "Books", "2021-03-01")  # a bare date is midnight UTC
    path = write_log(tmp_path / "log.csv", rows, header=("customer", "sku", "shelf", "when"))
    meta = tmp_path / "items.tsv"
    meta.write_text("original_id\ttitle\np\tThe P Book\nr\tThe R Film\n")
    opts = LogOptions(min_count=1, min_per_domain=1, eval_fraction=0.2, user_col="customer", item_col="sku", domain_col="shelf", time_col="when")
    ds, report = import_log(path, opts, items_file=meta)
    assert "ISO date" in report.timestamp_kind
    tr = ds.splits["train"].set_index("user")
    midnight = int(pd.Timestamp("2021-03-01", tz="UTC").timestamp())
    assert tr.loc["a", "timestamps"][0] == midnight and tr.loc["a", "timestamps"][1] == midnight + 86_400 + 12 * 3600
    assert ds.splits["test"]["user"].tolist() == ["e"] and ds.splits["valid"]["user"].tolist() == ["d"]
    assert ds.items.set_index("original_id").loc["p", "title"] == "The P Book"
    assert ds.items.set_index("original_id").loc["q", "title"] is None


def test_cli_prepare_log(tmp_path):
    from llmemf.cli import app

    path = write_log(tmp_path / "log.csv", random_log(seed=1))
    runner = CliRunner()
    args = ["prepare", "log", str(path), str(tmp_path / "out"), "--min-count", "3", "--min-per-domain", "2", "--max-len", "12"]
    args += ["--eval-fraction", "0.1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "filter to fixed point" in res.output and "bad rows: none" in res.output and "domain Food:" in res.output
    ds = Dataset.load(tmp_path / "out")
    assert ds.domain_names == ["Food", "Kitchen"] and ds.manifest.splits["valid"] == ds.manifest.splits["test"] > 0
    missing = runner.invoke(app, ["prepare", "log", str(tmp_path / "nope.csv"), str(tmp_path / "o2")])
    assert missing.exit_code == 2 and "nope.csv" in missing.output
