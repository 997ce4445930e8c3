"""Streaming frames through a running pipeline with a window of frames in flight.

Shared by the benchmark (``pipeit bench``) and the measured choice among
planned candidates (:mod:`pipeit.trial`), so both measure a plan the same way.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, List, Sequence, Tuple

from pipeit.plan import Plan

__all__ = ["stream_frames", "frames_in_flight"]


def stream_frames(pipeline: Any, frames: Sequence, window: int) -> Tuple[float, List[float]]:
    """Stream ``frames`` keeping ``window`` in flight; return (fps, per-frame latencies in ms)."""
    pending: deque = deque()
    latencies: List[float] = []
    t0 = time.perf_counter()
    for frame in frames:
        if len(pending) >= window:
            submitted, fut = pending.popleft()
            fut.result()
            latencies.append((time.perf_counter() - submitted) * 1000.0)
        pending.append((time.perf_counter(), pipeline.submit(frame)))
    while pending:
        submitted, fut = pending.popleft()
        fut.result()
        latencies.append((time.perf_counter() - submitted) * 1000.0)
    wall = time.perf_counter() - t0
    return len(frames) / wall, latencies


def frames_in_flight(plan: Plan) -> int:
    """How many frames to keep in flight so that every worker stays busy.

    Outputs come back in order, so a frame on a slow worker holds back the
    frames a faster worker of the same stage finished after it: while the
    slowest worker of a stage serves one frame, a worker ``r`` times faster
    serves ``r``. Each worker therefore counts ``ceil(slowest / own)`` frames
    (one per worker in a plain pipeline, whose frames stay in order).
    """
    total = 0
    for stage in plan.stages:
        times = [w.predicted_ms for w in stage.workers if w.predicted_ms and w.predicted_ms > 0]
        slowest = max(times) if times else 0.0
        for worker in stage.workers:
            own = worker.predicted_ms if worker.predicted_ms and worker.predicted_ms > 0 else slowest
            total += max(1, math.ceil(slowest / own - 1e-9)) if own else 1
    return max(1, total)
