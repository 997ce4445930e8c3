"""Streaming frames through a running pipeline with a window of frames in flight.

Shared by the benchmark (``pipeit bench``) and the measured choice among
planned candidates (:mod:`pipeit.trial`), so both measure a plan the same way.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from typing import Any, List, Sequence, Tuple

from pipeit.admission import DEFAULT_LEAD_MS
from pipeit.plan import Plan

__all__ = ["stream_frames", "frames_in_flight", "steady_fps"]


def steady_fps(t_start: float, done_times: Sequence[float], window: int) -> float:
    """Frames per second of a stream while it was full: between two outputs ``window`` from either end.

    A stream of ``n`` frames with ``window`` in flight keeps the pipeline
    fed only in its middle: its first outputs wait for the stages to fill
    (a pipeline of stages delivers nothing for one frame's whole path), and
    its last ``window`` frames are queued with nothing behind them (a
    replica that finishes early idles while the slow one's frame holds back
    the output order). Both are one-off costs of a round, not of the plan,
    and ``frames / wall`` charges them to the plan, more in a short round
    than in a long one. The middle is what a camera's endless stream runs
    at and what the plan predicts.

    Outputs leave in order, so replicas of unequal speed deliver in bursts
    (the slow worker's frame, then the frames the fast one finished behind
    it, at once). The two ends are therefore each put on the start of a
    burst -- the largest gap between outputs among ``window`` candidates,
    a burst being at most ``window`` frames -- so that the frames counted
    are whole bursts: an end in the middle of one would count part of it
    for none of its time (a 100-frame round of bursts of 3 could be off by
    several percent). A round too short to have a middle (fewer than half
    its frames inside it) falls back to ``frames / wall``.
    """
    n = len(done_times)
    if n == 0:
        return 0.0
    times = sorted(done_times)
    window = max(1, int(window))

    def burst_start(lo: int, hi: int) -> int:
        lo = max(lo, 1)  # the gap before output i needs output i - 1
        return max(range(lo, max(hi, lo) + 1), key=lambda i: times[i] - times[i - 1])

    lo, hi = window - 1, n - window - 1
    if hi - lo >= max(1, n // 2):
        first = burst_start(lo, lo + window - 1)
        last = burst_start(hi - window + 1, hi)
        if last - first >= max(1, n // 2) and times[last] > times[first]:
            return (last - first) / (times[last] - times[first])
    return n / max(times[-1] - t_start, 1e-9)


def stream_frames(pipeline: Any, frames: Sequence, window: int, gated: bool = False,
                  lead_ms: float = DEFAULT_LEAD_MS, feed: str = "stream") -> Tuple[float, List[float]]:
    """Stream ``frames`` keeping ``window`` in flight; return (fps, per-frame latencies in ms).

    The fps is the stream's rate while it was full (:func:`steady_fps`).

    ``gated``: also hold each frame until it can pass every stage without
    waiting (:mod:`pipeit.admission`; what a latency limit calls for): the
    slowest stage is still fed in time, and no frame queues before it.

    A pipeline that offers ``stream`` (:meth:`pipeit.executor.Pipeline.stream`)
    is fed by its own dispatcher thread, not woken back here per frame;
    ``feed="submit"`` keeps this thread's ``submit``/``result`` loop (what a
    caller holding Futures pays). Either way the dispatcher opens the gate;
    fed by ``submit``, a frame waits at the gate after its submit, and its
    latency here counts that wait (the pipeline's own stats count from when
    it entered).
    """
    if feed == "stream" and hasattr(pipeline, "stream"):
        return pipeline.stream(frames, window, gated=gated, lead_ms=lead_ms)
    pending: deque = deque()
    submitted: List[float] = []
    delivered: List[float] = []
    clock = time.perf_counter

    def on_delivery(number: int, _future: Any) -> None:  # in the pipeline's thread, as the frame is delivered
        delivered[number] = clock()

    t0 = clock()
    for number, frame in enumerate(frames):
        if len(pending) >= window:
            pending.popleft().result()
        submitted.append(clock())
        delivered.append(math.nan)
        future = pipeline.submit(frame, gated=True, lead_ms=lead_ms) if gated else pipeline.submit(frame)
        future.add_done_callback(functools.partial(on_delivery, number))
        pending.append(future)
    while pending:
        pending.popleft().result()
    now = clock()  # a Future wakes its waiter before it runs its callbacks: the last one may still be on its way
    delivered = [now if math.isnan(done) else done for done in delivered]
    # A frame's latency ends when the pipeline delivers it, not when this loop next looks: the loop
    # may be blocked in submit then (no free ring slot), and that wait is not the frame's.
    latencies = [(done - start) * 1000.0 for start, done in zip(submitted, delivered)]
    return steady_fps(t0, delivered, window), latencies


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
        times = [w.predicted_ms for w in stage.workers if 0 < w.predicted_ms < math.inf]
        slowest = max(times) if times else 0.0
        for worker in stage.workers:
            own = worker.predicted_ms if 0 < worker.predicted_ms < math.inf else slowest
            total += max(1, math.ceil(slowest / own - 1e-9)) if own else 1
    return max(1, total)
