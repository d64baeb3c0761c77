"""The one definition of llmemf's on-disk dataset format.

A dataset is a directory:

    manifest.json      domains, item counts, global id ranges, split sizes, content hash
    items.parquet      item_id, domain, original_id, title, description, image, llm_text
    train.parquet      user, items (list<int64>), timestamps (list<int64>)
    valid.parquet      user, items, timestamps, target, target_domain, target_timestamp
    test.parquet       same as valid
    features/          item feature matrices (see llmemf.features.store)

Items of both domains share one global index: domain 0 ("X") owns ids 0..n0-1, domain 1 ("Y")
owns n0..n0+n1-1, and ``pad_id = n0 + n1`` is the padding id every model reserves.
In valid/test, ``items`` is the history (time-sorted, target removed) and ``target`` is the held
out final interaction; ``target_domain`` is its domain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from llmemf.errors import UserError
from llmemf.io import atomic_write_bytes, atomic_write_table  # noqa: F401 (re-exported: other modules import them from here)

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
ITEM_COLUMNS = ("item_id", "domain", "original_id", "title", "description", "image", "llm_text", "llm_model")


class DatasetError(UserError, ValueError):
    """A dataset directory that does not follow the format; the message names file and item."""


@dataclass
class DomainInfo:
    name: str  # e.g. "Food"
    n_items: int
    offset: int  # first global id of this domain


@dataclass
class Manifest:
    name: str
    domains: list[DomainInfo]
    splits: dict[str, int] = field(default_factory=dict)  # split -> number of sequences
    source: str = ""  # how it was made (importer + arguments)
    content_hash: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def n_items(self) -> int:
        return sum(d.n_items for d in self.domains)

    @property
    def pad_id(self) -> int:
        return self.n_items

    def domain_range(self, domain: int) -> tuple[int, int]:
        d = self.domains[domain]
        return d.offset, d.offset + d.n_items

    def domain_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Domain index (0/1) of each global id; the pad id maps to 2."""
        bounds = np.array([d.offset + d.n_items for d in self.domains])
        return np.searchsorted(bounds, np.asarray(item_ids), side="right")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        raw["domains"] = [DomainInfo(**d) for d in raw["domains"]]
        if len(raw["domains"]) != 2:
            raise ValueError(f"{len(raw['domains'])} domains, llmemf needs 2")
        return cls(**raw)


_ITEM_SCHEMA = pa.schema(
    [
        ("item_id", pa.int64()),
        ("domain", pa.int8()),
        ("original_id", pa.string()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("image", pa.string()),
        ("llm_text", pa.string()),
        ("llm_model", pa.string()),  # which backend:model wrote llm_text (null where there is none)
    ]
)


def _items_table(items: pd.DataFrame) -> pa.Table:
    items = items.copy()
    for col in ITEM_COLUMNS:
        if col not in items:
            items[col] = None
    return pa.Table.from_pandas(items[list(ITEM_COLUMNS)], schema=_ITEM_SCHEMA, preserve_index=False)


def _sequence_schema(with_target: bool) -> pa.Schema:
    fields = [
        ("user", pa.string()),
        ("items", pa.list_(pa.int64())),
        ("timestamps", pa.list_(pa.int64())),
    ]
    if with_target:
        fields += [("target", pa.int64()), ("target_domain", pa.int8()), ("target_timestamp", pa.int64())]
    return pa.schema(fields)


@dataclass
class Dataset:
    """An in-memory dataset: manifest, items table and the three sequence tables."""

    manifest: Manifest
    items: pd.DataFrame
    splits: dict[str, pd.DataFrame]
    root: Path | None = None

    # ---- convenience -------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return self.manifest.n_items

    @property
    def pad_id(self) -> int:
        return self.manifest.pad_id

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.manifest.domains]

    def item_domains(self) -> np.ndarray:
        """(n_items,) int64 domain of every global id."""
        return self.items["domain"].to_numpy(dtype=np.int64)

    # ---- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        where = str(self.root or self.manifest.name)
        ids = self.items["item_id"].to_numpy()
        if not np.array_equal(ids, np.arange(self.n_items)):
            raise DatasetError(f"{where}/items.parquet: item_id must be 0..{self.n_items - 1} in order")
        doms = self.manifest.domain_of(ids)
        bad = np.nonzero(doms != self.items["domain"].to_numpy())[0]
        if len(bad):
            raise DatasetError(
                f"{where}/items.parquet: item {int(ids[bad[0]])} has domain "
                f"{int(self.items['domain'].iloc[bad[0]])}, but its id lies in domain {int(doms[bad[0]])}"
            )
        for split, df in self.splits.items():
            for row, seq in enumerate(df["items"]):
                arr = np.asarray(seq)
                if arr.size and (arr.min() < 0 or arr.max() >= self.n_items):
                    raise DatasetError(f"{where}/{split}.parquet row {row}: item id out of range 0..{self.n_items - 1}")
            if "target" in df:
                t = df["target"].to_numpy()
                if len(t) and (t.min() < 0 or t.max() >= self.n_items):
                    raise DatasetError(f"{where}/{split}.parquet: target out of range")

    # ---- I/O -----------------------------------------------------------------------------------
    def content_hash(self) -> str:
        h = hashlib.sha256()
        h.update(pd.util.hash_pandas_object(self.items[["item_id", "domain", "original_id"]], index=False).values.tobytes())
        for split in SPLITS:
            df = self.splits[split]
            h.update(split.encode())
            for seq in df["items"]:
                h.update(np.asarray(seq, dtype=np.int64).tobytes())
                h.update(b"|")
            if "target" in df:
                h.update(df["target"].to_numpy(dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def save(self, root: str | Path) -> Path:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.validate()
        atomic_write_table(root / "items.parquet", _items_table(self.items))
        for split in SPLITS:
            df = self.splits[split]
            schema = _sequence_schema(split != "train")
            atomic_write_table(root / f"{split}.parquet", pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False))
        self.manifest.splits = {s: len(self.splits[s]) for s in SPLITS}
        self.manifest.content_hash = self.content_hash()
        atomic_write_bytes(root / "manifest.json", self.manifest.to_json().encode())
        self.root = root
        return root

    def save_items(self) -> None:
        """Rewrite only items.parquet (e.g. after enrichment filled llm_text)."""
        assert self.root is not None, "dataset has no directory yet"
        atomic_write_table(self.root / "items.parquet", _items_table(self.items))

    @classmethod
    def load(cls, root: str | Path) -> Dataset:
        root = Path(root)
        mpath = root / "manifest.json"
        if not mpath.exists():
            raise DatasetError(f"{root}: not a llmemf dataset (no manifest.json); create one with `llmemf prepare`")
        try:
            manifest = Manifest.from_json(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, ValueError) as e:
            raise DatasetError(f"{mpath}: unreadable manifest ({e}); re-create the dataset with `llmemf prepare`") from None
        if manifest.format_version > FORMAT_VERSION:
            raise DatasetError(f"{mpath}: format_version {manifest.format_version} is newer than this llmemf")
        items = _read_parquet(root / "items.parquet", _ITEM_SCHEMA.names[:2])
        for col in ITEM_COLUMNS[2:]:  # nullable; llm_model came later (datasets written before it lack it)
            if col not in items:
                items[col] = pd.Series([None] * len(items), dtype=object)
        splits = {s: _read_parquet(root / f"{s}.parquet", _sequence_schema(s != "train").names) for s in SPLITS}
        ds = cls(manifest=manifest, items=items, splits=splits, root=root)
        ds.validate()
        return ds


# What a dataset directory owns besides its tables: removed by `prepare --overwrite` (features describe
# the old items; the synthetic generator's extras describe the old shop). Content-keyed caches stay:
# llm_cache.sqlite (keyed by prompt + model) and images_store/ (keyed by URL) are right for any dataset.
OWNED = ("manifest.json", "items.parquet", *(f"{s}.parquet" for s in SPLITS), "features")
SYNTHETIC_OWNED = ("images", "cold_items.json", "attributes.parquet", "synthetic.json")


def prepare_output_dir(out: str | Path, overwrite: bool, remove: bool = True) -> list[str]:
    """Make ``out`` ready for a new dataset. An empty or new directory is used as is; a directory
    holding a dataset is refused unless ``overwrite``, and then the old dataset's files are removed
    (returns their names; ``remove=False`` only checks); any other non-empty directory is refused
    (nothing of the user's is deleted)."""
    import shutil

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a directory; choose another output directory")
    if not out.exists() or not any(out.iterdir()):
        return []
    if not (out / "manifest.json").exists():
        raise DatasetError(f"{out}: not empty and not a llmemf dataset; choose an empty or new output directory")
    if not overwrite:
        raise DatasetError(
            f"{out}: already holds a dataset; choose another output directory, or pass --overwrite to replace it "
            "(removes its tables and features/; LLM text and downloaded images stay cached)"
        )
    owned = OWNED + (SYNTHETIC_OWNED if (out / "synthetic.json").exists() else ())
    removed: list[str] = []
    if not remove:
        return removed
    for name in owned:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def _read_parquet(path: Path, required: list[str]) -> pd.DataFrame:
    """A table of the dataset, or a DatasetError naming the file (missing, unreadable, a column missing)."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing; the dataset is incomplete, re-create it with `llmemf prepare`")
    try:
        df = pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: unreadable ({e}); the file is damaged, re-create the dataset with `llmemf prepare`") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: no column(s) {missing} (has {list(df.columns)}); re-create the dataset with `llmemf prepare`")
    return df


def train_item_counts(ds: Dataset) -> np.ndarray:
    """(n_items,) occurrences of every item in the training sequences."""
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in ds.splits["train"]["items"]] or [np.zeros(0, np.int64)])
    return np.bincount(flat, minlength=ds.n_items)


def make_items_frame(domain_sizes: list[int], original_ids: list[str] | None = None) -> pd.DataFrame:
    """An items table with only ids and domains filled; metadata columns are null."""
    n = sum(domain_sizes)
    domain = np.concatenate([np.full(k, i, dtype=np.int8) for i, k in enumerate(domain_sizes)])
    df = pd.DataFrame({"item_id": np.arange(n, dtype=np.int64), "domain": domain})
    df["original_id"] = original_ids if original_ids is not None else [str(i) for i in range(n)]
    for col in ITEM_COLUMNS[3:]:
        df[col] = pd.Series([None] * n, dtype=object)
    return df


def split_history_target(items: list[int], timestamps: list[int]) -> tuple[list[int], list[int], int, int]:
    """Stable sort by time; the final interaction is the target (the C2DSR protocol)."""
    order = sorted(range(len(items)), key=lambda i: timestamps[i])  # sorted() is stable
    items = [items[i] for i in order]
    timestamps = [timestamps[i] for i in order]
    return items[:-1], timestamps[:-1], items[-1], timestamps[-1]
