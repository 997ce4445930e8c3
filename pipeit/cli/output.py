"""Small helpers every command uses to print: JSON on stdout, tables for people."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, TextIO, Tuple

from cores.jsonfile import finite_or_null
from pipeit.errors import InputError


def emit_json(document: Any, stream: Optional[TextIO] = None) -> None:
    """Print one JSON document (the ``--json`` contract: nothing else on stdout)."""
    # resolved at call time: a default of sys.stdout would pin the stream seen at import
    stream = sys.stdout if stream is None else stream
    # strict JSON: a value that is not finite (a NaN output, an empty percentile) is null, not NaN
    json.dump(finite_or_null(document), stream, indent=2, sort_keys=False, default=_default, allow_nan=False)
    stream.write("\n")


def _default(value: Any) -> Any:
    # numpy scalars and tuples of them turn up in reports; make them plain.
    if hasattr(value, "item"):
        return finite_or_null(value.item())
    if hasattr(value, "tolist"):
        return finite_or_null(value.tolist())
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


def check_distinct_outputs(outputs: Sequence[Tuple[str, Any]]) -> None:
    """One :class:`~pipeit.errors.InputError` line when two output options (``(option, path)``, None
    for one not given) name one file: the second write would silently replace the first."""
    seen: List[Tuple[str, Any]] = []
    for option, path in outputs:
        if path is None or not str(os.fspath(path)).strip():
            continue
        for earlier_option, earlier in seen:
            if _same_file(path, earlier):
                raise InputError(f"{earlier_option} and {option} name the same file {path}; give two file names")
        seen.append((option, path))


def _same_file(a: Any, b: Any) -> bool:
    """Whether two names are one file: the same absolute name, or (both existing) the same inode."""
    if os.path.abspath(os.fspath(a)) == os.path.abspath(os.fspath(b)):
        return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_output_file(
    path: Any,
    option: str,
    inputs: Iterable[Any] = (),
    *,
    make_parents: bool = False,
) -> Path:
    """``path`` as a :class:`~pathlib.Path` once it can take a command's output file; one
    :class:`~pipeit.errors.InputError` line otherwise -- checked before any work is done.

    Refused: an empty name, a folder, a socket, a FIFO no process reads (opening it to write
    would block for ever), the very file of one of ``inputs`` (writing would destroy what the
    command reads), and, unless ``make_parents`` (the command creates missing folders), a
    parent folder that does not exist. A device such as ``/dev/null`` is accepted.
    """
    text = os.fspath(path) if path is not None else ""
    if not str(text).strip():
        raise InputError(f"{option} needs a file name, got an empty one")
    out = Path(text)
    try:
        mode: Optional[int] = out.stat().st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(f"{out}: a loop of symbolic links; give {option} a real file name") from None
        mode = None  # missing (or a dangling link): written fresh
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise InputError(f"{out} is a folder; give {option} a file name")
        if stat.S_ISSOCK(mode):
            raise InputError(f"{out} is a socket, not a file; give {option} a file name")
        if stat.S_ISFIFO(mode):
            try:
                # The probe's descriptor is left open on purpose, until this process exits: closing it
                # would be the reader's EOF (a `cat FIFO` would quit before the real write, which would
                # then wait for ever). A descriptor is not closed by the garbage collector, so nothing
                # needs to hold it.
                os.open(out, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as err:
                if err.errno == errno.ENXIO:
                    raise InputError(f"{out} is a FIFO that no process is reading; writing {option} there "
                                     f"would wait for ever") from None
                raise InputError(f"cannot write {out}: {err.strerror or err}") from None
        for given in inputs:
            if given is None or not str(os.fspath(given)):
                continue
            if _same_file(out, given):
                raise InputError(f"{option} {out} is also the input {given}; writing it would destroy that "
                                 f"input -- give another file name")
    parent = out.absolute().parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot write {out}: {existing} is not a folder")
    if existing != parent and not make_parents:
        raise InputError(f"cannot write {out}: folder {parent} does not exist")
    return out


def check_plot_file(path: Any, option: str = "--plot", inputs: Iterable[Any] = ()) -> Path:
    """:func:`check_output_file`, and a file name whose extension matplotlib can write (none: PNG)."""
    out = check_output_file(path, option, inputs)
    suffix = out.suffix[1:].lower()
    if suffix:
        try:
            from matplotlib.backend_bases import FigureCanvasBase
        except ImportError:
            return out  # the plotting code says it needs matplotlib, in its own words
        formats = FigureCanvasBase.get_supported_filetypes()
        if suffix not in formats:
            raise InputError(f"{option} {out}: matplotlib cannot write .{suffix} files; use one of "
                             f"{', '.join('.' + f for f in sorted(formats))}")
    return out

