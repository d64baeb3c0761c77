"""A dataset cut down to each domain's most popular items, with the original splits kept.

Why: some experiments cost per item rather than per interaction (LLM enrichment runs at a few
items per minute offline), and an ablation over one text source is only meaningful where every
item has that text. Cutting the catalogue keeps the users, their split and the evaluation
protocol: histories lose the dropped items, an evaluation line survives only if its target is
kept and some history remains, a training line only if two items remain (one target).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmemf.data.dataset import Dataset, DatasetError, DomainInfo, Manifest, train_item_counts


def popular_subset(ds: Dataset, top_per_domain: int) -> Dataset:
    """The dataset restricted to the ``top_per_domain`` most frequent training items of each domain.

    Ties break towards the smaller id. Item ids are renumbered to stay contiguous per domain; the
    items table keeps its original_id, title, description, image and llm_text, so features are
    recomputed with ``llmemf embed`` (feature files are not carried over).
    """
    if top_per_domain < 1:
        raise DatasetError(f"top_per_domain must be at least 1, got {top_per_domain}")
    counts = train_item_counts(ds)
    new_id = np.full(ds.n_items, -1, dtype=np.int64)
    domains, offset = [], 0
    for info in ds.manifest.domains:
        lo, hi = info.offset, info.offset + info.n_items
        ids = np.arange(lo, hi)
        order = np.lexsort((ids, -counts[lo:hi]))  # most frequent first, then smaller id
        kept = np.sort(ids[order[:top_per_domain]])
        new_id[kept] = offset + np.arange(len(kept))
        domains.append(DomainInfo(name=info.name, n_items=len(kept), offset=offset))
        offset += len(kept)

    items = ds.items.iloc[np.nonzero(new_id >= 0)[0]].copy()  # ascending old id = ascending new id
    items["item_id"] = new_id[items["item_id"].to_numpy()]
    items = items.reset_index(drop=True)
    items.attrs = {}  # the parent's import report describes the parent

    def remap(seq, stamps):
        seq, stamps = np.asarray(seq, dtype=np.int64), np.asarray(stamps, dtype=np.int64)
        keep = new_id[seq] >= 0
        return new_id[seq[keep]].tolist(), stamps[keep].tolist()

    splits = {}
    for split, df in ds.splits.items():
        rows = []
        for rec in df.to_dict("records"):
            seq, stamps = remap(rec["items"], rec["timestamps"])
            if "target" in rec:
                target = int(new_id[rec["target"]])
                if target < 0 or not seq:
                    continue
                rows.append({**rec, "items": seq, "timestamps": stamps, "target": target})
            elif len(seq) >= 2:
                rows.append({**rec, "items": seq, "timestamps": stamps})
        splits[split] = pd.DataFrame(rows, columns=df.columns)
        if splits[split].empty:
            raise DatasetError(f"{ds.root or ds.manifest.name}: no {split} sequences left with the top {top_per_domain} items per domain")

    manifest = Manifest(
        name=f"{ds.manifest.name}-top{top_per_domain}",
        domains=domains,
        source=f"popular_subset({ds.manifest.name}, top_per_domain={top_per_domain}); {ds.manifest.source}",
    )
    return Dataset(manifest=manifest, items=items, splits=splits)
