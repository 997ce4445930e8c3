"""The profiler: time layers, stages and whole models on every core setup.

For each core setup (cluster x core count) one persistent worker process is
started (spawn context), pinned -- every thread -- to that many cores of the
cluster; on an emulated platform a worker on a slowed cluster pads every
invoke to the cluster's speed (``cores.emulation.PaddedInvoke``, as the
pipeline's workers do). The parent sends it model bytes; the worker builds an interpreter
with ``num_threads`` = core count, fills the inputs once with seeded random
data, warms up, then times ``invoke()`` alone with ``perf_counter_ns`` until
the median is stable -- on one core invoke by invoke, on k > 1 cores by
windows of back-to-back invokes in which all k threads ran (:func:`_time_pool`:
a lone invoke on k threads measures when the pool wakes, not the layer).
Worker start-up and interpreter construction stay out of the timings.

Jobs are sent setup after setup for the same layer (never two workers at
once), so slow drift of the host affects every setup alike.

A GPU cluster's setup (``gpu:1``) is not an interpreter: :func:`profile_gpu`
times its layers with the tuned OpenCL kernels (:mod:`pipeit.gpu.measure`,
in a process pinned to the cluster's host CPU) and writes one layer row per
distinct layer; a layer the GPU has no kernel for is a failed row
(:data:`NO_GPU_KERNEL`), which the planner reads as infinity. Each row is
appended to the CSV as soon as it is measured: an interrupted run resumes
where it stopped (layer rows are keyed by descriptor and setup, so a layer
shared by two models is measured once).

Last, the profile times the executor's hop between two of the platform's
CPUs for a few tensor sizes (:func:`profile_hops`), once per platform: plans
made from the profile charge this machine's hop cost at each cut instead of
the development host's (:meth:`pipeit.profile_table.ProfileTable.hop_model`).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from cores.errors import first_line
from cores.model import CoreSetup, Platform
from pipeit.children import start_shielded
from pipeit.descriptor import LayerDescriptor
from pipeit.errors import ProfileError
from pipeit.profile_table import HOP_MODEL, ProfileRow, ProfileWriter, read_rows, row_identity, table_of
from pipeit.progress import Progress, progress_for, say

__all__ = [
    "TimingSpec",
    "Timing",
    "time_model",
    "pool_window_clean",
    "SetupWorker",
    "WorkerPool",
    "Job",
    "model_jobs",
    "run_jobs",
    "profile_models",
    "platform_fingerprint_for",
    "setup_cpus",
    "NO_GPU_KERNEL",
    "check_measurable",
    "gpu_setups",
    "profile_gpu",
    "profile_hops",
]

#: status of a GPU layer row whose layer the GPU backend does not run
NO_GPU_KERNEL = "failed: no GPU kernel for this layer"


@dataclass(frozen=True)
class TimingSpec:
    """How long to measure: warm-up, then batches until the median settles.

    Stop when the median of all samples moved by less than ``rel_tol`` over
    the last batch (and at least ``min_repeats`` were taken), or at
    ``max_repeats`` / ``max_seconds``.
    """

    warmup: int = 3
    min_repeats: int = 9
    max_repeats: int = 200
    batch: int = 5
    rel_tol: float = 0.02
    max_seconds: float = 3.0
    #: a run counts as clean when its threads waited for a CPU (schedstat run delay)
    #: for at most this share of its wall time ...
    max_wait_share: float = 0.05
    #: ... or, where schedstat is missing, when process CPU time >= min_util * threads * wall
    min_util: float = 0.85
    #: fewest clean runs for an ``ok`` timing
    min_clean: int = 5
    seed: int = 0
    #: a measurement whose spread (IQR/median) exceeds this is retried ...
    max_spread: float = 0.10
    #: ... up to this many attempts in all; the attempt with the lowest spread is kept
    attempts: int = 3
    #: before measuring, wait up to this long for the setup's CPUs to be idle (other users' load)
    quiet_wait_s: float = 0.3
    #: a CPU busier than this (percent, over 50 ms) counts as in use by someone else
    busy_pct: float = 30.0
    #: throttled (emulated) setups: each sample is the mean over a window this long (ms) ...
    sustained_window_ms: float = 100.0
    #: ... and this many samples are taken
    sustained_samples: int = 5
    #: k-thread setups (k > 1) on unthrottled cores: each sample is a window of back-to-back
    #: invokes at least this long (ms) -- see :func:`_time_pool`
    pool_window_ms: float = 2.0
    #: ... and a window is clean when each of the k busiest threads ran for at least this share of it
    pool_min_run: float = 0.8
    #: a layer whose k-th busiest thread never ran this share of any window does not use the
    #: pool (an op the runtime runs on one thread): its windows are judged on one thread
    pool_idle_share: float = 0.05

    def __post_init__(self) -> None:
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats or self.batch < 1:
            raise ProfileError(
                f"bad timing spec: need 1 <= min_repeats <= max_repeats and batch >= 1 ({self})"
            )


@dataclass(frozen=True)
class Timing:
    """Result of one measurement; ``status`` is ``ok`` or ``failed: why`` (failures are data)."""

    median_ms: float
    spread: float
    repeats: int
    status: str = "ok"


def _fill_inputs(interpreter, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    for detail in interpreter.get_input_details():
        shape = tuple(int(s) for s in detail["shape"])
        dtype = np.dtype(detail["dtype"])
        if dtype.kind == "f":
            data = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            lo, hi = max(int(info.min), -128), min(int(info.max), 127)
            data = rng.integers(lo, hi + 1, size=shape).astype(dtype)
        else:
            data = np.zeros(shape, dtype=dtype)
        interpreter.set_tensor(detail["index"], data)


def time_model(
    model_bytes: bytes, num_threads: int, spec: TimingSpec = TimingSpec(), exclusive: bool = True,
    slow: Any = None,
) -> Timing:
    """Time ``invoke()`` of a model in *this* process (the caller pins it first).

    Contention filter (``exclusive=True``): around every run the scheduler's
    run-queue delay of all our threads is read (:func:`_run_delay_ns`). A run
    whose threads waited for a CPU for at most ``max_wait_share`` of its wall
    time had its cores and is *clean*; a run in which another process took a
    core is not. (Where schedstat is missing, process CPU time stands in:
    ``cpu >= min_util * k * wall``, which holds only while pool threads spin.)
    The median is taken over clean runs only -- on a shared host the plain
    median can be twice the true time with a tight spread, which no spread
    test catches. With too few clean runs the timing is marked ``noisy`` (not
    ``ok``; readers skip it, a re-run retries it). On an emulated slowed
    cluster (``slow``, a ``cores.emulation.SlowCore``) every invoke is padded
    to the cluster's speed; pass ``exclusive=False`` there (timed by the
    sustained rate, :func:`_time_sustained`).
    """
    from pipeit.runtime import make_interpreter

    # no name in the message: the failed row already says which model, range and setup
    interpreter = make_interpreter(model_bytes, num_threads=num_threads, where="", slow=slow)
    _fill_inputs(interpreter, spec.seed)
    for _ in range(spec.warmup):
        interpreter.invoke()
    if not exclusive:
        return _time_sustained(interpreter, spec)
    if num_threads > 1:
        return _time_pool(interpreter, num_threads, spec)
    walls: List[int] = []
    clean: List[int] = []
    need = num_threads * spec.min_util
    waited = _run_delay_ns() is not None
    start = time.monotonic()
    previous = None
    while True:
        for _ in range(min(spec.batch, spec.max_repeats - len(walls))):  # --repeats is a maximum
            d0 = _run_delay_ns() if waited else 0
            c0 = time.process_time_ns()
            t0 = time.perf_counter_ns()
            interpreter.invoke()
            t1 = time.perf_counter_ns()
            c1 = time.process_time_ns()
            d1 = _run_delay_ns() if waited else 0
            wall = t1 - t0
            walls.append(wall)
            if not exclusive:
                clean.append(wall)
            elif waited:
                # the scheduler's own account: time our threads sat runnable but not running
                if (d1 or 0) - (d0 or 0) <= spec.max_wait_share * wall:
                    clean.append(wall)
            elif (c1 - c0) >= need * wall:
                clean.append(wall)
        stop, previous = _stop_timing(spec, len(walls), clean, previous, start)
        if stop:
            break
    return _summary(spec, clean, walls, f"{len(clean)} of {len(walls)} runs had the cores to themselves")


def _stop_timing(spec: TimingSpec, samples: int, clean: Sequence[float], previous: Optional[float],
                 start: float) -> Tuple[bool, Optional[float]]:
    """``(stop?, median of the clean samples)`` after a batch: stop at the repeat or time limit, or once
    enough clean samples have a median within ``rel_tol`` of the last batch's."""
    import numpy as np  # here, not at module level: a worker is pinned before numpy starts its threads

    median = float(np.median(clean)) if clean else None
    settled = median is not None and previous is not None and abs(median - previous) <= spec.rel_tol * median
    if samples >= spec.max_repeats or time.monotonic() - start > spec.max_seconds:
        return True, median
    return len(clean) >= spec.min_repeats and settled, median


def _summary(spec: TimingSpec, clean: Sequence[float], every: Sequence[float], noisy: str,
             repeats: Optional[int] = None) -> Timing:
    """Median (ns in, ms out) and interquartile spread of the clean samples; of every sample, marked
    ``noisy: <noisy>``, when too few were clean. ``repeats``: invokes behind them (default: samples used)."""
    import numpy as np  # see _stop_timing

    status, used = "ok", clean
    if len(clean) < min(spec.min_clean, spec.min_repeats):
        status, used = f"noisy: {noisy}", every
    median = float(np.median(used))
    q1, q3 = np.percentile(used, [25, 75])
    return Timing(median / 1e6, float((q3 - q1) / median) if median > 0 else 0.0,
                  len(used) if repeats is None else repeats, status)


def _invoke_for(interpreter: Any, window_ns: int) -> Tuple[int, int]:
    """Invoke back to back until ``window_ns`` have passed: (elapsed ns, invokes), at least one."""
    t0 = time.perf_counter_ns()
    count = 0
    while True:
        interpreter.invoke()
        count += 1
        elapsed = time.perf_counter_ns() - t0
        if elapsed >= window_ns:
            return elapsed, count


def _thread_clocks() -> Optional[List[int]]:
    """Linux per-thread CPU clock ids of every thread of this process (None where unavailable).

    ``clock_gettime`` on a thread's clock (``MAKE_THREAD_CPUCLOCK(tid,
    CPUCLOCK_SCHED)`` = ``~tid << 3 | 6``) reads its run time up to now even
    while it runs on another CPU; process CPU time and schedstat do not: they
    add another thread's current stretch only at a tick or a context switch,
    which blurs windows of a few ms.
    """
    try:
        clocks = [(~int(tid) << 3) | 6 for tid in os.listdir("/proc/self/task")]
        for clock in clocks:
            time.clock_gettime_ns(clock)
    except (OSError, ValueError, AttributeError):
        return None
    return clocks


def _cpu_ns(clocks: List[int]) -> Optional[List[int]]:
    try:
        return [time.clock_gettime_ns(c) for c in clocks]
    except OSError:  # a thread ended
        return None


def pool_window_clean(ran_ns: Optional[Sequence[int]], cpu_ns: int, wall_ns: int, threads: int,
                      spec: TimingSpec) -> bool:
    """Whether a window of back-to-back invokes had all ``threads`` cores to itself.

    ``ran_ns``: each thread's run time through the window (None where thread
    clocks are missing; then ``cpu_ns``, the process's CPU time, decides).
    Clean when the ``threads`` threads that ran most each ran for at least
    ``pool_min_run`` of the window: a pool thread whose core someone else
    holds runs for a part of it only, and a worker that never woke not at all.
    """
    if ran_ns is None:
        return cpu_ns >= spec.pool_min_run * threads * wall_ns
    ran = sorted(ran_ns, reverse=True)
    return len(ran) >= threads and ran[threads - 1] >= spec.pool_min_run * wall_ns


def _time_pool(interpreter, threads: int, spec: TimingSpec) -> Timing:
    """Time a k-thread setup (k > 1) by its sustained rate: windows of back-to-back invokes.

    Why not single invokes, as on one core: between two timed invokes the
    pool's threads fall asleep, and a lone invoke then depends on when the
    other threads wake. On the shared 2-core host the single runs that showed
    no scheduler wait (the old filter) were those in which the worker never
    ran at all -- its CPU taken by another process, its wait not yet charged
    when ``invoke()`` returned, its work stolen by the main thread: the
    one-core time labelled ``cpu:2`` (layer rows sped up 1.1x in the median
    while stage and whole-model rows over the same layers scale 1.9-2x). In
    a pipeline stage a layer follows the previous one with the workers awake,
    which is what back-to-back invokes measure.

    Each sample is the mean time per invoke over a window of at least
    ``pool_window_ms``. A window is clean when each of the ``threads``
    threads that ran most ran for at least ``pool_min_run`` of it (per-thread
    CPU clocks, :func:`_thread_clocks`): back to back the pool's threads work
    or spin, so each is on a CPU the whole window unless someone else holds
    its core. (Where thread clocks are missing, process CPU time stands in:
    ``>= pool_min_run * threads * wall``, coarser.) The timing is the median
    of the clean windows; too few of them -> ``noisy``. A layer whose pool
    never ran in any window (``pool_idle_share``) is an op the runtime runs on
    one thread: its windows need only the busiest thread to have run.
    """
    window_ns = int(spec.pool_window_ms * 1e6)
    samples: List[float] = []
    clean: List[float] = []
    # windows that are clean for an op the runtime runs on one thread (RESHAPE, SOFTMAX...):
    # its pool never wakes, which must not read as "the worker's core was taken"
    clean_one: List[float] = []
    pool_seen = False
    start = time.monotonic()
    previous = None
    invokes = 0
    clocks = _thread_clocks()
    while True:
        for _ in range(min(spec.batch, spec.max_repeats - len(samples))):  # --repeats is a maximum
            r0 = _cpu_ns(clocks) if clocks else None
            c0 = time.process_time_ns()
            elapsed, count = _invoke_for(interpreter, window_ns)
            cpu = time.process_time_ns() - c0
            r1 = _cpu_ns(clocks) if clocks else None
            invokes += count
            per = elapsed / count
            samples.append(per)
            ran = [b - a for a, b in zip(r0, r1)] if r0 is not None and r1 is not None else None
            if pool_window_clean(ran, cpu, elapsed, threads, spec):
                clean.append(per)
            if ran is None:
                pool_seen = True  # no thread clocks: cannot tell, assume the pool works
            else:
                busy = sorted(ran, reverse=True)
                pool_seen = pool_seen or (len(busy) >= threads and busy[threads - 1] >= spec.pool_idle_share * elapsed)
                if busy and busy[0] >= spec.pool_min_run * elapsed:
                    clean_one.append(per)
        stop, previous = _stop_timing(spec, len(samples), clean if pool_seen else clean_one, previous, start)
        if stop:
            break
    if not pool_seen:
        clean, threads = clean_one, 1
    return _summary(spec, clean, samples, f"{len(clean)} of {len(samples)} windows had all {threads} cores",
                    repeats=invokes)


def _run_delay_ns() -> Optional[int]:
    """Nanoseconds this process's threads have spent runnable but waiting for a CPU.

    Summed over ``/proc/self/task/*/schedstat`` (second field). Another
    process on one of our cores shows up here directly, whatever the threads
    do while idle -- XNNPACK's pool threads sleep rather than spin on small
    layers, so CPU time alone cannot tell a 2-thread run that had its cores
    from one that shared them. None where schedstat is not available.
    """
    total = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as handle:
                total += int(handle.read().split()[1])
        except FileNotFoundError:
            continue  # the thread ended between listing and reading
        except (OSError, IndexError, ValueError):
            return None
    return total


def _time_sustained(interpreter, spec: TimingSpec) -> Timing:
    """Time an emulated slowed setup by its sustained rate, not by single invokes.

    Its invokes are padded to the cluster's speed, so a single one would do;
    the windows (each sample the mean time per invoke over
    ``sustained_window_ms``, the timing the median of such samples) keep the
    rows comparable with profiles made when the emulation was a CPU quota,
    which gave the declared share of the core only back to back.
    """
    import numpy as np

    window_ns = int(spec.sustained_window_ms * 1e6)
    samples: List[float] = []
    counts = 0
    start = time.monotonic()
    while True:
        elapsed, count = _invoke_for(interpreter, window_ns)
        samples.append(elapsed / count)
        counts += count
        if len(samples) >= spec.sustained_samples:
            break
        if len(samples) >= 3 and time.monotonic() - start > spec.max_seconds:
            break
    median = float(np.median(samples))
    q1, q3 = np.percentile(samples, [25, 75])
    return Timing(median / 1e6, float((q3 - q1) / median) if median > 0 else 0.0, counts, "ok")


# ---- the pinned worker --------------------------------------------------------------------

def _pin(cpus: Sequence[int]) -> None:
    """Pin this process and every thread it already has (cores.pinning when available)."""
    try:
        from cores.pinning import pin_all_threads
    except ImportError:  # the cores engineer's module not there yet: same effect, inline
        for tid in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(tid), set(cpus))
        return
    pin_all_threads(tuple(cpus))


def _worker_main(conn, cpus: Tuple[int, ...], threads: int, exclusive: bool = True, slow: Any = None) -> None:
    """Worker loop: pin, then answer ("time", bytes, spec) requests until ("stop",)."""
    try:
        _pin(cpus)
    except Exception as err:  # report, do not hang the parent
        conn.send(("error", f"cannot pin to CPUs {list(cpus)}: {err}"))
        return
    # The runtime announces its delegate on stderr for every interpreter; in a
    # worker that builds hundreds of them this drowns the progress bar. Errors
    # travel back through the pipe, so the worker's stderr can go.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "stop":
            return
        _, data, spec = msg
        try:
            timing = time_model(data, threads, spec, exclusive, slow)
            conn.send(("ok", timing))
        except Exception as err:  # a layer the runtime refuses is a failed row, not a crash
            text = first_line(err)
            conn.send(("ok", Timing(float("nan"), float("nan"), 0, f"failed: {text[:200]}")))


def setup_cpus(platform: Platform, setup: CoreSetup) -> Tuple[int, ...]:
    """The CPUs a setup runs on: the first ``cores`` CPUs of its cluster."""
    platform.check_setup(setup)
    return tuple(platform.cluster(setup.cluster).cpus[: setup.cores])


class SetupWorker:
    """One persistent worker process pinned to one core setup."""

    def __init__(self, platform: Platform, setup: CoreSetup) -> None:
        from cores.emulation import slow_core_for

        self.setup = setup
        self.cpus = setup_cpus(platform, setup)
        # An emulated slowed cluster pads every invoke to its speed; it is timed by its sustained rate.
        slow = slow_core_for(platform, setup.cluster)
        exclusive = slow is None
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main, args=(child, self.cpus, setup.cores, exclusive, slow), daemon=True,
            name=f"pipeit-profile-{setup}",
        )
        start_shielded(self.process)
        child.close()
        if not self._conn.poll(60):
            self.close()
            raise ProfileError(f"profiling worker for {setup} did not start")
        kind, value = self._conn.recv()
        if kind != "ready":
            self.close()
            raise ProfileError(f"profiling worker for {setup}: {value}")
        self.pid = int(value)

    def measure(self, model_bytes: bytes, spec: TimingSpec) -> Timing:
        try:
            self._conn.send(("time", model_bytes, spec))
            kind, value = self._conn.recv()
        except (EOFError, OSError) as err:
            self.process.join(1.0)
            code = self.process.exitcode
            how = (f"killed by {_signal_name(-code)}" if code is not None and code < 0 else
                   f"exit code {code}" if code is not None else str(err) or type(err).__name__)
            raise ProfileError(f"profiling worker for {self.setup} died ({how})") from err
        return value

    def close(self) -> None:
        try:
            self._conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self._conn.close()


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _better(a: Timing, b: Timing) -> bool:
    if (a.status == "ok") != (b.status == "ok"):
        return a.status == "ok"
    return a.spread < b.spread


def wait_for_quiet(cpus: Sequence[int], max_wait_s: float, busy_pct: float) -> bool:
    """Block until ``cpus`` are idle (others' load below ``busy_pct``) or ``max_wait_s`` passed."""
    if max_wait_s <= 0:
        return True
    import psutil

    deadline = time.monotonic() + max_wait_s
    while True:
        load = psutil.cpu_percent(interval=0.05, percpu=True)
        if all(load[c] < busy_pct for c in cpus if c < len(load)):
            return True
        if time.monotonic() > deadline:
            return False


def check_measurable(platform: Platform, doing: str = "profiling measures this machine") -> None:
    """Refuse to time on a platform whose CPUs this process cannot all run on.

    Why: rows are stamped with the platform's fingerprint, so timing a
    ``board:`` description (or a platform file of another machine) on this
    host would produce a profile that later passes for the board's. Every
    CPU of every CPU cluster must be one this process may use. ``doing``
    says, in the message, why this machine's CPUs are the ones that count.
    """
    from cores.sysfs import format_cpu_list

    allowed = os.sched_getaffinity(0)
    wanted = {cpu for cluster in platform.cpu_clusters for cpu in cluster.cpus}
    missing = sorted(wanted - allowed)
    if missing:
        raise ProfileError(
            f"platform {platform.source!r} has CPU(s) {format_cpu_list(missing)} that this process cannot run on "
            f"(it may use {format_cpu_list(allowed)}): {doing}, so describe it as it is "
            "(--platform auto or emulate:...), or run this on the board itself"
        )


class WorkerPool:
    """A worker per setup; on an emulated platform a worker on a slowed cluster pads to its speed."""

    def __init__(self, platform: Platform, setups: Sequence[CoreSetup]) -> None:
        check_measurable(platform)
        self.platform = platform
        self.workers: Dict[CoreSetup, SetupWorker] = {}
        try:
            for setup in setups:
                self.workers[setup] = SetupWorker(platform, setup)
        except BaseException:
            self.close()
            raise

    def measure(self, setup: CoreSetup, model_bytes: bytes, spec: TimingSpec) -> Timing:
        """Measure on ``setup``, waiting for quiet CPUs and retrying noisy attempts.

        On a shared host another user's burst inflates a median; a burst shows
        as a wide spread, so a noisy attempt is repeated and the tightest kept.
        """
        worker = self.workers[setup]
        best: Optional[Timing] = None
        for _ in range(max(spec.attempts, 1)):
            wait_for_quiet(worker.cpus, spec.quiet_wait_s, spec.busy_pct)
            timing = worker.measure(model_bytes, spec)
            if timing.status.startswith("failed"):
                return timing
            if best is None or _better(timing, best):
                best = timing
            if timing.status == "ok" and timing.spread <= spec.max_spread:
                break
        return best

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.workers.clear()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- jobs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One thing to time on every setup: a layer, a stage or a whole model."""

    kind: str
    model: str
    start: int
    end: int
    key: str
    descriptor: Optional[LayerDescriptor]
    layer_keys: Tuple[str, ...]
    model_bytes: bytes


def platform_fingerprint_for(platform: Platform, with_gpus: bool = False) -> str:
    """The fingerprint every row carries: the CPU clusters and the runtime (GPUs too ``with_gpus``: see
    :mod:`cores.fingerprint`, cores.fingerprint when present)."""
    from pipeit.runtime import runtime_info

    info = runtime_info()
    try:
        from cores.fingerprint import platform_fingerprint
    except ImportError:
        doc = {"platform": platform.to_json(), "runtime": str(info)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
    return platform_fingerprint(platform, info, with_gpus)


def _stage_ranges(n_layers: int, stages: int) -> List[Tuple[int, int]]:
    """``stages`` contiguous, roughly equal ranges (only when there are enough layers)."""
    if stages < 2 or n_layers < 2 * stages:
        return []
    bounds = [round(i * n_layers / stages) for i in range(stages + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(stages)]


def model_jobs(path: Union[str, Path], stages: int = 3, name: Optional[str] = None) -> List[Job]:
    """Jobs for one model: each distinct layer, a few stages, the whole model.

    The model is built once in the runtime first (:func:`pipeit.runtime.check_loads`):
    one the runtime refuses is refused here, naming the file and the runtime's
    reason, rather than measured into rows that all say "failed" -- which a
    planner would then read as "this platform was not profiled".
    """
    from pipeit.graph import graph_from_model
    from pipeit.modelfile import parse_model, read_model_bytes
    from pipeit.runtime import check_loads
    from pipeit.split import extract_layers

    path = Path(path)
    name = name or path.stem
    where = str(path)
    data = read_model_bytes(path)
    model = parse_model(data, where=where)
    graph = graph_from_model(model, sha256=hashlib.sha256(data).hexdigest(), where=where)
    check_loads(path, where=where)
    keys = [layer.descriptor.key_string() for layer in graph.layers]
    jobs: List[Job] = []
    seen = set()
    for layer in graph.layers:
        key = keys[layer.index]
        if key in seen:
            continue
        seen.add(key)
        sub = extract_layers(model, layer.index, layer.index + 1, where=where)
        jobs.append(Job("layer", name, layer.index, layer.index + 1, key, layer.descriptor, (),
                        sub.model_bytes))
    for start, end in _stage_ranges(len(graph.layers), stages):
        sub = extract_layers(model, start, end, where=where)
        jobs.append(Job("stage", name, start, end, "", None, tuple(keys[start:end]), sub.model_bytes))
    jobs.append(Job("model", name, 0, len(graph.layers), "", None, tuple(keys), data))
    return jobs


def _row(job: Job, setup: CoreSetup, timing: Timing, fingerprint: str) -> ProfileRow:
    return ProfileRow(
        kind=job.kind, model=job.model, start=job.start, end=job.end, setup=setup, key=job.key,
        median_ms=timing.median_ms, spread=timing.spread, repeats=timing.repeats,
        fingerprint=fingerprint, status=timing.status, descriptor=job.descriptor,
        layer_keys=job.layer_keys,
    )


def run_jobs(
    jobs: Sequence[Job],
    pool: WorkerPool,
    setups: Sequence[CoreSetup],
    writer: Optional[ProfileWriter],
    fingerprint: str,
    spec: TimingSpec,
    done: Optional[set] = None,
    progress: Progress = True,
    stop: Optional[threading.Event] = None,
) -> List[ProfileRow]:
    """Measure every (job, setup) not in ``done``; rows are written as they come.

    ``progress``: True (a bar on a terminal, whole lines in a file), False, or a function that
    takes each line (the daemon's log); :mod:`pipeit.progress`.

    ``stop``: checked before each measurement; once set, :class:`ProfileError`
    (a daemon stopping while a reload profiles must not wait for all of it).
    """
    done = set() if done is None else done
    todo = [
        (job, setup) for job in jobs for setup in setups
        if row_identity(job.kind, job.model, job.start, job.end, job.key, setup) not in done
    ]
    rows = []
    bar = progress_for(progress, len(todo), "profiling", "meas")
    try:
        for job, setup in todo:
            ident = row_identity(job.kind, job.model, job.start, job.end, job.key, setup)
            if ident in done:  # a duplicate inside this batch
                bar.update(1)
                continue
            if stop is not None and stop.is_set():
                raise ProfileError("profiling stopped: asked to stop")
            bar.set_postfix_str(f"{job.model}:{job.kind}[{job.start}:{job.end}] {setup}", refresh=False)
            timing = pool.measure(setup, job.model_bytes, spec)
            row = _row(job, setup, timing, fingerprint)
            if writer is not None:
                writer.write(row)
            done.add(ident)
            rows.append(row)
            bar.update(1)
    finally:
        bar.close()
    return rows


def _setups_of_kind(platform: Platform, chosen: Optional[Iterable[Union[str, CoreSetup]]],
                    kind: str) -> List[CoreSetup]:
    """Setups of clusters of ``kind``: those in ``chosen`` (every one validated), or all of them."""
    if not chosen:
        return [s for s in platform.setups() if platform.cluster(s.cluster).kind == kind]
    out = []
    for item in chosen:
        setup = item if isinstance(item, CoreSetup) else CoreSetup.parse(str(item))
        platform.check_setup(setup)
        if setup not in out and platform.cluster(setup.cluster).kind == kind:
            out.append(setup)
    return out


def resolve_setups(platform: Platform, chosen: Optional[Iterable[Union[str, CoreSetup]]]) -> List[CoreSetup]:
    """The CPU setups to profile: ``chosen`` (validated against the platform) or all CPU setups.

    GPU setups among ``chosen`` are validated but left out: :func:`gpu_setups` gives them.
    """
    return _setups_of_kind(platform, chosen, "cpu")


def gpu_setups(platform: Platform, chosen: Optional[Iterable[Union[str, CoreSetup]]]) -> List[CoreSetup]:
    """The GPU setups to profile: those in ``chosen``, or every GPU cluster's ``gpu:1`` when none chosen."""
    return _setups_of_kind(platform, chosen, "gpu")


def profile_gpu(
    models: Sequence[Union[str, Path]],
    platform: Platform,
    setups: Sequence[CoreSetup],
    writer: Optional[ProfileWriter],
    fingerprint: str,
    done: Optional[set] = None,
    tuning: Optional[Union[str, Path]] = None,
    progress: Progress = True,
) -> List[ProfileRow]:
    """One layer row per distinct layer of each model on each GPU setup (see the module docstring).

    ``done`` holds identities already in the file (ok rows, and GPU rows
    already marked :data:`NO_GPU_KERNEL`, which a re-run would only repeat);
    a model whose layers are all done is not measured again. ``tuning`` is
    the tuning file (:func:`pipeit.gpu.measure.find_tuning` picks the state
    directory's when None).
    """
    from pipeit.gpu.measure import find_tuning, measure_gpu_times
    from pipeit.graph import load_graph
    from pipeit.modelfile import read_model_bytes

    done = set() if done is None else done
    rows: List[ProfileRow] = []
    if not setups:
        return rows
    table = find_tuning(tuning)
    for path in models:
        path = Path(path)
        data = read_model_bytes(path)
        graph = load_graph(data, where=str(path))
        firsts = {}
        for layer in graph.layers:
            firsts.setdefault(layer.descriptor.key_string(), layer)
        for setup in setups:
            todo = [(k, layer) for k, layer in firsts.items()
                    if row_identity("layer", path.stem, layer.index, layer.index + 1, k, setup) not in done]
            if not todo:
                continue
            cluster = platform.cluster(setup.cluster)
            say(progress, f"[profile] timing {len(todo)} layers of {path.name} on {setup} ({cluster.core_type})")
            measured = measure_gpu_times(data, cluster, table)
            say(progress, f"[profile] {measured.device}: launch overhead {measured.launch_ms * 1e3:.1f} us per "
                          "kernel launch, charged to each layer")
            for key, layer in todo:
                ms = measured.times[layer.index]
                ok = ms == ms and ms != float("inf")
                # a layer that runs no kernel (RESHAPE aliases its input) costs 0 on the
                # device; a 0 ms row would read as "not measured", so it is written as 1 us
                ms = max(ms, 1e-3) if ok else ms
                timing = Timing(ms if ok else float("nan"), 0.0 if ok else float("nan"), 3 if ok else 0,
                                "ok" if ok else NO_GPU_KERNEL)
                job = Job("layer", path.stem, layer.index, layer.index + 1, key, layer.descriptor, (), b"")
                row = _row(job, setup, timing, fingerprint)
                if writer is not None:
                    writer.write(row)
                done.add(row.identity())
                rows.append(row)
    return rows


def profile_hops(platform: Platform, writer: Optional[ProfileWriter], fingerprint: str,
                 done: Optional[set] = None, progress: Progress = True) -> List[ProfileRow]:
    """One hop row per size of :data:`~pipeit.executor.hop_timing.HOP_SIZES`, unless ``done`` has them all.

    A hop that cannot be timed (no shared memory, the receiver died) gives
    failed rows and a line, not an error: the plans then charge the default
    hop, as they did before profiles held hops.
    """
    from pipeit.errors import PipeitError
    from pipeit.executor.hop_timing import HOP_SIZES, hop_cpus, time_hops

    done = set() if done is None else done
    cpus = hop_cpus(platform)
    cluster = next(c for c in platform.cpu_clusters if cpus[0] in c.cpus)
    setup = CoreSetup(cluster.name, 1)
    todo = [n for n in HOP_SIZES if row_identity("hop", HOP_MODEL, 0, 0, str(n), setup) not in done]
    if not todo:
        return []
    sizes = ", ".join(f"{n >> 20} MB" if n >= 1 << 20 else f"{n >> 10} KB" for n in todo)
    say(progress, f"[profile] timing the executor's hop from CPU {cpus[0]} to CPU {cpus[1]} ({sizes})")
    try:
        timings = [Timing(t.median_ms, t.spread, t.repeats, "ok") for t in time_hops(cpus, todo)]
    except (PipeitError, OSError) as err:
        say(progress, f"[profile] hops not timed ({first_line(err)}): plans charge the default hop")
        timings = [Timing(float("nan"), float("nan"), 0, f"failed: {first_line(err)}")] * len(todo)
    rows = []
    for nbytes, timing in zip(todo, timings):
        row = ProfileRow(kind="hop", model=HOP_MODEL, start=0, end=0, setup=setup, key=str(nbytes),
                         median_ms=timing.median_ms, spread=timing.spread, repeats=timing.repeats,
                         fingerprint=fingerprint, status=timing.status, hop_cpus=tuple(cpus))
        if writer is not None:
            writer.write(row)
        done.add(row.identity())
        rows.append(row)
    return rows


def existing_rows(out: Path, fingerprint: str, force: bool, jobs: Sequence[Job] = ()) -> set:
    """Identities of the good rows already in ``out`` (for resuming; failed and noisy
    rows are measured again, except GPU rows marked :data:`NO_GPU_KERNEL`: the GPU
    will not grow a kernel on a re-run); refuses another platform's file.

    Stage and whole-model rows are told apart by model name (the file's stem): a job of a model
    whose name another model holds -- ``a/tiny.tflite`` and ``c/tiny.tflite``, in ``out`` or among
    ``jobs`` -- would have its rows skipped as measured already, so it is refused instead.
    """
    rows = read_rows(out) if out.is_file() and out.stat().st_size > 0 else []
    known: Dict[str, Tuple[str, ...]] = {}
    for item in [*rows, *jobs]:
        if item.kind == "model" and known.setdefault(item.model, item.layer_keys) != item.layer_keys:
            raise ProfileError(f"two different models named {item.model!r} would share their stage and whole-model "
                               f"rows in {out} (rows name a model by its file name); rename one file or give "
                               "another -o")
    if not rows:  # none, or a header alone: nothing done yet
        return set()
    table = table_of(rows, [out], fingerprint=fingerprint, force=force)
    # another platform's row (kept with --force) is that platform's measurement, not this one's
    return {r.identity() for r in table.rows if (r.ok or r.status == NO_GPU_KERNEL) and r.fingerprint == fingerprint}


def profile_models(
    models: Sequence[Union[str, Path]],
    platform: Platform,
    out: Union[str, Path],
    setups: Optional[Sequence[Union[str, CoreSetup]]] = None,
    spec: TimingSpec = TimingSpec(),
    stages: int = 3,
    force: bool = False,
    progress: Progress = True,
    tuning: Optional[Union[str, Path]] = None,
    stop: Optional[threading.Event] = None,
) -> List[ProfileRow]:
    """Profile ``models`` on ``platform`` (GPU setups included); append to ``out``; return the new rows.

    ``stop``: see :func:`run_jobs` (the CPU measurements stop early; GPU ones are few).
    """
    out = Path(out)
    chosen = resolve_setups(platform, setups)
    on_gpu = gpu_setups(platform, setups)
    fingerprint = platform_fingerprint_for(platform)
    jobs: List[Job] = []
    for path in models:
        jobs.extend(model_jobs(path, stages=stages))
    done = existing_rows(out, fingerprint, force, jobs)
    with WorkerPool(platform, chosen) as pool, ProfileWriter(out) as writer:
        rows = run_jobs(jobs, pool, chosen, writer, fingerprint, spec, done, progress, stop)
        rows += profile_gpu(models, platform, on_gpu, writer, fingerprint, done, tuning, progress)
        if chosen:  # a run of GPU setups alone times GPU layers only
            rows += profile_hops(platform, writer, fingerprint, done, progress)
        return rows
