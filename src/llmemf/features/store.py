"""Item feature matrices on disk: ``DATASET/features/<name>.npy`` + ``<name>.json``.

    <name>.npy        float16 or float32, shape (n_items, dim), row i = global item id i
    <name>.mask.npy   bool (n_items,), True where the item has the feature (other rows are zero)
    <name>.json       manifest: encoder, weights id, dim, n_items, dtype, source hash, dataset hash,
                      inputs hash, values hash, counts, notes

Conventional names: ``img`` (image embeddings), ``txt_title`` (text = title), ``txt_llm`` (text =
title + LLM-written text). Models look features up by name; any width works.
Writes are atomic (temp file + rename) and the manifest is written last, so a feature whose
manifest exists is complete.

Identity: a manifest records the content hash of the dataset it was computed for and a hash of the
item columns it was computed from (``inputs``: title, llm_text, image). ``load_feature`` refuses a
feature whose dataset or inputs have changed since (a dataset re-prepared in place, LLM text written
after embedding): a model would otherwise train on rows that describe other items.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llmemf.errors import UserError
from llmemf.io import atomic_write_bytes

# The item columns each conventional feature is computed from (inputs_hash covers them).
FEATURE_INPUTS = {"img": ("image",), "txt_title": ("title",), "txt_llm": ("title", "llm_text")}


class FeatureError(UserError, ValueError):
    """A feature file that is missing, damaged or computed for other data; the message says what to run."""


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
    dataset_hash: str = ""  # content_hash of the dataset it was computed for ("" = written before this was recorded)
    inputs: list[str] = field(default_factory=list)  # the item columns it was computed from, e.g. ["title", "llm_text"]
    inputs_hash: str = ""  # inputs_hash(items, inputs) at computation time
    values_hash: str = ""  # sha256 of the matrix and mask as written ("" = written before this was recorded)


@dataclass
class Feature:
    manifest: FeatureManifest
    values: np.ndarray  # (n_items, dim)
    mask: np.ndarray  # (n_items,) bool


def inputs_hash(items, columns) -> str:
    """Hash of the given item columns (nulls included): what a feature was computed from."""
    h = hashlib.sha256()
    for col in columns:
        h.update(col.encode() + b"\x00")
        h.update(json.dumps([v if isinstance(v, str) else None for v in items[col].tolist()], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


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
        raise FeatureError(f"feature {m.name}: values shape {values.shape} != ({m.n_items}, {m.dim})")
    if mask.shape != (m.n_items,):
        raise FeatureError(f"feature {m.name}: mask shape {mask.shape} != ({m.n_items},)")
    values = np.where(mask[:, None], values, 0).astype(m.dtype)
    m.n_present = int(mask.sum())
    root = feature_dir(dataset_root)
    (root / f"{m.name}.json").unlink(missing_ok=True)  # incomplete until the manifest is back
    values_bytes, mask_bytes = _npy_bytes(values), _npy_bytes(mask)
    h = hashlib.sha256(values_bytes)
    h.update(mask_bytes)
    m.values_hash = h.hexdigest()[:16]
    atomic_write_bytes(root / f"{m.name}.npy", values_bytes)
    atomic_write_bytes(root / f"{m.name}.mask.npy", mask_bytes)
    atomic_write_bytes(root / f"{m.name}.json", (json.dumps(asdict(m), indent=2) + "\n").encode())
    return root / f"{m.name}.npy"


def read_feature_manifest(dataset_root: str | Path, name: str) -> FeatureManifest | None:
    path = feature_dir(dataset_root) / f"{name}.json"
    if not path.exists():
        return None
    try:
        return FeatureManifest(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise FeatureError(f"{path}: unreadable feature manifest ({e}); recompute it with `llmemf embed {dataset_root} --force`") from None


def feature_identity(dataset_root: str | Path, name: str) -> str:
    """What a model trained on feature ``name`` of the dataset read, in 16 hex digits: the encoder, its weights,
    the inputs, the shape and dtype of the matrix and its values (its manifest's fields). A run records it; the
    same run on a feature whose values changed since is another experiment. Left out: the notes and counts, the
    encoder's display name (it may hold the path of a local checkpoint) and the source hash, embed's key for
    recomputing: the same weights installed elsewhere compute the same values, which the values hash stands for."""
    m = read_feature_manifest(dataset_root, name)
    if m is None:
        raise FeatureError(f"{feature_dir(dataset_root)}/{name}.json: no such feature; compute it with `llmemf embed {dataset_root}`")
    fields = {k: v for k, v in asdict(m).items() if k not in ("notes", "n_present", "encoder", "source_hash")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def check_feature_identity(dataset_root: str | Path, manifest: FeatureManifest) -> None:
    """FeatureError unless the feature was computed for this dataset (content hash) from the item
    columns it holds now (inputs hash). Manifests written before these were recorded are not checked."""
    import pyarrow.parquet as pq

    root = Path(dataset_root)
    fix = f"recompute it with `llmemf embed {root}`"
    where = f"{feature_dir(root)}/{manifest.name}.json"
    if manifest.dataset_hash:
        current = json.loads((root / "manifest.json").read_text()).get("content_hash", "")
        if current != manifest.dataset_hash:
            raise FeatureError(
                f"{where}: feature {manifest.name!r} was computed for dataset {manifest.dataset_hash}, "
                f"but {root} is now dataset {current} (re-prepared since?); {fix}"
            )
    if manifest.inputs_hash and manifest.inputs:
        items = pq.read_table(root / "items.parquet", columns=list(manifest.inputs)).to_pandas()
        now = inputs_hash(items, manifest.inputs)
        if now != manifest.inputs_hash:
            raise FeatureError(
                f"{where}: feature {manifest.name!r} was computed from item {'/'.join(manifest.inputs)} with hash {manifest.inputs_hash}, "
                f"but items.parquet now hashes to {now} (enriched or edited since?); {fix}"
            )


def load_feature(dataset_root: str | Path, name: str, n_items: int | None = None) -> Feature:
    """A feature of the dataset at ``dataset_root``, checked to belong to it (``check_feature_identity``)."""
    root = feature_dir(dataset_root)
    manifest = read_feature_manifest(dataset_root, name)
    if manifest is None:
        have = list_features(dataset_root)
        raise FeatureError(f"{root}/{name}.json: feature {name!r} not found (have: {have or 'none'}); compute it with `llmemf embed {dataset_root}`")
    try:
        values = np.load(root / f"{name}.npy", allow_pickle=False)
        mask = np.load(root / f"{name}.mask.npy", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FeatureError(f"{root}/{name}.npy: unreadable ({e}); recompute it with `llmemf embed {dataset_root} --force`") from None
    if values.shape != (manifest.n_items, manifest.dim) or mask.shape != (manifest.n_items,):
        raise FeatureError(
            f"{root}/{name}.npy: shape {values.shape} disagrees with its manifest; recompute it with `llmemf embed {dataset_root} --force`"
        )
    if n_items is not None and manifest.n_items != n_items:
        raise FeatureError(
            f"{root}/{name}.npy: {manifest.n_items} rows, but the dataset has {n_items} items; recompute it with `llmemf embed {dataset_root}`"
        )
    check_feature_identity(dataset_root, manifest)
    return Feature(manifest, values, mask)


def list_features(dataset_root: str | Path) -> list[str]:
    root = feature_dir(dataset_root)
    return sorted(p.stem for p in root.glob("*.json")) if root.exists() else []


def _unit_present_rows(feature: Feature) -> np.ndarray:
    """(n_present, dim) float64: the rows of the items that have the feature, scaled to unit length."""
    present = np.asarray(feature.values[feature.mask], dtype=np.float64)
    return present / np.maximum(np.linalg.norm(present, axis=1, keepdims=True), 1e-12)


def principal_axes(feature: Feature, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean (dim,) and top ``width`` principal axes (dim, width) of the feature's present rows, made
    unit first. Deterministic: float64 eigendecomposition of the covariance, each axis's sign fixed so
    that its largest-magnitude loading is positive."""
    present = _unit_present_rows(feature)
    if len(present) < 2 or not 0 < width < feature.manifest.dim:
        raise FeatureError(
            f"feature {feature.manifest.name!r}: {len(present)} item(s) of width {feature.manifest.dim} have no {width}-d principal axes"
        )
    mean = present.mean(0)
    centred = present - mean
    _, vectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    basis = np.ascontiguousarray(vectors[:, ::-1][:, :width])  # largest variance first
    basis *= np.sign(basis[np.abs(basis).argmax(0), np.arange(width)])
    return mean, basis


def project(feature: Feature, mean: np.ndarray, basis: np.ndarray) -> Feature:
    """The feature's present rows, made unit, centred on ``mean``, projected onto ``basis`` (dim, k) and
    made unit again; absent rows stay zero. The manifest notes the original width."""
    projected = (_unit_present_rows(feature) - mean) @ basis
    projected /= np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)
    out = np.zeros((len(feature.values), basis.shape[1]), dtype=np.float32)
    out[feature.mask] = projected
    m = feature.manifest
    manifest = FeatureManifest(**{**asdict(m), "dim": basis.shape[1], "dtype": "float32", "notes": {**m.notes, "projected_from": m.dim}})
    return Feature(manifest, out, feature.mask)
