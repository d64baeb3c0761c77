"""`prepare amazon`: every dump format (2014, 2018, 2023; JSON, Python literals, CSV; gzip or plain) gives the
dataset `prepare log` builds from the same interactions, and the awkward parts of real dumps are counted, not fatal."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from llmemf.data.amazon import DomainSource, import_amazon, largest_image, read_reviews
from llmemf.data.dataset import Dataset, DatasetError
from llmemf.data.logs import LogOptions, SplitOptions, import_log

OPTS = dict(min_count=3, min_per_domain=2, max_len=8, eval_fraction=0.15)


def interactions(seed=0, n_users=40, n_items=8):
    """(user, item, domain, unix seconds) with shared users; every user has both domains."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = 1_300_000_000 + int(rng.integers(0, 10**6))
        for j in range(int(rng.integers(6, 14))):
            dom = "Food" if j % 2 == 0 else "Kitchen"
            rows.append((f"A{u:05d}U", f"{'B' if dom == 'Food' else 'K'}{int(rng.integers(n_items)):09d}", dom, start + 3600 * j))
    return rows


def write(path, lines, gz):
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def review_lines(rows, fmt):
    out = []
    for user, item, _, ts in rows:
        if fmt == "2014":
            out.append(json.dumps({"reviewerID": user, "asin": item, "reviewerName": "Zoë", "helpful": [0, 0], "overall": 5.0, "unixReviewTime": ts}))
        elif fmt == "2018":
            rec = {
                "overall": 4.0,
                "verified": True,
                "reviewerID": user,
                "asin": item,
                "style": {"Size:": " 12 oz"},
                "reviewText": "ok",
                "unixReviewTime": ts,
            }
            out.append(json.dumps(rec))
        elif fmt == "2023":
            out.append(
                json.dumps(
                    {
                        "rating": 5.0,
                        "title": "t",
                        "text": "x",
                        "images": [],
                        "asin": item + "c",
                        "parent_asin": item,
                        "user_id": user,
                        "timestamp": ts * 1000 + 123,
                    }
                )
            )
        elif fmt == "csv-2014":
            out.append(f"{user},{item},5.0,{ts}")
        elif fmt == "csv-2023":
            out.append(f"{user},{item},5.0,{ts * 1000 + 999}")
    return (["user_id,parent_asin,rating,timestamp"] if fmt == "csv-2023" else []) + out


def write_domains(tmp_path, rows, fmt, gz):
    paths = []
    for dom in ("Food", "Kitchen"):
        sub = [r for r in rows if r[2] == dom]
        name = {"csv-2014": f"ratings_{dom}.csv", "csv-2023": f"{dom}.csv", "2023": f"{dom}.jsonl"}.get(fmt, f"reviews_{dom}_5.json")
        paths.append(write(tmp_path / name, review_lines(sub, fmt), gz))
    return paths


def log_dataset(tmp_path, rows):
    log = tmp_path / "log.csv"
    pd.DataFrame(rows, columns=["user", "item", "domain", "timestamp"]).to_csv(log, index=False)
    ds, _ = import_log(log, LogOptions(**OPTS))
    return ds


def same(a: Dataset, b: Dataset) -> None:
    assert a.items["original_id"].tolist() == b.items["original_id"].tolist()
    assert [d.n_items for d in a.manifest.domains] == [d.n_items for d in b.manifest.domains]
    for s in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(a.splits[s].reset_index(drop=True), b.splits[s].reset_index(drop=True))


@pytest.mark.parametrize("fmt", ["2014", "2018", "2023", "csv-2014", "csv-2023"])
@pytest.mark.parametrize("gz", [False, True])
def test_every_format_gives_the_log_importers_dataset(tmp_path, fmt, gz):
    rows = interactions()
    food, kitchen = write_domains(tmp_path, rows, fmt, gz)
    ds, report = import_amazon([DomainSource("Food", food), DomainSource("Kitchen", kitchen)], SplitOptions(**OPTS))
    same(ds, log_dataset(tmp_path, rows))  # 2023's milliseconds are floored to the log's seconds
    assert ds.domain_names == ["Food", "Kitchen"] and ds.manifest.name == "Food-Kitchen"
    assert report.reviews[0].rows + report.reviews[1].rows == len(rows) and not report.reviews[0].malformed
    assert ("gzip" in report.reviews[0].kind) == gz
    assert fmt.split("-")[-1] in report.reviews[0].kind


def meta_2014(asin, title, imurl=None, description=None):
    """A 2014 metadata line: a Python dict literal, single-quoted, with u'' strings, as the dump writes them."""
    parts = [f"'asin': '{asin}'", f"'title': {title}", "'price': 3.17", "'salesRank': {'Grocery': 4}", "'categories': [['Grocery', 'Tea']]"]
    if imurl:
        parts.append(f"'imUrl': '{imurl}'")
    if description:
        parts.append(f"'description': {description}")
    return "{" + ", ".join(parts) + "}"


def test_2014_literals_html_entities_missing_items_and_images(tmp_path):
    rows = interactions(seed=1)
    food, kitchen = write_domains(tmp_path, rows, "2014", gz=True)
    food_items = sorted({r[1] for r in rows if r[2] == "Food"})
    kitchen_items = sorted({r[1] for r in rows if r[2] == "Kitchen"})
    lines = [
        meta_2014(food_items[0], "u'Caf\\xe9 Cr\\xe8me \\u2013 Earl Grey'", "http://ecx.images-amazon.com/images/I/a.jpg", "u'Smooth &amp; rich'")
    ]
    lines.append(meta_2014(food_items[1], '"Mom\'s Tea &amp; Biscuits"'))  # repr switches to double quotes around an apostrophe
    lines.append("{'asin': '" + food_items[2] + "', 'title': 'unterminated")  # malformed: skipped with its line number (3)
    lines.append(meta_2014("B_NOT_KEPT", "'never reviewed'"))
    lines.append("{'asin': '" + food_items[3] + "', 'title': __import__('os').getcwd()}")  # line 5: eval would run it; literal_eval refuses
    meta_food = write(tmp_path / "meta_Food.json", lines, gz=True)
    k_lines = [
        json.dumps(
            {"asin": kitchen_items[0], "title": "Pan &amp; Lid &quot;Pro&quot;", "description": ["<b>Cast</b> iron", "10&quot;"]}
            | {"imageURL": ["https://images/I/k_SS40_.jpg"], "imageURLHighRes": ["https://images/I/k.jpg"]}
        ),
        json.dumps({"asin": kitchen_items[1], "title": "Whisk", "imageURL": ["https://images/I/w_SS40_.jpg"], "imageURLHighRes": []}),
    ]
    meta_kitchen = write(tmp_path / "meta_Kitchen.json", k_lines, gz=False)
    src = [DomainSource.parse(f"Food={food}:{meta_food}"), DomainSource.parse(f"Kitchen={kitchen}:{meta_kitchen}")]
    ds, report = import_amazon(src, SplitOptions(**OPTS))
    it = ds.items.set_index("original_id")
    assert it.loc[food_items[0], "title"] == "Café Crème – Earl Grey"
    assert it.loc[food_items[0], "description"] == "Smooth & rich"
    assert it.loc[food_items[0], "image"] == "http://ecx.images-amazon.com/images/I/a.jpg"
    assert it.loc[food_items[1], "title"] == "Mom's Tea & Biscuits" and it.loc[food_items[1], "image"] is None
    assert it.loc[kitchen_items[0], "title"] == 'Pan & Lid "Pro"' and it.loc[kitchen_items[0], "description"] == 'Cast iron 10"'
    assert it.loc[kitchen_items[0], "image"] == "https://images/I/k.jpg"  # the high-resolution list wins
    assert it.loc[kitchen_items[1], "image"] == "https://images/I/w_SS40_.jpg"  # else the small one
    mf, mk = report.meta
    assert "2014 metadata" in mf.kind and "2018 metadata" in mk.kind
    assert mf.matched == 2 and len(mf.missing) == len(food_items) - 2 and mf.filled == {"title": 2, "description": 1, "image": 1}
    assert dict(mf.malformed) == {"unparsable": 2} and mf.examples["unparsable"] == [3, 5]  # lines of dropped items are not parsed
    text = report.summary()
    assert f"{len(food_items) - 2} kept items missing from the metadata" in text and "unparsable 2 (lines 3, 5)" in text


def test_2023_images_prefer_hi_res_then_large_then_thumb():
    assert largest_image({"images": [{"thumb": "http://t", "large": "http://l", "hi_res": "http://h", "variant": "MAIN"}]}) == "http://h"
    assert largest_image({"images": [{"thumb": "http://t", "large": "http://l", "hi_res": None}]}) == "http://l"
    assert largest_image({"images": [{"thumb": "http://t", "large": None, "hi_res": None}]}) == "http://t"
    assert largest_image({"images": []}) is None and largest_image({"imUrl": "http://x"}) == "http://x"


def test_2023_metadata_keyed_by_parent_asin(tmp_path):
    rows = interactions(seed=2)
    food, kitchen = write_domains(tmp_path, rows, "2023", gz=False)
    item = sorted({r[1] for r in rows if r[2] == "Kitchen"})[0]
    rec = {"main_category": "Home", "title": "Kettle &amp; Stand", "description": ["Boils", "fast"], "parent_asin": item}
    rec["images"] = [{"thumb": "http://t.jpg", "large": "http://l.jpg", "variant": "MAIN", "hi_res": "http://h.jpg"}]
    meta = write(tmp_path / "meta_Kitchen.jsonl", [json.dumps(rec)], gz=True)
    ds, report = import_amazon([DomainSource("Food", food), DomainSource("Kitchen", kitchen, meta)], SplitOptions(**OPTS))
    got = ds.items.set_index("original_id").loc[item]
    assert (got["title"], got["description"], got["image"]) == ("Kettle & Stand", "Boils fast", "http://h.jpg")
    assert report.meta[0] is None and "2023 metadata" in report.meta[1].kind


def test_malformed_lines_duplicates_and_a_truncated_gzip_member(tmp_path):
    rows = interactions(seed=3)
    food_rows = [r for r in rows if r[2] == "Food"]
    lines = review_lines(food_rows, "2018")
    lines.insert(2, "this is not json")  # line 3
    lines.insert(5, json.dumps({"asin": "B1", "unixReviewTime": 5}))  # line 6: no reviewerID
    lines.insert(7, "")  # line 8: blank
    lines += lines[10:14]  # four exact duplicate reviews
    first = gzip.compress(("\n".join(lines) + "\n").encode())
    second = gzip.compress(b"\n".join(l.encode() for l in review_lines(food_rows[:50], "2018")) + b"\n")  # noqa: E741
    path = tmp_path / "Food.json.gz"
    path.write_bytes(first + second[: len(second) // 2])  # the second member is cut mid-stream
    kitchen = write_domains(tmp_path, rows, "2018", gz=False)[1]
    table, rep = read_reviews(path)
    assert rep.truncated and "TRUNCATED" in rep.summary()
    assert rep.malformed["not JSON"] >= 1 and rep.examples["not JSON"][0] == 3 and rep.examples["missing reviewerID"] == [6]
    assert rep.examples["blank line"] == [8]
    assert table.num_rows >= len(food_rows) + 4  # the whole first member, and whatever of the second was readable
    ds, report = import_amazon([DomainSource("Food", path), DomainSource("Kitchen", kitchen)], SplitOptions(**OPTS))
    assert report.duplicates >= 4
    same(ds, log_dataset(tmp_path, rows))  # duplicates and the partial member's repeats change nothing


def test_empty_and_wrong_files_are_user_errors(tmp_path):
    rows = interactions(seed=4)
    food, kitchen = write_domains(tmp_path, rows, "2018", gz=False)
    empty = tmp_path / "Empty.json"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match="Empty.json: empty file"):
        import_amazon([DomainSource("Food", food), DomainSource("Kitchen", empty)])
    empty_gz = tmp_path / "meta_Empty.json.gz"
    empty_gz.write_bytes(gzip.compress(b""))
    ds, report = import_amazon([DomainSource("Food", food, empty_gz), DomainSource("Kitchen", kitchen)], SplitOptions(**OPTS))
    assert report.meta[0].kind == "empty file" and len(report.meta[0].missing) == ds.manifest.domains[0].n_items
    meta = write(tmp_path / "meta.json", [json.dumps({"asin": "B1", "title": "t"})], gz=False)
    with pytest.raises(DatasetError, match="is this a metadata file"):
        import_amazon([DomainSource("Food", meta), DomainSource("Kitchen", kitchen)])
    with pytest.raises(DatasetError, match="NAME=REVIEWS"):
        DomainSource.parse("Food")


def test_cli_prepare_amazon(tmp_path):
    from llmemf.cli import app

    rows = interactions(seed=5, n_users=60)
    food, kitchen = write_domains(tmp_path, rows, "2018", gz=True)
    meta = write(tmp_path / "meta_Food.json", [json.dumps({"asin": rows[0][1], "title": "Tea", "imageURLHighRes": ["http://h.jpg"]})], gz=True)
    args = ["prepare", "amazon", str(tmp_path / "out"), "--domain", f"Food={food}:{meta}", "--domain", f"Kitchen={kitchen}"]
    args += ["--min-count", "3", "--min-per-domain", "2", "--max-len", "8", "--eval-fraction", "0.15"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "review lines read" in res.output and "interactions dropped by" in res.output and "kept:" in res.output
    ds = Dataset.load(tmp_path / "out")
    assert ds.items.set_index("original_id").loc[rows[0][1], "image"] == "http://h.jpg"
    bad = CliRunner().invoke(
        app, ["prepare", "amazon", str(tmp_path / "o2"), "--domain", f"Food={tmp_path / 'nope.json'}", "--domain", f"K={kitchen}"]
    )
    assert bad.exit_code == 2 and "nope.json" in bad.output
