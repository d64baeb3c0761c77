"""docs/baselines.md cites llmemf's code by file and line (the fidelity tables' llmemf column): the citations
must point at code that exists, inside the symbol a citation names, and were checked against the files as
they are now (their content hashes, recorded at the end of the document)."""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "baselines.md"
SRC = ROOT / "src" / "llmemf"
# FILE.py:12-20, 31 or FILE.py `Symbol` 12-20, `Other` 40-52: the list of lines right after a file name
ITEM = r"(?:`[\w.]+`\s+)?\d+(?:-\d+)?"
CITATION = re.compile(rf"([\w/]+\.py)(?::\s*|\s+(?=`))({ITEM}(?:,\s*{ITEM})*)")
LINES = re.compile(r"(?:`([\w.]+)`\s+)?(\d+)(?:-(\d+))?")


def _tables(text: str) -> list[list[list[str]]]:
    """Markdown tables of the document, each a list of rows of stripped cells (header first, no rule row)."""
    tables, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def _resolve(name: str) -> Path:
    hits = [p for p in SRC.rglob("*.py") if str(p).endswith("/" + name)]
    assert len(hits) == 1, f"docs/baselines.md cites {name!r}: it names {len(hits)} files under src/llmemf, write the path that names one"
    return hits[0]


def citations() -> list[tuple[Path, str, int, int, str | None]]:
    """(file, cell, first line, last line, symbol named before the lines or None) of every line citation
    in an llmemf column."""
    out = []
    for table in _tables(DOC.read_text()):
        header = table[0]
        cols = [i for i, h in enumerate(header) if h.lower().startswith("llmemf")]
        for row in table[1:]:
            for i in cols:
                cell = row[i] if i < len(row) else ""
                for m in CITATION.finditer(cell):
                    path = _resolve(m.group(1))
                    for symbol, a, b in LINES.findall(m.group(2)):
                        out.append((path, cell, int(a), int(b or a), symbol or None))
    return out


def _symbol_spans(path: Path) -> dict[str, list[tuple[int, int]]]:
    spans: dict[str, list[tuple[int, int]]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            spans.setdefault(node.name, []).append((first, node.end_lineno or node.lineno))
    return spans


def test_every_line_citation_points_inside_its_file_and_its_named_symbol():
    cites = citations()
    assert len(cites) > 100  # the tables of every baseline are parsed, not skipped
    for path, cell, a, b, symbol in cites:
        n = len(path.read_text().splitlines())
        assert 1 <= a <= b <= n, f"docs/baselines.md: {path.name}:{a}-{b} is outside the file ({n} lines), in '{cell}'"
        if symbol is not None:
            spans = _symbol_spans(path).get(symbol.split(".")[-1], [])
            assert any(lo <= a and b <= hi for lo, hi in spans), (
                f"docs/baselines.md: {path.name} `{symbol}` {a}-{b} is not inside {symbol} (at {spans}), in '{cell}'"
            )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_the_line_citations_were_checked_against_the_files_as_they_are():
    """A changed file moves the lines the document cites: check its citations again, then record its hash."""
    cited = sorted({p for p, *_ in citations()})
    recorded = {}
    for table in _tables(DOC.read_text()):
        if table[0][:2] == ["file", "sha256 (first 16 hex digits)"]:
            recorded = {row[0].strip("`"): row[1].strip("`") for row in table[1:]}
    current = {str(p.relative_to(ROOT)): _digest(p) for p in cited}
    table = "\n".join(f"| `{f}` | `{h}` |" for f, h in current.items())
    assert recorded == current, (
        "docs/baselines.md's line citations were checked against other versions of these files: check the "
        "llmemf column's lines in each changed file again, then put this table under '## Line citations':\n" + table
    )
