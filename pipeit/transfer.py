"""What it costs to pass a cut's tensors from one pipeline stage to the next.

The planner charges every stage boundary one *hop*: the sending worker
copies the crossing tensors into a shared-memory ring slot and the receiving
worker copies them out. The cost is affine in the bytes crossing::

    hop_ms(nbytes) = fixed_ms + ms_per_byte * nbytes

The fixed part is the ring's bookkeeping (slot claim, wake-up); the linear
part is two memcpys. The defaults are the least-squares line through what
the project measured on its development host (PAPERS.md: one shared-memory
hop, copy in and out included: 34 us at 4 KB, 114 us at 800 KB, 431 us at
4 MB). A board measures its own with the executor's transfer benchmark and
passes the table here (:func:`load_hop_model`), because memory bandwidth
differs tenfold between a Cortex-A7 and a desktop.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Tuple, Union

import numpy as np

from cores.jsonfile import JsonFileError, parse_json, read_text
from cores.model import CoreSetup
from pipeit.errors import PlanError

__all__ = [
    "HopModel",
    "DEFAULT_POINTS",
    "DEFAULT_HOP",
    "fit_hop_model",
    "load_hop_model",
    "ExecutorOverhead",
    "DEFAULT_OVERHEAD",
    "frame_ms_of",
    "coordinator_rate",
    "coordinator_stage",
]

#: (bytes, ms) of one shared-memory hop measured on the development host (PAPERS.md)
DEFAULT_POINTS: Tuple[Tuple[int, float], ...] = (
    (4 * 1024, 0.034),
    (800 * 1024, 0.114),
    (4 * 1024 * 1024, 0.431),
)


@dataclass(frozen=True)
class HopModel:
    """``hop_ms(n) = fixed_ms + ms_per_byte * n``; ``source`` says where the figures came from."""

    fixed_ms: float
    ms_per_byte: float
    source: str = "default"

    def __post_init__(self) -> None:
        for name in ("fixed_ms", "ms_per_byte"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise PlanError(f"hop model: {name} must be a finite number >= 0, got {value!r}")

    def hop_ms(self, nbytes: int) -> float:
        """Milliseconds to move ``nbytes`` from one stage to the next (copy in and out)."""
        if nbytes < 0:
            raise PlanError(f"hop model: negative byte count {nbytes}")
        return self.fixed_ms + self.ms_per_byte * nbytes

    def describe(self) -> str:
        """The line for people: ``0.035 ms + 0.099 ms/MB (source)`` (MB of 2**20 bytes)."""
        return f"{self.fixed_ms:.3f} ms + {self.ms_per_byte * 2**20:.3f} ms/MB ({self.source})"

    def to_json(self) -> dict:
        return {"fixed_ms": self.fixed_ms, "ms_per_byte": self.ms_per_byte, "source": self.source}

    @classmethod
    def from_json(cls, doc: dict, where: str = "hop model") -> "HopModel":
        if not isinstance(doc, dict):
            raise PlanError(f"{where}: expected a JSON object")
        if "points" in doc:
            return fit_hop_model(_points(doc["points"], where), source=str(doc.get("source", where)))
        values = []
        for name in ("fixed_ms", "ms_per_byte"):
            value = doc.get(name)
            # a JSON number only: float() would take "5", true, or overflow on an integer past 1e308
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PlanError(f"{where}: needs fixed_ms and ms_per_byte (numbers), or points; "
                                f"{name} is {value!r:.40}")
            try:
                values.append(float(value))
            except OverflowError:
                raise PlanError(f"{where}: {name} is too large for a float") from None
        return cls(values[0], values[1], str(doc.get("source", where)))


#: the largest tensor (1 PiB) and hop time (about 11.6 days) a transfer table may hold: beyond them a
#: row is a hand edit, not a measurement
MAX_HOP_BYTES = 1 << 50
MAX_HOP_MS = 1e9


def fit_hop_model(points: Iterable[Tuple[float, float]], source: str = "measured") -> HopModel:
    """Least-squares line through measured ``(bytes, ms)`` points, clipped to non-negative terms.

    One point gives a line through the origin's fixed cost of zero; two or
    more give the ordinary fit. Negative intercepts (a noisy small-size
    measurement) are clipped to 0 and the slope refitted through the origin,
    so the model never predicts a free hop.
    """
    pts = [(float(b), float(ms)) for b, ms in points]
    if not pts:
        raise PlanError(f"{source}: no (bytes, ms) points to fit a hop model to")
    for b, ms in pts:
        # bounded as well as finite: the fit's sums of squares overflow to nan near the float limit
        if not (0 <= b <= MAX_HOP_BYTES and 0 <= ms <= MAX_HOP_MS):
            raise PlanError(f"{source}: bad hop measurement ({b!r} bytes, {ms!r} ms): want 0..{MAX_HOP_BYTES} "
                            f"bytes and 0..{MAX_HOP_MS:g} ms")
    n = len(pts)
    mean_b = sum(b for b, _ in pts) / n
    mean_ms = sum(ms for _, ms in pts) / n
    var = sum((b - mean_b) ** 2 for b, _ in pts)
    if n == 1 or var == 0.0:
        return HopModel(mean_ms, 0.0, source)
    slope = sum((b - mean_b) * (ms - mean_ms) for b, ms in pts) / var
    fixed = mean_ms - slope * mean_b
    if slope < 0:
        return HopModel(mean_ms, 0.0, source)
    if fixed < 0:
        slope = sum(b * ms for b, ms in pts) / sum(b * b for b, _ in pts)
        fixed = 0.0
    return HopModel(fixed, slope, source)


def _points(raw: object, where: str) -> Sequence[Tuple[float, float]]:
    out = []
    try:
        for item in raw:  # type: ignore[union-attr]
            if isinstance(item, dict):
                out.append((float(item["bytes"]), float(item["ms"])))
            else:
                b, ms = item
                out.append((float(b), float(ms)))
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise PlanError(f"{where}: points must be [bytes, ms] pairs or {{bytes, ms}} objects ({err})") from err
    return out


def load_hop_model(path: Union[str, Path]) -> HopModel:
    """A hop model from a file: JSON (``fixed_ms``/``ms_per_byte`` or ``points``) or CSV ``bytes,ms``."""
    path = Path(path)
    try:
        # the size bound and the refusal of a missing, unreadable or non-UTF-8 file hold for CSV too
        text = read_text(path, "transfer table")
    except JsonFileError as err:
        if err.missing:
            raise PlanError(f"{path}: no such transfer table") from None
        raise PlanError(str(err)) from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        try:
            doc = parse_json(text, path, "transfer table")
        except JsonFileError as err:
            raise PlanError(str(err)) from None
        model = HopModel.from_json(doc, str(path))
        return HopModel(model.fixed_ms, model.ms_per_byte, str(path))
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or not {"bytes", "ms"} <= set(rows[0]):
        raise PlanError(f"{path}: a transfer CSV needs a header with 'bytes' and 'ms' columns")
    return fit_hop_model(_points(rows, str(path)), source=str(path))


#: the line through :data:`DEFAULT_POINTS`
DEFAULT_HOP = fit_hop_model(DEFAULT_POINTS, source="default (PAPERS.md, development host)")


@dataclass(frozen=True)
class ExecutorOverhead:
    """What the executor itself costs per frame, beyond the layers and the copies of a hop.

    ``dispatch_ms``: wall time a worker loses per frame to the hand-off through
    the coordinating process (its reply read, the next job written); every
    worker pays it once per frame, so the cost model adds it to each worker's
    time (as two halves on the hops at its ends). ``coordinator_ms``: CPU time
    the coordinating process (feeder, dispatcher, collector) spends per frame.
    On a host with no spare core that CPU is taken from the workers on the
    CPUs the coordinator runs on (:func:`coordinator_rate`).

    Both grow with the model's frame time, not with its frame's bytes
    (measured: BENCHMARKS.md, "The executor's cost and the model's size"):
    the longer the workers run between two of the coordinator's wake-ups, the
    colder its caches when it wakes. ``by_frame_ms`` holds them measured for a
    few models, ``(frame ms, dispatch_ms, coordinator_ms)`` by increasing frame
    ms (a model's single-core time); :meth:`for_frame` interpolates, and holds
    the end values outside. Empty: the two flat figures hold for every model.
    A cost model takes the flat figures of its model (one model, one figure:
    the search stays exact). With one flat figure for all, every small model
    was held to the 224x224 zoo's cost: predicted 2-10x below what the
    executor passed.
    """

    dispatch_ms: float
    coordinator_ms: float
    source: str = "default"
    by_frame_ms: Tuple[Tuple[float, float, float], ...] = ()

    def __post_init__(self) -> None:
        values = [("dispatch_ms", self.dispatch_ms), ("coordinator_ms", self.coordinator_ms)]
        for frame_ms, dispatch, coordinator in self.by_frame_ms:
            values += [("frame ms", frame_ms), ("dispatch_ms", dispatch), ("coordinator_ms", coordinator)]
        for name, value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise PlanError(f"executor overhead: {name} must be a finite number >= 0, got {value!r}")
        sizes = [point[0] for point in self.by_frame_ms]
        if sizes != sorted(set(sizes)):
            raise PlanError(f"executor overhead: frame times must increase, got {sizes}")

    def for_frame(self, frame_ms: float) -> "ExecutorOverhead":
        """The flat figures for a model whose frame takes ``frame_ms`` on one core (:func:`frame_ms_of`)."""
        if not self.by_frame_ms or not math.isfinite(frame_ms):
            return self
        points = np.asarray(self.by_frame_ms, dtype=float)
        return ExecutorOverhead(float(np.interp(frame_ms, points[:, 0], points[:, 1])),
                                float(np.interp(frame_ms, points[:, 0], points[:, 2])),
                                f"{self.source}, for a {frame_ms:.3g} ms frame")

    def to_json(self) -> dict:
        return {"dispatch_ms": self.dispatch_ms, "coordinator_ms": self.coordinator_ms, "source": self.source,
                "by_frame_ms": [list(p) for p in self.by_frame_ms]}

    @classmethod
    def from_json(cls, doc: dict, where: str = "executor overhead") -> "ExecutorOverhead":
        try:
            points = tuple((float(p[0]), float(p[1]), float(p[2])) for p in doc.get("by_frame_ms", ()))
            return cls(float(doc["dispatch_ms"]), float(doc["coordinator_ms"]), str(doc.get("source", where)), points)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise PlanError(f"{where}: needs dispatch_ms and coordinator_ms, and by_frame_ms rows of "
                            f"[frame ms, dispatch_ms, coordinator_ms] ({err})") from err


def frame_ms_of(rows: Mapping[CoreSetup, Sequence[float]]) -> float:
    """A model's frame time for :meth:`ExecutorOverhead.for_frame`: its fastest whole-model time on one core.

    ``rows``: per-layer ms of each setup (:attr:`pipeit.layer_times.LayerTimes.times`);
    inf where no one-core setup runs every layer."""
    sums = [math.fsum(row) for setup, row in rows.items() if setup.cores == 1]
    finite = [t for t in sums if math.isfinite(t)]
    return min(finite) if finite else math.inf


#: The executor's cost per frame, the one place its numbers live; every plan is made with it
#: (``pipeit.dse.cost_model_for``), at the model's frame time (:meth:`ExecutorOverhead.for_frame`).
#: Measured on the development host (2 cores, shared):
#:
#: * the zoo's models (224x224x3 float32, 7-45 ms a frame on one core here), 2026-11-21 --
#:   coordinator_ms 0.45: psutil CPU time of the coordinating process per frame,
#:   ``tools/executor_load.py --model M --shapes replicas,pipeline,single --frames 300 --rounds 3``
#:   (CPU time, which a busy host disturbs far less than wall time; 10 ms clock ticks over 150-300
#:   frames, so +-0.03 ms): MobileNetV2 replicas 0.33, two-stage pipeline 0.47, one worker 0.33 ms
#:   (medians; rounds 0.30-0.57); SqueezeNet 0.45, 0.60, 0.40 ms. An earlier run (replicas, 400 frames)
#:   gave 0.41-0.43 ms. It grows with the stages a frame crosses (a job and a reply each); 0.45 ms is
#:   the middle of one- and two-stage plans. dispatch_ms 0.25: median hand-off
#:   (``StageStats.handoff_ms``: dispatcher sent -> reply read, beyond the worker's own service)
#:   0.25-0.29 ms on MobileNetV2 replicas; 0.1-0.2 ms per stage in the two-stage emulated pipelines of
#:   the same day.
#: * eight TFLiteConverter models of 0.01-1.7 ms a frame (3 KB to 2.8 MB frames), 2026-11-23,
#:   BENCHMARKS.md "The executor's cost and the model's size": coordinator_ms 0.04-0.05 replicas,
#:   0.065-0.094 two stages, 0.05-0.08 one worker for frames under 0.5 ms; 0.09-0.15 ms at 0.6-1.7 ms
#:   (the 2.4 and 2.8 MB frames among them: the bytes matter little); a lone worker's frame took
#:   0.10-0.33 ms more than the bare interpreter's: dispatch (less two default hops) 0-0.17 ms.
DEFAULT_OVERHEAD = ExecutorOverhead(
    0.25, 0.45, "default (development host, tools/executor_load.py)",
    by_frame_ms=((0.0, 0.03, 0.05), (0.5, 0.08, 0.07), (2.0, 0.12, 0.13), (7.0, 0.25, 0.45)),
)


def coordinator_rate(
    stages: Sequence[Tuple[float, float]], coordinator_ms: float, cores: int, spare: float = 0.0
) -> Tuple[float, float]:
    """Throughput once the coordinator's CPU is taken from the workers that share its CPUs.

    ``stages``: per stage ``(a, b)``, its rate from workers off the
    coordinator's CPUs and from workers on them. The coordinator needs
    ``R * coordinator_ms / 1000`` of a core at ``R`` frames/s; what ``spare``
    (idle core-units there, e.g. a throttled CPU's time outside its quota)
    does not cover slows the ``cores`` CPUs it runs on by the factor
    ``s = 1 - steal / cores``. ``R = min_k (a_k + s b_k)`` has the closed form
    ``min_k (a_k + b_k (1 + spare / cores)) / (1 + b_k c / (1000 cores))``.
    The coordinator is one thread: it never passes more than ``1000 / c``
    frames/s, whatever the workers could do (which also keeps ``s >= 0``).
    Returns ``(R, s)``.
    """
    if not stages:
        raise PlanError("coordinator_rate: no stages")
    plain = min(a + b for a, b in stages)
    if coordinator_ms <= 0 or cores <= 0 or plain <= 0:
        return plain, 1.0
    if plain * coordinator_ms / 1000.0 <= spare:
        return min(plain, 1000.0 / coordinator_ms), 1.0
    c = coordinator_ms / 1000.0 / cores
    rate = min((a + b * (1.0 + spare / cores)) / (1.0 + b * c) for a, b in stages)
    rate = min(rate, 1000.0 / coordinator_ms)
    steal = max(0.0, rate * coordinator_ms / 1000.0 - spare)
    return rate, max(0.0, 1.0 - steal / cores)


def coordinator_stage(a, b, coordinator_ms: float, cores: int, spare: float = 0.0):
    """One stage's rate once the coordinator has taken its CPU, and the speed left to its workers there.

    ``a``/``b``: the stage's rate (frames/s) from workers off / on the
    coordinator's CPUs (floats or numpy arrays of the same shape). Returns
    ``(rate, s)``: the largest ``R`` with ``R <= a + s(R) * b``, where
    ``s(R) = min(1, 1 - (R * c / 1000 - spare) / cores)`` is what the
    coordinator leaves of each of its CPUs when frames flow at ``R``, and
    ``s`` at that rate.

    Why per stage: ``s`` only falls as ``R`` grows, so each stage alone caps
    the plan's rate at its own fixed point, and the plan's rate (the fixed
    point of all stages together, :func:`coordinator_rate`) is the least of
    those caps. The throughput is thus still a max-min of per-stage values,
    which is what the exact search optimises; the closed form is
    ``(a + b (1 + spare / cores)) / (1 + b c / (1000 cores))`` where that is
    below ``a + b`` (the coordinator needs more than the idle ``spare``), else
    ``a + b``. The ``s`` returned is the stage's own (at its cap): at the
    plan's rate, never above the cap, the coordinator takes no more, so a
    worker time divided by it is an upper bound that depends on the stage
    alone (docs/DSE.md). The coordinator is one thread, so no stage passes
    more than ``1000 / c`` frames/s (a constant cap: the max-min holds).
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    plain = a + b
    if coordinator_ms <= 0 or cores <= 0:
        return plain, np.ones_like(plain)
    per = coordinator_ms / 1000.0
    with np.errstate(invalid="ignore", divide="ignore"):
        capped = (a + b * (1.0 + spare / cores)) / (1.0 + b * per / cores)
    free = ~(plain * per > spare)
    rate = np.where(free, plain, np.minimum(capped, plain))
    rate = np.where(np.isnan(rate), plain, rate)
    rate = np.minimum(rate, 1.0 / per)  # one coordinating thread: at most one core's worth of frames
    slow = np.where(free, 1.0, 1.0 - (rate * per - spare) / cores)
    return rate, np.clip(slow, 1e-9, 1.0)
