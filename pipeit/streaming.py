"""Streaming frames through a running pipeline with a window of frames in flight.

Shared by the benchmark (``pipeit bench``) and the measured choice among
planned candidates (:mod:`pipeit.trial`), so both measure a plan the same way.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, List, Sequence, Tuple

from pipeit.admission import DEFAULT_LEAD_MS, wait_for_admission
from pipeit.plan import Plan

__all__ = ["stream_frames", "frames_in_flight"]


def stream_frames(pipeline: Any, frames: Sequence, window: int, gated: bool = False,
                  lead_ms: float = DEFAULT_LEAD_MS, feed: str = "stream") -> Tuple[float, List[float]]:
    """Stream ``frames`` keeping ``window`` in flight; return (fps, per-frame latencies in ms).

    ``gated``: also hold each frame until it can pass every stage without
    waiting (:mod:`pipeit.admission`; what a latency limit calls for): the
    slowest stage is still fed in time, and no frame queues before it.

    Ungated, a pipeline that offers ``stream`` (:meth:`pipeit.executor.Pipeline.stream`)
    is fed by its own dispatcher thread, not woken back here per frame;
    ``feed="submit"`` keeps this thread's ``submit``/``result`` loop (what a
    caller holding Futures pays).
    """
    if not gated and feed == "stream" and hasattr(pipeline, "stream"):
        return pipeline.stream(frames, window)
    pending: deque = deque()
    latencies: List[float] = []
    t0 = time.perf_counter()
    for frame in frames:
        if len(pending) >= window:
            submitted, fut = pending.popleft()
            fut.result()
            latencies.append((time.perf_counter() - submitted) * 1000.0)
        if gated:
            wait_for_admission(pipeline, lead_ms)
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
