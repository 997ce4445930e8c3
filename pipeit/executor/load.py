"""Where a pipeline's CPU time goes: the coordinating process versus its workers.

Wall-clock frame rates on a shared host swing with whatever else runs; CPU
time does not. So the executor's own cost is judged here by CPU time: the
process that feeds frames, runs the dispatcher and collects outputs (the
*coordinator*) is charged ``user + system`` seconds per frame, and each worker
its share of the wall time it was on a CPU (``busy``). A worker below 1.0
waited -- for the coordinator, for a slot, or for a CPU someone else held;
``worker_wait`` tells the last apart (time runnable but not running, from
``/proc/PID/task/*/schedstat``).

The coordinator is read with the precise clocks (``time.process_time``,
``getrusage`` for context switches of every thread): psutil's per-process
times tick at 10 ms, too coarse for tenths of a millisecond per frame.
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, Optional, Sequence, Tuple

__all__ = ["ExecutorLoad", "measure_load", "summary"]


@dataclass(frozen=True)
class ExecutorLoad:
    """CPU accounting of one stream of ``frames`` frames through a started pipeline."""

    frames: int
    wall_s: float
    #: the coordinating process (this one): CPU ms per frame, user + system
    coordinator_ms_per_frame: float
    #: voluntary + involuntary context switches of the coordinator per frame
    coordinator_switches_per_frame: float
    #: ``(stage, worker) -> CPU seconds / wall seconds`` (1.0 = never waited)
    worker_busy: Tuple[Tuple[Tuple[int, int], float], ...]
    #: ``(stage, worker) -> CPU ms per frame it served``
    worker_ms_per_frame: Tuple[Tuple[Tuple[int, int], float], ...]
    #: the dispatcher thread's share of ``coordinator_ms_per_frame`` (the rest: the caller's thread)
    dispatcher_ms_per_frame: Optional[float] = None
    #: ``(stage, worker) -> seconds runnable but not running / wall seconds`` (where schedstat exists)
    worker_wait: Tuple[Tuple[Tuple[int, int], float], ...] = ()

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "frames": self.frames,
            "wall_s": self.wall_s,
            "fps": self.fps,
            "coordinator_ms_per_frame": self.coordinator_ms_per_frame,
            "coordinator_switches_per_frame": self.coordinator_switches_per_frame,
            "worker_busy": {f"{s}.{w}": v for (s, w), v in self.worker_busy},
            "worker_ms_per_frame": {f"{s}.{w}": v for (s, w), v in self.worker_ms_per_frame},
            "dispatcher_ms_per_frame": self.dispatcher_ms_per_frame,
            "worker_wait": {f"{s}.{w}": v for (s, w), v in self.worker_wait},
        }


def _cpu_s(proc: Any) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _switches() -> int:
    """Voluntary + involuntary context switches of every thread of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int(usage.ru_nvcsw + usage.ru_nivcsw)


def _thread_cpu_s(thread: Any) -> Optional[float]:
    """CPU seconds of one thread of this process (None where the platform cannot say)."""
    ident = getattr(thread, "ident", None)
    if ident is None or not hasattr(time, "pthread_getcpuclockid"):
        return None
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, ValueError):
        return None


def _wait_s(pid: int) -> Optional[float]:
    """Seconds every thread of ``pid`` spent runnable but not running (None without schedstat)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as handle:
                    total += int(handle.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the thread ended meanwhile, or no schedstat here
    except OSError:
        return None
    return total / 1e9


def measure_load(pipeline: Any, frames: Sequence[Any], window: int, feed: str = "submit") -> ExecutorLoad:
    """Stream ``frames`` keeping ``window`` in flight (as ``pipeit bench`` does) and account CPU time.

    ``feed``: ``"submit"`` -- this thread submits and waits on each Future
    (what a caller holding Futures pays); ``"stream"`` -- the dispatcher feeds
    the frames itself (:meth:`pipeit.executor.Pipeline.stream`, what ``pipeit
    bench`` uses).

    The coordinator is this process (feeder, dispatcher, collector: every
    thread of it); workers are read by pid before and after. A worker that
    was restarted meanwhile is left out (its counters started over).
    """
    import psutil

    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if feed not in ("submit", "stream"):
        raise ValueError(f"feed must be 'submit' or 'stream', got {feed!r}")
    workers: Dict[Tuple[int, int], Any] = {}
    for key, pid in pipeline.worker_pids().items():
        try:
            workers[key] = psutil.Process(pid)
        except psutil.Error:
            continue
    before_workers = {}
    for key, proc in workers.items():
        try:
            before_workers[key] = _cpu_s(proc)
        except psutil.Error:
            pass
    waits_before = {key: _wait_s(proc.pid) for key, proc in workers.items()}
    served_before = _served(pipeline)
    dispatcher = getattr(pipeline, "_thread", None)
    disp0 = _thread_cpu_s(dispatcher)
    switches = _switches()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if feed == "stream":
        pipeline.stream(frames, window)
    else:
        pending: Deque[Any] = deque()
        for frame in frames:
            if len(pending) >= window:
                pending.popleft().result()
            pending.append(pipeline.submit(frame))
        while pending:
            pending.popleft().result()
    wall = time.perf_counter() - t0
    cpu1 = time.process_time()
    switches1 = _switches()
    disp1 = _thread_cpu_s(dispatcher)
    served_after = _served(pipeline)
    busy = []
    per_frame = []
    waits = []
    for key, proc in workers.items():
        if key not in before_workers:
            continue
        try:
            used = _cpu_s(proc) - before_workers[key]
        except psutil.Error:
            continue
        busy.append((key, used / wall if wall > 0 else 0.0))
        served = served_after.get(key, 0) - served_before.get(key, 0)
        if served > 0:
            per_frame.append((key, used * 1000.0 / served))
        waited = _wait_s(proc.pid)
        if waited is not None and waits_before.get(key) is not None and wall > 0:
            waits.append((key, (waited - waits_before[key]) / wall))
    count = max(len(frames), 1)
    return ExecutorLoad(
        frames=len(frames),
        wall_s=wall,
        coordinator_ms_per_frame=(cpu1 - cpu0) * 1000.0 / count,
        coordinator_switches_per_frame=(switches1 - switches) / count,
        worker_busy=tuple(sorted(busy)),
        worker_ms_per_frame=tuple(sorted(per_frame)),
        dispatcher_ms_per_frame=(disp1 - disp0) * 1000.0 / count if disp0 is not None and disp1 is not None else None,
        worker_wait=tuple(sorted(waits)),
    )


def _served(pipeline: Any) -> Dict[Tuple[int, int], int]:
    """Frames each worker has served so far (from the pipeline's stats)."""
    out: Dict[Tuple[int, int], int] = {}
    stats = pipeline.stats()
    for stage in stats.stages:
        for w, count in enumerate(stage.worker_frames):
            out[(stage.index, w)] = int(count)
    return out


def summary(load: ExecutorLoad, label: Optional[str] = None) -> str:
    """One line for people: coordinator ms/frame, switches/frame, each worker's busy share."""
    busy = " ".join(f"w{s}.{w}={v:.2f}" for (s, w), v in load.worker_busy)
    wait = " ".join(f"w{s}.{w}={v:.2f}" for (s, w), v in load.worker_wait)
    head = f"{label}: " if label else ""
    disp = (f" (dispatcher {load.dispatcher_ms_per_frame:.3f})" if load.dispatcher_ms_per_frame is not None else "")
    return (f"{head}{load.frames} frames {load.fps:.1f} fps; coordinator {load.coordinator_ms_per_frame:.3f} ms "
            f"CPU/frame{disp}, {load.coordinator_switches_per_frame:.1f} switches/frame; busy {busy}"
            + (f"; waited for a CPU {wait}" if wait else ""))
