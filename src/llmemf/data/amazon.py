"""Build a dataset from the raw Amazon review dumps (2014, 2018 and 2023 formats), one pair of files per domain.

Each domain is a review file and, optionally, a metadata file; the format is detected from the
first non-blank line of each file, gzip from its magic bytes (not its name):

- 2014: reviews are JSON lines ``reviewerID, asin, unixReviewTime`` (seconds), or the ratings-only
  CSV ``user,item,rating,timestamp`` (no header); metadata is one Python dict literal per line
  (parsed with ``ast.literal_eval``, never ``eval``): ``asin, title, description, imUrl``.
- 2018: reviews as 2014; metadata JSON lines ``asin, title, description`` (a list),
  ``imageURLHighRes`` / ``imageURL`` (lists).
- 2023: reviews JSON lines ``user_id, parent_asin, timestamp`` (milliseconds), or the CSV with the
  header ``user_id,parent_asin,rating,timestamp``; metadata JSON lines ``parent_asin, title,
  description`` (a list), ``images`` (a list of {thumb, large, hi_res}).

Times are stored in unix seconds for every format (2023's milliseconds are floored), so domains
from different dumps share one clock. The interactions then go through the same construction as
``prepare log`` (``logs.build_splits``: duplicates, the fixed-point filter, the time split, the cap).

Memory and speed: the files are read in blocks of decompressed text (``BLOCK_BYTES``); each block is
parsed by pyarrow's JSON/CSV reader keeping only the three columns needed, and user / item ids are
dictionary-encoded before the pandas core sees them, so a review costs ~20 bytes, not a Python dict.
A block that pyarrow rejects (a malformed line, a blank line, an odd type) is re-read line by line
to skip exactly the bad lines and report their numbers. Metadata is parsed only for lines whose item
id (found by a regular expression) survived the filters. A truncated gzip stream keeps what was read.
"""

from __future__ import annotations

import ast
import csv
import html
import io
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pj

from llmemf.data.dataset import Dataset, DatasetError, DomainInfo, Manifest, make_items_frame
from llmemf.data.logs import SplitOptions, SplitReport, build_splits

BLOCK_BYTES = 8 << 20  # decompressed text parsed at once (pyarrow parses a block with its threads)
READ_BYTES = 1 << 20  # bytes read from disk per call
N_EXAMPLES = 5  # line numbers kept per malformed-line reason

# Review field names per format: user, item, time, and the time's divisor to seconds.
REVIEW_FIELDS = {
    "2014/2018": ("reviewerID", "asin", "unixReviewTime", 1),
    "2023": ("user_id", "parent_asin", "timestamp", 1000),
}
CSV_2023_HEADER = ("user_id", "parent_asin", "rating", "timestamp")


@dataclass
class FileReport:
    """What reading one file found."""

    path: str
    kind: str = ""  # detected format, e.g. "2018 reviews (JSON lines, gzip)"
    lines: int = 0  # lines read (blank ones included)
    rows: int = 0  # records parsed
    malformed: Counter = field(default_factory=Counter)  # reason -> lines skipped
    examples: dict[str, list[int]] = field(default_factory=dict)  # reason -> first line numbers
    truncated: str = ""  # why the stream ended early ("" when it did not)

    def bad(self, reason: str, line: int) -> None:
        self.malformed[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < N_EXAMPLES:
            ex.append(line)

    def summary(self) -> str:
        text = f"{self.path} ({self.kind}): {self.lines} lines, {self.rows} records"
        if self.malformed:
            parts = [
                f"{why} {n} (lines {', '.join(map(str, self.examples[why]))}{', ...' if n > len(self.examples[why]) else ''})"
                for why, n in sorted(self.malformed.items())
            ]
            text += f"; {sum(self.malformed.values())} malformed lines skipped: " + "; ".join(parts)
        else:
            text += "; malformed lines: none"
        if self.truncated:
            text += f"; TRUNCATED: {self.truncated}, kept the {self.lines} lines read"
        return text


@dataclass
class MetaReport(FileReport):
    matched: int = 0  # kept items found in the file
    missing: list[str] = field(default_factory=list)  # kept items absent from the file (all of them; printed: a few)
    filled: dict[str, int] = field(default_factory=dict)  # column -> items given a value

    def summary(self) -> str:
        text = super().summary() + f"\n      {self.matched} kept items found, filled {self.filled}"
        if self.missing:
            text += f"; {len(self.missing)} kept items missing from the metadata (e.g. {', '.join(self.missing[:N_EXAMPLES])})"
        return text


@dataclass
class AmazonReport(SplitReport):
    """Counts of every step, per domain and for the shared construction."""

    domains: tuple[str, str] = ("", "")
    reviews: list[FileReport] = field(default_factory=list)
    meta: list[MetaReport | None] = field(default_factory=list)
    kept: int = 0  # interactions in the written sequences (histories + targets)
    prepass: tuple[int, int] = (0, 0)  # records before and after the pre-pass (see ``prepass``)

    def summary(self) -> str:
        lines = []
        for name, rev, meta in zip(self.domains, self.reviews, self.meta, strict=True):
            lines.append(f"amazon {name}: reviews {rev.summary()}")
            if meta is not None:
                lines.append(f"    metadata {meta.summary()}")
        read = sum(r.lines for r in self.reviews)
        malformed = sum(sum(r.malformed.values()) for r in self.reviews)
        lines.append(f"  review lines read {read}, records {sum(r.rows for r in self.reviews)}, malformed {malformed}")
        n0, n1 = self.prepass
        lines.append(f"  pre-pass (one round of the filter on raw counts; the result is the same): records {n0} -> {n1}")
        lines += self.split_lines()
        lines.append(f"  kept: {self.kept} interactions in the dataset's sequences")
        return "\n".join(lines)


# ---- reading: bytes -> complete lines -------------------------------------------------------------


def _chunks(path: Path, report: FileReport) -> Iterator[bytes]:
    """Decompressed bytes of ``path`` (gzip, multi-member, detected by magic; or plain)."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        report.kind += ", gzip" if gz else ""
        if not gz:
            while chunk := f.read(READ_BYTES):
                yield chunk
            return
        dec, fed = zlib.decompressobj(31), False
        while comp := f.read(READ_BYTES):
            while comp:
                try:
                    out = dec.decompress(comp)
                except zlib.error as e:
                    report.truncated = f"corrupt gzip data ({e})"
                    return
                fed = True
                if out:
                    yield out
                if dec.eof:  # end of a member: another may follow
                    comp = dec.unused_data
                    dec, fed = zlib.decompressobj(31), False
                else:
                    comp = b""
        if fed and not dec.eof:
            report.truncated = "the gzip stream ends before its end marker"


def iter_blocks(path: Path, report: FileReport) -> Iterator[tuple[bytes, int, int]]:
    """(block of whole lines, number of its first line, lines in it); the last line may lack its newline."""
    pieces: list[bytes] = []
    size, line = 0, 1
    for chunk in _chunks(path, report):
        pieces.append(chunk)
        size += len(chunk)
        if size < BLOCK_BYTES:
            continue
        buf = b"".join(pieces)
        cut = buf.rfind(b"\n") + 1
        if cut:
            block, rest = buf[:cut], buf[cut:]
            n = block.count(b"\n")
            yield block, line, n
            line += n
            pieces, size = [rest], len(rest)
        else:
            pieces, size = [buf], len(buf)
    buf = b"".join(pieces)
    if buf:
        yield buf, line, buf.count(b"\n") + (0 if buf.endswith(b"\n") else 1)


def _lines(block: bytes) -> list[bytes]:
    parts = block.split(b"\n")
    return parts[:-1] if parts and parts[-1] == b"" else parts


def _first_line(path: Path) -> bytes:
    """The first non-blank line, without reading the whole file."""
    probe = FileReport(str(path))
    buf = b""
    for chunk in _chunks(path, probe):
        buf += chunk
        for ln in buf.split(b"\n")[:-1]:
            if ln.strip():
                return ln.strip()
        if len(buf) > (64 << 20):
            break
    return buf.strip()


def _literal(line: bytes):
    """A Python dict literal (2014 metadata): ast.literal_eval, never eval."""
    return ast.literal_eval(line.decode("utf-8"))


# ---- reviews ----------------------------------------------------------------------------------------


def detect_reviews(path: Path) -> tuple[str, str]:
    """(format key of REVIEW_FIELDS or "csv-2014"/"csv-2023", a description); UserError if unknown."""
    first = _first_line(path)
    if not first:
        raise DatasetError(f"{path}: empty file (no review lines); give a review file with at least one line")
    if first.startswith(b"{"):
        try:
            rec = json.loads(first)
        except ValueError:
            try:
                rec = _literal(first)
            except (ValueError, SyntaxError) as e:
                raise DatasetError(f"{path}:1: neither JSON nor a Python dict literal ({e}); is this an Amazon review file?") from None
        if isinstance(rec, dict):
            if "user_id" in rec and "parent_asin" in rec:
                return "2023", "2023 reviews (JSON lines: user_id, parent_asin, timestamp in ms)"
            if "reviewerID" in rec:
                year = "2018" if "verified" in rec else "2014"
                return "2014/2018", f"{year} reviews (JSON lines: reviewerID, asin, unixReviewTime)"
        raise DatasetError(
            f"{path}:1: a JSON record without reviewerID/asin (2014, 2018) or user_id/parent_asin (2023); is this a metadata file? "
            "Give it after the review file: --domain NAME=REVIEWS:META"
        )
    cells = [c.strip().lower() for c in first.decode("utf-8", "replace").split(",")]
    if tuple(cells[:4]) == CSV_2023_HEADER:
        return "csv-2023", "2023 ratings CSV (user_id, parent_asin, rating, timestamp in ms)"
    if len(cells) == 4:
        return "csv-2014", "2014 ratings-only CSV (user, item, rating, timestamp; no header)"
    raise DatasetError(f"{path}:1: not an Amazon review file (JSON lines, or a 4-column ratings CSV); first line {first[:120]!r}")


_REVIEW_SCHEMA = pa.schema([("user", pa.string()), ("item", pa.string()), ("ts", pa.int64())])


def _json_block_fast(block: bytes, names: tuple[str, str, str], n_lines: int) -> pa.Table | None:
    schema = pa.schema([(names[0], pa.string()), (names[1], pa.string()), (names[2], pa.int64())])
    opts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        t = pj.read_json(io.BytesIO(block), read_options=pj.ReadOptions(block_size=1 << 22), parse_options=opts)
    except pa.ArrowInvalid:
        return None
    if t.num_rows != n_lines or any(t.column(i).null_count for i in range(3)):
        return None  # blank lines shift the numbering, nulls are missing fields: count them line by line
    return pa.table([t.column(0), t.column(1), t.column(2)], schema=_REVIEW_SCHEMA)


def _time(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and np.isfinite(value):
        return int(np.floor(value))
    if isinstance(value, str):
        try:
            return int(np.floor(float(value)))
        except ValueError:
            return None
    return None


def _review_rows_slow(lines: list[bytes], first_line: int, names: tuple[str, str, str], report: FileReport, csv_format: bool):
    users, items, stamps = [], [], []
    for k, raw in enumerate(lines):
        no = first_line + k
        if not raw.strip():
            report.bad("blank line", no)
            continue
        if csv_format:
            try:
                cells = next(csv.reader([raw.decode("utf-8")]))
            except (UnicodeDecodeError, csv.Error, StopIteration):
                report.bad("not CSV", no)
                continue
            if len(cells) != 4:
                report.bad("not 4 columns", no)
                continue
            user, item, ts = cells[0].strip(), cells[1].strip(), _time(cells[3].strip())
        else:
            try:
                rec = json.loads(raw)
            except ValueError:
                try:
                    rec = _literal(raw)
                except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
                    report.bad("not JSON", no)
                    continue
            if not isinstance(rec, dict):
                report.bad("not a JSON object", no)
                continue
            user, item, ts = rec.get(names[0]), rec.get(names[1]), _time(rec.get(names[2]))
        if not isinstance(user, str) or not user or not isinstance(item, str) or not item:
            report.bad(f"missing {names[0] if not (isinstance(user, str) and user) else names[1]}", no)
            continue
        if ts is None:
            report.bad(f"missing or bad {names[2]}", no)
            continue
        users.append(user)
        items.append(item)
        stamps.append(ts)
    return pa.table({"user": pa.array(users, pa.string()), "item": pa.array(items, pa.string()), "ts": pa.array(stamps, pa.int64())})


def _csv_block_fast(block: bytes, n_lines: int) -> pa.Table | None:
    cols = ["user", "item", "rating", "ts"]
    try:
        t = pcsv.read_csv(
            io.BytesIO(block),
            read_options=pcsv.ReadOptions(column_names=cols),
            parse_options=pcsv.ParseOptions(ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(
                column_types={"user": pa.string(), "item": pa.string(), "ts": pa.float64()}, include_columns=["user", "item", "ts"]
            ),
        )
    except pa.ArrowInvalid:
        return None
    if t.num_rows != n_lines or any(t.column(i).null_count for i in range(3)):
        return None
    if any(pc.any(pc.equal(pc.utf8_length(t.column(c)), 0)).as_py() for c in ("user", "item")):
        return None  # an empty id: the slow path names the line
    ts = pc.cast(pc.floor(t.column("ts")), pa.int64())
    return pa.table([t.column("user"), t.column("item"), ts], schema=_REVIEW_SCHEMA)


def read_reviews(path: Path) -> tuple[pa.Table, FileReport]:
    """Every (user, item, ts-in-seconds) of a review file, streamed block by block."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such review file")
    fmt, kind = detect_reviews(path)
    report = FileReport(str(path), kind=kind)
    csv_format = fmt.startswith("csv")
    names = ("user", "item", "timestamp") if csv_format else REVIEW_FIELDS[fmt][:3]
    divisor = 1000 if fmt in ("2023", "csv-2023") else 1
    tables = []
    for block, first, lines_in in iter_blocks(path, report):
        report.lines += lines_in
        skip_header = csv_format and fmt == "csv-2023" and first == 1
        if skip_header:  # the header line is not a record
            cut = block.find(b"\n") + 1 if b"\n" in block else len(block)
            block, first, lines_in = block[cut:], 2, lines_in - 1
            if not block:
                continue
        t = _csv_block_fast(block, lines_in) if csv_format else _json_block_fast(block, names, lines_in)
        if t is None:
            t = _review_rows_slow(_lines(block), first, names, report, csv_format)
        tables.append(t)
    table = pa.concat_tables(tables) if tables else _REVIEW_SCHEMA.empty_table()
    if divisor != 1:
        table = table.set_column(2, "ts", pc.divide(table.column("ts"), divisor))  # integer division floors non-negative ms
    report.rows = table.num_rows
    if table.num_rows == 0:
        raise DatasetError(f"{path}: no usable review lines ({report.summary()})")
    return table, report


def _encode(arr: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dictionary-encode ids in arrow: (int32 codes, the distinct ids)."""
    if arr.nbytes > (1 << 30):  # 32-bit string offsets would overflow when the chunks are combined
        arr = arr.cast(pa.large_string())
    enc = pc.dictionary_encode(arr.combine_chunks())
    return enc.indices.to_numpy(zero_copy_only=False), enc.dictionary


def _sorted_categorical(codes: np.ndarray, dictionary: pa.Array) -> pd.Categorical:
    """The used ids as a Categorical whose categories sort like the text (the core breaks ties on the id's text)."""
    used, inverse = np.unique(codes, return_inverse=True)
    names = dictionary.take(pa.array(used))
    order = pc.sort_indices(names).to_numpy()
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return pd.Categorical.from_codes(rank[inverse], categories=pd.Index(names.take(pa.array(order)).to_pylist(), dtype=object))


def prepass(ucode: np.ndarray, icode: np.ndarray, dom: np.ndarray, opts: SplitOptions) -> np.ndarray:
    """Rows that can survive the core's fixed-point filter: one round of its three conditions on raw counts.

    Counts here include duplicates and rows other conditions will drop, so they are upper bounds of the
    counts the core sees: a row dropped here is dropped by the core too, and the core's result is the same
    (the largest subset meeting all three conditions), from far fewer rows.
    """
    per = np.bincount(ucode.astype(np.int64) * 2 + dom, minlength=2 * (int(ucode.max()) + 1)).reshape(-1, 2)
    user_ok = (per.sum(1) >= opts.min_count) & (per.min(1) >= opts.min_per_domain)
    ikey = icode.astype(np.int64) * 2 + dom
    item_ok = np.bincount(ikey) >= opts.min_count
    return user_ok[ucode] & item_ok[ikey]


# ---- metadata ---------------------------------------------------------------------------------------


_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def clean_text(value) -> str | None:
    """Title / description text: lists joined, HTML entities decoded, tags dropped, whitespace collapsed."""
    if isinstance(value, list | tuple):
        value = " ".join(v for v in value if isinstance(v, str))
    if not isinstance(value, str):
        return None
    text = _SPACE.sub(" ", _TAG.sub(" ", html.unescape(value))).strip()
    return text or None


def largest_image(rec: dict) -> str | None:
    """The largest URL of the item's main image in any format (2023 hi_res > large > thumb; 2018 high-res list; 2014 imUrl)."""
    for entry in rec.get("images") or []:
        if isinstance(entry, dict):
            for key in ("hi_res", "large", "thumb"):
                if isinstance(entry.get(key), str) and entry[key].startswith("http"):
                    return entry[key]
    for key in ("imageURLHighRes", "imageURL"):
        urls = rec.get(key)
        if isinstance(urls, list):
            for url in urls:
                if isinstance(url, str) and url.startswith("http"):
                    return url
    url = rec.get("imUrl")
    return url if isinstance(url, str) and url.startswith("http") else None


def detect_meta(path: Path) -> tuple[str, str, str]:
    """(key field, "json" | "python", description); an empty file is (.., "empty")."""
    first = _first_line(path)
    if not first:
        return "asin", "empty", "empty file"
    try:
        rec, syntax = json.loads(first), "json"
    except ValueError:
        try:
            rec, syntax = _literal(first), "python"
        except (ValueError, SyntaxError) as e:
            raise DatasetError(f"{path}:1: metadata must be JSON lines or Python dict literals ({e})") from None
    if not isinstance(rec, dict) or not ({"parent_asin", "asin"} & set(rec)):
        has = sorted(rec)[:12] if isinstance(rec, dict) else type(rec).__name__
        raise DatasetError(f"{path}:1: a metadata record needs asin (2014, 2018) or parent_asin (2023); has {has}")
    if "parent_asin" in rec:
        return "parent_asin", syntax, "2023 metadata (JSON lines keyed by parent_asin)"
    if syntax == "python":
        return "asin", syntax, "2014 metadata (Python dict literals keyed by asin)"
    return "asin", syntax, "2018 metadata (JSON lines keyed by asin)"


def read_meta(path: Path, wanted: set[str]) -> tuple[dict[str, dict[str, str | None]], MetaReport]:
    """title / description / image of the ``wanted`` items; other lines are only scanned for their key."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such metadata file")
    key, syntax, kind = detect_meta(path)
    report = MetaReport(str(path), kind=kind)
    found: dict[str, dict[str, str | None]] = {}
    if syntax == "empty":
        return found, report
    key_re = re.compile(rb"""["']""" + key.encode() + rb"""["']\s*:\s*u?["']([^"']+)["']""")
    parse = json.loads if syntax == "json" else _literal
    for block, first, _ in iter_blocks(path, report):
        lines = _lines(block)
        report.lines += len(lines)
        for k, raw in enumerate(lines):
            m = key_re.search(raw)
            if m is not None:
                oid = m.group(1).decode("utf-8", "replace")
                if oid not in wanted or oid in found:
                    continue  # an item the filters dropped (or a repeat): not parsed
            if not raw.strip():
                continue
            try:
                rec = parse(raw)
            except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
                report.bad("unparsable", first + k)
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
                report.bad(f"no {key}", first + k)
                continue
            report.rows += 1
            item = rec[key]
            if item in wanted and item not in found:
                found[item] = {"title": clean_text(rec.get("title")), "description": clean_text(rec.get("description")), "image": largest_image(rec)}
    return found, report


# ---- the importer -------------------------------------------------------------------------------------


@dataclass
class DomainSource:
    name: str  # e.g. "Food"
    reviews: Path
    meta: Path | None = None

    @classmethod
    def parse(cls, spec: str) -> DomainSource:
        """NAME=REVIEWS[:META]; a REVIEWS path that exists as a whole is taken as it is."""
        name, eq, rest = spec.partition("=")
        if not eq or not name.strip() or not rest:
            raise DatasetError(f"--domain {spec!r}: expected NAME=REVIEWS[:META], e.g. Food=reviews_Grocery.json.gz:meta_Grocery.json.gz")
        if Path(rest).exists() or ":" not in rest:
            return cls(name.strip(), Path(rest))
        reviews, _, meta = rest.partition(":")
        return cls(name.strip(), Path(reviews), Path(meta) if meta else None)


def import_amazon(sources: list[DomainSource], opts: SplitOptions | None = None, name: str | None = None) -> tuple[Dataset, AmazonReport]:
    """Read two domains' review (and metadata) files, apply ``prepare log``'s construction; the Dataset is not yet saved."""
    opts = opts or SplitOptions()
    opts.check()
    if len(sources) != 2 or sources[0].name == sources[1].name:
        raise DatasetError(f"need exactly two domains with distinct names (--domain X=... --domain Y=...), got {[s.name for s in sources]}")
    report = AmazonReport(domains=(sources[0].name, sources[1].name))
    tables = []
    for d, src in enumerate(sources):
        if src.meta is not None and not src.meta.is_file():
            raise DatasetError(f"{src.meta}: no such metadata file (domain {src.name})")
        t, rep = read_reviews(src.reviews)
        report.reviews.append(rep)
        tables.append(t.append_column("domain", pa.array(np.full(t.num_rows, d, dtype=np.int8))))
    both = pa.concat_tables(tables)
    del tables, t
    ucode, udict = _encode(both.column("user"))
    icode, idict = _encode(both.column("item"))
    dom, ts = both.column("domain").to_numpy(), both.column("ts").to_numpy()
    del both
    keep = prepass(ucode, icode, dom, opts)
    report.prepass = (len(keep), int(keep.sum()))
    df = pd.DataFrame(
        {
            "user": _sorted_categorical(ucode[keep], udict),
            "item": _sorted_categorical(icode[keep], idict),
            "domain": dom[keep],
            "ts": ts[keep],
        }
    )
    del ucode, icode, dom, ts, keep, udict, idict
    where = " + ".join(str(s.reviews) for s in sources)
    sizes, original_ids, splits = build_splits(df, opts, report, where)
    del df
    report.kept = sum(int(splits[s]["items"].map(len).sum()) + (len(splits[s]) if s != "train" else 0) for s in splits)

    items = make_items_frame(sizes, original_ids)
    for d, src in enumerate(sources):
        if src.meta is None:
            report.meta.append(None)
            continue
        rows = items.index[items["domain"] == d]
        wanted = set(items.loc[rows, "original_id"])
        found, mrep = read_meta(src.meta, wanted)
        mrep.matched = len(found)
        mrep.missing = sorted(wanted - set(found))
        for col in ("title", "description", "image"):
            values = [found.get(oid, {}).get(col) for oid in items.loc[rows, "original_id"]]
            items.loc[rows, col] = pd.Series(values, index=rows, dtype=object)
            mrep.filled[col] = sum(v is not None for v in values)
        report.meta.append(mrep)

    manifest = Manifest(
        name=name or "-".join(s.name for s in sources),
        domains=[DomainInfo(sources[0].name, sizes[0], 0), DomainInfo(sources[1].name, sizes[1], sizes[0])],
        source=(
            "amazon:"
            + " ".join(f"{s.name}={s.reviews.name}" + (f":{s.meta.name}" if s.meta else "") for s in sources)
            + f" min_count={opts.min_count} min_per_domain={opts.min_per_domain} max_len={opts.max_len} eval_fraction={opts.eval_fraction}"
        ),
    )
    return Dataset(manifest=manifest, items=items, splits=splits), report
