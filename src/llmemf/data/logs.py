"""Build a dataset from a generic two-domain interaction log, with the paper's construction.

Input: a CSV / TSV (optionally gzipped) / Parquet file with one interaction per row and columns for
user, item, domain and timestamp (common names are recognised, see ``COLUMN_NAMES``; the options
name them explicitly). Timestamps are integers (unix time, any unit, used as they are; floats are
floored) or ISO-8601 dates (converted to unix seconds, UTC when no zone is given); a file mixing
the two kinds is read with integers as unix seconds.

Steps, in order (every count lands in the report):
1. Parse. Rows with a missing user or item id, an unknown or missing domain, or an unparsable
   timestamp are *bad*: counted per reason with ``file:line`` examples, and fatal (DatasetError)
   when they exceed ``max_bad_fraction`` of the rows. Line numbers count the header as line 1
   (CSV/TSV) and assume one record per line; Parquet rows are numbered from 1. Exact duplicate
   rows (same user, item, domain, timestamp) are dropped and counted.
2. Filter to a fixed point: repeatedly drop users with fewer than ``min_count`` interactions,
   items with fewer than ``min_count`` interactions, and users with fewer than
   ``min_per_domain`` interactions in either domain, until nothing changes. (All three
   conditions sit inside the loop, so the result satisfies all of them at once.) An item is the
   pair (domain, item id).
3. Order each user's interactions by time (stable: ties keep file order).
4. Split users by time: users are sorted by the time of their last interaction (ties by user
   id); the latest ``eval_fraction`` of users become test users, the next latest
   ``eval_fraction`` validation users, the rest training users. The final interaction of each
   validation/test user's sequence is its target.
5. No future in training. Let ``T`` be the earliest validation/test target time. Every training
   sequence keeps only its interactions with timestamp strictly before ``T`` (by step 4 this cuts
   only interactions tied with ``T``); training sequences left with fewer than 2 interactions are
   dropped and counted.
6. Cap every sequence (a training sequence; an evaluation history plus its target) at its
   ``max_len`` most recent interactions, as in the C2DSR files.

Global ids: domain X's items first, then Y's, each domain's items in order of their original id
(as text); the original ids are kept in ``items.original_id``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from llmemf.data.dataset import Dataset, DatasetError, DomainInfo, Manifest, make_items_frame, split_history_target
from llmemf.data.metadata import join_item_metadata, read_table

# Recognised column names (case-insensitive), first match wins.
COLUMN_NAMES = {
    "user": ("user", "user_id", "userid", "uid", "reviewerid", "customer_id", "visitorid"),
    "item": ("item", "item_id", "itemid", "iid", "asin", "product_id", "productid", "movie_id", "book_id"),
    "domain": ("domain", "category", "cat", "source", "domain_name"),
    "timestamp": ("timestamp", "time", "ts", "unixreviewtime", "datetime", "date", "event_time", "created_at"),
}
N_EXAMPLES = 5  # file:line examples kept per bad-row reason


@dataclass
class SplitOptions:
    """The paper's construction, shared by every importer that starts from raw interactions (log, Amazon, RecBole)."""

    min_count: int = 10  # drop users and items with fewer interactions (to a fixed point)
    min_per_domain: int = 3  # keep users with at least this many interactions in each domain
    max_len: int = 15  # keep at most this many most recent interactions per sequence
    eval_fraction: float = 0.1  # fraction of users (the latest) for validation, and again for test

    def check(self) -> None:
        if self.min_count < 1 or self.min_per_domain < 1 or self.max_len < 2:
            raise DatasetError("min_count and min_per_domain must be >= 1, max_len >= 2")
        if not 0 < self.eval_fraction < 0.5:
            raise DatasetError(f"eval_fraction must lie in (0, 0.5), got {self.eval_fraction}")


@dataclass
class LogOptions(SplitOptions):
    domains: tuple[str, str] | None = None  # the two domain values in X, Y order (None: the file's two values, sorted)
    max_bad_fraction: float = 0.01  # fail if more than this fraction of rows is unusable
    user_col: str | None = None  # column names; None: recognised from COLUMN_NAMES
    item_col: str | None = None
    domain_col: str | None = None
    time_col: str | None = None
    name: str | None = None  # dataset name (default: the file's stem)


@dataclass
class SplitReport:
    """What the shared core (``build_splits``) did: duplicates, the fixed-point filter, the time split, the cap."""

    duplicates: int = 0
    filter_rounds: int = 0
    filter_dropped: dict[str, int] = field(default_factory=dict)  # filter -> interactions it dropped, summed over rounds
    before: tuple[int, int, int] = (0, 0, 0)  # users, items, interactions after parsing
    after: tuple[int, int, int] = (0, 0, 0)  # ... after the fixed-point filter
    cut_time: int = 0  # T: training interactions are strictly before it
    train_cut_interactions: int = 0  # training interactions dropped at or after T
    train_users_dropped: int = 0  # training sequences left with < 2 interactions
    capped_interactions: int = 0  # interactions beyond max_len dropped
    split_users: dict[str, int] = field(default_factory=dict)

    def split_lines(self) -> list[str]:
        lines = []
        if self.duplicates:
            lines.append(f"  exact duplicate rows dropped: {self.duplicates}")
        u0, i0, n0 = self.before
        u1, i1, n1 = self.after
        lines.append(f"  filter to fixed point ({self.filter_rounds} rounds): users {u0} -> {u1}, items {i0} -> {i1}, interactions {n0} -> {n1}")
        if self.filter_dropped:
            lines.append("    interactions dropped by: " + ", ".join(f"{k} {v}" for k, v in self.filter_dropped.items()))
        lines.append(f"  time split: {self.split_users}; training interactions kept strictly before t={self.cut_time}")
        if self.train_cut_interactions or self.train_users_dropped:
            lines.append(
                f"    dropped from training: {self.train_cut_interactions} interactions at t >= cut, {self.train_users_dropped} sequences < 2 long"
            )
        lines.append(f"  capped at max_len: {self.capped_interactions} older interactions dropped")
        return lines


@dataclass
class LogReport(SplitReport):
    """What the importer did to the log, step by step."""

    file: str = ""
    columns: dict[str, str] = field(default_factory=dict)  # role -> column used
    domains: tuple[str, str] = ("", "")
    rows: int = 0
    bad: Counter = field(default_factory=Counter)  # reason -> rows
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> ["file:line: raw values"]
    timestamp_kind: str = ""  # "integer", "ISO date" or "mixed"

    @property
    def n_bad(self) -> int:
        return sum(self.bad.values())

    def summary(self) -> str:
        lines = [f"log {self.file}: {self.rows} rows; columns {self.columns}; domains X={self.domains[0]!r}, Y={self.domains[1]!r}"]
        lines.append(f"  timestamps: {self.timestamp_kind}")
        if self.n_bad:
            frac = self.n_bad / max(self.rows, 1)
            lines.append(f"  bad rows: {self.n_bad} ({frac:.2%}) skipped")
            for reason, n in sorted(self.bad.items()):
                lines.append(f"    {reason}: {n}")
                lines += [f"      {ex}" for ex in self.examples.get(reason, [])]
        else:
            lines.append("  bad rows: none")
        lines += self.split_lines()
        return "\n".join(lines)


def _pick_column(columns: list[str], given: str | None, role: str, path: Path) -> str:
    lower = {c.lower(): c for c in columns}
    if given is not None:
        if given in columns:
            return given
        if given.lower() in lower:
            return lower[given.lower()]
        raise DatasetError(f"{path}: no column {given!r} (for {role}); columns are {columns}")
    for cand in COLUMN_NAMES[role]:
        if cand in lower:
            return lower[cand]
    raise DatasetError(
        f"{path}: cannot find the {role} column (tried {', '.join(COLUMN_NAMES[role])}); columns are {columns}; name it with an option"
    )


def _parse_times(raw: pd.Series) -> tuple[pd.Series, str]:
    """Unix integers where parsable (Int64, <NA> where not), and which kind(s) were seen."""
    text = raw.astype("string").str.strip()
    num = pd.to_numeric(text, errors="coerce")
    num = num.where(np.isfinite(num.astype("float64")))
    out = pd.Series(pd.array(np.floor(num.astype("float64")), dtype="Int64"), index=raw.index)
    rest = out.isna() & text.notna() & (text != "")
    kinds = []
    if out.notna().any():
        kinds.append("integer")
    if rest.any():
        dt = pd.to_datetime(text[rest], errors="coerce", utc=True, format="ISO8601")
        ok = dt.notna()
        if ok.any():
            kinds.append("ISO date")
            secs = (dt[ok] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
            out.loc[secs.index] = secs.astype("int64").to_numpy()
    kind = " + ".join(kinds) + (" (integers read as unix seconds)" if len(kinds) == 2 else "") if kinds else "none parsable"
    return out, kind


def _line_numbers(path: Path, n: int) -> np.ndarray:
    """The file line (CSV/TSV: header = line 1) or row number (Parquet) of each data row."""
    first = 1 if path.name.lower().removesuffix(".gz").endswith(".parquet") else 2
    return np.arange(first, first + n)


def _filter_fixed_point(df: pd.DataFrame, opts: SplitOptions, dropped: dict[str, int]) -> tuple[pd.DataFrame, int]:
    rounds = 0
    while True:
        rounds += 1
        n = len(df)
        ucount = df.groupby("user")["user"].transform("size")
        df, k = df[ucount >= opts.min_count], len(df)
        dropped[f"user < {opts.min_count}"] = dropped.get(f"user < {opts.min_count}", 0) + k - len(df)
        icount = df.groupby(["domain", "item"])["user"].transform("size")
        df, k = df[icount >= opts.min_count], len(df)
        dropped[f"item < {opts.min_count}"] = dropped.get(f"item < {opts.min_count}", 0) + k - len(df)
        if len(df):
            per = df.groupby(["user", "domain"]).size().unstack(fill_value=0)
            per = per.reindex(columns=[0, 1], fill_value=0)
            keep = per.index[(per[0] >= opts.min_per_domain) & (per[1] >= opts.min_per_domain)]
            df, k = df[df["user"].isin(keep)], len(df)
            key = f"user < {opts.min_per_domain} in a domain"
            dropped[key] = dropped.get(key, 0) + k - len(df)
        if len(df) == n:
            return df, rounds


def build_splits(df: pd.DataFrame, opts: SplitOptions, report: SplitReport, where: str) -> tuple[list[int], list[str], dict[str, pd.DataFrame]]:
    """Steps 1 (duplicates) to 6 of the module docstring on parsed interactions, shared by every raw importer.

    ``df`` has one row per interaction in file order: ``user`` and ``item`` (str, or a Categorical whose
    categories are sorted, so codes order like the text), ``domain`` (0 = X, 1 = Y), ``ts`` (int64).
    Returns the two domains' item counts, the items' original ids in global-id order and the three split tables.
    """
    df["order"] = np.arange(len(df))  # file order: the tie-breaker of the stable time sort
    n0 = len(df)
    df = df.drop_duplicates(subset=["user", "item", "domain", "ts"], keep="first")
    report.duplicates = n0 - len(df)
    report.before = (df["user"].nunique(), len(df.drop_duplicates(["domain", "item"])), len(df))
    df, report.filter_rounds = _filter_fixed_point(df, opts, report.filter_dropped)
    report.after = (df["user"].nunique(), len(df.drop_duplicates(["domain", "item"])), len(df))
    if df.empty:
        raise DatasetError(
            f"{where}: no interactions left after filtering (min_count={opts.min_count}, min_per_domain={opts.min_per_domain}); "
            f"{report.before[0]} users and {report.before[1]} items before"
        )

    # Global ids: X items then Y items, each domain in original-id order.
    uniq = df[["domain", "item"]].drop_duplicates().sort_values(["domain", "item"], kind="stable")
    sizes = [int((uniq["domain"] == d).sum()) for d in (0, 1)]
    gid = {(d, it): k for k, (d, it) in enumerate(zip(uniq["domain"], uniq["item"], strict=True))}
    df["gid"] = [gid[k] for k in zip(df["domain"], df["item"], strict=True)]

    # One time-sorted sequence per user; users ordered by their last interaction.
    df = df.sort_values(["user", "ts", "order"], kind="stable")
    seqs = {u: (g["gid"].tolist(), g["ts"].tolist()) for u, g in df.groupby("user", sort=True)}
    users = sorted(seqs, key=lambda u: (seqs[u][1][-1], u))
    n_eval = int(round(opts.eval_fraction * len(users)))
    if n_eval < 1 or len(users) - 2 * n_eval < 1:
        raise DatasetError(f"{where}: {len(users)} users left after filtering: too few to split at eval_fraction={opts.eval_fraction}")
    groups = {
        "train": users[: len(users) - 2 * n_eval],
        "valid": users[len(users) - 2 * n_eval : len(users) - n_eval],
        "test": users[len(users) - n_eval :],
    }
    report.cut_time = min(seqs[u][1][-1] for u in groups["valid"] + groups["test"])

    n_x = sizes[0]
    rows: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    for u in groups["train"]:
        items, stamps = seqs[u]
        keep = [k for k, t in enumerate(stamps) if t < report.cut_time]
        report.train_cut_interactions += len(items) - len(keep)
        if len(keep) < 2:
            report.train_users_dropped += 1
            continue
        items, stamps = [items[k] for k in keep], [stamps[k] for k in keep]
        report.capped_interactions += max(0, len(items) - opts.max_len)
        rows["train"].append({"user": u, "items": items[-opts.max_len :], "timestamps": stamps[-opts.max_len :]})
    for split in ("valid", "test"):
        for u in groups[split]:
            items, stamps = seqs[u]
            report.capped_interactions += max(0, len(items) - opts.max_len)
            hist, hts, target, tts = split_history_target(items[-opts.max_len :], stamps[-opts.max_len :])
            rows[split].append(
                {"user": u, "items": hist, "timestamps": hts, "target": target, "target_domain": int(target >= n_x), "target_timestamp": tts}
            )
    report.split_users = {s: len(r) for s, r in rows.items()}

    splits = {}
    for s, r in rows.items():
        cols_s = ["user", "items", "timestamps"] + (["target", "target_domain", "target_timestamp"] if s != "train" else [])
        splits[s] = pd.DataFrame(r, columns=cols_s)
    return sizes, uniq["item"].astype(str).tolist(), splits


def import_log(file: str | Path, opts: LogOptions | None = None, items_file: str | Path | None = None) -> tuple[Dataset, LogReport]:
    """Read, clean, filter and split an interaction log; the Dataset is not yet saved."""
    opts = opts or LogOptions()
    path = Path(file)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    opts.check()
    raw = read_table(path)
    report = LogReport(file=str(path), rows=len(raw))
    cols = list(raw.columns)
    roles = {
        "user": _pick_column(cols, opts.user_col, "user", path),
        "item": _pick_column(cols, opts.item_col, "item", path),
        "domain": _pick_column(cols, opts.domain_col, "domain", path),
        "timestamp": _pick_column(cols, opts.time_col, "timestamp", path),
    }
    report.columns = roles
    if len(raw) == 0:
        raise DatasetError(f"{path}: no rows")
    lines = _line_numbers(path, len(raw))

    def clean(col: str) -> pd.Series:
        s = raw[col].astype("string").str.strip()
        return s.where(s != "")

    user, item, dom_raw = clean(roles["user"]), clean(roles["item"]), clean(roles["domain"])
    ts, report.timestamp_kind = _parse_times(raw[roles["timestamp"]])

    # The two domains: given, or the file's two distinct values.
    values = dom_raw.dropna().value_counts()
    if opts.domains is not None:
        if len(opts.domains) != 2 or opts.domains[0] == opts.domains[1]:
            raise DatasetError(f"domains must be two distinct values, got {opts.domains}")
        domains = (str(opts.domains[0]), str(opts.domains[1]))
    else:
        if len(values) != 2:
            listing = ", ".join(f"{k!r}: {v}" for k, v in values.head(10).items())
            raise DatasetError(
                f"{path}: column {roles['domain']!r} has {len(values)} distinct values ({listing}); need exactly two, or name them with --domains X,Y"
            )
        domains = tuple(sorted(values.index.astype(str)))  # type: ignore[assignment]
    report.domains = domains
    dom = dom_raw.map({domains[0]: 0, domains[1]: 1})

    # Bad rows: counted per reason (first reason wins), with file:line examples.
    reasons = pd.Series(pd.NA, index=raw.index, dtype="string")
    for mask, why in (
        (user.isna(), "missing user id"),
        (item.isna(), "missing item id"),
        (dom_raw.isna(), "missing domain"),
        (dom_raw.notna() & dom.isna(), "unknown domain"),
        (ts.isna(), "unparsable timestamp"),
    ):
        reasons = reasons.where(reasons.notna() | ~mask, why)
    bad = reasons.notna().to_numpy()
    for why, idx in reasons[bad].groupby(reasons[bad]).groups.items():
        report.bad[str(why)] = len(idx)
        report.examples[str(why)] = [
            f"{path}:{lines[raw.index.get_loc(i)]}: " + ", ".join(f"{c}={raw.at[i, c]!r}" for c in roles.values()) for i in list(idx)[:N_EXAMPLES]
        ]
    if report.n_bad / len(raw) > opts.max_bad_fraction:
        examples = [ex for exs in report.examples.values() for ex in exs[:2]]
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(report.bad.items()))
        raise DatasetError(
            f"{path}: {report.n_bad} of {len(raw)} rows ({report.n_bad / len(raw):.2%}) are unusable ({counts}), more than "
            f"max_bad_fraction={opts.max_bad_fraction}; e.g.\n  " + "\n  ".join(examples)
        )

    df = pd.DataFrame(
        {"user": user[~bad].astype(str), "item": item[~bad].astype(str), "domain": dom[~bad].astype("int64"), "ts": ts[~bad].astype("int64")}
    )
    sizes, original_ids, splits = build_splits(df, opts, report, str(path))

    items_df = make_items_frame(sizes, original_ids)
    if items_file is not None:
        items_df = join_item_metadata(items_df, items_file)
    manifest = Manifest(
        name=opts.name or path.name.split(".")[0],
        domains=[DomainInfo(domains[0], sizes[0], 0), DomainInfo(domains[1], sizes[1], sizes[0])],
        source=(
            f"log:{path.name} min_count={opts.min_count} min_per_domain={opts.min_per_domain} max_len={opts.max_len} "
            f"eval_fraction={opts.eval_fraction}" + (f" items={Path(items_file).name}" if items_file else "")
        ),
    )
    return Dataset(manifest=manifest, items=items_df, splits=splits), report
