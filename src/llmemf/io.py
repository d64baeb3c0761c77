"""Atomic file writes: the one implementation every module that writes a file uses.

A write goes to a temp file in the target's directory, is flushed and fsynced, then renamed over the
target (``os.replace``, atomic on POSIX): a reader, or a rerun after kill -9, sees the old file or
the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f, tmp)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | Path, wait: bool = True):
    """An exclusive flock on ``path`` (created if missing) for the length of the block. With
    ``wait=False`` a lock held elsewhere raises BlockingIOError at once. Held per open file, so two
    processes (or two opens in one process) exclude each other; the OS drops it if the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic(Path(path), lambda f, _tmp: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """JSON with a trailing newline; numpy scalars and other numbers go through float()."""
    atomic_write_bytes(path, (json.dumps(obj, indent=indent, default=float) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | Path) -> bytes:
    """torch.save to ``path`` atomically; returns the bytes written (for a checksum)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return data


def atomic_write_table(path: str | Path, table) -> None:
    """A pyarrow Table as Parquet, atomically (pyarrow writes to the temp path itself)."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_link(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` another name for ``src``'s current contents, atomically: a hard link (no copy)
    where the file system has them, else a copy; either way renamed into place."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.lnk")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        atomic_write_bytes(dst, src.read_bytes())
        return
    os.replace(tmp, dst)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
