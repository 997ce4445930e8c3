"""Gated admission: when a new frame can enter a pipeline and wait nowhere on its way through.

A stream that keeps one frame in flight per worker keeps every worker busy,
but its frames queue in front of the slowest stage: by Little's law each
spends ``workers / throughput`` in the pipeline, about twice a two-stage
pipeline's path. Under a latency limit that queue is what breaks the limit
(docs/DSE.md, "Latency"). Gated admission holds the next frame at the door
until it can run through every stage without waiting: the slowest stage is
still fed just in time, so throughput stays that stage's rate, and a frame's
latency is its path.

The estimate is a short simulation of the frames already in flight, in
order, through each stage's workers, from the workers' own expected service
times (the executor's moving averages). It is a pure function of a
:class:`PipelineState` snapshot, so it is tested without processes; the
executor's dispatcher takes the snapshot and opens the door itself
(``Pipeline.submit(gated=True)``, ``Pipeline.stream(gated=True)``): when a
worker's reply frees the stage a frame waits for, or at the time this
names. A caller's thread that slept until then would be woken late on a
busy core, leaving the slowest stage idle for each late wake-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

__all__ = ["WorkerState", "FrameState", "PipelineState", "admission_delay_ms", "DEFAULT_LEAD_MS"]

#: admit a frame this much before it can start (ms): it then waits at most this long in the
#: worker's queue, and the worker does not idle while the frame is handed over
DEFAULT_LEAD_MS = 0.3


@dataclass(frozen=True)
class WorkerState:
    """One worker as the dispatcher sees it: when it will have finished what it holds, and its pace."""

    free_at_ms: float
    est_ms: float


@dataclass(frozen=True)
class FrameState:
    """A frame in flight: the stage it is at and, if a worker holds it, when that worker should be done."""

    fid: int
    stage: int
    done_at_ms: Optional[float] = None  # None: waiting for a worker of ``stage``


@dataclass(frozen=True)
class PipelineState:
    """A snapshot of a pipeline: its workers per stage and the frames in flight, on one ms clock."""

    now_ms: float
    stages: Tuple[Tuple[WorkerState, ...], ...]
    frames: Tuple[FrameState, ...] = ()


def admission_delay_ms(state: PipelineState, lead_ms: float = DEFAULT_LEAD_MS) -> float:
    """How long from ``state.now_ms`` until a new frame would pass every stage without waiting, less ``lead_ms``.

    0 or less: admit now. The frames in flight go first, in frame order
    (outputs keep it), each to the worker of its next stage that frees up
    first; the new frame must then reach every stage no earlier than a
    worker there is free: it enters at ``max over stages of (free - time to
    get there)``.
    """
    now = state.now_ms
    free: List[List[float]] = [[max(now, w.free_at_ms) for w in row] for row in state.stages]
    pace: List[List[float]] = [[max(0.0, w.est_ms) for w in row] for row in state.stages]
    if not free or any(not row for row in free):
        return 0.0
    last = len(free) - 1
    for frame in sorted(state.frames, key=lambda f: f.fid):
        if not 0 <= frame.stage <= last:
            continue  # done with the last stage: waiting to be delivered only
        if frame.done_at_ms is None:
            done = _take(free[frame.stage], pace[frame.stage], now)
        else:
            done = max(now, frame.done_at_ms)
        for stage in range(frame.stage + 1, last + 1):
            done = _take(free[stage], pace[stage], done)
    enter = now
    reach = 0.0  # time from entering to arriving at this stage
    for row, speeds in zip(free, pace):
        worker = min(range(len(row)), key=row.__getitem__)
        enter = max(enter, row[worker] - reach)
        reach += speeds[worker]
    return enter - now - lead_ms


def _take(row: List[float], speeds: Sequence[float], arrive: float) -> float:
    """Give a frame arriving at ``arrive`` to the worker that would finish it first (as the dispatcher does).

    Returns when it is done there.
    """
    worker = min(range(len(row)), key=lambda w: max(arrive, row[w]) + speeds[w])
    done = max(arrive, row[worker]) + speeds[worker]
    row[worker] = done
    return done
