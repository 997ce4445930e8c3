"""Small helpers every command uses to print: JSON on stdout, tables for people."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Optional, Sequence, TextIO


def emit_json(document: Any, stream: Optional[TextIO] = None) -> None:
    """Print one JSON document (the ``--json`` contract: nothing else on stdout)."""
    # resolved at call time: a default of sys.stdout would pin the stream seen at import
    stream = sys.stdout if stream is None else stream
    json.dump(document, stream, indent=2, sort_keys=False, default=_default)
    stream.write("\n")


def _default(value: Any) -> Any:
    # numpy scalars and tuples of them turn up in reports; make them plain.
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain, aligned text table (right-aligned numbers, left-aligned text)."""
    text_rows = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [
        all(_is_number(row[i]) for row in text_rows) if text_rows else False
        for i in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(widths[i]) if numeric[i] else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(row) for row in text_rows)
    return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True
