"""The profile table: every measurement the profiler made, as a plain CSV.

One row per (measurement kind, model, layer range, descriptor key, core setup).
The table is the only input predictors are fitted from, so a layer row
carries its full descriptor (compact JSON) and a stage/model row carries the
descriptor keys of the layers it covers (in order); those keys resolve
through the layer rows. Every row records the platform fingerprint it was
measured on: a table mixing platforms, or from another platform than the one
asked for, is refused unless the caller forces it.

Columns (header line required, order fixed)::

    kind,model,start,end,setup,key,op,median_ms,spread,repeats,status,fingerprint,descriptor

``kind`` is ``layer`` (one layer timed alone), ``stage`` (a contiguous range
of layers), ``model`` (the whole model) or ``hop`` (one tensor passed between
two pinned processes as the executor passes it, :mod:`pipeit.executor.hop_timing`).
``start``/``end`` are a half-open layer range. A hop row has no model or
layers: ``model`` is ``executor``, the range ``0,0``, ``key`` the tensor's
bytes, ``setup`` the sending CPU's cluster and the last column
``{"bytes": N, "cpus": [SENDER, RECEIVER]}``; plans fit their hop cost to
these rows (:meth:`ProfileTable.hop_model`). ``spread`` is the
inter-quartile range divided by the median.
``status`` is ``ok`` or ``failed: <why>`` -- a failed measurement is data,
not an exception that aborts a long profiling run; readers skip it.

Re-timed rows supersede: when the files given to :func:`read_profile` hold
the same measurement twice (same :meth:`ProfileRow.identity`: a layer's
descriptor key and setup, a stage's or model's range and setup; same
platform fingerprint), the *last*
successful one is kept, in the order the files are given (a later file wins,
then a later line). A row re-timed into a new file therefore replaces the
suspect one when that file is listed after the old profile, and the old file
stays untouched. A failed or noisy re-measurement never replaces a good row.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

from cores.filewrite import exclusive_lock
from cores.jsonfile import JsonFileError, parse_json
from cores.model import MAX_CPU, CoreSetup
from pipeit.descriptor import LayerDescriptor
from pipeit.errors import ProfileError
from pipeit.layer_times import MAX_LAYER_MS
from pipeit.transfer import MAX_HOP_BYTES, HopModel

__all__ = [
    "COLUMNS",
    "KINDS",
    "HOP_MODEL",
    "ProfileRow",
    "ProfileTable",
    "read_profile",
    "read_rows",
    "table_of",
    "supersede",
    "ProfileWriter",
    "row_identity",
]

COLUMNS = (
    "kind", "model", "start", "end", "setup", "key", "op", "median_ms", "spread",
    "repeats", "status", "fingerprint", "descriptor",
)
KINDS = ("layer", "stage", "model", "hop")

#: the ``model`` column of a hop row (a hop belongs to the machine, not to a model)
HOP_MODEL = "executor"

#: the shortest time a row may say was measured (ms: one nanosecond, below any clock's resolution here)
MIN_MEASURED_MS = 1e-6

PathLike = Union[str, Path]


@dataclass(frozen=True)
class ProfileRow:
    """One measurement. ``descriptor`` is set on layer rows, ``layer_keys`` on stage/model rows."""

    kind: str
    model: str
    start: int
    end: int
    setup: CoreSetup
    key: str
    median_ms: float
    spread: float
    repeats: int
    fingerprint: str
    status: str = "ok"
    descriptor: Optional[LayerDescriptor] = None
    layer_keys: Tuple[str, ...] = ()
    #: a hop row's (sending CPU, receiving CPU)
    hop_cpus: Tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ok" and math.isfinite(self.median_ms) and self.median_ms > 0

    @property
    def noisy(self) -> bool:
        """Timed while its cores were shared: plans may use it where no clean row exists; a re-run re-times it."""
        return self.status.startswith("noisy")

    @property
    def op(self) -> str:
        return self.descriptor.op if self.descriptor is not None else ""

    def identity(self) -> tuple:
        """What makes two rows the same measurement (used to resume a run)."""
        return row_identity(self.kind, self.model, self.start, self.end, self.key, self.setup)

    @property
    def hop_bytes(self) -> int:
        """A hop row's tensor size (its ``key``)."""
        return int(self.key) if self.kind == "hop" else 0

    def to_csv(self) -> List[str]:
        if self.kind == "layer":
            assert self.descriptor is not None  # built by the profiler, never user input
            payload = self.descriptor.to_json()
        elif self.kind == "hop":
            payload = {"bytes": self.hop_bytes, "cpus": list(self.hop_cpus)}
        else:
            payload = list(self.layer_keys)
        return [
            self.kind, self.model, str(self.start), str(self.end), str(self.setup), self.key,
            self.op, _fmt(self.median_ms), _fmt(self.spread), str(self.repeats), self.status,
            self.fingerprint, json.dumps(payload, separators=(",", ":")),
        ]


def row_identity(kind: str, model: str, start: int, end: int, key: str, setup: CoreSetup) -> tuple:
    """Identity of a measurement. Layer rows are deduplicated by descriptor key and setup only:
    a layer shared by two models is measured once; hop rows by size and setup."""
    if kind in ("layer", "hop"):
        return (kind, key, str(setup))
    return (kind, model, int(start), int(end), str(setup))


def _fmt(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.6g}"


class ProfileTable:
    """Rows read from one or more profile CSVs, with the lookups predictors need."""

    def __init__(self, rows: Sequence[ProfileRow], fingerprint: str = "") -> None:
        self.rows: Tuple[ProfileRow, ...] = tuple(rows)
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ProfileRow]:
        return iter(self.rows)

    def layer_rows(self) -> List[ProfileRow]:
        return [r for r in self.rows if r.kind == "layer" and r.ok]

    def multi_rows(self) -> List[ProfileRow]:
        """Stage and whole-model rows (the calibration data)."""
        return [r for r in self.rows if r.kind in ("stage", "model") and r.ok]

    def hop_rows(self) -> List[ProfileRow]:
        return [r for r in self.rows if r.kind == "hop" and r.ok]

    def hop_model(self) -> Optional[HopModel]:
        """The line through the hop rows of the table's platform, or None without any.

        Why here: a profile is measured where the plans will run, so its hops
        are the ones the planner should charge, not the development host's
        default (:data:`pipeit.transfer.DEFAULT_HOP`).
        """
        from pipeit.transfer import fit_hop_model

        rows = [r for r in self.hop_rows() if r.fingerprint == self.fingerprint]
        if not rows:
            return None
        return fit_hop_model([(r.hop_bytes, r.median_ms) for r in rows],
                             source=f"timed by the profile on CPUs {'->'.join(map(str, rows[0].hop_cpus))}")

    def catalog(self) -> Dict[str, LayerDescriptor]:
        """Descriptor key -> descriptor, from every layer row (failed ones included)."""
        return {r.key: r.descriptor for r in self.rows if r.descriptor is not None}

    def models(self) -> List[str]:
        """Names of models with a whole-model row, in first-seen order."""
        seen: Dict[str, None] = {}
        for r in self.rows:
            if r.kind == "model":
                seen.setdefault(r.model, None)
        return list(seen)

    def setups(self) -> List[CoreSetup]:
        """The setups layers, stages or models were timed on (a hop row's sender is not one of them)."""
        return sorted({r.setup for r in self.rows if r.kind != "hop"})

    def identities(self) -> Set[tuple]:
        return {r.identity() for r in self.rows}


def _parse_row(cells: List[str], where: str) -> ProfileRow:
    if len(cells) != len(COLUMNS):
        raise ProfileError(f"{where}: expected {len(COLUMNS)} columns, found {len(cells)}")
    doc = dict(zip(COLUMNS, cells))
    kind = doc["kind"]
    if kind not in KINDS:
        raise ProfileError(f"{where}: unknown measurement kind {kind!r} (one of {', '.join(KINDS)})")
    try:
        start, end = int(doc["start"]), int(doc["end"])
        median_ms = float(doc["median_ms"])
        spread = float(doc["spread"])
        repeats = int(doc["repeats"])
        payload = parse_json(doc["descriptor"], where, "layer descriptor")
    except JsonFileError as err:  # nested too deep, past 64 bits, not JSON: the reader's one line
        raise ProfileError(f"{where}: malformed descriptor: {err.reason}") from None
    except ValueError as err:
        raise ProfileError(f"{where}: malformed value: {err}") from err
    if doc["status"] == "ok" and not (math.isfinite(median_ms) and (median_ms == 0 or
                                                                     MIN_MEASURED_MS <= median_ms <= MAX_LAYER_MS)):
        # the profiler writes a failed measurement as "failed: ..." with a nan time, never as "ok"; a time
        # past MAX_LAYER_MS (days) or under a nanosecond is a hand edit, and fitting on it overflows
        raise ProfileError(f"{where}: median_ms {doc['median_ms']!r} of a row with status ok is not a "
                           f"time in ms (0, or a number in {MIN_MEASURED_MS:g}..{MAX_LAYER_MS:g}); "
                           "fix or re-profile that row")
    if kind == "hop":
        return _hop_row(doc, where, median_ms, spread, repeats, payload)
    if not 0 <= start < end:  # a range of layers [start, end): the profiler never writes an empty one
        raise ProfileError(f"{where}: layer range [{start}, {end}) is not 0 <= start < end")
    try:
        setup = CoreSetup.parse(doc["setup"])
    except Exception as err:  # PlatformError from cores: a bad cell in a file
        raise ProfileError(f"{where}: {err}") from err
    descriptor = None
    layer_keys: Tuple[str, ...] = ()
    if kind == "layer":
        if not isinstance(payload, dict):
            raise ProfileError(f"{where}: a layer row needs a descriptor object")
        try:
            descriptor = LayerDescriptor.from_json(payload)
        except (KeyError, TypeError, ValueError) as err:
            raise ProfileError(f"{where}: malformed descriptor: {err}") from err
    else:
        if not isinstance(payload, list) or not all(isinstance(k, str) for k in payload):
            raise ProfileError(f"{where}: a {kind} row needs a list of layer keys")
        layer_keys = tuple(payload)
    return ProfileRow(
        kind=kind, model=doc["model"], start=start, end=end, setup=setup, key=doc["key"],
        median_ms=median_ms, spread=spread, repeats=repeats, fingerprint=doc["fingerprint"],
        status=doc["status"], descriptor=descriptor, layer_keys=layer_keys,
    )


def _hop_row(doc: Dict[str, str], where: str, median_ms: float, spread: float, repeats: int,
             payload: object) -> ProfileRow:
    """A hop row (the module docstring's layout); refused unless every cell says the same thing."""
    if not isinstance(payload, dict) or set(payload) != {"bytes", "cpus"}:
        raise ProfileError(f"{where}: a hop row needs {{\"bytes\": N, \"cpus\": [SENDER, RECEIVER]}}")
    nbytes, cpus = payload["bytes"], payload["cpus"]
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 1 <= nbytes <= MAX_HOP_BYTES \
            or doc["key"] != str(nbytes):
        raise ProfileError(f"{where}: a hop row's bytes must be a whole number in 1..{MAX_HOP_BYTES} and "
                           f"its key the same number (key {doc['key']!r:.20}, bytes {nbytes!r:.20})")
    if not isinstance(cpus, list) or len(cpus) != 2 or \
            not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= MAX_CPU for c in cpus):
        raise ProfileError(f"{where}: a hop row's cpus must be two CPU numbers, got {cpus!r:.40}")
    if doc["model"] != HOP_MODEL or doc["start"] != "0" or doc["end"] != "0":
        raise ProfileError(f"{where}: a hop row has model {HOP_MODEL!r} and range 0,0")
    try:
        setup = CoreSetup.parse(doc["setup"])
    except Exception as err:  # PlatformError from cores: a bad cell in a file
        raise ProfileError(f"{where}: {err}") from err
    return ProfileRow(kind="hop", model=HOP_MODEL, start=0, end=0, setup=setup, key=doc["key"],
                      median_ms=median_ms, spread=spread, repeats=repeats, fingerprint=doc["fingerprint"],
                      status=doc["status"], hop_cpus=tuple(cpus))


#: the longest field a profile may hold (a model row's layer keys: about 60 bytes a layer)
MAX_FIELD_BYTES = 1 << 26


def _check_one_model_per_name(rows: Sequence[ProfileRow], paths: Sequence[PathLike]) -> None:
    """Rows name a model by its file name: two different models of one name (their whole-model rows
    list other layers) would be read as one, the rows of one of them superseding the other's."""
    seen: Dict[str, Tuple[str, ...]] = {}
    for row in rows:
        if row.kind == "model" and seen.setdefault(row.model, row.layer_keys) != row.layer_keys:
            raise ProfileError(f"{', '.join(map(str, paths))}: two different models are named {row.model!r} "
                               "(their whole-model rows list other layers); profile them under different file names")


def _has_rows(path: Path) -> bool:
    """Whether a regular file holds a line beyond its first (the header): read two lines, not the file."""
    try:
        if not path.is_file():
            return False
        with open(path, encoding="utf-8", errors="replace") as handle:
            handle.readline()
            return any(line.strip() for line in iter(handle.readline, ""))
    except OSError:
        return False


def read_rows(path: PathLike) -> List[ProfileRow]:
    """One profile file's rows as written, checked row by row but not against each other or a
    platform (:func:`read_profile` does that); ``[]`` for a file with a header and no rows."""
    return _read_one(Path(path))


def _read_one(path: Path) -> List[ProfileRow]:
    if path.is_dir():
        raise ProfileError(f"{path}: is a folder, not a profile file")
    if not path.is_file():
        raise ProfileError(f"{path}: no such profile file")
    try:
        # utf-8-sig: a profile saved again by a spreadsheet starts with a byte-order mark; it is not data
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError(f"{path}: cannot read profile: {err}") from err
    return parse_profile_text(text, str(path))


def parse_profile_text(text: str, name: str = "<profile>") -> List[ProfileRow]:
    """Parse CSV text (kept apart from file reading so tests can work on strings)."""
    # A whole-model or stage row lists every layer key in one field: past ~900 layers that is more than
    # the csv module's default 128 KiB field limit. The limit is process-wide; it is only ever raised.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_BYTES))
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise ProfileError(f"{name}: empty profile (no header line)") from None
    except csv.Error as err:
        raise ProfileError(f"{name}: not a CSV file: {err}") from err
    if tuple(header) != COLUMNS:
        raise ProfileError(
            f"{name}: not a pipeit profile (header must be {','.join(COLUMNS)})"
        )
    rows = []
    try:
        for line_no, cells in enumerate(reader, start=2):
            if not cells:
                continue
            rows.append(_parse_row(cells, f"{name}:{line_no}"))
    except csv.Error as err:
        raise ProfileError(f"{name}: malformed CSV: {err}") from err
    return rows


def read_profile(
    paths: Union[PathLike, Sequence[PathLike]],
    fingerprint: Optional[str] = None,
    force: bool = False,
) -> ProfileTable:
    """Read and validate one or more profile CSVs into one table.

    All rows must share one platform fingerprint, and match ``fingerprint``
    when it is given (the platform the caller is about to predict for):
    times from another board or runtime would silently mislead the planner.
    ``force=True`` accepts a mismatch (the table's fingerprint is then the
    first one seen).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ProfileError("no profile files given")
    rows: List[ProfileRow] = []
    for p in paths:
        rows.extend(_read_one(Path(p)))
    return table_of(rows, paths, fingerprint, force)


def table_of(
    rows: Sequence[ProfileRow],
    paths: Sequence[PathLike],
    fingerprint: Optional[str] = None,
    force: bool = False,
) -> ProfileTable:
    """:func:`read_profile` for rows already read from ``paths`` (named in its errors)."""
    _check_one_model_per_name(rows, paths)
    rows = supersede(rows)
    if not rows:
        raise ProfileError(f"{', '.join(map(str, paths))}: the profile has no rows")
    prints = sorted({r.fingerprint for r in rows})
    if len(prints) > 1 and not force:
        raise ProfileError(
            f"profile rows come from {len(prints)} different platforms/runtimes "
            f"(fingerprints {', '.join(p[:12] for p in prints)}); use --force to mix them"
        )
    table_print = rows[0].fingerprint
    if fingerprint is not None and fingerprint not in prints and not force:
        raise ProfileError(
            f"{', '.join(map(str, paths))} was measured on another platform or runtime (fingerprint "
            f"{table_print[:12]}, this platform {fingerprint[:12]}); use --force to use it anyway"
        )
    return ProfileTable(rows, fingerprint=fingerprint if fingerprint in prints else table_print)


def supersede(rows: Sequence[ProfileRow]) -> List[ProfileRow]:
    """One row per measurement identity: the last ``ok`` one (else the last one), at its position.

    Why: a suspect measurement is fixed by re-timing it into a new file read
    after the old one; without this both rows would be fitted and evaluated.
    """
    chosen: Dict[tuple, int] = {}
    for i, r in enumerate(rows):
        ident = (r.identity(), r.fingerprint)  # another platform's row is another measurement
        prev = chosen.get(ident)
        if prev is None or r.ok or not rows[prev].ok:
            chosen[ident] = i
    keep = set(chosen.values())
    return [r for i, r in enumerate(rows) if i in keep]


class ProfileWriter:
    """Appends rows to a profile CSV, creating it (with its header) if needed.

    Each row is flushed as soon as it is written, so an interrupted run loses
    at most the measurement in flight and re-running resumes. Several
    processes may write one file at once (two ``profile`` runs, two
    ``bench`` runs sharing their profile cache): the file is opened for
    appending and each row is written under an exclusive lock, so rows never
    interleave and the header is written once. (It was opened for writing
    when new: two runs each wrote from offset 0 over the other's lines, and
    the file was unreadable for good.)
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", newline="", encoding="utf-8")
        except OSError as err:
            raise ProfileError(f"{self.path}: cannot write the profile ({err.strerror or err})") from err
        self._writer = csv.writer(self._handle)
        self._failed = False
        # the header goes out with the first row: a run stopped before its first measurement leaves an
        # empty file, which the next run starts afresh, not a header-only one it would take as a profile
        self._header_checked = False

    def write(self, row: ProfileRow) -> None:
        try:
            with exclusive_lock(self._handle.fileno()):
                if not self._header_checked:
                    self._header_checked = True
                    self._start_if_empty()
                self._writer.writerow(row.to_csv())
                self._flush()
        except OSError as err:  # a full disk, say: name the file (the CLI would blame standard output)
            self._failed = True
            raise ProfileError(f"{self.path}: cannot write the profile ({err.strerror or err})") from err

    def _start_if_empty(self) -> None:
        """Under the lock, before this writer's first row: a file with no rows yet (new, or a header left
        by an older pipeit stopped early) is started afresh with the header; one with rows is appended to."""
        import stat

        if _has_rows(self.path):
            return
        if stat.S_ISREG(os.fstat(self._handle.fileno()).st_mode):
            self._handle.truncate(0)
        self._writer.writerow(COLUMNS)

    def write_all(self, rows: Iterable[ProfileRow]) -> None:
        for row in rows:
            self.write(row)

    def _flush(self) -> None:
        self._handle.flush()
        try:
            os.fsync(self._handle.fileno())
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.EROFS, errno.ENOTSUP):
                raise
            # a device such as /dev/null, or a file system without fsync: nothing to make durable

    def close(self) -> None:
        try:
            self._handle.close()
        except OSError as err:  # the buffered rest of a row that already failed to write
            if not self._failed:
                raise ProfileError(f"{self.path}: cannot write the profile ({err.strerror or err})") from err

    def __enter__(self) -> "ProfileWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
