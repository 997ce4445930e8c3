"""The one cost model every strategy is judged by: stage times, rates, latency, memory.

A *plan candidate* is an ordered tuple of stages; a stage runs the layer
range ``[start, end)`` and is served by one or more workers, each a
:class:`~cores.model.CoreSetup` (``k`` cores of one cluster, ``k`` threads).

Model (docs/DSE.md explains the choices):

* a worker's time for a stage ``[a, b)`` =
  ``scale * sum(layer ms on its setup) + stage_ms + hop(a)/2 + hop(b)/2``,
  where ``hop(i) = hop_ms(cut_bytes[i])``. A hop is one copy in (paid by the
  sender) and one copy out (paid by the receiver), so each side is charged
  half. The first stage's receive half is the copy of the input frame out of
  the feeder's ring, the last stage's send half the copy of the result into
  the collector's ring; there is no other hop cost at the ends. Every
  strategy, replicas and all-cores included, streams through the same rings,
  so they all pay these two halves.
* a stage's rate = sum over its workers of ``1000 / time`` (frames are dealt
  to whichever worker is free; output order is restored);
* throughput = min over stages of the stage rate;
* latency = sum over stages of the *slowest* worker's time (a frame may land
  on the slowest worker of every stage);
* memory = sum over workers of the weight bytes of its stage's layers plus
  ``worker_bytes`` (a per-worker constant, 0 by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from cores.model import CoreSetup
from pipeit.errors import PlanError
from pipeit.layer_times import LayerTimes
from pipeit.transfer import DEFAULT_HOP, HopModel

__all__ = ["MB", "Limits", "StagePlan", "Candidate", "CostModel"]

#: bytes in the ``--memory-mb`` unit (MiB, as ``free -m`` counts)
MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The user's limits: a frame's latency in ms and the weights held in memory, in MiB."""

    latency_ms: Optional[float] = None
    memory_mb: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("latency_ms", "memory_mb"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise PlanError(f"--{name.replace('_', '-')} must be a positive number, got {value!r}")

    @property
    def memory_bytes(self) -> Optional[float]:
        return None if self.memory_mb is None else self.memory_mb * MB

    def admits(self, candidate: "Candidate") -> bool:
        if self.latency_ms is not None and candidate.latency_ms > self.latency_ms:
            return False
        if self.memory_mb is not None and candidate.memory_bytes > self.memory_mb * MB:
            return False
        return True

    def describe(self) -> str:
        parts = []
        if self.latency_ms is not None:
            parts.append(f"latency <= {self.latency_ms:g} ms")
        if self.memory_mb is not None:
            parts.append(f"memory <= {self.memory_mb:g} MB")
        return ", ".join(parts) or "no limits"


@dataclass(frozen=True)
class StagePlan:
    """Layers ``[start, end)`` served by ``workers`` (one CoreSetup per worker)."""

    start: int
    end: int
    workers: Tuple[CoreSetup, ...]


@dataclass(frozen=True)
class Candidate:
    """A fully evaluated plan candidate: its stages and the cost model's verdict."""

    stages: Tuple[StagePlan, ...]
    fps: float
    latency_ms: float
    memory_bytes: float
    stage_fps: Tuple[float, ...]
    worker_ms: Tuple[Tuple[float, ...], ...]

    @property
    def num_workers(self) -> int:
        return sum(len(s.workers) for s in self.stages)

    def describe(self) -> str:
        """``[0,14) big:2 | [14,31) little:1+little:1`` -- compact, for messages and tables."""
        return " | ".join(
            f"[{s.start},{s.end}) " + "+".join(str(w) for w in s.workers) for s in self.stages
        )


class CostModel:
    """Evaluates candidates from a :class:`LayerTimes` and a :class:`HopModel`."""

    def __init__(self, times: LayerTimes, hop: HopModel = DEFAULT_HOP, worker_bytes: int = 0) -> None:
        if worker_bytes < 0:
            raise PlanError(f"per-worker memory must be >= 0, got {worker_bytes}")
        self.times = times
        self.hop = hop
        self.worker_bytes = int(worker_bytes)
        self.hops: Tuple[float, ...] = tuple(hop.hop_ms(b) for b in times.cut_bytes)

    @property
    def num_layers(self) -> int:
        return self.times.num_layers

    def with_times(self, times: LayerTimes) -> "CostModel":
        return CostModel(times, self.hop, self.worker_bytes)

    def worker_ms(self, setup: CoreSetup, start: int, end: int) -> float:
        """One worker's time per frame for stage ``[start, end)``, half hops at both ends included."""
        if setup not in self.times.times:
            raise PlanError(f"no layer times for setup {setup}")
        return (
            self.times.stage_compute_ms(setup, start, end)
            + 0.5 * self.hops[start]
            + 0.5 * self.hops[end]
        )

    def stage_weight_bytes(self, start: int, end: int) -> int:
        return sum(self.times.weight_bytes[start:end])

    def evaluate(self, stages: Sequence[StagePlan]) -> Candidate:
        """Throughput, latency and memory of ``stages`` (which must tile ``[0, n)``)."""
        stages = tuple(stages)
        expected = 0
        for s in stages:
            if s.start != expected or s.end <= s.start or not s.workers:
                raise PlanError(f"stages do not tile the layers contiguously at {s}")
            expected = s.end
        if expected != self.num_layers:
            raise PlanError(f"stages cover {expected} of {self.num_layers} layers")
        stage_fps = []
        worker_ms = []
        latency = 0.0
        memory = 0.0
        for s in stages:
            times = tuple(self.worker_ms(w, s.start, s.end) for w in s.workers)
            worker_ms.append(times)
            rate = 0.0 if any(math.isinf(t) for t in times) else math.fsum(1000.0 / t if t > 0 else math.inf for t in times)
            stage_fps.append(rate)
            latency += max(times)
            memory += len(s.workers) * (self.stage_weight_bytes(s.start, s.end) + self.worker_bytes)
        return Candidate(
            stages=stages,
            fps=min(stage_fps),
            latency_ms=latency,
            memory_bytes=memory,
            stage_fps=tuple(stage_fps),
            worker_ms=tuple(worker_ms),
        )
