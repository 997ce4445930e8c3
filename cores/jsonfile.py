"""One reader for every JSON file pipeit loads (plans, predictors, platforms, tables ...).

Every loader used to call ``json.loads(path.read_text())`` and catch what it
thought of; each caught a different subset, and a file nested 100 000 deep
crashed most of them with a ``RecursionError`` traceback. :func:`read_json`
turns *every* way a file can fail to be a JSON document into one exception,
:class:`JsonFileError`, whose message is one line naming the file. Each
loader converts it into its own error class (``PlanError``,
``PlatformError`` ...), which the CLI prints as one line with exit 2.

Only the bytes-to-document step lives here; whether the document has the
right keys and types is each loader's ``from_json``.

This module is in :mod:`cores`, the lowest package: it imports nothing from
:mod:`pipeit` or :mod:`predictors`.
"""

from __future__ import annotations

import codecs
import errno
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, List, Union

__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "MAX_JSON_INT", "JsonFileError", "read_at_most", "read_json",
           "read_text", "parse_json", "finite_or_null", "is_version"]

#: Largest JSON file read, in bytes. The biggest file pipeit writes (a GPU
#: tuning file with trial histories, a predictor over a large profile) is a
#: few MB; a file past this is a wrong path (a model, a log, ``/dev/zero``),
#: and reading it whole and then parsing it would take seconds and a few
#: times its size in memory before saying so.
MAX_JSON_BYTES = 64 * 1024 * 1024

#: Deepest nesting of arrays/objects accepted. pipeit's documents are at most
#: about 6 levels deep. Python's parser gives up (``RecursionError``) only at
#: roughly 1000 levels, and where depends on the interpreter and the stack
#: left; a document that just passes it can still exhaust the stack in code
#: that walks it later. A fixed, low bound refuses all of these the same way.
MAX_JSON_DEPTH = 64

#: Largest integer (in magnitude) accepted: a signed 64-bit one. Every integer in
#: pipeit's files is a count, a size in bytes, an index, a CPU or a clock; none
#: comes near it. A larger one cannot be a float (``float(10**400)`` raises
#: ``OverflowError``, not the ``ValueError`` loaders catch) nor a numpy integer,
#: so refusing it here keeps that failure out of every loader after the reader.
MAX_JSON_INT = 2 ** 63 - 1


class JsonFileError(ValueError):
    """A file that is not a readable JSON document; ``str()`` is one line naming the file.

    ``path``, ``what`` and ``reason`` are kept so a loader can word its own
    message (``f"{err.path}: unreadable layer-times file ({err.reason})"``),
    as loaders did before this reader and their tests still check. ``kind``
    says which way it failed: ``"missing"`` (no such file: a cache treats that
    as empty, a loader may say "no such ... file"), ``"unreadable"`` (the
    bytes could not be had: a directory, permissions, too large) or
    ``"syntax"`` (the bytes are not a JSON document pipeit reads).
    """

    def __init__(self, path: Union[str, Path], what: str, reason: str, kind: str) -> None:
        self.path = Path(path)
        self.what = what
        self.reason = " ".join(str(reason).split())  # one line, whatever the OS or parser said
        self.kind = kind
        super().__init__(f"{self.path}: not a readable {what} file ({self.reason})")

    @property
    def missing(self) -> bool:
        return self.kind == "missing"

    @property
    def detail(self) -> str:
        """:attr:`reason` without a leading ``"not JSON: "``, for a message that already says so."""
        prefix = "not JSON: "
        return self.reason[len(prefix):] if self.reason.startswith(prefix) else self.reason


def _reject_constant(name: str) -> float:
    """``parse_constant`` hook: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON."""
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    """``parse_float`` hook: a literal such as ``1e999`` overflows to infinity; refuse it."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]}{'...' if len(text) > 20 else ''} is too large for a float")
    return value


def _int64(text: str) -> int:
    """``parse_int`` hook: an integer must fit in 64 bits (see :data:`MAX_JSON_INT`).

    Checked on the digits before converting, so an integer of 100 000 digits
    costs nothing and never meets Python's digit limit.
    """
    if len(text.lstrip("-")) > 19:
        raise ValueError(f"integer {text[:12]}... of {len(text.lstrip('-'))} digits does not fit in 64 bits")
    value = int(text)
    if not -MAX_JSON_INT - 1 <= value <= MAX_JSON_INT:
        raise ValueError(f"integer {text} does not fit in 64 bits")
    return value


def _depth_over(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests arrays/objects more than ``limit`` deep (iterative: no recursion)."""
    stack: List[tuple] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


#: bytes read at a time by :func:`read_at_most`
_READ_CHUNK = 1 << 20


def read_at_most(path: Union[str, Path], limit: int, *, regular_only: bool = False) -> bytes:
    """The first ``limit`` bytes of ``path`` (all of it if shorter); ``OSError`` as ``open`` raises it.

    Opened without blocking, then read blocking: a named pipe no one writes
    to opens at once and reads as empty instead of hanging the command; a
    pipe with a writer (``--plan <(...)``) is read as it comes. The limit
    is what keeps a pipe or ``/dev/zero``, which have no size to stat, from
    filling memory. ``regular_only``: anything but a regular file is an
    ``OSError`` (a sysfs tree's files are all regular; a FIFO there with a
    writer that never writes would still block).
    """
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if regular_only and not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    with os.fdopen(descriptor, "rb") as handle:
        # in pieces: read(limit) sets aside ``limit`` bytes first, 64 MiB for a plan of 1 kB
        chunks, left = [], limit
        while left > 0:
            chunk = handle.read(min(left, _READ_CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


def read_text(path: Union[str, Path], what: str, *, max_bytes: int = MAX_JSON_BYTES) -> str:
    """The UTF-8 text of ``path``, at most ``max_bytes`` of it; :class:`JsonFileError` otherwise.

    The file half of :func:`read_json`, for a loader that also takes
    another text format (a transfer table is JSON or CSV). Refused: a
    missing file, a directory, a file this process may not read, a file
    over ``max_bytes`` (:data:`MAX_JSON_BYTES`), bytes that are not UTF-8.
    """
    path = Path(path)
    try:
        data = read_at_most(path, max_bytes + 1)  # one byte past the limit tells a file over it
    except FileNotFoundError:
        raise JsonFileError(path, what, "no such file", "missing") from None
    except IsADirectoryError:
        raise JsonFileError(path, what, "it is a directory", "unreadable") from None
    except PermissionError:
        raise JsonFileError(path, what, "permission denied", "unreadable") from None
    except OSError as err:
        raise JsonFileError(path, what, err.strerror or type(err).__name__, "unreadable") from None
    if len(data) > max_bytes:
        raise JsonFileError(path, what, f"larger than the {max_bytes // (1024 * 1024)} MB a JSON file may have",
                            "unreadable")
    # an editor on another system may save a byte-order mark first: it is not data
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = skip + err.start
        raise JsonFileError(path, what, f"not UTF-8 text: byte 0x{data[offset]:02x} at offset {offset}",
                            "syntax") from None


def parse_json(text: str, path: Union[str, Path], what: str, *, allow_nonfinite: bool = False) -> Any:
    """The JSON document in ``text`` (read from ``path``); :class:`JsonFileError` otherwise.

    The parsing half of :func:`read_json` (see there for what is refused and
    why, and for ``allow_nonfinite``).
    """

    def fail(reason: str) -> JsonFileError:
        return JsonFileError(path, what, reason, "syntax")

    if not text.strip():
        raise fail("not JSON: the file is empty")
    hooks: dict = {"parse_int": _int64}
    if not allow_nonfinite:
        hooks.update(parse_constant=_reject_constant, parse_float=_finite_float)
    try:
        doc = json.loads(text, **hooks)
    except RecursionError:
        raise fail("JSON nested too deeply") from None
    except json.JSONDecodeError as err:
        raise fail(f"not JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except ValueError as err:
        # from the hooks (a non-finite number, an integer past 64 bits)
        raise fail(f"not JSON pipeit can read: {err}") from None
    if _depth_over(doc, MAX_JSON_DEPTH):
        raise fail("JSON nested too deeply")
    return doc


def read_json(path: Union[str, Path], what: str, *, allow_nonfinite: bool = False,
              max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON document in ``path``; :class:`JsonFileError` if there is none.

    ``what`` names the kind of file in the message ("predictor", "plan"
    ...): ``"/tmp/x.json: not a readable predictor file (JSON nested too
    deeply)"``. Refused, each with its own reason: a missing file, a
    directory, a file this process may not read, a file over ``max_bytes``
    (:data:`MAX_JSON_BYTES`), an empty file, bytes that are not UTF-8,
    text that is not JSON, nesting deeper than :data:`MAX_JSON_DEPTH`,
    and an integer past :data:`MAX_JSON_INT` (which also keeps every integer
    far below Python's digit limit, ``sys.set_int_max_str_digits``).

    Non-finite numbers: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON
    (RFC 8259) and a number such as ``1e999`` overflows to infinity. pipeit's
    writers store a missing or infinite value as ``null``, so by default all
    of these are refused: a NaN time or limit would pass every ``<``/``>``
    check after it. ``allow_nonfinite=True`` accepts them, for a file
    pipeit itself may write them in (a plan's predicted rate is a float that
    ``json.dumps`` writes as ``Infinity``) or whose loader checks each number
    and says which field is wrong (a power file); that loader must then check.
    """
    return parse_json(read_text(path, what, max_bytes=max_bytes), path, what, allow_nonfinite=allow_nonfinite)


def is_version(value: Any, expected: int) -> bool:
    """Whether a document's ``version`` field is the integer ``expected``: ``true`` and ``1.0`` equal 1 in
    Python, but no pipeit ever wrote them, so a file that holds them was not written by one."""
    return type(value) is int and value == expected


def finite_or_null(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by None, through dicts, lists and tuples:
    JSON has no NaN or Infinity, and a strict parser refuses the ``NaN`` Python's json module writes."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value
