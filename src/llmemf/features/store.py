"""Item feature matrices on disk: ``DATASET/features/<name>.npy`` + ``<name>.json``.

    <name>.npy        float16 or float32, shape (n_items, dim), row i = global item id i
    <name>.mask.npy   bool (n_items,), True where the item has the feature (other rows are zero)
    <name>.json       manifest: encoder, weights id, dim, n_items, dtype, source hash, counts, notes

Conventional names: ``img`` (image embeddings), ``txt_title`` (text = title), ``txt_llm`` (text =
title + LLM-written text). Models look features up by name; any width works.
Writes are atomic (temp file + rename) and the manifest is written last, so a feature whose
manifest exists is complete.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llmemf.io import atomic_write_bytes


@dataclass
class FeatureManifest:
    name: str
    encoder: str  # e.g. "open_clip:ViT-B-32/laion2b_s34b_b79k" or "sentence-transformers:all-MiniLM-L6-v2"
    weights: str  # weights identifier or checkpoint hash
    dim: int
    n_items: int
    dtype: str
    source_hash: str = ""  # hash of the inputs (texts / image bytes + encoder): recompute iff it changes
    n_present: int = 0
    notes: dict = field(default_factory=dict)  # e.g. {"truncated_texts": 12, "chunked_texts": 40}


@dataclass
class Feature:
    manifest: FeatureManifest
    values: np.ndarray  # (n_items, dim)
    mask: np.ndarray  # (n_items,) bool


def feature_dir(dataset_root: str | Path) -> Path:
    return Path(dataset_root) / "features"


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def save_feature(dataset_root: str | Path, feature: Feature) -> Path:
    m = feature.manifest
    values, mask = np.asarray(feature.values), np.asarray(feature.mask, dtype=bool)
    if values.ndim != 2 or values.shape != (m.n_items, m.dim):
        raise ValueError(f"feature {m.name}: values shape {values.shape} != ({m.n_items}, {m.dim})")
    if mask.shape != (m.n_items,):
        raise ValueError(f"feature {m.name}: mask shape {mask.shape} != ({m.n_items},)")
    values = np.where(mask[:, None], values, 0).astype(m.dtype)
    m.n_present = int(mask.sum())
    root = feature_dir(dataset_root)
    (root / f"{m.name}.json").unlink(missing_ok=True)  # incomplete until the manifest is back
    atomic_write_bytes(root / f"{m.name}.npy", _npy_bytes(values))
    atomic_write_bytes(root / f"{m.name}.mask.npy", _npy_bytes(mask))
    atomic_write_bytes(root / f"{m.name}.json", (json.dumps(asdict(m), indent=2) + "\n").encode())
    return root / f"{m.name}.npy"


def read_feature_manifest(dataset_root: str | Path, name: str) -> FeatureManifest | None:
    path = feature_dir(dataset_root) / f"{name}.json"
    if not path.exists():
        return None
    return FeatureManifest(**json.loads(path.read_text()))


def load_feature(dataset_root: str | Path, name: str, n_items: int | None = None) -> Feature:
    root = feature_dir(dataset_root)
    manifest = read_feature_manifest(dataset_root, name)
    if manifest is None:
        have = sorted(p.stem for p in root.glob("*.json")) if root.exists() else []
        raise FileNotFoundError(f"{root}/{name}.json: feature {name!r} not found (have: {have or 'none'}); compute it with `llmemf embed`")
    values = np.load(root / f"{name}.npy", allow_pickle=False)
    mask = np.load(root / f"{name}.mask.npy", allow_pickle=False)
    if values.shape != (manifest.n_items, manifest.dim) or mask.shape != (manifest.n_items,):
        raise ValueError(f"{root}/{name}.npy: shape {values.shape} disagrees with its manifest")
    if n_items is not None and manifest.n_items != n_items:
        raise ValueError(f"{root}/{name}.npy: {manifest.n_items} rows, but the dataset has {n_items} items")
    return Feature(manifest, values, mask)


def list_features(dataset_root: str | Path) -> list[str]:
    root = feature_dir(dataset_root)
    return sorted(p.stem for p in root.glob("*.json")) if root.exists() else []
