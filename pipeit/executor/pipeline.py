"""The pipelined executor: one pinned process per stage worker, shared-memory rings between stages.

The main process owns everything shared: one :class:`ShmRing` per edge
(edge 0 = model inputs, edge S = model outputs, residuals forwarded across
the edges they skip) and a dispatcher thread. Each worker talks only to the
dispatcher, over its own Pipe, in small tuples ``(frame, in_slot, out_slot)``.
No queue or lock is shared between workers, so a worker killed with
``kill -9`` cannot wedge the others: the dispatcher sees its sentinel, gives
the frame it held (whose in-slot it kept) to a restarted worker, and goes on.

Backpressure is the free slots of each edge: a stage gets a frame only when
the next edge has a free slot, and :meth:`Pipeline.submit` blocks while
edge 0 is full. Outputs are copied out of the last ring and handed back in
frame order.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import multiprocessing
import os
import selectors
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_any
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from pipeit.descriptor import TensorInfo
from pipeit.errors import ExecutorError, InputError, PlanError
from pipeit.executor.ring import ShmRing
from pipeit.executor.routes import EdgeLayout, StageRoute, plan_routes
from pipeit.executor.stats import PipelineStats, StageStats, percentile
from pipeit.executor.worker import RingRef, WorkerConfig, worker_main
from pipeit.plan import Plan, file_sha256

__all__ = ["Pipeline", "StagePart", "model_io", "coordinator_cpus", "DEFAULT_SLOTS"]

#: slots per edge unless the caller says otherwise (8 gave 0..+16 % over 4 on a throttled platform)
DEFAULT_SLOTS = 4
_POLL_S = 0.1  # how often blocked callers look for a failed pipeline
_STAGE_DIR_PREFIX = "pipeit-stages-"  # + pid: stage sub-model files the workers load (and reload)


@dataclass(frozen=True)
class StagePart:
    """A stage sub-model as the executor needs it (``pipeit.split.StageModel`` fits this shape)."""

    index: int
    layers: Tuple[int, int]
    model_bytes: bytes
    inputs: Tuple[TensorInfo, ...]
    outputs: Tuple[TensorInfo, ...]


def model_io(model: Union[str, Path, bytes]) -> Tuple[Tuple[TensorInfo, ...], Tuple[TensorInfo, ...]]:
    """The whole model's input and output tensors, as the runtime sees them."""
    from pipeit.runtime import make_interpreter

    interpreter = make_interpreter(model, num_threads=1)

    def infos(details: List[dict]) -> Tuple[TensorInfo, ...]:
        return tuple(
            TensorInfo(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name) for d in details
        )

    return infos(interpreter.get_input_details()), infos(interpreter.get_output_details())


class _Frame:
    __slots__ = ("fid", "future", "t_submit", "slot", "stage")

    def __init__(self, fid: int, future: Future, t_submit: float, slot: int):
        self.fid = fid
        self.future = future
        self.t_submit = t_submit
        self.slot = slot  # the slot it holds on edge ``stage``
        self.stage = 0


class _Worker:
    """Main-process view of one worker process (touched by the dispatcher only, after start)."""

    def __init__(self, config: WorkerConfig, cluster: str):
        self.config = config
        self.cluster = cluster
        self.process: Any = None
        self.conn: Any = None
        self.state = "dead"  # starting | idle | busy | dead
        self.job: Optional[Tuple[_Frame, int]] = None  # (frame, out_slot)
        self.restarts = 0
        self.last_exit: Optional[int] = None
        self.heavy_before_pin: Tuple[str, ...] = ()
        self.busy_since = 0.0

    @property
    def label(self) -> str:
        cpus = ",".join(str(c) for c in self.config.cpus)
        return f"stage {self.config.stage} worker {self.config.worker} (cluster {self.cluster}, CPUs {cpus})"


def coordinator_cpus(platform: Any) -> Tuple[int, ...]:
    """Where the process that feeds frames and runs the dispatcher belongs: the slowest cluster.

    It wakes for every frame at every stage; left to the scheduler it lands on
    the big cores and takes time from the stage that sets the frame rate. On a
    heterogeneous board the LITTLE cores are worth least (on an emulated one
    the throttled CPU also has idle time outside its quota). On a homogeneous
    machine there is no better place than everywhere: nothing is pinned.
    """
    cpu = platform.cpu_clusters
    if len(cpu) < 2:
        return ()
    slowest = min(cpu, key=lambda c: (c.speed, c.capacity or 0, c.max_freq_khz or 0))
    if slowest.speed >= 1.0 and slowest.capacity == platform.fastest.capacity:
        return ()
    return tuple(slowest.cpus)


class Pipeline:
    """Stream frames through a plan's stages; use as ``with Pipeline(plan, model) as p:``.

    ``submit(inputs)`` returns a Future of the model's outputs (a dict name ->
    array); ``map(frames)`` yields outputs in order. ``inputs`` is a dict
    name -> array, or one array for a single-input model; shapes and dtypes
    must match the model's exactly (:class:`InputError` otherwise).
    """

    def __init__(
        self,
        plan: Plan,
        model_path: Union[str, Path],
        *,
        slots: int = DEFAULT_SLOTS,
        max_restarts: int = 3,
        verify_hash: bool = True,
        stages: Optional[Sequence[Any]] = None,
        backend: Optional[str] = None,
        start_timeout_s: float = 120.0,
        throttle: bool = True,
        throttles: Any = None,
    ):
        self.plan = plan
        self.model_path = Path(model_path)
        self.slots = int(slots)
        self.max_restarts = int(max_restarts)
        self.backend = backend
        self.start_timeout_s = float(start_timeout_s)
        self._verify_hash = verify_hash
        self._given_stages = stages
        self._throttle = throttle
        self._ctx = multiprocessing.get_context("spawn")
        self._rings: List[ShmRing] = []
        self._workers: List[List[_Worker]] = []
        self._free: List[Deque[int]] = []
        self._ready: List[List[Tuple[int, _Frame]]] = []
        self._incoming: Deque[_Frame] = collections.deque()
        self._free0: "collections.deque[int]" = collections.deque()
        self._free0_cv = threading.Condition()
        self._lock = threading.Lock()
        self._results: Dict[int, Tuple[_Frame, Dict[str, np.ndarray]]] = {}
        self._inflight: Dict[int, _Frame] = {}
        self._next_fid = 0
        self._next_out = 0
        self._error: Optional[BaseException] = None
        self._closing = False
        self._closed = False
        self._started = False
        self._thread: Optional[threading.Thread] = None
        self._wake_r = self._wake_w = -1
        # An entered cores.emulation.Throttles to share (the caller closes it), else made here if needed.
        self._throttles: Any = throttles
        self._own_throttles = False
        self._tmpdir: Optional[str] = None
        self._selector: Optional[selectors.BaseSelector] = None
        self._stats_lock = threading.Lock()
        self.reset_stats()

    # ---- life cycle ------------------------------------------------------------------
    def __enter__(self) -> "Pipeline":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> "Pipeline":
        """Check the model, split it, make the rings, start and await every worker."""
        if self._started:
            return self
        self._started = True
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        plan = self.plan
        if not self.model_path.is_file():
            raise PlanError(f"{self.model_path}: no such model file")
        if self._verify_hash:
            digest = file_sha256(self.model_path)
            if digest != plan.model_sha256:
                raise PlanError(
                    f"{self.model_path}: model sha256 {digest[:12]}... differs from the plan's "
                    f"{plan.model_sha256[:12]}... (plan made for {plan.model!r}); re-plan for this model"
                )
        allowed = os.sched_getaffinity(0)
        for i, stage in enumerate(plan.stages):
            for worker in stage.workers:
                if not worker.cpus or not set(worker.cpus) <= allowed:
                    raise ExecutorError(
                        f"stage {i} worker wants CPUs {list(worker.cpus)}, this process may use {sorted(allowed)}"
                    )
        parts = self._stage_parts()
        self.inputs, self.outputs = model_io(self.model_path)
        edges, routes = plan_routes([(p.inputs, p.outputs) for p in parts], self.inputs, self.outputs)
        self.edges: Tuple[EdgeLayout, ...] = edges
        self.routes: Tuple[StageRoute, ...] = routes
        counts = [len(s.workers) for s in plan.stages]
        for k, layout in enumerate(edges):
            around = (counts[k - 1] if k > 0 else 0) + (counts[k] if k < len(counts) else 0)
            ring = ShmRing(layout, max(self.slots, around + 1))
            self._rings.append(ring)
            self._free.append(collections.deque(range(ring.slots)))
        self._free0.extend(self._free[0])
        self._free[0].clear()  # edge 0's free slots live in _free0 (shared with submit)
        self._ready = [[] for _ in parts]
        if self._throttles is None and self._throttle and any(
            self._slowed_cluster(w.cluster) or self._spans_slowed_cluster(w.cluster)
            for s in plan.stages for w in s.workers
        ):
            from cores.emulation import Throttles

            throttles = Throttles(plan.platform)
            throttles.__enter__()
            self._throttles, self._own_throttles = throttles, True
        _remove_stale_stage_dirs()
        self._tmpdir = tempfile.mkdtemp(prefix=f"{_STAGE_DIR_PREFIX}{os.getpid()}-")
        stage_files = []
        for part in parts:
            path = Path(self._tmpdir) / f"stage{part.index}.tflite"
            path.write_bytes(part.model_bytes)
            stage_files.append(path)
        for k, (part, spec) in enumerate(zip(parts, plan.stages)):
            row = []
            for j, wspec in enumerate(spec.workers):
                config = WorkerConfig(
                    stage=k, worker=j, cpus=tuple(wspec.cpus), threads=int(wspec.threads),
                    model_path=str(stage_files[k]), route=routes[k],
                    ring_in=RingRef(self._rings[k].name, edges[k], self._rings[k].slots),
                    ring_out=RingRef(self._rings[k + 1].name, edges[k + 1], self._rings[k + 1].slots),
                    backend=self.backend,
                    spread_threads=self._spans_slowed_cluster(wspec.cluster),
                )
                row.append(_Worker(config, wspec.cluster))
            self._workers.append(row)
        for worker in self._all_workers():
            self._spawn(worker)
        self._await_ready()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.reset_stats()
        self._thread = threading.Thread(target=self._dispatch, name="pipeit-dispatcher", daemon=True)
        self._thread.start()

    def _stage_parts(self) -> List[StagePart]:
        raw = self._given_stages
        if raw is None:
            try:
                from pipeit.split import split_model
            except ImportError as err:
                raise ExecutorError(f"model splitting is not available: {err}") from err
            raw = split_model(self.model_path, self.plan.cuts)
        parts = [
            StagePart(int(s.index), tuple(s.layers), bytes(s.model_bytes), tuple(s.inputs), tuple(s.outputs))
            for s in raw
        ]
        if len(parts) != len(self.plan.stages):
            raise ExecutorError(f"the split gave {len(parts)} stage models for a {len(self.plan.stages)}-stage plan")
        return parts

    def _slowed_cluster(self, name: str) -> Optional[str]:
        """The emulated slow cluster whose cgroup a worker on ``name`` joins, if any.

        A worker spanning clusters (``"big+little"``, the all-cores strategy) is
        one process whose threads are spread one per CPU; only the threads on a
        slowed cluster's CPUs join its cgroup (:meth:`_throttle_threads`).
        """
        names = name.split("+")
        if len(names) != 1:
            for part in names:
                self.plan.platform.cluster(part)  # unknown names still raise
            return None
        return name if self.plan.platform.cluster(name).speed < 1.0 else None

    def _spans_slowed_cluster(self, name: str) -> bool:
        names = name.split("+")
        return len(names) > 1 and any(self.plan.platform.cluster(n).speed < 1.0 for n in names)

    def _throttle_threads(self, w: _Worker, placements: Sequence[Tuple[int, int]]) -> None:
        """Put each spread thread that sits on a slowed cluster's CPU into that cluster's cgroup."""
        if self._throttles is None or not placements:
            return
        owner = {}
        for name in w.cluster.split("+"):
            cluster = self.plan.platform.cluster(name)
            if cluster.speed < 1.0:
                owner.update({cpu: cluster.name for cpu in cluster.cpus})
        for tid, cpu in placements:
            if cpu in owner:
                self._throttles.attach_thread(owner[cpu], int(tid))

    def _all_workers(self) -> List[_Worker]:
        return [w for row in self._workers for w in row]

    def _spawn(self, worker: _Worker) -> None:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main, args=(worker.config, child),
            name=f"pipeit-stage{worker.config.stage}-w{worker.config.worker}", daemon=True,
        )
        process.start()
        child.close()
        worker.process, worker.conn, worker.state, worker.job = process, parent, "starting", None
        self._watch(worker)  # a restart, while the dispatcher runs
        slowed = self._slowed_cluster(worker.cluster)
        if self._throttles is not None and slowed:
            self._throttles.attach(slowed, process.pid)

    def _await_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        pending = {id(w): w for w in self._all_workers()}
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                names = "; ".join(w.label for w in pending.values())
                raise ExecutorError(f"workers did not start within {self.start_timeout_s:.0f} s: {names}")
            handles = {}
            for w in pending.values():
                handles[w.conn] = w
                handles[w.process.sentinel] = w
            for handle in wait_any(list(handles), timeout=left):
                w = handles[handle]
                if id(w) not in pending:
                    continue
                if handle is w.conn:
                    try:
                        message = w.conn.recv()
                    except (EOFError, OSError):
                        message = None
                    if message and message[0] == "ready":
                        w.state, w.heavy_before_pin = "idle", tuple(message[2])
                        self._throttle_threads(w, message[3])
                        del pending[id(w)]
                        continue
                    if message and message[0] == "error":
                        raise ExecutorError(f"{w.label} failed to start: {message[2]}")
                w.process.join(1.0)
                raise ExecutorError(f"{w.label} exited while starting (exit code {w.process.exitcode})")

    def close(self) -> None:
        """Stop every worker, remove every shared-memory segment and cgroup; safe to call twice.

        A second Ctrl-C or SIGTERM arriving meanwhile is held until the
        cleanup is done (then delivered), so an impatient user cannot leave
        segments in /dev/shm or cgroups behind.
        """
        if self._closed:
            return
        self._closed = True
        with _signals_deferred():
            self._close()

    def _close(self) -> None:
        self._closing = True
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        with self._free0_cv:
            self._free0_cv.notify_all()
        workers = self._all_workers()
        for w in workers:
            if w.conn is not None:
                try:
                    w.conn.send(None)
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + 2.0
        for w in workers:
            if w.process is not None:
                w.process.join(max(0.0, deadline - time.monotonic()))
        for w in workers:
            if w.process is not None and w.process.is_alive():
                w.process.terminate()
                w.process.join(1.0)
                if w.process.is_alive():
                    w.process.kill()
                    w.process.join(1.0)
            if w.conn is not None:
                w.conn.close()
                w.conn = None
            w.state = "dead"
        error = self._error or ExecutorError("the pipeline was closed before this frame finished")
        for frame in list(self._inflight.values()):
            if not frame.future.done():
                frame.future.set_exception(error)
        self._inflight.clear()
        for ring in self._rings:
            ring.close()
        self._rings = []
        if self._throttles is not None:
            throttles, self._throttles = self._throttles, None
            if self._own_throttles:
                throttles.__exit__(None, None, None)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # ---- the caller's side -----------------------------------------------------------
    def submit(self, inputs: Any) -> Future:
        """Queue one frame; blocks while edge 0 has no free slot (backpressure)."""
        if not self._started or self._closed:
            raise ExecutorError("the pipeline is not running (use it inside `with Pipeline(...)`)")
        tensors = self._check_inputs(inputs)
        with self._free0_cv:
            while not self._free0:
                self._raise_if_failed()
                if self._closing:
                    raise ExecutorError("the pipeline was closed")
                self._free0_cv.wait(_POLL_S)
            self._raise_if_failed()
            slot = self._free0.popleft()
        self._rings[0].write(slot, tensors)
        future: Future = Future()
        with self._lock:
            fid = self._next_fid
            self._next_fid += 1
            frame = _Frame(fid, future, time.perf_counter(), slot)
            self._inflight[fid] = frame
        self._incoming.append(frame)
        self._wake()
        return future

    def map(self, frames: Iterable[Any], inflight: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
        """Outputs of each frame, in order, keeping the pipeline busy while the caller consumes.

        ``inflight`` caps the frames submitted but not yet yielded. The default
        fills every ring slot (best throughput; latency then includes queueing
        in the rings); a cap near the number of workers keeps each frame's
        latency close to its path through the stages.
        """
        if inflight is not None and inflight < 1:
            raise ExecutorError(f"inflight must be >= 1, got {inflight}")
        limit = inflight if inflight is not None else 2 * sum(r.slots for r in self._rings)
        window: Deque[Future] = collections.deque()
        for inputs in frames:
            while len(window) >= limit:
                yield window.popleft().result()
            window.append(self.submit(inputs))
            while window and window[0].done():
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def run(self, inputs: Any, timeout: Optional[float] = None) -> Dict[str, np.ndarray]:
        """One frame, synchronously."""
        return self.submit(inputs).result(timeout)

    def _check_inputs(self, inputs: Any) -> Dict[str, np.ndarray]:
        expected = {t.name: t for t in self.inputs}
        if not isinstance(inputs, dict):
            if len(expected) != 1:
                raise InputError(f"this model has {len(expected)} inputs; pass a dict name -> array")
            inputs = {self.inputs[0].name: inputs}
        unknown = set(inputs) - set(expected)
        missing = set(expected) - set(inputs)
        if unknown or missing:
            raise InputError(f"input names {sorted(inputs)} do not match the model's {sorted(expected)}")
        out = {}
        for name, info in expected.items():
            value = inputs[name]
            if not isinstance(value, np.ndarray):
                raise InputError(f"input {name!r} is a {type(value).__name__}, expected a numpy array")
            if tuple(value.shape) != tuple(info.shape) or value.dtype != np.dtype(info.dtype):
                raise InputError(
                    f"input {name!r} is {tuple(value.shape)} {value.dtype}, the model takes {tuple(info.shape)} {info.dtype}"
                )
            out[name] = value
        return out

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):
                pass  # already full of wake-ups, or closed

    # ---- introspection ---------------------------------------------------------------
    def worker_pids(self) -> Dict[Tuple[int, int], int]:
        """``(stage, worker) -> pid`` of the live workers (tests kill these)."""
        return {
            (w.config.stage, w.config.worker): w.process.pid
            for w in self._all_workers()
            if w.process is not None and w.state != "dead"
        }

    def worker_states(self) -> Dict[Tuple[int, int], str]:
        """``(stage, worker) -> "starting" | "idle" | "busy" | "dead"`` (a snapshot, for tests and tools)."""
        return {(w.config.stage, w.config.worker): w.state for w in self._all_workers()}

    def heavy_before_pin(self) -> Dict[Tuple[int, int], Tuple[str, ...]]:
        """Heavy modules each worker found already imported when it pinned (should be none)."""
        return {(w.config.stage, w.config.worker): w.heavy_before_pin for w in self._all_workers()}

    def pin_dispatcher(self, cpus: Sequence[int]) -> None:
        """Pin the dispatcher thread (per-frame bookkeeping, restarts) to ``cpus``.

        Workers pin themselves, so this does not narrow what they may use; a
        caller that feeds frames from its own thread pins that thread likewise.
        """
        if self._thread is None or self._thread.native_id is None:
            raise ExecutorError("the pipeline is not started")
        os.sched_setaffinity(self._thread.native_id, set(int(c) for c in cpus))

    def queue_depths(self) -> Tuple[int, ...]:
        """Frames waiting for each stage (ready, not yet given to a worker): a snapshot per stage.

        Read without the dispatcher's cooperation: a length read is atomic in
        CPython, so the worst case is a value one frame stale.
        """
        ready = self._ready
        depths = [len(ready[k]) if k < len(ready) else 0 for k in range(len(self.plan.stages))]
        if depths:
            depths[0] += len(self._incoming)  # submitted, not yet seen by the dispatcher
        return tuple(depths)

    @property
    def throttles(self) -> Any:
        """The ``cores.emulation.Throttles`` in use (None on a platform with no slowed cluster)."""
        return self._throttles

    @property
    def failed(self) -> Optional[BaseException]:
        return self._error

    def reset_stats(self) -> None:
        """Forget the measurements so far (call after warm-up frames)."""
        with self._stats_lock:
            self._t_first: Optional[float] = None
            self._t_last: Optional[float] = None
            self._latencies: List[float] = []
            self._service: List[List[float]] = [[] for _ in self.plan.stages]
            self._handoff: List[List[float]] = [[] for _ in self.plan.stages]
            self._redispatched: List[int] = [0 for _ in self.plan.stages]
            self._busy: List[float] = [0.0 for _ in self.plan.stages]
            self._worker_frames: List[List[int]] = [[0] * len(s.workers) for s in self.plan.stages]
            self._worker_service: List[List[List[float]]] = [[[] for _ in s.workers] for s in self.plan.stages]
            self._t_reset = time.perf_counter()

    def stats(self) -> PipelineStats:
        """Throughput, latency percentiles and per-stage load since the last reset."""
        with self._stats_lock:
            frames = len(self._latencies)
            start = self._t_first if self._t_first is not None else self._t_reset
            end = self._t_last if self._t_last is not None else time.perf_counter()
            wall = max(end - start, 1e-9)
            stages = []
            for k, spec in enumerate(self.plan.stages):
                service = self._service[k]
                measured = percentile(service, 50)
                predicted = [w.predicted_ms for w in spec.workers if w.predicted_ms and w.predicted_ms > 0]
                row = self._workers[k] if k < len(self._workers) else []
                stages.append(
                    StageStats(
                        index=k, layers=tuple(spec.layers), workers=len(spec.workers), frames=len(service),
                        measured_ms=measured,
                        predicted_ms=(sum(predicted) / len(predicted)) if predicted else None,
                        busy=min(1.0, self._busy[k] / (wall * len(spec.workers))) if frames else 0.0,
                        restarts=sum(w.restarts for w in row),
                        worker_frames=tuple(self._worker_frames[k]),
                        handoff_ms=percentile(self._handoff[k], 50),
                        redispatched=self._redispatched[k],
                        worker_ms=tuple(percentile(v, 50) for v in self._worker_service[k]),
                    )
                )
            return PipelineStats(
                frames=frames, wall_s=wall if frames else 0.0, fps=frames / wall if frames else 0.0,
                latency_p50_ms=percentile(self._latencies, 50),
                latency_p95_ms=percentile(self._latencies, 95),
                latency_p99_ms=percentile(self._latencies, 99),
                stages=tuple(stages),
            )

    # ---- the dispatcher thread ---------------------------------------------------------
    def _dispatch(self) -> None:
        try:
            self._dispatch_loop()
        except BaseException as err:  # a bug here must not hang callers: fail their frames
            self._fail(ExecutorError(f"the dispatcher stopped: {type(err).__name__}: {err}"))

    def _dispatch_loop(self) -> None:
        # One long-lived epoll set (multiprocessing.connection.wait builds a new one per call,
        # which costs more than everything else the dispatcher does for a frame).
        self._selector = selectors.DefaultSelector()
        try:
            self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
            for w in self._all_workers():
                if w.state != "dead":
                    self._watch(w)
            self._dispatch_events()
        finally:
            self._selector.close()
            self._selector = None

    def _dispatch_events(self) -> None:
        last = len(self._workers) - 1
        select = self._selector.select
        while not self._closing and self._error is None:
            while self._incoming:
                frame = self._incoming.popleft()
                heapq.heappush(self._ready[0], (frame.fid, frame))
            for k in range(last, -1, -1):
                self._feed_stage(k)
            exited = []
            for key, _ in select(timeout=1.0):
                kind, w = key.data
                if kind == "wake":
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                elif kind == "conn":
                    if w.conn is not None:
                        self._on_message(w)
                else:
                    exited.append(w)
            for w in exited:
                if w.state != "dead" and not self._closing:
                    self._on_exit(w)

    def _watch(self, w: _Worker) -> None:
        if self._selector is not None:
            self._selector.register(w.conn, selectors.EVENT_READ, ("conn", w))
            self._selector.register(w.process.sentinel, selectors.EVENT_READ, ("exit", w))

    def _unwatch(self, w: _Worker, conn: bool = True, sentinel: bool = True) -> None:
        if self._selector is None:
            return
        for item, wanted in ((w.conn, conn), (w.process.sentinel if w.process else None, sentinel)):
            if wanted and item is not None:
                try:
                    self._selector.unregister(item)
                except (KeyError, ValueError):
                    pass  # not registered (or already gone)

    def _feed_stage(self, k: int) -> None:
        queue = self._ready[k]
        if not queue:
            return
        free_out = self._free[k + 1]
        for w in self._workers[k]:
            if not queue or not free_out:
                return
            if w.state != "idle":
                continue
            _, frame = heapq.heappop(queue)
            out_slot = free_out.popleft()
            try:
                w.conn.send((frame.fid, frame.slot, out_slot))
            except (OSError, ValueError):
                # It died under us; the sentinel will say so. Put things back.
                free_out.appendleft(out_slot)
                heapq.heappush(queue, (frame.fid, frame))
                continue
            w.state, w.job, w.busy_since = "busy", (frame, out_slot), time.perf_counter()

    def _on_message(self, w: _Worker) -> None:
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            self._unwatch(w, sentinel=False)
            w.conn.close()
            w.conn = None  # its sentinel will fire; the exit handler takes it from here
            return
        kind = message[0]
        if kind == "ready":
            w.state, w.heavy_before_pin = "idle", tuple(message[2])
            self._throttle_threads(w, message[3])
            return
        if kind == "error":
            self._fail(ExecutorError(f"{w.label} failed on frame {message[1]}: {message[2]}"))
            return
        _, fid, service_ms = message
        if w.job is None or w.job[0].fid != fid:
            self._fail(ExecutorError(f"{w.label} answered frame {fid} it was not given"))
            return
        frame, out_slot = w.job
        now = time.perf_counter()
        k = w.config.stage
        with self._stats_lock:
            self._service[k].append(float(service_ms))
            self._handoff[k].append((now - w.busy_since) * 1000.0 - float(service_ms))
            self._worker_frames[k][w.config.worker] += 1
            self._worker_service[k][w.config.worker].append(float(service_ms))
            self._busy[k] += now - max(w.busy_since, self._t_reset)
        w.state, w.job = "idle", None
        self._release(k, frame.slot)
        frame.slot, frame.stage = out_slot, k + 1
        if k + 1 < len(self._workers):
            heapq.heappush(self._ready[k + 1], (frame.fid, frame))
        else:
            outputs = self._rings[k + 1].read(out_slot)
            self._release(k + 1, out_slot)
            self._results[fid] = (frame, outputs)
            self._deliver()

    def _release(self, edge: int, slot: int) -> None:
        if edge == 0:
            with self._free0_cv:
                self._free0.append(slot)
                self._free0_cv.notify()
        else:
            self._free[edge].append(slot)

    def _deliver(self) -> None:
        while self._next_out in self._results:
            frame, outputs = self._results.pop(self._next_out)
            self._next_out += 1
            now = time.perf_counter()
            with self._stats_lock:
                if frame.t_submit >= self._t_reset:
                    self._latencies.append((now - frame.t_submit) * 1000.0)
                    self._t_last = now
                    if self._t_first is None or frame.t_submit < self._t_first:
                        self._t_first = frame.t_submit
            with self._lock:
                self._inflight.pop(frame.fid, None)
            frame.future.set_result(outputs)

    def _on_exit(self, w: _Worker) -> None:
        w.process.join(0.5)
        w.last_exit = w.process.exitcode
        self._unwatch(w)
        if w.conn is not None:
            w.conn.close()
            w.conn = None
        if w.job is not None:
            frame, out_slot = w.job
            w.job = None
            self._free[w.config.stage + 1].append(out_slot)
            heapq.heappush(self._ready[w.config.stage], (frame.fid, frame))
            with self._stats_lock:
                self._redispatched[w.config.stage] += 1
        w.state = "dead"
        w.restarts += 1
        if w.restarts > self.max_restarts:
            with self._lock:
                pending = sorted(self._inflight)
            self._fail(
                ExecutorError(
                    f"{w.label} died {w.restarts} times (last exit code {w.last_exit}); "
                    f"gave up with {len(pending)} frame(s) not done: {_ranges(pending)}"
                )
            )
            return
        self._spawn(w)

    def _fail(self, error: ExecutorError) -> None:
        if self._error is None:
            self._error = error
        with self._lock:
            frames = list(self._inflight.values())
        for frame in frames:
            if not frame.future.done():
                frame.future.set_exception(self._error)
        with self._free0_cv:
            self._free0_cv.notify_all()


def _remove_stale_stage_dirs() -> None:
    """Remove stage-model folders left by a process that was killed (SIGKILL skips ``close``)."""
    import psutil

    for path in Path(tempfile.gettempdir()).glob(f"{_STAGE_DIR_PREFIX}*-*"):
        pid_text = path.name[len(_STAGE_DIR_PREFIX):].split("-", 1)[0]
        if pid_text.isdigit() and not psutil.pid_exists(int(pid_text)):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM in a ``with`` block (main thread only), then re-deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: List[int] = []
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {}
    for signum in watched:
        try:
            previous[signum] = signal.signal(signum, lambda n, _f: caught.append(n))
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in caught:
            os.kill(os.getpid(), signum)


def _ranges(ids: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"`` (frame lists in error messages stay one line)."""
    if not ids:
        return "none"
    parts = []
    start = prev = ids[0]
    for value in list(ids[1:]) + [None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ", ".join(parts)
