"""The plan: which layers each pipeline stage runs, and which workers serve it.

A plan is the plain, versioned JSON file between ``pipeit plan`` and
``pipeit run``/``bench``/``serve``. It records the model's SHA-256 and the
platform it was made for, so a command that reads it can refuse a plan
whose model changed or whose platform differs.

Document (version 1)::

    {"version": 1, "model": "mobilenet_v1.tflite", "model_sha256": "...",
     "platform": {...Platform.to_json()...}, "strategy": "pipeit",
     "stages": [{"layers": [0, 14],
                 "workers": [{"cluster": "big", "cpus": [4, 5], "threads": 2,
                              "predicted_ms": 8.1}],
                 "predicted_fps": 123.4}],
     "predicted": {"fps": 123.4, "latency_ms": 15.2},
     "limits": {"latency_ms": null, "memory_mb": null}}

``layers`` are half-open ranges ``[start, end)`` of layer indices as
``pipeit inspect`` numbers them; consecutive stages are contiguous and
cover every layer.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple, Union

from cores.filewrite import write_file
from cores.jsonfile import JsonFileError, is_version, read_json
from cores.model import Platform
from pipeit.errors import PlanError

__all__ = ["PLAN_VERSION", "WorkerSpec", "StageSpec", "Plan", "load_plan", "file_sha256"]

PLAN_VERSION = 1

#: most threads one worker may be given: no board has more cores in one worker's clusters, and a
#: hand-edited 10**9 would have the runtime try to start that many threads
MAX_THREADS = 1024


def _integer(value: object, what: str) -> int:
    """A JSON integer, as pipeit writes one.

    A string or a float where a layer index, CPU or thread count belongs is
    a hand edit gone wrong; rounding or parsing it would run another plan
    than the one written.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{what} must be an integer, got {value!r}")
    return value


def _number(value: object, what: str) -> float:
    """A JSON number >= 0 (pipeit writes predicted times and rates as numbers, never as strings).

    Infinity passes (``Plan.save`` writes an infinite predicted rate as
    ``Infinity``); NaN does not: it would pass every comparison made with it.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlanError(f"{what} must be a number, got {value!r}")
    if not value >= 0:  # NaN too
        raise PlanError(f"{what} must be a number >= 0, got {value!r}")
    return float(value)


def _finite(value: object, what: str) -> float:
    """A finite JSON number >= 0: a worker's time per frame (an infinite one is no worker pipeit plans)."""
    number = _number(value, what)
    if number == math.inf:
        raise PlanError(f"{what} must be a finite number >= 0, got {value!r}")
    return number


def _string(value: object, what: str) -> str:
    """A JSON string (a model path, a hash, a strategy name: ``str()`` of a list is none of them)."""
    if not isinstance(value, str):
        raise PlanError(f"{what} must be a string, got {value!r:.40}")
    return value


def _optional_number(value: object, what: str) -> Optional[float]:
    """A limit: null, or a finite number > 0 (what ``pipeit plan --latency-ms/--memory-mb`` accept)."""
    if value is None:
        return None
    number = _number(value, what)
    if not 0 < number < math.inf:
        raise PlanError(f"{what} must be a finite number > 0, got {value!r}")
    return number


def file_sha256(path: Union[str, Path]) -> str:
    """Hex SHA-256 of a file (the model identity plans and caches are keyed by)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class WorkerSpec:
    """``threads`` threads on ``cpus`` (all of one cluster) serving one stage."""

    cluster: str
    cpus: Tuple[int, ...]
    threads: int
    predicted_ms: float

    def to_json(self) -> dict:
        return {
            "cluster": self.cluster,
            "cpus": list(self.cpus),
            "threads": self.threads,
            "predicted_ms": self.predicted_ms,
        }

    @classmethod
    def from_json(cls, doc: dict) -> "WorkerSpec":
        worker = cls(
            cluster=str(doc["cluster"]),
            cpus=tuple(_integer(c, "a worker's CPU") for c in doc["cpus"]),
            threads=_integer(doc["threads"], "a worker's threads"),
            predicted_ms=_finite(doc["predicted_ms"], "a worker's predicted_ms"),
        )
        if not worker.cpus:
            raise PlanError("a worker lists no CPUs")
        if len(set(worker.cpus)) != len(worker.cpus):
            raise PlanError(f"a worker lists a CPU twice: {list(worker.cpus)}")
        if max(len(worker.cpus), 1) < worker.threads <= MAX_THREADS:  # beyond MAX_THREADS: the plan's own check
            # pipeit gives a worker one thread per core; more only contend (1000 on one CPU was taken)
            raise PlanError(f"a worker has {worker.threads} threads on {len(worker.cpus)} CPU(s); "
                            "pipeit runs one thread per core")
        return worker


@dataclass(frozen=True)
class StageSpec:
    """A contiguous layer range ``[start, end)`` and the workers that serve it."""

    layers: Tuple[int, int]
    workers: Tuple[WorkerSpec, ...]
    predicted_fps: float

    def to_json(self) -> dict:
        return {
            "layers": list(self.layers),
            "workers": [w.to_json() for w in self.workers],
            "predicted_fps": self.predicted_fps,
        }

    @classmethod
    def from_json(cls, doc: dict) -> "StageSpec":
        start, end = (_integer(v, "a stage's layer index") for v in doc["layers"])
        return cls(
            layers=(start, end),
            workers=tuple(WorkerSpec.from_json(w) for w in doc["workers"]),
            predicted_fps=_number(doc["predicted_fps"], "a stage's predicted_fps"),
        )


@dataclass(frozen=True)
class Plan:
    """A whole pipeline for one model on one platform."""

    model: str
    model_sha256: str
    platform: Platform
    strategy: str
    stages: Tuple[StageSpec, ...]
    predicted_fps: float
    predicted_latency_ms: float
    latency_limit_ms: Optional[float] = None
    memory_limit_mb: Optional[float] = None
    version: int = PLAN_VERSION
    notes: Tuple[str, ...] = field(default=())

    @property
    def cuts(self) -> Tuple[int, ...]:
        """Layer indices where a new stage starts (the ``--at`` of ``pipeit split``)."""
        return tuple(stage.layers[0] for stage in self.stages[1:])

    @property
    def num_layers(self) -> int:
        return self.stages[-1].layers[1] if self.stages else 0

    @property
    def shape(self) -> tuple:
        """What the pipeline *is*: each stage's layers and its workers' CPUs and threads.

        Two plans of one shape are the same processes on the same cores
        (whatever strategy made them): bench and the trial run such a
        pipeline once rather than report run-to-run noise as a difference.
        """
        return tuple((stage.layers, tuple(sorted((w.cluster, tuple(w.cpus), w.threads) for w in stage.workers)))
                     for stage in self.stages)

    def describe(self) -> str:
        """The stages in one line for people: ``[0,26) big:1 | [26,40) little:1``."""
        return " | ".join(f"[{s.layers[0]},{s.layers[1]}) " + "+".join(f"{w.cluster}:{len(w.cpus)}" for w in s.workers)
                          for s in self.stages)

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "platform": self.platform.to_json(),
            "strategy": self.strategy,
            "stages": [s.to_json() for s in self.stages],
            "predicted": {"fps": self.predicted_fps, "latency_ms": self.predicted_latency_ms},
            "limits": {"latency_ms": self.latency_limit_ms, "memory_mb": self.memory_limit_mb},
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, doc: dict, where: str = "plan") -> "Plan":
        if not isinstance(doc, dict):
            raise PlanError(f"{where}: not a plan (expected a JSON object)")
        version = doc.get("version")
        if not is_version(version, PLAN_VERSION):
            raise PlanError(
                f"{where}: plan version {version!r} is not supported (this pipeit reads {PLAN_VERSION})"
            )
        try:
            limits = doc.get("limits")
            limits = {} if limits is None else limits
            if not isinstance(limits, dict):
                raise PlanError(f"limits must be an object, got {limits!r}")
            notes = doc.get("notes", [])
            if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
                raise PlanError("notes must be a list of strings")
            if not isinstance(doc["stages"], list):
                raise PlanError(f"stages must be a list, got {doc['stages']!r:.40}")
            plan = cls(
                model=_string(doc["model"], "model"),
                model_sha256=_string(doc["model_sha256"], "model_sha256"),
                platform=Platform.from_json(doc["platform"], where=f"{where}: platform"),
                strategy=_string(doc["strategy"], "strategy"),
                stages=tuple(StageSpec.from_json(s) for s in doc["stages"]),
                predicted_fps=_number(doc["predicted"]["fps"], "predicted fps"),
                predicted_latency_ms=_number(doc["predicted"]["latency_ms"], "predicted latency_ms"),
                latency_limit_ms=_optional_number(limits.get("latency_ms"), "limits latency_ms"),
                memory_limit_mb=_optional_number(limits.get("memory_mb"), "limits memory_mb"),
                notes=tuple(notes),
            )
        except PlanError as err:
            raise PlanError(f"{where}: malformed plan: {err}") from err
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise PlanError(f"{where}: malformed plan: {err!r}") from err
        plan.validate(where)
        return plan

    def validate(self, where: str = "plan") -> None:
        """Check the stages are contiguous, non-empty and use existing, disjoint CPUs."""
        if not self.stages:
            raise PlanError(f"{where}: plan has no stages")
        expected = 0
        used = set()
        used_gpus: set = set()
        for i, stage in enumerate(self.stages):
            start, end = stage.layers
            if start != expected or end <= start:
                raise PlanError(f"{where}: stage {i} covers layers [{start}, {end}), expected to start at {expected}")
            expected = end
            if not stage.workers:
                raise PlanError(f"{where}: stage {i} has no workers")
            for worker in stage.workers:
                # "big+little": one worker over several CPU clusters (the all-cores strategy)
                clusters = [self.platform.cluster(name) for name in worker.cluster.split("+")]
                on_cpus = all(c.kind == "cpu" for c in clusters)
                if not on_cpus:
                    # a GPU cluster is one worker (setup gpu:1, docs/GPU.md): joined to a CPU cluster it
                    # silently ran TFLite on the CPU, and two workers on it shared one device
                    if len(clusters) > 1:
                        raise PlanError(f"{where}: stage {i} worker {worker.cluster!r} joins a GPU cluster to "
                                        "others; a GPU worker is one GPU cluster")
                    if worker.cluster in used_gpus:
                        raise PlanError(f"{where}: GPU cluster {worker.cluster!r} is given to two workers; it "
                                        "runs one")
                    used_gpus.add(worker.cluster)
                missing = set(worker.cpus) - {cpu for c in clusters for cpu in c.cpus}
                if missing and on_cpus:
                    raise PlanError(
                        f"{where}: stage {i} worker uses CPUs {sorted(missing)} not in cluster {worker.cluster!r}"
                    )
                if on_cpus:
                    if used & set(worker.cpus):
                        raise PlanError(f"{where}: CPUs {sorted(used & set(worker.cpus))} are given to two workers")
                    used |= set(worker.cpus)
                if not 1 <= worker.threads <= MAX_THREADS:
                    raise PlanError(f"{where}: stage {i} worker has {worker.threads} threads "
                                    f"(1..{MAX_THREADS})")

    def save(self, path: Union[str, Path]) -> None:
        write_file(path, json.dumps(self.to_json(), indent=2) + "\n")


def load_plan(path: Union[str, Path]) -> Plan:
    """Read and validate a plan file; any problem is a one-line :class:`PlanError`.

    Non-finite numbers are read (``Plan.save`` writes an infinite predicted
    rate as ``Infinity``); :meth:`Plan.from_json` refuses a NaN or negative one.
    """
    path = Path(path)
    try:
        doc = read_json(path, "plan JSON", allow_nonfinite=True)
    except JsonFileError as err:
        if err.missing:
            raise PlanError(f"{path}: no such plan file") from None
        raise PlanError(str(err)) from None
    return Plan.from_json(doc, where=str(path))
