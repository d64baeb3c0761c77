"""Importer for the C2DSR scenario format (Cao et al. 2022, as read by the official loader).

Files in the scenario directory:
    Alist.txt / Blist.txt     ``raw_id<TAB>ASIN<TAB>local_idx`` (domain X = A, domain Y = B)
    traindata_new.txt         ``user<TAB>seq_id<TAB>gid|ts|date|<TAB>gid|ts|date|...``
    validdata_new.txt         same; the final interaction after a stable sort by ts is the target
    testdata_new.txt          same
Global ids in the sequence files are A's local ids, then B's local ids + len(A): the same global
index llmemf uses, so ids pass through unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llmemf.data.dataset import Dataset, DatasetError, DomainInfo, Manifest, make_items_frame, split_history_target
from llmemf.data.metadata import join_item_metadata

SPLIT_FILES = {"train": "traindata_new.txt", "valid": "validdata_new.txt", "test": "testdata_new.txt"}


def _lines(path: Path):
    """(line number, line) of a UTF-8 text file; a DatasetError naming the file and line otherwise."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing (a C2DSR scenario needs Alist.txt, Blist.txt, {', '.join(SPLIT_FILES.values())})")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start}); convert the file to UTF-8") from None


def _read_item_list(path: Path) -> list[str]:
    """ASINs ordered by local index."""
    asins: dict[int, str] = {}
    for lineno, line in _lines(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3:
            raise DatasetError(f"{path}:{lineno}: expected 'raw_id<TAB>ASIN<TAB>local_idx', got {line.strip()!r}")
        try:
            idx = int(parts[2])
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: local index {parts[2]!r} is not an integer") from None
        if idx in asins:
            raise DatasetError(f"{path}:{lineno}: local index {idx} appears twice")
        asins[idx] = parts[1]
    n = len(asins)
    if n == 0:
        raise DatasetError(f"{path}: no items; a domain needs at least one 'raw_id<TAB>ASIN<TAB>local_idx' line")
    if sorted(asins) != list(range(n)):
        raise DatasetError(f"{path}: local indices are not 0..{n - 1}")
    return [asins[i] for i in range(n)]


def _read_sequences(path: Path, n_items: int) -> list[tuple[str, list[int], list[int]]]:
    rows = []
    for lineno, line in _lines(path):
        fields = [x for x in line.rstrip("\n").split("\t") if x]
        if not fields:
            continue
        if len(fields) < 3:
            raise DatasetError(f"{path}:{lineno}: expected 'user<TAB>seq_id<TAB>item|ts|date|...'")
        user = fields[0]
        items, stamps = [], []
        for tok in fields[2:]:
            parts = tok.split("|")
            try:
                item, ts = int(parts[0]), int(parts[1])
            except (ValueError, IndexError):
                raise DatasetError(f"{path}:{lineno}: cannot parse interaction {tok!r} (want 'item|ts|date|')") from None
            if not 0 <= item < n_items:
                raise DatasetError(f"{path}:{lineno}: item {item} outside 0..{n_items - 1}")
            items.append(item)
            stamps.append(ts)
        rows.append((user, items, stamps))
    return rows


def import_c2dsr(
    directory: str | Path,
    domain_names: tuple[str, str] | None = None,
    items_file: str | Path | None = None,
    max_len: int | None = None,
) -> Dataset:
    """Read a C2DSR scenario directory into a Dataset (not yet saved)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f"{directory}: no such directory (a C2DSR scenario directory with Alist.txt, Blist.txt, *data_new.txt)")
    if domain_names is None:
        parts = directory.name.split("-")
        domain_names = (parts[0], parts[1]) if len(parts) == 2 else ("X", "Y")
    asins_a = _read_item_list(directory / "Alist.txt")
    asins_b = _read_item_list(directory / "Blist.txt")
    n_a, n_b = len(asins_a), len(asins_b)
    items = make_items_frame([n_a, n_b], asins_a + asins_b)
    if items_file is not None:
        items = join_item_metadata(items, items_file)

    splits = {}
    for split, fname in SPLIT_FILES.items():
        path = directory / fname
        rows = _read_sequences(path, n_a + n_b)
        if not rows:
            raise DatasetError(f"{path}: no sequences; every split needs at least one 'user<TAB>seq_id<TAB>item|ts|date|...' line")
        records = []
        for lineno, (user, seq, stamps) in enumerate(rows, 1):
            if split == "train":
                order = sorted(range(len(seq)), key=lambda i: stamps[i])
                seq, stamps = [seq[i] for i in order], [stamps[i] for i in order]
                if max_len:  # keep the most recent interactions
                    seq, stamps = seq[-(max_len + 1) :], stamps[-(max_len + 1) :]
                records.append({"user": user, "items": seq, "timestamps": stamps})
            else:
                if len(seq) < 2:
                    raise DatasetError(f"{path}:{lineno}: an evaluation line needs a history and a target")
                hist, hts, target, tts = split_history_target(seq, stamps)
                records.append(
                    {
                        "user": user,
                        "items": hist,
                        "timestamps": hts,
                        "target": target,
                        "target_domain": int(target >= n_a),
                        "target_timestamp": tts,
                    }
                )
        splits[split] = pd.DataFrame.from_records(records)

    manifest = Manifest(
        name=directory.name,
        domains=[DomainInfo(domain_names[0], n_a, 0), DomainInfo(domain_names[1], n_b, n_a)],
        source=f"c2dsr:{directory.name}" + (f" items={Path(items_file).name}" if items_file else ""),
    )
    return Dataset(manifest=manifest, items=items, splits=splits)
