"""What a pipeline run measured: throughput, latency percentiles, and each stage's load."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

__all__ = ["StageStats", "PipelineStats", "percentile"]


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """Linear-interpolated percentile ``q`` in [0, 100] (None for no values); no numpy needed."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class StageStats:
    """One stage: median service time per frame (copy in, invoke, copy out), load, restarts.

    ``handoff_ms`` is the median time a frame spent between the dispatcher
    sending it and reading the reply, beyond the worker's own service time:
    the executor's notification cost plus any wait for the worker's CPU. On a
    quiet host it is tens of microseconds; milliseconds mean the core is shared.
    """

    index: int
    layers: Tuple[int, int]
    workers: int
    frames: int
    measured_ms: Optional[float]
    predicted_ms: Optional[float]
    busy: float
    restarts: int
    worker_frames: Tuple[int, ...] = ()
    handoff_ms: Optional[float] = None
    redispatched: int = 0
    #: median service ms of each worker (None for a worker that served nothing): one slow replica
    #: inside a replicated stage shows here, while ``measured_ms`` (all frames) hides it
    worker_ms: Tuple[Optional[float], ...] = ()
    #: a GPU stage's calibration switches since the pipeline started (dicts: frame, from/to table, reason)
    switches: Tuple[dict, ...] = ()
    #: share of the wall time its workers sat with no frame between a reply and their next job: the
    #: round trip through the coordinator (or a feed that ran dry) that a deeper window would hide
    starved: float = 0.0

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "layers": list(self.layers),
            "workers": self.workers,
            "frames": self.frames,
            "measured_ms": self.measured_ms,
            "predicted_ms": self.predicted_ms,
            "busy": self.busy,
            "restarts": self.restarts,
            "worker_frames": list(self.worker_frames),
            "handoff_ms": self.handoff_ms,
            "redispatched": self.redispatched,
            "worker_ms": list(self.worker_ms),
            "switches": [dict(s) for s in self.switches],
            "starved": self.starved,
        }


@dataclass(frozen=True)
class PipelineStats:
    """Frames finished since the stats were last reset, over the wall time they took."""

    frames: int
    wall_s: float
    fps: float
    latency_p50_ms: Optional[float]
    latency_p95_ms: Optional[float]
    latency_p99_ms: Optional[float]
    stages: Tuple[StageStats, ...]

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self.stages)

    def to_json(self) -> dict:
        return {
            "frames": self.frames,
            "fps": self.fps,
            "wall_s": self.wall_s,
            "latency_ms": {"p50": self.latency_p50_ms, "p95": self.latency_p95_ms, "p99": self.latency_p99_ms},
            "stages": [s.to_json() for s in self.stages],
            "restarts": self.restarts,
        }
