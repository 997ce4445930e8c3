"""Calibration at run time (P-CNN): watch a GPU stage's output quality and step up precision.

Accuracy tuning (:mod:`pipeit.gpu.accuracy`) picks kernel variants on a
calibration set; the frames a deployed pipeline sees may differ from it. So
while it serves, a GPU stage samples every ``every``-th frame and watches two
label-free signals:

* **output entropy** of the stage's outputs (the last axis read as a
  distribution, softmax-ed where it is not one), against a baseline learned
  on the first sampled frames of the current table: a shift of more than
  ``entropy_k`` standard deviations on ``patience`` consecutive samples is a
  degradation (P-CNN's label-free signal), on every table but the ladder's
  last, which has nothing more precise to move to;
* **agreement with the CPU**: every ``check_every``-th sample (and every
  baseline sample) the same frame also runs through the stage's TFLite
  sub-model; a relative error above the tolerance, or a top-1 (argmax of the
  last axis) that is not a top-1 of the reference within the tolerance, is a
  degradation.

On a degradation the stage moves to the next more precise *table* (a set of
per-layer kernel variants) of its *ladder*, which ends at fp32, and the
switch is recorded as a :class:`Switch`. :class:`Calibrator` is the decision
logic only (no OpenCL): the GPU worker (:mod:`pipeit.executor.gpu_worker`)
runs the tables and feeds it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from cores.filewrite import write_file
from cores.jsonfile import JsonFileError, is_version, read_json
from pipeit.errors import InputError
from pipeit.gpu.device import GpuError
from pipeit.gpu.kernels import PRECISIONS

__all__ = [
    "Table",
    "FP32",
    "CalibrationPolicy",
    "Switch",
    "Calibrator",
    "choose_ladder",
    "output_entropy",
    "top1_agreement",
    "max_relative_error",
    "outputs_equal",
    "tables_from_accuracy",
    "save_tables",
    "load_tables",
    "TABLES_VERSION",
]

TABLES_VERSION = 1
_PRECISIONS = ("fp32", "fp16-storage", "fp16")


@dataclass(frozen=True)
class Table:
    """One accuracy level of a GPU stage: tensor storage plus per-layer configs and precisions.

    Empty ``configs`` means the stage's own choice (tuning file, else the
    heuristic); ``error`` and ``ms`` are what accuracy tuning measured (NaN
    when unknown: such a table is taken on trust, see :func:`choose_ladder`).
    """

    name: str
    storage: str = "fp32"
    configs: Mapping[int, Mapping[str, Any]] = field(default_factory=dict, compare=False)
    precisions: Mapping[int, str] = field(default_factory=dict, compare=False)
    error: float = math.nan
    ms: float = math.nan
    #: where the table was read (file and position), for errors about its configs; not serialised
    origin: str = field(default="", compare=False)

    def to_json(self) -> dict:
        return {
            "name": self.name, "storage": self.storage,
            "configs": {str(k): dict(v) for k, v in sorted(self.configs.items())},
            "precisions": {str(k): v for k, v in sorted(self.precisions.items())},
            "error": None if math.isnan(self.error) else self.error,
            "ms": None if math.isnan(self.ms) else self.ms,
        }

    @classmethod
    def from_json(cls, doc: Any, where: str = "table") -> "Table":
        """Validate strictly: a table with a bad field is refused whole."""
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"]:
            raise GpuError(f"{where}: a table needs a non-empty 'name'")
        unknown = set(doc) - {"name", "storage", "configs", "precisions", "error", "ms"}
        if unknown:
            raise GpuError(f"{where}: unknown table fields {sorted(unknown)}")
        storage = doc.get("storage", "fp32")
        if storage not in ("fp32", "fp16-storage"):
            raise GpuError(f"{where}: storage must be fp32 or fp16-storage, got {storage!r}")
        configs, precisions = doc.get("configs", {}), doc.get("precisions", {})
        if not isinstance(configs, dict) or not isinstance(precisions, dict):
            raise GpuError(f"{where}: 'configs' and 'precisions' must be objects keyed by layer index")
        try:
            configs = {int(k): dict(v) for k, v in configs.items()}
            precisions = {int(k): str(v) for k, v in precisions.items()}
        except (TypeError, ValueError) as err:
            raise GpuError(f"{where}: layer keys must be integers and configs objects ({err})") from err
        bad = sorted(v for v in precisions.values() if v not in _PRECISIONS)
        if bad:
            raise GpuError(f"{where}: unknown precisions {bad}; choose from {', '.join(_PRECISIONS)}")
        stores = PRECISIONS[storage].storage  # a stage keeps every tensor in one type: said here, not in a worker
        for layer, name in sorted(precisions.items()):
            if PRECISIONS[name].storage != stores:
                raise GpuError(f"{where}: layer {layer}'s precision {name} stores {PRECISIONS[name].storage}, "
                               f"but the table's storage {storage} keeps tensors in {stores}")
        numbers = []
        for key in ("error", "ms"):
            value = doc.get(key)
            if value is None:
                numbers.append(math.nan)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
                numbers.append(float(value))
            else:
                raise GpuError(f"{where}: {key!r} must be a finite number >= 0 or null, got {value!r}")
        return cls(doc["name"], storage, configs, precisions, numbers[0], numbers[1], origin=where)

    @property
    def is_fp32(self) -> bool:
        """Plain float32 everywhere, no Winograd: the most precise table there is."""
        return (self.storage == "fp32" and all(p == "fp32" for p in self.precisions.values())
                and all(c.get("algo") != "winograd" for c in self.configs.values()))


#: the last rung of every ladder: fp32 storage and arithmetic, the stage's own kernel configs
FP32 = Table("fp32", "fp32")


def choose_ladder(tables: Sequence[Table], tolerance: float) -> Tuple[Table, ...]:
    """The tables a stage steps through: the fastest that meets ``tolerance``, then ever more precise, then fp32.

    Tables with a measured ``error`` are ranked by it: the start is the fastest
    (lowest ``ms``) among those within ``tolerance``, followed by every table
    with a smaller error, least precise first. Tables without a measured error
    are a hand-made ladder taken in the order given (loosest first). Either
    way :data:`FP32` closes the ladder unless the last table already is fp32.
    """
    if not tables:
        return (FP32,)
    if any(math.isnan(t.error) for t in tables):
        ladder = list(tables)
    else:
        meeting = [t for t in tables if t.error <= tolerance]
        if not meeting:
            return (FP32,)
        start = min(meeting, key=lambda t: (math.inf if math.isnan(t.ms) else t.ms, t.error))
        finer = sorted((t for t in tables if t.error < start.error and t is not start), key=lambda t: -t.error)
        ladder = [start] + finer
    if not ladder[-1].is_fp32:
        ladder.append(FP32)
    return tuple(ladder)


@dataclass(frozen=True)
class CalibrationPolicy:
    """When to sample, and what counts as a degradation (documented defaults)."""

    tolerance: float = 1e-4  # max relative error against the CPU result of the same layers
    min_top1: float = 1.0  # fraction of positions whose GPU top-1 is a top-1 of the CPU result
    every: int = 8  # sample every Nth frame a worker serves (frame 0 is always sampled)
    check_every: int = 4  # every Kth sample also runs the CPU sub-model
    baseline: int = 3  # samples that learn the entropy baseline of a table (each CPU-checked)
    entropy_k: float = 6.0  # a shift of more than k standard deviations is an alarm
    entropy_floor: float = 1e-3  # the deviation's floor, relative to the baseline mean
    patience: int = 2  # consecutive entropy alarms before a switch

    def __post_init__(self) -> None:
        if not (isinstance(self.tolerance, (int, float)) and math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise InputError(f"calibration tolerance must be a finite number >= 0, got {self.tolerance!r}")
        if not 0.0 <= self.min_top1 <= 1.0:
            raise InputError(f"calibration min_top1 must be in [0, 1], got {self.min_top1!r}")
        for name in ("every", "check_every", "baseline", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"calibration {name} must be an integer >= 1, got {value!r}")
        if not (self.entropy_k > 0 and self.entropy_floor >= 0):
            raise InputError("calibration entropy_k must be > 0 and entropy_floor >= 0")

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "CalibrationPolicy":
        unknown = set(doc) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(f"unknown calibration settings {sorted(unknown)}; allowed: "
                             f"{', '.join(f.name for f in fields(cls))}")
        return cls(**doc)


@dataclass(frozen=True)
class Switch:
    """One calibration event: the stage left table ``from_table`` for ``to_table`` (same name: none left)."""

    frame: int  # the worker's own frame count when it happened
    from_table: str
    to_table: str
    from_level: int
    to_level: int
    reason: str  # "cpu-error" | "cpu-top1" | "entropy"
    value: float  # the relative error, the top-1 agreement, or the entropy shift in standard deviations

    def to_json(self) -> dict:
        return {"frame": self.frame, "from_table": self.from_table, "to_table": self.to_table,
                "from_level": self.from_level, "to_level": self.to_level, "reason": self.reason,
                "value": self.value}

    def describe(self) -> str:
        what = {"cpu-error": "relative error vs CPU", "cpu-top1": "top-1 agreement vs CPU",
                "entropy": "entropy shift (std devs)"}.get(self.reason, self.reason)
        if self.to_level == self.from_level:
            return f"table {self.from_table!r} degraded ({what} {self.value:.3g}) and no more precise table is left"
        return f"switched table {self.from_table!r} -> {self.to_table!r} ({what} {self.value:.3g})"


def _rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(1, 1) if x.ndim == 0 else x.reshape(-1, x.shape[-1])


def output_entropy(outputs: Mapping[str, np.ndarray]) -> float:
    """Mean Shannon entropy (nats) of the last axis, summed over the outputs.

    A last axis that already is a distribution (non-negative, rows summing to
    1: a softmax output) is used as it is; any other tensor is softmax-ed
    first, so intermediate feature maps give a signal too.
    """
    total = 0.0
    for name in sorted(outputs):
        rows = _rows(outputs[name])
        if rows.size == 0:
            continue
        if rows.min() >= 0 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
            p = rows
        else:
            z = rows - rows.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
        total += float(np.mean(-np.sum(p * np.log(np.clip(p, 1e-300, None)), axis=1)))
    return total


def max_relative_error(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> float:
    """``max|got - want| / max|want|`` per tensor, the worst over ``want``'s tensors.

    Values equal as they stand (infinities included) and NaN against NaN
    count as no error; a NaN or an infinity against anything else is an
    infinite error (``max`` would otherwise pass a NaN over silently, and
    an output of NaNs would "match" any reference). The scale is the
    largest finite ``|want|``.
    """
    worst = 0.0
    for name, ref in want.items():
        ref64 = np.asarray(ref, dtype=np.float64)
        out64 = np.asarray(got[name], dtype=np.float64)
        if ref64.shape != out64.shape:
            return math.inf
        same = (out64 == ref64) | (np.isnan(out64) & np.isnan(ref64))
        if same.all():
            continue
        diffs = np.abs(out64 - ref64)[~same]
        if not np.isfinite(diffs).all():
            return math.inf
        finite = np.abs(ref64[np.isfinite(ref64)])
        scale = float(finite.max()) if finite.size else 0.0
        diff = float(diffs.max())
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def outputs_equal(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> bool:
    """The same tensors with the same shapes and values, NaN equal to NaN in the same place."""
    if set(got) != set(want):
        return False
    for name, ref in want.items():
        ref_arr, out_arr = np.asarray(ref), np.asarray(got[name])
        if ref_arr.shape != out_arr.shape or ref_arr.dtype != out_arr.dtype:
            return False
        if ref_arr.dtype.kind in "fc":
            if not np.array_equal(ref_arr, out_arr, equal_nan=True):
                return False
        elif not np.array_equal(ref_arr, out_arr):
            return False
    return True


def top1_agreement(got: np.ndarray, want: np.ndarray, tolerance: float = 0.0) -> float:
    """Fraction of positions whose top-1 (argmax of the last axis) in ``got`` is a top-1 of ``want``.

    Ties count: the GPU's pick agrees when its reference value is within
    ``tolerance * max|want|`` of the reference maximum, so two channels equal
    up to rounding do not read as a disagreement.
    """
    g, w = _rows(got), _rows(want)
    if g.shape != w.shape or w.size == 0:
        return 0.0 if g.shape != w.shape else 1.0
    picked = w[np.arange(w.shape[0]), np.argmax(g, axis=1)]
    slack = tolerance * float(np.max(np.abs(w)))
    return float(np.mean(w.max(axis=1) - picked <= slack))


class Calibrator:
    """The calibration decisions of one GPU stage worker (no OpenCL: it sees arrays only).

    Call :meth:`sample` with the worker's frame count before running a frame:
    ``None`` (not sampled), ``"entropy"`` or ``"check"`` (run the CPU
    reference too). Then :meth:`observe` the outputs (and the reference);
    it returns a :class:`Switch` when the stage must move to ``self.level``.
    """

    def __init__(self, ladder: Sequence[Table], policy: CalibrationPolicy, level: int = 0) -> None:
        if not ladder:
            raise InputError("a calibration ladder needs at least one table")
        if not 0 <= level < len(ladder):
            raise InputError(f"calibration level {level} is outside the ladder of {len(ladder)} tables")
        self.ladder = tuple(ladder)
        self.policy = policy
        self.level = level
        self.switches: List[Switch] = []
        self._exhausted = False
        self._restart_table()

    @property
    def table(self) -> Table:
        return self.ladder[self.level]

    @property
    def baseline(self) -> Optional[Tuple[float, float]]:
        """(mean, std) entropy learned for the current table, once its baseline samples are in."""
        return self._baseline

    def _restart_table(self) -> None:
        self._samples = 0
        self._entropies: List[float] = []
        self._baseline: Optional[Tuple[float, float]] = None
        self._alarms = 0

    def sample(self, frame: int) -> Optional[str]:
        if frame % self.policy.every:
            return None
        m = self._samples
        return "check" if m < self.policy.baseline or m % self.policy.check_every == 0 else "entropy"

    def observe(self, frame: int, outputs: Mapping[str, np.ndarray],
                reference: Optional[Mapping[str, np.ndarray]] = None) -> Optional[Switch]:
        p = self.policy
        m = self._samples
        self._samples += 1
        entropy = output_entropy(outputs)
        if reference is not None:
            error = max_relative_error(outputs, reference)
            if error > p.tolerance:
                return self._degrade(frame, "cpu-error", error)
            agree = min((top1_agreement(outputs[k], v, p.tolerance) for k, v in reference.items()), default=1.0)
            if agree < p.min_top1:
                return self._degrade(frame, "cpu-top1", agree)
        if self._baseline is None:
            if m < p.baseline:
                self._entropies.append(entropy)
                if len(self._entropies) == p.baseline:
                    self._baseline = (float(np.mean(self._entropies)), float(np.std(self._entropies)))
            return None
        if self.level + 1 >= len(self.ladder):
            # The entropy signal only asks for more precision; on the most precise table a shift is the
            # inputs changing, not the kernels (seen on an H100: fp32 "degraded" by 10-29 std devs on
            # varied random frames). Its CPU checks above still catch a real disagreement.
            return None
        mean, std = self._baseline
        spread = max(std, p.entropy_floor * abs(mean), 1e-12)
        shift = abs(entropy - mean) / spread
        self._alarms = self._alarms + 1 if shift > p.entropy_k else 0
        if self._alarms >= p.patience:
            return self._degrade(frame, "entropy", shift)
        return None

    def _degrade(self, frame: int, reason: str, value: float) -> Optional[Switch]:
        here = self.table.name
        if self.level + 1 >= len(self.ladder):
            if self._exhausted:
                return None  # said once; nothing more precise to move to
            self._exhausted = True
            self._restart_table()
            switch = Switch(frame, here, here, self.level, self.level, reason, float(value))
        else:
            self.level += 1
            self._restart_table()
            switch = Switch(frame, here, self.table.name, self.level - 1, self.level, reason, float(value))
        self.switches.append(switch)
        return switch


# ---- tables from accuracy tuning, and their file ---------------------------------------------

def tables_from_accuracy(entries: Sequence[Tuple[float, Any]]) -> Tuple[Table, ...]:
    """:func:`pipeit.gpu.accuracy.accuracy_table` rows ``(tolerance, AccuracyPlan)`` as tables (duplicates dropped)."""
    tables: List[Table] = []
    seen = set()
    for tolerance, plan in entries:
        key = (plan.storage, tuple(sorted(plan.precisions.items())),
               tuple(sorted((k, tuple(sorted(v.items()))) for k, v in plan.configs.items())))
        if key in seen:
            continue
        seen.add(key)
        name = f"{plan.storage}" + (f"+{len(plan.fast_layers)}fast" if plan.fast_layers else "") + f"@{tolerance:g}"
        error = plan.error if math.isfinite(plan.error) else math.nan
        ms = plan.ms if math.isfinite(plan.ms) else math.nan
        tables.append(Table(name, plan.storage, dict(plan.configs), dict(plan.precisions), error, ms))
    return tuple(tables)


def save_tables(path: Union[str, Path], stages: Mapping[Tuple[int, int], Sequence[Table]],
                model_sha256: str = "") -> None:
    """Write the candidate tables of each GPU layer range as JSON (``"version": 1``)."""
    doc = {
        "version": TABLES_VERSION, "kind": "pipeit-gpu-tables", "model_sha256": model_sha256,
        "stages": [{"layers": [int(a), int(b)], "tables": [t.to_json() for t in tables]}
                   for (a, b), tables in sorted(stages.items())],
    }
    write_file(path, json.dumps(doc, indent=1) + "\n")


def load_tables(path: Union[str, Path], model_sha256: Optional[str] = None) -> Dict[Tuple[int, int], Tuple[Table, ...]]:
    """Read a tables file; anything malformed refuses the whole file (no half-used tables)."""
    where = str(path)
    try:
        doc = read_json(path, "GPU tables")
    except JsonFileError as err:
        if err.kind == "syntax":
            raise GpuError(f"{where}: not a JSON GPU tables file ({err.detail})") from None
        raise GpuError(f"{where}: cannot read the GPU tables file ({err.reason})") from None
    if not isinstance(doc, dict) or doc.get("kind") != "pipeit-gpu-tables":
        raise GpuError(f"{where}: not a pipeit GPU tables file")
    if not is_version(doc.get("version"), TABLES_VERSION):
        raise GpuError(f"{where}: GPU tables version {doc.get('version')!r}, this pipeit reads {TABLES_VERSION}")
    sha = doc.get("model_sha256", "")
    if model_sha256 and sha and sha != model_sha256:
        raise GpuError(f"{where}: tables were made for model sha256 {str(sha)[:12]}..., not this model")
    stages = doc.get("stages")
    if not isinstance(stages, list):
        raise GpuError(f"{where}: 'stages' must be a list")
    out: Dict[Tuple[int, int], Tuple[Table, ...]] = {}
    for i, row in enumerate(stages):
        layers = row.get("layers") if isinstance(row, dict) else None
        if (not isinstance(layers, list) or len(layers) != 2 or not all(isinstance(x, int) for x in layers)
                or not 0 <= layers[0] < layers[1]):
            raise GpuError(f"{where}: stages[{i}].layers must be [start, end) with 0 <= start < end")
        tables = row.get("tables")
        if not isinstance(tables, list) or not tables:
            raise GpuError(f"{where}: stages[{i}].tables must be a non-empty list")
        out[(layers[0], layers[1])] = tuple(Table.from_json(t, f"{where}: stages[{i}].tables[{j}]")
                                            for j, t in enumerate(tables))
    return out
