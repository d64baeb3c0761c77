"""Join item metadata (title, description, image) from a CSV / TSV / Parquet file onto an items table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from llmemf.data.dataset import DatasetError

# Accepted column names, first match wins.
KEY_COLUMNS = ("original_id", "asin", "item", "item_id")
FIELD_COLUMNS = {
    "title": ("title", "title_from_llmcdsr", "name"),
    "description": ("description", "desc"),
    "image": ("image", "image_url", "image_path", "imurl", "imageurl"),
}


def read_table(path: str | Path) -> pd.DataFrame:
    """CSV, TSV (optionally gzipped) or Parquet, chosen by suffix; every column read as text."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        try:
            return pd.read_parquet(path).astype("string")
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DatasetError(f"{path}: unreadable Parquet ({' '.join(str(e).split())})") from None
    sep = "\t" if name.endswith((".tsv", ".tab")) else ","
    kind = "TSV" if sep == "\t" else "CSV"
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: empty file (no header, no rows); a {kind} with a header line and rows is needed") from None
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as e:  # EOFError/OSError: a truncated .gz
        raise DatasetError(f"{path}: cannot parse as {kind} ({' '.join(str(e).split())})") from None


def _pick(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    return None


def join_item_metadata(items: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Fill title/description/image of ``items`` from ``path``, matched on original id (e.g. ASIN).

    Rows of the file whose key matches no item are ignored; the count is printed by callers via
    ``items.attrs['metadata_join']``.
    """
    meta = read_table(path)
    key = _pick(list(meta.columns), KEY_COLUMNS)
    if key is None:
        raise DatasetError(f"{path}: needs a key column, one of {', '.join(KEY_COLUMNS)}; has {list(meta.columns)}")
    meta = meta.drop_duplicates(subset=[key], keep="first").set_index(key)
    items = items.copy()
    found = {}
    for field, cands in FIELD_COLUMNS.items():
        col = _pick(list(meta.columns), cands)
        if col is None:
            continue
        values = items["original_id"].map(meta[col])
        values = values.where(values.notna() & (values.astype(str).str.strip() != ""), None)
        items[field] = values.astype(object).where(values.notna(), None)
        found[field] = int(values.notna().sum())
    if not found:
        raise DatasetError(f"{path}: no title/description/image column among {list(meta.columns)}")
    matched = int(items["original_id"].isin(meta.index).sum())
    items.attrs["metadata_join"] = {"file": str(path), "matched_items": matched, "filled": found}
    return items
