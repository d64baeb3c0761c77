"""Sequences -> padded X / Y / XY tensors. The only module that knows about padding.

Every sequence is LEFT-padded with ``pad_id`` so that the last real interaction sits in the last
column; models read their user state at position -1. A batch is padded only to its own longest
row (length-aware), and positions are counted from the right so that a given item gets the same
position embedding whatever the batch's width.

Training rows (teacher forcing): the merged sequence s_1..s_n gives inputs s_1..s_{n-1} and
targets s_2..s_n; the X-only and Y-only subsequences of s give their own inputs and targets.
Evaluation rows: the history is the input, the held-out ``target`` is the one label.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import torch

from llmemf.data.dataset import Dataset


@dataclass
class Batch:
    user: torch.Tensor  # (B,) user index (dataset-wide vocabulary)
    xy: torch.Tensor  # (B, L) merged history, left-padded with pad_id
    x: torch.Tensor  # (B, Lx) domain-0 items of the history
    y: torch.Tensor  # (B, Ly) domain-1 items of the history
    xy_target: torch.Tensor | None = None  # (B, L) next item after each xy position (train)
    x_target: torch.Tensor | None = None  # (B, Lx) next X item after each x position (train)
    y_target: torch.Tensor | None = None  # (B, Ly)
    target: torch.Tensor | None = None  # (B,) held-out item (valid/test)
    target_domain: torch.Tensor | None = None  # (B,) its domain (valid/test)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: (v.to(device) if v is not None else None) for f in fields(self) for v in [getattr(self, f.name)]})

    @property
    def size(self) -> int:
        return self.xy.shape[0]


def domain_masks(items: torch.Tensor, n_x: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(is_x, is_y) boolean masks of a padded id tensor: global ids below ``n_x`` are domain X, the rest
    up to ``pad_id`` domain Y. The one definition of which positions belong to which domain."""
    return items < n_x, (items >= n_x) & (items != pad_id)


def left_pad(seqs: list[np.ndarray], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, width) int64 matrix, each row's last ``width`` items right-aligned; and the row lengths."""
    out = np.full((len(seqs), max(width, 1)), pad_id, dtype=np.int64)
    lengths = np.zeros(len(seqs), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-width:] if width else s[:0]
        if len(s):
            out[i, -len(s) :] = s
        lengths[i] = len(s)
    return out, lengths


class SplitTensors:
    """One split of a dataset, pre-padded to max_len once; batches are row slices trimmed to width."""

    def __init__(self, dataset: Dataset, split: str, max_len: int, user_index: dict[str, int]):
        df = dataset.splits[split]
        self.split = split
        self.train = split == "train"
        pad = dataset.pad_id
        boundary = dataset.manifest.domains[0].n_items  # ids below are domain X
        seqs = [np.asarray(s, dtype=np.int64) for s in df["items"]]
        if self.train:
            seqs = [s[-(max_len + 1) :] for s in seqs]
            xs = [s[s < boundary] for s in seqs]
            ys = [s[s >= boundary] for s in seqs]
            self.xy, self.xy_len = left_pad([s[:-1] for s in seqs], max_len, pad)
            self.xy_target, _ = left_pad([s[1:] for s in seqs], max_len, pad)
            self.x, self.x_len = left_pad([s[:-1] for s in xs], max_len, pad)
            self.x_target, _ = left_pad([s[1:] for s in xs], max_len, pad)
            self.y, self.y_len = left_pad([s[:-1] for s in ys], max_len, pad)
            self.y_target, _ = left_pad([s[1:] for s in ys], max_len, pad)
            self.target = self.target_domain = None
        else:
            seqs = [s[-max_len:] for s in seqs]
            self.xy, self.xy_len = left_pad(seqs, max_len, pad)
            self.x, self.x_len = left_pad([s[s < boundary] for s in seqs], max_len, pad)
            self.y, self.y_len = left_pad([s[s >= boundary] for s in seqs], max_len, pad)
            self.xy_target = self.x_target = self.y_target = None
            self.target = df["target"].to_numpy(dtype=np.int64)
            self.target_domain = df["target_domain"].to_numpy(dtype=np.int64)
        self.user = np.array([user_index[u] for u in df["user"]], dtype=np.int64)
        self.n_targets = int((self.xy_target != pad).sum()) if self.train else len(seqs)

    def __len__(self) -> int:
        return len(self.user)

    def batch(self, rows: np.ndarray) -> Batch:
        def trim(mat: np.ndarray | None, lengths: np.ndarray) -> torch.Tensor | None:
            if mat is None:
                return None
            width = max(int(lengths[rows].max()), 1)
            return torch.from_numpy(mat[rows, -width:])

        def take(vec: np.ndarray | None) -> torch.Tensor | None:
            return None if vec is None else torch.from_numpy(vec[rows])

        return Batch(
            user=take(self.user),
            xy=trim(self.xy, self.xy_len),
            x=trim(self.x, self.x_len),
            y=trim(self.y, self.y_len),
            xy_target=trim(self.xy_target, self.xy_len),
            x_target=trim(self.x_target, self.x_len),
            y_target=trim(self.y_target, self.y_len),
            target=take(self.target),
            target_domain=take(self.target_domain),
        )

    def batch_rows(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, by_length: bool = False, rows: np.ndarray | None = None
    ) -> list[np.ndarray]:
        """The row indices of each batch, in order, or shuffled from ``seed``. ``by_length`` groups rows
        of similar length into a batch (then shuffles the batches), which cuts the padding the encoders
        compute on. A function of its arguments only: every rank of a distributed run computes the same list."""
        idx = np.arange(len(self)) if rows is None else np.asarray(rows)
        rng = np.random.default_rng(seed)
        if shuffle:
            idx = rng.permutation(idx)
        if by_length:
            idx = idx[np.argsort(self.xy_len[idx], kind="stable")]
        chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
        if shuffle and by_length:
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        return chunks

    def iter_batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0, by_length: bool = False, rows: np.ndarray | None = None
    ) -> Iterator[Batch]:
        """The batches of ``batch_rows``."""
        for chunk in self.batch_rows(batch_size, shuffle, seed, by_length, rows):
            yield self.batch(chunk)


def build_user_index(dataset: Dataset) -> dict[str, int]:
    users: dict[str, int] = {}
    for split in ("train", "valid", "test"):
        for u in dataset.splits[split]["user"]:
            users.setdefault(str(u), len(users))
    return users


class DataBundle:
    """The tensors every model and the trainer use: one SplitTensors per split plus item facts."""

    def __init__(self, dataset: Dataset, max_len: int = 15):
        self.dataset = dataset
        self.max_len = max_len
        self.user_index = build_user_index(dataset)
        for df in dataset.splits.values():
            df["user"] = df["user"].astype(str)
        self.splits = {s: SplitTensors(dataset, s, max_len, self.user_index) for s in ("train", "valid", "test")}

    @property
    def train(self) -> SplitTensors:
        return self.splits["train"]

    @property
    def n_users(self) -> int:
        return len(self.user_index)

    @property
    def n_items(self) -> int:
        return self.dataset.n_items

    @property
    def pad_id(self) -> int:
        return self.dataset.pad_id

    def domain_range(self, domain: int) -> tuple[int, int]:
        return self.dataset.manifest.domain_range(domain)
