"""The dataset format round-trips; the C2DSR importer follows the official loader's rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from llmemf.cli import app
from llmemf.data.c2dsr import import_c2dsr
from llmemf.data.dataset import Dataset, DatasetError


def test_roundtrip_and_hash(tmp_path, make_tiny):
    ds = make_tiny()
    ds.save(tmp_path / "a")
    back = Dataset.load(tmp_path / "a")
    assert back.manifest.content_hash == ds.manifest.content_hash
    assert back.manifest.splits == {"train": 80, "valid": 80, "test": 80}
    assert back.manifest.pad_id == 70
    pd.testing.assert_series_equal(back.items["title"], ds.items["title"], check_names=False)
    assert make_tiny(seed=1).content_hash() != ds.content_hash()


def test_load_rejects_bad_dataset(tmp_path, make_tiny):
    with pytest.raises(DatasetError, match="no manifest.json"):
        Dataset.load(tmp_path)
    ds = make_tiny()
    ds.splits["train"].at[3, "items"] = [1, 2, 999]
    with pytest.raises(DatasetError, match="train.parquet row 3"):
        ds.save(tmp_path / "bad")


def _write_c2dsr(root, rows_by_split):
    root.mkdir()
    (root / "Alist.txt").write_text("".join(f"r{i}\tA{i:03d}\t{i}\n" for i in range(4)))
    (root / "Blist.txt").write_text("".join(f"s{i}\tB{i:03d}\t{i}\n" for i in range(3)))
    names = {"train": "traindata_new.txt", "valid": "validdata_new.txt", "test": "testdata_new.txt"}
    for split, rows in rows_by_split.items():
        lines = []
        for user, inter in rows:
            lines.append(f"{user}\t0\t" + "".join(f"{i}|{t}|2014-01-01 00:00:00|\t" for i, t in inter))
        (root / names[split]).write_text("\n".join(lines) + "\n")


def test_c2dsr_importer_stable_sort_and_target(tmp_path):
    # Valid line is not time-sorted in the file; ties keep file order (stable), the final one is the target.
    _write_c2dsr(
        tmp_path / "Food-Kitchen",
        {
            "train": [("0", [(0, 5), (4, 1), (1, 3)])],
            "valid": [("0", [(0, 5), (4, 1), (5, 9), (2, 9)])],  # ts 9 tie: (5, 9) then (2, 9) -> target 2 (domain X)
            "test": [("1", [(6, 2), (1, 1)])],  # target 6 = Kitchen item 2
        },
    )
    ds = import_c2dsr(tmp_path / "Food-Kitchen")
    assert ds.domain_names == ["Food", "Kitchen"]
    assert list(ds.splits["train"]["items"][0]) == [4, 1, 0]
    v = ds.splits["valid"].iloc[0]
    assert list(v["items"]) == [4, 0, 5] and v["target"] == 2 and v["target_domain"] == 0
    t = ds.splits["test"].iloc[0]
    assert list(t["items"]) == [1] and t["target"] == 6 and t["target_domain"] == 1
    assert list(ds.items["original_id"][:5]) == ["A000", "A001", "A002", "A003", "B000"]


def test_c2dsr_importer_errors_name_file_and_line(tmp_path):
    _write_c2dsr(tmp_path / "S", {"train": [("0", [(0, 1), (1, 2)])], "valid": [("0", [(0, 1), (1, 2)])], "test": [("0", [(0, 1)])]})
    with open(tmp_path / "S" / "validdata_new.txt", "a") as f:
        f.write("3\t0\t2|notatime|x|\t1|5|x|\n")
    with pytest.raises(DatasetError, match=r"validdata_new.txt:2: cannot parse"):
        import_c2dsr(tmp_path / "S")


def test_prepare_c2dsr_cli_with_items(tmp_path):
    _write_c2dsr(
        tmp_path / "Movie-Book",
        {"train": [("0", [(0, 1), (5, 2)])], "valid": [("0", [(0, 1), (5, 2), (1, 3)])], "test": [("0", [(0, 1), (5, 2), (1, 3), (6, 4)])]},
    )
    meta = tmp_path / "meta.tsv"
    meta.write_text("asin\ttitle_from_LLMCDSR\nA001\tThe Film\nB002\t\nZZZ\tnot an item\n")
    out = tmp_path / "ds"
    res = CliRunner().invoke(app, ["prepare", "c2dsr", str(tmp_path / "Movie-Book"), str(out), "--items", str(meta)])
    assert res.exit_code == 0, res.output
    assert "valid: 1 sequences (targets Movie 1)" in res.output
    ds = Dataset.load(out)
    assert ds.items.loc[1, "title"] == "The Film"
    assert ds.items["title"].notna().sum() == 1  # empty title stays null, unknown ASIN ignored
    assert np.array_equal(ds.splits["test"]["target"].to_numpy(), [6])


def test_popular_subset_keeps_splits_and_renumbers(tmp_path, make_tiny):
    from llmemf.data.dataset import train_item_counts
    from llmemf.data.subset import popular_subset

    ds = make_tiny()
    ds.save(tmp_path / "full")
    counts = train_item_counts(ds)
    res = CliRunner().invoke(app, ["prepare", "subset", str(tmp_path / "full"), str(tmp_path / "sub"), "--top-items", "8"])
    assert res.exit_code == 0, res.output
    sub = Dataset.load(tmp_path / "sub")
    assert [d.n_items for d in sub.manifest.domains] == [8, 8] and sub.manifest.domains[1].offset == 8
    # the kept items are the most frequent of their domain, and keep their metadata
    old_of_new = {row.item_id: int(row.original_id[1:]) for row in sub.items.itertuples()}
    for d, (lo, hi) in enumerate(((0, 30), (30, 70))):
        kept = sorted(old for new, old in old_of_new.items() if sub.items.domain[new] == d)
        assert min(counts[kept]) >= max(np.delete(counts[lo:hi], [k - lo for k in kept]))
    assert all(sub.items.title[n] == f"item {o} of {'X' if o < 30 else 'Y'}" for n, o in old_of_new.items())
    # every surviving line is the old line with the dropped items removed
    kept_old = set(old_of_new.values())
    new_of_old = {o: n for n, o in old_of_new.items()}
    old_test = ds.splits["test"].set_index("user")
    assert 0 < len(sub.splits["test"]) <= len(old_test)
    for rec in sub.splits["test"].to_dict("records"):
        old = old_test.loc[rec["user"]]
        assert rec["target"] == new_of_old[old["target"]]
        assert list(rec["items"]) == [new_of_old[i] for i in old["items"] if i in kept_old]
    assert all(len(s) >= 2 for s in sub.splits["train"]["items"])
    with pytest.raises(DatasetError, match="at least 1"):
        popular_subset(ds, 0)
