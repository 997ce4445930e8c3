"""The pipelined executor: one pinned process per stage worker, shared-memory rings between stages.

The main process owns everything shared: one :class:`ShmRing` per edge
(edge 0 = model inputs, edge S = model outputs, residuals forwarded across
the edges they skip) and a dispatcher thread. Each worker talks only to the
dispatcher, over its own socket, in fixed-size struct records
(:mod:`pipeit.executor.wire`: ``(frame, in_slot, out_slot)`` one way, ``(frame,
DONE, service_ms)`` the other; no pickling per frame). A worker holds up to
:data:`WORKER_DEPTH` jobs, so the next frame already waits in its socket when
it finishes one; :meth:`Pipeline.submit` hands a frame to a stage-0 worker
itself, so the dispatcher thread wakes only for replies. No queue or lock is
shared between workers, so a worker killed with ``kill -9`` cannot wedge the
others: the dispatcher sees its sentinel, gives the frames it held (whose
in-slots it kept) to a restarted worker, and goes on.

Backpressure is the free slots of each edge: a stage gets a frame only when
the next edge has a free slot, and :meth:`Pipeline.submit` blocks while
edge 0 is full (edge 0's free slots are a C-level queue, so a release wakes
a blocked caller with no Python condition variable). Outputs are copied out
of the last ring -- into fresh arrays, or into the caller's own with
``submit(inputs, out=...)`` -- and handed back in frame order.

A frame goes to the worker expected to finish it first, from a moving
average of each worker's service time. One reply moves that average by a
bounded step (:data:`EST_CLAMP`), and a worker left idle for longer than
:data:`STALE_IDLE` of its estimates is offered the next frame and re-measured:
without that, slow frames on a busy host could leave a worker's estimate so
high that it never got a frame again (seen with two frames in flight on two
replicas: one worker served all of them).
"""

from __future__ import annotations

import atexit
import collections
import errno
import functools
import heapq
import math
import multiprocessing
import os
import queue
import select
import shutil
import socket
import threading
import time
import weakref
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_any
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from cores.slices import request_short_slice
from pipeit.admission import DEFAULT_LEAD_MS, FrameState, PipelineState, WorkerState, admission_delay_ms
from pipeit.children import start_shielded
from pipeit.signals import deferred
from pipeit.tempdirs import make_private_dir, remove_orphans
from pipeit.descriptor import TensorInfo
from pipeit.errors import ExecutorError, InputError, PlanError
from pipeit.executor.ring import ShmRing
from pipeit.executor.routes import EdgeLayout, StageRoute, plan_routes
from pipeit.executor.staging import stage_frames
from pipeit.executor.stats import PipelineStats, StageStats, percentile
from pipeit.executor.wire import DONE, ERROR, JOB, MAP, NOTE, RING, STOP, UNMAP, ReplyParser
from pipeit.executor.worker import RingRef, WorkerConfig, worker_main
from pipeit.plan import Plan, file_sha256
from pipeit.streaming import steady_fps

__all__ = ["Pipeline", "StagePart", "model_io", "coordinator_cpus", "expected_finish_ms", "DEFAULT_SLOTS"]

#: slots per edge unless the caller says otherwise (8 gave 0..+16 % over 4 on a throttled platform)
DEFAULT_SLOTS = 4
#: per-frame samples (latency, each stage's service and hand-off, each worker's service) kept for the
#: percentiles in :meth:`Pipeline.stats`: the most recent this many. A run of 10**9 frames (or a daemon
#: that runs for weeks) must not keep a float per frame: unbounded lists grew a `pipeit run` to 1.2 GB
#: in 13 minutes of a small model. Counts (frames, busy time) cover the whole run.
STATS_WINDOW = 65536
#: jobs a worker may hold at once: the one it serves and the next, already in its socket, so
#: that it never waits for the dispatcher between frames (docs/PROTOCOL.md "Executor")
WORKER_DEPTH = 2
#: one reply may move a worker's service estimate up by at most this factor's share of the
#: moving average: a frame slowed by another process on the host is not taken for the worker
#: being slow (an idle worker's estimate is only corrected when it serves again)
EST_CLAMP = 3.0
#: an idle worker whose last reply is older than this many of its estimates is offered the next
#: frame as if it were the row's fastest: its estimate may be stale, and only serving refreshes it
STALE_IDLE = 2.0
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
    """The whole model's input and output tensors, as the runtime sees them.

    Read from an interpreter with no delegate and no tensors allocated: the
    XNNPACK delegate would print its "INFO: Created ..." line on this
    process's stderr, and allocating a big model's tensors costs memory
    only to read names, shapes and types.
    """
    from pipeit.errors import ModelError
    from pipeit.runtime import make_interpreter, tensor_infos

    try:
        interpreter = make_interpreter(model, num_threads=1, allocate=False, delegates=False)
    except ModelError:  # a runtime that cannot leave its delegates out
        interpreter = make_interpreter(model, num_threads=1)
    return tensor_infos(interpreter.get_input_details()), tensor_infos(interpreter.get_output_details())


class _SlotQueue:
    """Edge 0's free slots, shared by the callers' threads (take) and the dispatcher (give back).

    A C-level ``queue.SimpleQueue``: a release wakes a caller blocked on
    backpressure without Python-level condition variables (their notify and
    wait were a visible share of the coordinator's CPU per frame). ``close``
    puts a stop mark that every blocked caller passes on to the next.
    """

    __slots__ = ("_queue", "_closed")

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue[int]" = queue.SimpleQueue()
        self._closed = False

    def put(self, slot: int) -> None:
        self._queue.put(slot)

    def get(self) -> int:
        """A free slot (blocks until one is given back), or -1 once closed."""
        slot = self._queue.get()
        if slot < 0:
            self._queue.put(slot)  # the next blocked caller must wake too
        return slot

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(-1)

    def take_nowait(self) -> Optional[int]:
        """A free slot if one is there now, else None (also once closed)."""
        try:
            slot = self._queue.get_nowait()
        except queue.Empty:
            return None
        if slot < 0:
            self._queue.put(slot)
            return None
        return slot

    def __len__(self) -> int:
        return self._queue.qsize() - (1 if self._closed else 0)


#: ``_Frame.out`` of a frame fed by :meth:`Pipeline.stream`: its outputs are not read back
_DISCARD = object()


class _Stream:
    """A stream the dispatcher feeds itself (:meth:`Pipeline.stream`): its frames, window and latencies."""

    __slots__ = ("frames", "next", "window", "inflight", "latencies", "done_times", "done", "error", "area",
                 "area_slots", "lead_ms", "due")

    def __init__(self, frames: Sequence[Dict[str, np.ndarray]], window: int, area: int = RING,
                 area_slots: Tuple[int, ...] = (), lead_ms: Optional[float] = None) -> None:
        self.frames = frames
        #: gated admission's lead (pipeit.admission), None when the stream is not gated
        self.lead_ms = lead_ms
        #: when the gate opens for the next frame (perf_counter s), None when no frame waits at it
        self.due: Optional[float] = None
        #: the input area the frames were staged in (:mod:`pipeit.executor.staging`), RING when copied per frame
        self.area = area
        self.area_slots = area_slots  # per frame: its slot in ``area``
        self.next = 0  # index of the next frame to queue
        self.window = window
        self.inflight = 0
        self.latencies: List[float] = []
        self.done_times: List[float] = []  # when each frame was delivered (the steady rate, pipeit.streaming)
        self.done = threading.Event()
        self.error: Optional[BaseException] = None

    def finish(self, error: Optional[BaseException] = None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.done.set()


class _Poller:
    """One long-lived epoll set whose ``poll`` gives back the data registered with each ready descriptor.

    The dispatcher wakes once per reply; ``selectors`` spent more Python per
    wake-up (key objects, event masks, a timeout conversion) than the raw
    ``select.epoll`` this wraps.
    """

    __slots__ = ("_epoll", "_data")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._data: Dict[int, Any] = {}

    def register(self, handle: Any, data: Any) -> None:
        fd = handle if isinstance(handle, int) else handle.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._data[fd] = data

    def unregister(self, handle: Any) -> None:
        """Stop watching ``handle`` (a descriptor or an object with ``fileno``); unknown ones are ignored."""
        try:
            fd = handle if isinstance(handle, int) else handle.fileno()
        except (OSError, ValueError):
            return  # closed already: the kernel dropped it from the set (a reused number re-registers)
        if self._data.pop(fd, None) is None:
            return
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # closed meanwhile: epoll dropped it itself

    def poll(self, timeout: float = -1) -> List[Any]:
        """What is ready, waiting at most ``timeout`` s (negative: until something is)."""
        data = self._data
        return [data[fd] for fd, _ in self._epoll.poll(timeout) if fd in data]

    def close(self) -> None:
        self._epoll.close()
        self._data.clear()


class _Frame:
    __slots__ = ("fid", "future", "t_submit", "slot", "stage", "out", "area")

    def __init__(self, fid: int, future: Future, t_submit: float, slot: int, out: Any = None, area: int = RING):
        self.fid = fid
        self.future = future
        self.t_submit = t_submit
        self.slot = slot  # the slot it holds on edge ``stage`` (of ``area`` on edge 0, when it has one)
        self.stage = 0
        self.out = out  # the caller's output arrays (name -> array) to fill, or None: fresh copies
        self.area = area  # until stage 0 is done: the caller's input area its inputs are in, or RING


@dataclass
class _InputArea:
    """A caller's input area registered with :meth:`Pipeline.add_input_area` (the dispatcher's record)."""

    fd: int  # the pipeline's own duplicate, sent to each stage-0 worker before its first job there
    slots: int
    stride: int
    outputs: Optional[Tuple[Dict[str, np.ndarray], ...]] = None  # per slot, where its frames' outputs go
    pending: int = 0  # its frames not yet through stage 0
    closing: bool = False  # removed: workers unmap it once ``pending`` is 0


class _Worker:
    """Main-process view of one worker process (touched by the dispatcher only, after start)."""

    def __init__(self, config: WorkerConfig, cluster: str):
        self.config = config
        self.cluster = cluster
        self.process: Any = None
        self.conn: Any = None
        self.state = "dead"  # starting | idle | busy | dead
        #: (frame, out_slot, time sent), oldest first: the first is being served, the rest wait
        self.jobs: Deque[Tuple[_Frame, int, float]] = collections.deque()
        self.fd = -1  # the socket's descriptor once the worker is ready (raw records from then on)
        self.parser = ReplyParser()
        self.broken = False  # a write to it failed: its sentinel will say why
        self.last_done = 0.0
        #: expected service ms (the plan's prediction, then a moving average of what it measures)
        self.est_ms = 1.0
        #: given a frame because its estimate looked stale: the next reply replaces the estimate
        self.probing = False
        self.restarts = 0
        self.last_exit: Optional[int] = None
        self.heavy_before_pin: Tuple[str, ...] = ()
        self.busy_since = 0.0
        self.areas: set = set()  # input areas this process has mapped (a restart starts empty)

    @property
    def job(self) -> Optional[Tuple[_Frame, int]]:
        """The job it is serving now (frame, out_slot), if any."""
        return (self.jobs[0][0], self.jobs[0][1]) if self.jobs else None

    @property
    def label(self) -> str:
        cpus = ",".join(str(c) for c in self.config.cpus)
        return f"stage {self.config.stage} worker {self.config.worker} (cluster {self.cluster}, CPUs {cpus})"


def expected_finish_ms(now_ms: float, held: int, began_ms: float, est_ms: float) -> float:
    """When a worker holding ``held`` jobs would finish one more, on the dispatcher's clock (ms).

    The job it serves began at ``began_ms`` (when it had the job and had
    finished the one before); each job takes ``est_ms``. A worker that is
    running late (past its estimate) is taken to finish now.
    """
    if held <= 0:
        return now_ms + est_ms
    return max(now_ms, began_ms + held * est_ms) + est_ms


def coordinator_cpus(platform: Any) -> Tuple[int, ...]:
    """Where the process that feeds frames and runs the dispatcher belongs: the slowest cluster.

    It wakes for every frame at every stage; left to the scheduler it lands on
    the big cores and takes time from the stage that sets the frame rate. On a
    heterogeneous board the LITTLE cores are worth least. On a homogeneous
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
        gpu: Any = None,
        stats_window: int = STATS_WINDOW,
    ):
        if int(stats_window) < 1:
            raise ExecutorError(f"stats_window must be >= 1, got {stats_window}")
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ExecutorError(f"slots must be an integer >= 1, got {slots!r}")
        if not isinstance(start_timeout_s, (int, float)) or not 0 < start_timeout_s < math.inf:
            raise ExecutorError(f"start_timeout_s must be a finite number of seconds > 0, got {start_timeout_s!r}")
        self.stats_window = int(stats_window)
        self.plan = plan
        self.model_path = Path(model_path)
        self.slots = int(slots)
        self.max_restarts = int(max_restarts)
        self.backend = backend
        self.start_timeout_s = float(start_timeout_s)
        self._verify_hash = verify_hash
        self._owner_pid: Optional[int] = None  # set by start()
        self._given_stages = stages
        self._throttle = throttle
        self._ctx = multiprocessing.get_context("spawn")
        self._rings: List[ShmRing] = []
        self._ring0_views: List[Tuple[np.ndarray, ...]] = []
        self._workers: List[List[_Worker]] = []
        self._free: List[Deque[int]] = []
        self._ready: List[List[Tuple[int, _Frame]]] = []
        # Dispatcher state (ready heaps, free slots, workers' jobs) is touched under this lock by the
        # dispatcher thread and by submit(), which hands a frame to a stage-0 worker itself.
        self._dispatch_lock = threading.RLock()
        self._completed: List[Tuple[Future, Dict[str, np.ndarray]]] = []
        self._areas: Dict[int, _InputArea] = {}  # callers' input areas (add_input_area), by id
        self._next_area = 0
        self._stream: Optional[_Stream] = None  # the stream the dispatcher feeds, if one runs
        #: gated submits waiting at the door (pipeit.admission), oldest first, each with its lead (ms)
        self._door: Deque[Tuple[_Frame, float]] = collections.deque()
        self._door_due: Optional[float] = None  # when the door opens for the first of them (perf_counter s)
        #: when the dispatcher's wait ends by itself (None: only an event ends it); under the dispatch lock
        self._poll_until: Optional[float] = None
        self._free0 = _SlotQueue()
        self._lock = threading.Lock()
        self._results: Dict[int, Tuple[_Frame, Dict[str, np.ndarray]]] = {}
        self._inflight: Dict[int, _Frame] = {}
        self._next_fid = 0
        self._next_out = 0
        self._error: Optional[BaseException] = None
        self._closing = False
        self._closed = False
        self._started = False
        self._exit_hook: Optional[Callable[[], None]] = None
        self._thread: Optional[threading.Thread] = None
        self._wake_r = self._wake_w = -1
        # An entered cores.emulation.Throttles to share (the caller closes it), else made here if needed.
        self._throttles: Any = throttles
        self._own_throttles = False
        self._tmpdir: Optional[str] = None
        self._selector: Optional[_Poller] = None
        self._stats_lock = threading.Lock()
        #: a pipeit.executor.gpu_worker.GpuOptions for stages on a GPU cluster (None: defaults)
        self.gpu = gpu
        self._switches: List[List[dict]] = [[] for _ in plan.stages]  # GPU calibration notes, since start
        self.reset_stats()

    # ---- life cycle ------------------------------------------------------------------
    def __enter__(self) -> "Pipeline":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> "Pipeline":
        """Check the model, split it, make the rings, start and await every worker."""
        if self._closed:
            raise ExecutorError("this pipeline was closed; make a new Pipeline to run the plan again")
        if self._started:
            return self
        self._started = True
        self._owner_pid = os.getpid()  # a forked child must neither drive nor stop the parent's workers
        self._exit_hook = _close_at_exit(self)
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        plan = self.plan
        if self.model_path.is_dir():
            raise PlanError(f"{self.model_path}: is a folder, not a model file")
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
        self._check_gpu_clusters()
        parts = self._stage_parts()
        self.inputs, self.outputs = model_io(self.model_path)
        edges, routes = plan_routes([(p.inputs, p.outputs) for p in parts], self.inputs, self.outputs)
        self.edges: Tuple[EdgeLayout, ...] = edges
        self.routes: Tuple[StageRoute, ...] = routes
        counts = [len(s.workers) for s in plan.stages]
        for k, layout in enumerate(edges):
            around = (counts[k - 1] if k > 0 else 0) + (counts[k] if k < len(counts) else 0)
            least = WORKER_DEPTH * around + 1  # every worker on either side keeps its frames in flight
            ring = ShmRing(layout, max(self.slots, least), least=least)
            self._rings.append(ring)
            self._free.append(collections.deque(range(ring.slots)))
        for slot in self._free[0]:
            self._free0.put(slot)
        self._free[0].clear()  # edge 0's free slots live in _free0 (shared with submit)
        # What submit() checks and copies per frame, computed once.
        self._input_specs = tuple((t.name, tuple(int(x) for x in t.shape), np.dtype(t.dtype)) for t in self.inputs)
        self._input_names = tuple(t.name for t in self.inputs)
        self._ring0_views = [tuple(self._rings[0].views(slot)[n] for n in self._input_names)
                             for slot in range(self._rings[0].slots)]
        self._ready = [[] for _ in parts]
        # Only an interpreter spanning a slowed cluster needs the quota (its threads there join the
        # cgroup); a worker wholly on one pads its invokes to the declared speed (_slow_core).
        if self._throttles is None and self._throttle and any(
            self._spans_slowed_cluster(w.cluster) for s in plan.stages for w in s.workers
        ):
            from cores.emulation import Throttles

            throttles = Throttles(plan.platform)
            throttles.__enter__()
            self._throttles, self._own_throttles = throttles, True
        remove_orphans(_STAGE_DIR_PREFIX)  # left by a process that was killed (SIGKILL skips ``close``)
        self._tmpdir = str(make_private_dir(_STAGE_DIR_PREFIX))
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
                    gpu=self._gpu_spec(part, wspec.cluster),
                    slow=self._slow_core(wspec.cluster),
                )
                row.append(_Worker(config, wspec.cluster))
                if wspec.predicted_ms and wspec.predicted_ms > 0:
                    row[-1].est_ms = float(wspec.predicted_ms)
            self._workers.append(row)
        for worker in self._all_workers():
            self._spawn(worker)
        self._await_ready()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.reset_stats()
        # The dispatcher's epoll set is made here, not in its thread: out of descriptors, start() fails
        # with one line, where a thread failing later failed the first frames of a pipeline that had started.
        self._selector = _Poller()
        self._selector.register(self._wake_r, ("wake", None))
        for w in self._all_workers():
            if w.state != "dead":
                self._watch(w)
        thread = threading.Thread(target=self._dispatch, name="pipeit-dispatcher", daemon=True)
        # a stop signal inside Thread.start() left a thread that close() could not join (RuntimeError, a
        # traceback, exit 1 and segments left): held until the dispatcher runs and close() knows it
        with deferred():
            thread.start()
            self._thread = thread

    # ---- GPU stages (pipeit.executor.gpu_worker) -------------------------------------------
    def _check_gpu_clusters(self) -> None:
        """Before anything starts: every GPU cluster a worker sits on has its OpenCL device here."""
        from pipeit.executor.gpu_worker import check_gpu_devices

        check_gpu_devices(self.plan)

    def _gpu_cluster(self, name: str) -> Any:
        if "+" in name:
            return None
        cluster = self.plan.platform.cluster(name)
        return cluster if getattr(cluster, "kind", "cpu") == "gpu" else None

    def _gpu_spec(self, part: StagePart, cluster_name: str) -> Any:
        cluster = self._gpu_cluster(cluster_name)
        if cluster is None:
            return None
        from pipeit.executor.gpu_worker import GpuOptions

        options = self.gpu if self.gpu is not None else GpuOptions()
        return options.spec_for(str(self.model_path), tuple(part.layers), cluster.device)

    def _on_note(self, w: _Worker, fid: int, notes: Sequence[dict]) -> None:
        """A GPU worker's calibration switches and CPU fallback: kept for stats, logged, and remembered
        for a restart."""
        import dataclasses
        import logging

        k = w.config.stage
        for note in notes:
            row = dict(note, stage=k, worker=w.config.worker, pipeline_frame=fid)
            with self._stats_lock:
                self._switches[k].append(row)
            logging.getLogger("pipeit.executor").warning("%s, frame %s: %s", w.label, fid, note.get("message", note))
            level = note.get("to_level")
            if w.config.gpu is not None and isinstance(level, int) and level > w.config.gpu.start_level:
                w.config = dataclasses.replace(w.config, gpu=dataclasses.replace(w.config.gpu, start_level=level))
            if w.config.gpu is not None and note.get("fallback") == "cpu" and not w.config.gpu.on_cpu:
                w.config = dataclasses.replace(w.config, gpu=dataclasses.replace(w.config.gpu, on_cpu=True))

    def gpu_switches(self) -> Tuple[dict, ...]:
        """Every GPU calibration switch since start, in order (also in ``stats().stages[k].switches``)."""
        with self._stats_lock:
            return tuple(row for rows in self._switches for row in rows)

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
        self._check_stage_layers(parts)
        return parts

    def _check_stage_layers(self, parts: Sequence[StagePart]) -> None:
        """Refuse a plan whose stages do not cover exactly the model's layers.

        The split is made from the plan's cuts alone, so the last stage of
        the split always ends at the model's last layer: a plan ending past
        it, or short of it, would otherwise run as if it had said so.
        """
        for i, (part, stage) in enumerate(zip(parts, self.plan.stages)):
            if tuple(part.layers) != tuple(stage.layers):
                n = parts[-1].layers[1]
                raise PlanError(
                    f"{self.model_path}: plan stage {i} covers layers [{stage.layers[0]}, {stage.layers[1]}), "
                    f"but the model has {n} layers (its stages must end at layer {n}); re-plan for this model"
                )

    def _slowed_cluster(self, name: str) -> Optional[str]:
        """The emulated slow cluster a worker on ``name`` runs wholly on, if any (it pads, :meth:`_slow_core`).

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

    def _slow_core(self, name: str) -> Any:
        """What a worker wholly on an emulated slowed cluster pads its invokes to (None elsewhere).

        Such a worker stays out of the cluster's cgroup: a quota runs a job
        that follows an idle spell at full speed, a slow core does not
        (``cores.emulation``). Only the spread threads of a worker spanning
        clusters are throttled by the quota (:meth:`_throttle_threads`).
        """
        from cores.emulation import slow_core_for

        slowed = self._slowed_cluster(name)
        if slowed is None or not (self._throttle or self._throttles is not None):
            return None
        return slow_core_for(self.plan.platform, slowed, self._throttles)

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
        start_shielded(process)
        child.close()
        worker.process, worker.conn, worker.state = process, parent, "starting"
        worker.jobs.clear()
        worker.fd, worker.parser, worker.broken, worker.last_done = -1, ReplyParser(), False, 0.0
        worker.areas = set()
        self._watch(worker)  # a restart, while the dispatcher runs

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
                        self._on_ready(w, message)
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
        if self._closed or not self._owned():  # a forked child's exit leaves the parent's pipeline alone
            return
        self._closed = True
        if self._exit_hook is not None:
            atexit.unregister(self._exit_hook)
            self._exit_hook = None
        with deferred():
            self._close()

    def _close(self) -> None:
        self._closing = True
        self._wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        self._free0.close()
        workers = self._all_workers()
        for w in workers:
            if w.conn is not None:
                try:
                    os.write(w.conn.fileno(), STOP)
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
        if self._stream is not None:
            self._stream.finish(error)
        for frame in list(self._inflight.values()):
            if frame.future is not None:
                _settle(frame.future, error=error)
        self._inflight.clear()
        self._ring0_views = []  # views of edge 0's segment: dropped so that it can be unmapped
        with self._dispatch_lock:  # a caller may be in submit_area: it then finds no area, not a closed fd
            for area in self._areas.values():
                os.close(area.fd)
            self._areas.clear()
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
        if thread is None or not thread.is_alive():
            self._close_selector()  # made, and no dispatcher ran to close it (else its own exit does)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # ---- the caller's side -----------------------------------------------------------
    def submit(self, inputs: Any, out: Any = None, gated: bool = False,
               lead_ms: float = DEFAULT_LEAD_MS) -> Future:
        """Queue one frame; blocks while edge 0 has no free slot (backpressure).

        ``out``: arrays to receive the outputs (a dict name -> array, or one
        array for a single-output model, shapes and dtypes exactly the
        model's); the Future then resolves to that dict, filled, instead of
        fresh copies. For a caller that reuses buffers: no allocation per
        frame. The caller must not touch them until the Future is done.

        ``gated``: the frame waits at the door, behind earlier gated frames,
        until it can pass every stage without waiting (:mod:`pipeit.admission`,
        ``lead_ms`` early); the dispatcher lets it in when a worker's reply
        frees the stage it waits for, or at the time the gate names, so a
        caller may submit ahead without its frames queueing in the stages.
        Its latency in :meth:`stats` runs from when it entered.

        The Future's done-callbacks run on the dispatcher's thread: keep them
        short and never wait there for another frame (a ``submit`` there is
        refused when it would have to wait for a slot, and ``run`` always is).
        A Future cancelled before its frame is done only drops the output.
        """
        self._check_running()
        if gated:
            _check_lead_ms(lead_ms)
        tensors = self._check_inputs(inputs)
        outs = self._check_outputs(out) if out is not None else None
        slot = self._take_slot0()
        copyto = np.copyto
        for view, name in zip(self._ring0_views[slot], self._input_names):
            copyto(view, tensors[name], casting="no")  # the one copy the caller's frame costs
        return self._queue_frame0(slot, outs, lead_ms=lead_ms if gated else None)

    def submit_into(self, fill: Any) -> Future:
        """Queue one frame whose inputs ``fill(views)`` writes straight into edge 0's ring slot.

        For a caller whose frames arrive from elsewhere: the daemon reads a
        socket straight into the slot, sparing a 600 KB copy and a buffer per
        frame. ``views`` maps each model input's name to an array of the
        model's shape and dtype that aliases the slot; it is valid only during
        the call, and ``fill`` must write every element. Blocks while edge 0
        has no free slot, like :meth:`submit`. If ``fill`` raises, the slot is
        given back, no frame is queued and the error propagates.
        """
        self._check_running()
        slot = self._take_slot0()
        try:
            fill(self._rings[0].views(slot))
        except BaseException:
            self._release(0, slot)
            raise
        return self._queue_frame0(slot)

    # ---- callers' input areas: a stage-0 frame read where its caller wrote it ---------------
    def add_input_area(self, fd: int, slots: int, stride: int, offsets: Dict[str, int],
                       outputs: Optional[Sequence[Any]] = None) -> int:
        """Register a caller's shared-memory input area; its id for :meth:`submit_area`.

        ``fd`` is a memory segment (a ``memfd``) of ``slots`` slots ``stride``
        bytes apart; slot ``k`` holds each model input at ``k * stride +
        offsets[name]``, which must be where a slot of edge 0 holds it
        (:meth:`input_offsets`). Stage-0 workers map it (the descriptor goes
        to each with its first job there) and read a frame's inputs from it,
        so a caller that writes its frames there (the daemon's clients) is
        spared one copy of every frame into ring 0, and the copy's pass over
        the caches. The pipeline keeps a duplicate of ``fd`` until
        :meth:`remove_input_area` or close. ``outputs``: per slot, the arrays
        each frame's outputs go to (as ``submit(out=...)``, checked once here,
        not per frame); else a frame's Future resolves to fresh copies.
        Raises :class:`ExecutorError` when the layout does not fit
        (:class:`InputError` when ``outputs`` do not).
        """
        self._check_running()
        layout = self.edges[0]
        want = self.input_offsets()
        if dict(offsets) != want:
            raise ExecutorError(f"an input area must hold the inputs at {want} in each slot, not {dict(offsets)}")
        if int(slots) < 1 or int(stride) < layout.slot_bytes:
            raise ExecutorError(f"an input area needs >= 1 slot of >= {layout.slot_bytes} bytes, "
                                f"not {slots} of {stride}")
        if os.fstat(fd).st_size < int(slots) * int(stride):
            raise ExecutorError(f"the input area's segment is smaller than {int(slots) * int(stride)} bytes")
        outs: Optional[Tuple[Dict[str, np.ndarray], ...]] = None
        if outputs is not None:
            if len(outputs) != int(slots):
                raise ExecutorError(f"an input area of {slots} slots needs {slots} sets of outputs, "
                                    f"not {len(outputs)}")
            outs = tuple(self._check_outputs(out) for out in outputs)
        try:
            own = os.dup(fd)
        except OSError as err:  # out of descriptors: the caller answers the frame, as for any refusal
            import resource

            from cores.errors import process_limit_hint

            hint = process_limit_hint(resource.RLIMIT_NOFILE, "ulimit -n") if err.errno == errno.EMFILE else ""
            raise ExecutorError(f"cannot keep the input area: {err.strerror or err}{hint}") from err
        with self._dispatch_lock:
            area_id = self._next_area
            self._next_area += 1
            self._areas[area_id] = _InputArea(own, int(slots), int(stride), outs)
        return area_id

    def input_offsets(self) -> Dict[str, int]:
        """Where a slot of edge 0 (and so of an input area) holds each model input, in bytes."""
        layout = self.edges[0]
        return {info.name: offset for info, offset in zip(layout.tensors, layout.offsets)}

    def remove_input_area(self, area_id: int) -> None:
        """Forget an input area: its workers unmap it once its frames in flight are past stage 0."""
        with self._dispatch_lock:
            area = self._areas.get(area_id)
            if area is None or area.closing:
                return
            area.closing = True
            if area.pending == 0:
                self._forget_area(area_id)

    def submit_area(self, area_id: int, slot: int) -> Future:
        """Queue one frame whose inputs are in slot ``slot`` of input area ``area_id`` (no copy).

        The caller must not write that slot until the Future is done; its
        outputs go where :meth:`add_input_area` was told. Takes no slot of
        ring 0: the number of such frames in flight is the caller's to bound
        (the daemon's per-client allowance does).
        """
        self._check_running()
        self._raise_if_failed()
        with self._dispatch_lock:
            area = self._areas.get(area_id)
            if area is None or area.closing:
                raise ExecutorError(f"no input area {area_id} on this pipeline")
            if not 0 <= slot < area.slots:
                raise ExecutorError(f"input area slot {slot} is outside 0..{area.slots - 1}")
            area.pending += 1
            return self._queue_frame0(slot, area.outputs[slot] if area.outputs else None, area_id)

    def _forget_area(self, area_id: int) -> None:
        """Unmap an input area in every worker that mapped it and close our descriptor (dispatch lock held)."""
        area = self._areas.pop(area_id)
        for w in (self._workers[0] if self._workers else ()):
            if area_id in w.areas:
                w.areas.discard(area_id)
                if w.fd >= 0:
                    try:
                        os.write(w.fd, JOB.pack(UNMAP, area_id, 0, 0))
                    except OSError:
                        pass  # it died: its mapping went with it
        os.close(area.fd)

    def _area_done(self, area_id: int) -> None:
        area = self._areas.get(area_id)
        if area is not None:
            area.pending -= 1
            if area.closing and area.pending <= 0:
                self._forget_area(area_id)

    def _send_area(self, w: _Worker, area_id: int) -> None:
        """Give worker ``w`` input area ``area_id``'s descriptor with a MAP record (before its first job there)."""
        area = self._areas[area_id]
        channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=w.fd)
        try:
            socket.send_fds(channel, [JOB.pack(MAP, area_id, area.slots, area.stride)], [area.fd])
        finally:
            channel.detach()  # the descriptor stays the worker connection's
        w.areas.add(area_id)

    def _check_running(self) -> None:
        if not self._started or self._closed:
            raise ExecutorError("the pipeline is not running (use it inside `with Pipeline(...)`)")
        if not self._owned():
            raise ExecutorError(f"this pipeline belongs to process {self._owner_pid}, not this forked child: "
                                "make a Pipeline in the child")

    def _owned(self) -> bool:
        """True in the process that started the pipeline (its workers' sockets are shared with a fork)."""
        return self._owner_pid is None or self._owner_pid == os.getpid()

    def __reduce__(self) -> Any:
        raise TypeError("a Pipeline holds this process's workers and shared memory and cannot be pickled: "
                        "send its plan and model path, and make a Pipeline where it is needed")

    def _take_slot0(self) -> int:
        """A free slot of edge 0, waiting for one (backpressure); raises if the pipeline failed or closed."""
        self._raise_if_failed()
        if self._on_dispatcher():
            # A done-callback (they run on the dispatcher's thread) may submit while a slot is free; waiting
            # for one there would wait for the very thread that gives slots back.
            slot = self._free0.take_nowait()
            if slot is None:
                self._raise_if_failed()
                raise ExecutorError("submit() from a Future's done-callback found every slot of the first ring "
                                    "in use; waiting there would stop the pipeline (callbacks run on its "
                                    "dispatcher thread): submit from another thread")
            return slot
        # No timeout: a released slot, _fail and close() all put something in this queue.
        slot = self._free0.get()
        if slot < 0:
            self._raise_if_failed()
            raise ExecutorError("the pipeline was closed")
        return slot

    def _queue_frame0(self, slot: int, out: Any = None, area: int = RING,
                      lead_ms: Optional[float] = None) -> Future:
        """Make the frame whose inputs are in ``slot`` (of ring 0, or of input area ``area``) and hand it
        to a stage-0 worker from this thread (or, gated with ``lead_ms``, leave it at the door).

        From the caller's thread: no wake-up of the dispatcher per frame
        (a gated frame's wakes it only when its door opens before the
        dispatcher's wait would end by itself).
        """
        future: Future = Future()
        with self._dispatch_lock:
            with self._lock:
                fid = self._next_fid
                self._next_fid += 1
                frame = _Frame(fid, future, time.perf_counter(), slot, out, area)
                self._inflight[fid] = frame
            if self._error is not None:
                _settle(future, error=self._error)
                return future
            if lead_ms is not None:
                self._door.append((frame, lead_ms))
                self._open_door()
                self._wake_by(self._door_due)
            else:
                heapq.heappush(self._ready[0], (fid, frame))
            self._feed_stage(0)
        return future

    def _open_door(self) -> None:
        """Let in the gated frames at the door whose time has come, oldest first; note when the next one's comes.

        Under the dispatch lock.
        """
        door = self._door
        self._door_due = None
        while door:
            frame, lead_ms = door[0]
            self._door_due = self._gate_due(lead_ms)
            if self._door_due is not None:
                return
            door.popleft()
            frame.t_submit = time.perf_counter()  # its latency runs from when it entered
            heapq.heappush(self._ready[0], (frame.fid, frame))

    def stream(self, frames: Sequence[Any], window: int, gated: bool = False,
               lead_ms: float = DEFAULT_LEAD_MS) -> Tuple[float, List[float]]:
        """Stream ``frames`` keeping ``window`` in flight; return (fps, per-frame latencies in ms).

        What a caller's loop of ``submit`` and ``result`` measures
        (:func:`pipeit.streaming.stream_frames`; the fps is the rate while the
        stream was full, :func:`pipeit.streaming.steady_fps`), but fed by the dispatcher
        thread itself: when a frame comes out it queues the next one in the
        same wake-up, so the caller's thread is not woken per frame (a wake-up,
        a Future and its condition variable less per frame). Outputs are not
        read back. Latency runs from when a frame is queued to when it is
        delivered in order. Every frame is checked before the first is queued
        (:class:`InputError`). One stream at a time.

        ``gated``: each frame is also held at the door until it can pass every
        stage without waiting (:mod:`pipeit.admission`, ``lead_ms`` early),
        and the dispatcher opens the door itself: when a worker's reply
        frees the stage the frame waits for, in the same wake-up, or at the
        time the gate names (as for ``submit(gated=True)``). A caller's thread
        that slept until then would be woken late on a busy core, and each
        late wake-up is time the slowest stage sits idle.
        """
        self._check_running()
        if int(window) < 1:
            raise ExecutorError(f"window must be >= 1, got {window}")
        if gated:
            _check_lead_ms(lead_ms)
        checked_by_id: Dict[int, Dict[str, np.ndarray]] = {}
        checked = []
        for frame in frames:  # a frame reused is checked once and stays one object (staging relies on it)
            tensors = checked_by_id.get(id(frame))
            if tensors is None:
                tensors = checked_by_id[id(frame)] = self._check_inputs(frame)
            checked.append(tensors)
        if not checked:
            return 0.0, []
        staged = stage_frames(checked, self.input_offsets(), self.edges[0].slot_bytes)
        area = RING
        if staged is not None:
            try:
                area = self.add_input_area(staged.fd, staged.slots, staged.stride, self.input_offsets())
            except BaseException:
                staged.close()
                raise
        state = _Stream(checked, int(window), area, staged.slot_of if staged is not None else (),
                        lead_ms=float(lead_ms) if gated else None)
        try:
            with self._dispatch_lock:
                self._raise_if_failed()
                if self._stream is not None:
                    raise ExecutorError("a stream is already running on this pipeline")
                self._stream = state
                t0 = time.perf_counter()
                self._top_up()
                self._feed_stage(0)
                self._wake_by(state.due)
            try:
                while not state.done.wait(0.5):
                    if self._closing:
                        state.finish(ExecutorError("the pipeline was closed"))
            finally:
                with self._dispatch_lock:
                    if self._stream is state:
                        self._stream = None
        finally:
            if staged is not None:
                if not self._closing:
                    self.remove_input_area(area)  # its workers unmap it once its frames are past stage 0
                staged.close()  # the pipeline holds its own descriptor while workers need it
        if state.error is not None:
            raise state.error
        return steady_fps(t0, state.done_times, state.window), state.latencies

    def _top_up(self) -> None:
        """Queue the stream's next frames while it has fewer than its window in flight and edge 0 a free slot.

        Under the dispatch lock (the dispatcher, or :meth:`stream` to start).
        """
        state = self._stream
        if state is None or state.done.is_set():
            return
        frames = state.frames
        copyto = np.copyto
        area = self._areas.get(state.area) if state.area != RING else None
        state.due = None
        while state.inflight < state.window and state.next < len(frames):
            if state.lead_ms is not None:
                state.due = self._gate_due(state.lead_ms)
                if state.due is not None:
                    return
            if area is not None:  # staged: stage 0 reads the frame where it lies, no ring-0 slot taken
                slot = state.area_slots[state.next]
                area.pending += 1
            else:
                slot = self._free0.take_nowait()
                if slot is None:
                    return  # a slot frees when stage 0 is done with a frame: the next wake-up tops up
                tensors = frames[state.next]
                for view, name in zip(self._ring0_views[slot], self._input_names):
                    copyto(view, tensors[name], casting="no")
            state.next += 1
            with self._lock:
                fid = self._next_fid
                self._next_fid += 1
                frame = _Frame(fid, None, time.perf_counter(), slot, _DISCARD, state.area if area is not None else RING)
                self._inflight[fid] = frame
            state.inflight += 1
            heapq.heappush(self._ready[0], (fid, frame))

    def _gate_due(self, lead_ms: float) -> Optional[float]:
        """When the gate opens for the next frame (perf_counter s), or None: it may enter now.

        Under the dispatch lock. The dispatcher's wait is timed in whole ms:
        a frame less than one away goes now (it waits that little in its
        worker's queue), a later one when the wait ends. An unknown delay (a
        stage with no live worker: one restarting) lets it in: the
        executor's own backpressure and fault handling take over.
        """
        delay = self._admission_delay_ms(lead_ms)
        if math.isfinite(delay) and delay >= 1.0:
            return time.perf_counter() + delay / 1000.0
        return None

    def _wake_by(self, due: Optional[float]) -> None:
        """Wake the dispatcher if a frame's gate opens (``due``) before its wait would end by itself.

        Under the dispatch lock (which guards :attr:`_poll_until`).
        """
        if due is not None and (self._poll_until is None or due < self._poll_until):
            self._wake()

    def _admission_delay_ms(self, lead_ms: float) -> float:
        """Ms until a new frame would pass every stage without waiting, less ``lead_ms`` (<= 0: now).

        The gate of gated admission (:mod:`pipeit.admission`), under the
        dispatch lock: the dispatcher's view of each worker (the jobs it
        holds, its moving-average service time) and of the frames admitted
        and not yet held by a worker.
        """
        now = time.perf_counter() * 1000.0
        stages = []
        frames = []
        for k, row in enumerate(self._workers):
            states = []
            for w in row:
                held = len(w.jobs)
                began = max(w.jobs[0][2], w.last_done) * 1000.0 if held else now
                for i, job in enumerate(w.jobs):
                    frames.append(FrameState(job[0].fid, k, began + (i + 1) * w.est_ms))
                usable = w.fd >= 0 and not w.broken
                states.append(WorkerState(began + held * w.est_ms if usable else math.inf, w.est_ms))
            stages.append(tuple(states))
            frames.extend(FrameState(fid, k) for fid, _frame in self._ready[k])
        return admission_delay_ms(PipelineState(now, tuple(stages), tuple(frames)), lead_ms)

    def map(self, frames: Iterable[Any], inflight: Optional[int] = None,
            gated: bool = False) -> Iterator[Dict[str, np.ndarray]]:
        """Outputs of each frame, in order, keeping the pipeline busy while the caller consumes.

        ``inflight`` caps the frames submitted but not yet yielded. The default
        fills every ring slot (best throughput; latency then includes queueing
        in the rings); a cap near the number of workers keeps each frame's
        latency close to its path through the stages. ``gated``: each frame
        also waits at the door until it can pass every stage without waiting
        (:mod:`pipeit.admission`; what a plan made under a latency limit expects).
        """
        if inflight is not None and inflight < 1:
            raise ExecutorError(f"inflight must be >= 1, got {inflight}")
        self._check_running()
        limit = inflight if inflight is not None else 2 * sum(r.slots for r in self._rings)
        window: Deque[Future] = collections.deque()
        for inputs in frames:
            while len(window) >= limit:
                yield window.popleft().result()
            window.append(self.submit(inputs, gated=gated))
            while window and window[0].done():
                yield window.popleft().result()
        while window:
            yield window.popleft().result()

    def run(self, inputs: Any, timeout: Optional[float] = None) -> Dict[str, np.ndarray]:
        """One frame, synchronously (not from a Future's done-callback: see :meth:`submit`)."""
        if self._on_dispatcher():
            raise ExecutorError("run() from a Future's done-callback would wait for the dispatcher thread it "
                                "runs on: submit() there and take the result elsewhere")
        return self.submit(inputs).result(timeout)

    def _on_dispatcher(self) -> bool:
        """Whether this is the dispatcher's thread (where Futures' done-callbacks run)."""
        return self._thread is not None and self._thread is threading.current_thread()

    def _check_inputs(self, inputs: Any) -> Dict[str, np.ndarray]:
        if isinstance(inputs, dict):
            # The common case in a few attribute reads: names, shapes and dtypes exactly as expected.
            try:
                if len(inputs) == len(self._input_specs) and all(
                    type(v := inputs[name]) is np.ndarray and v.shape == shape and v.dtype == dtype
                    for name, shape, dtype in self._input_specs
                ):
                    return inputs
            except KeyError:
                pass  # a wrong name: the slow path below says which
        elif (len(self._input_specs) == 1 and type(inputs) is np.ndarray
              and inputs.shape == self._input_specs[0][1] and inputs.dtype == self._input_specs[0][2]):
            return {self._input_specs[0][0]: inputs}
        expected = {t.name: t for t in self.inputs}
        if not isinstance(inputs, dict):
            if len(expected) != 1:
                raise InputError(f"this model has {len(expected)} inputs; pass a dict name -> array")
            inputs = {self.inputs[0].name: inputs}
        unknown = set(inputs) - set(expected)
        missing = set(expected) - set(inputs)
        if unknown or missing:
            raise InputError(f"input names {sorted(inputs, key=repr)} do not match the model's {sorted(expected)}")
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

    def _check_outputs(self, out: Any) -> Dict[str, np.ndarray]:
        """``submit(out=...)``: the caller's output arrays, checked like inputs (:class:`InputError`)."""
        expected = {t.name: t for t in self.outputs}
        if not isinstance(out, dict):
            if len(expected) != 1:
                raise InputError(f"this model has {len(expected)} outputs; pass out= as a dict name -> array")
            out = {self.outputs[0].name: out}
        if set(out) != set(expected):
            raise InputError(f"out= names {sorted(out, key=repr)} do not match the model's outputs {sorted(expected)}")
        for name, info in expected.items():
            value = out[name]
            if (not isinstance(value, np.ndarray) or tuple(value.shape) != tuple(info.shape)
                    or value.dtype != np.dtype(info.dtype) or not value.flags.writeable):
                what = (f"{tuple(value.shape)} {value.dtype}" if isinstance(value, np.ndarray)
                        else type(value).__name__)
                raise InputError(f"out= {name!r} is {what}, the model gives a writable "
                                 f"{tuple(info.shape)} {info.dtype}")
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
        for k, row in enumerate(self._workers):
            if k < len(depths):
                # a job queued behind the one a worker serves is waiting too
                depths[k] += sum(max(0, len(w.jobs) - 1) for w in row)
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
            recent = functools.partial(collections.deque, maxlen=self.stats_window)
            self._frames_done = 0
            self._stage_frames: List[int] = [0 for _ in self.plan.stages]
            self._latencies: Deque[float] = recent()
            self._service: List[Deque[float]] = [recent() for _ in self.plan.stages]
            self._handoff: List[Deque[float]] = [recent() for _ in self.plan.stages]
            self._redispatched: List[int] = [0 for _ in self.plan.stages]
            self._busy: List[float] = [0.0 for _ in self.plan.stages]
            self._starved: List[float] = [0.0 for _ in self.plan.stages]
            self._worker_frames: List[List[int]] = [[0] * len(s.workers) for s in self.plan.stages]
            self._worker_service: List[List[Deque[float]]] = [[recent() for _ in s.workers] for s in self.plan.stages]
            self._t_reset = time.perf_counter()

    def stats(self) -> PipelineStats:
        """Throughput and per-stage load since the last reset; percentiles of the last ``stats_window`` frames."""
        with self._stats_lock:
            frames = self._frames_done
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
                        index=k, layers=tuple(spec.layers), workers=len(spec.workers), frames=self._stage_frames[k],
                        measured_ms=measured,
                        predicted_ms=(sum(predicted) / len(predicted)) if predicted else None,
                        busy=min(1.0, self._busy[k] / (wall * len(spec.workers))) if frames else 0.0,
                        starved=min(1.0, max(0.0, self._starved[k]) / (wall * len(spec.workers))) if frames else 0.0,
                        restarts=sum(w.restarts for w in row),
                        worker_frames=tuple(self._worker_frames[k]),
                        handoff_ms=percentile(self._handoff[k], 50),
                        redispatched=self._redispatched[k],
                        worker_ms=tuple(percentile(v, 50) for v in self._worker_service[k]),
                        switches=tuple(self._switches[k]),
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
        # Woken by a worker's reply on a CPU where another worker computes, the dispatcher must not
        # wait out that worker's slice: every frame's hand-off waits with it (cores.slices).
        request_short_slice()
        try:
            self._dispatch_loop()
        except BaseException as err:  # a bug here must not hang callers: fail their frames
            self._fail(ExecutorError(f"the dispatcher stopped: {type(err).__name__}: {err}"))

    def _dispatch_loop(self) -> None:
        # One long-lived epoll set, made by _start (multiprocessing.connection.wait builds a new one per
        # call, which costs more than everything else the dispatcher does for a frame).
        try:
            self._dispatch_events()
        finally:
            self._close_selector()

    def _close_selector(self) -> None:
        selector, self._selector = self._selector, None
        if selector is not None:
            selector.close()

    def _dispatch_events(self) -> None:
        poll = self._selector.poll
        lock = self._dispatch_lock
        stages = range(len(self._workers) - 1, -1, -1)
        while not self._closing and self._error is None:
            # One blocking wait: replies, exits and close() (the wake pipe) end it, and so does the
            # gate when it opens for a waiting frame (whole ms, rounded down: epoll rounds up).
            until = self._poll_until
            if until is None:
                events = poll()
            else:
                events = poll(max(0.0, math.floor((until - time.perf_counter()) * 1000.0) - 0.5) / 1000.0)
            with lock:
                exited = []
                for kind, w in events:
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
                if self._door:
                    self._open_door()
                if self._stream is not None:
                    self._top_up()
                for k in stages:
                    self._feed_stage(k)
                dues = [d for d in (self._door_due, self._stream.due if self._stream is not None else None)
                        if d is not None]
                self._poll_until = min(dues) if dues else None
                completed, self._completed = self._completed, []
            # outside the lock: a caller woken by its result may submit at once
            _settle_all(completed)

    def _watch(self, w: _Worker) -> None:
        if self._selector is not None:
            self._selector.register(w.conn, ("conn", w))
            self._selector.register(w.process.sentinel, ("exit", w))

    def _unwatch(self, w: _Worker, conn: bool = True, sentinel: bool = True) -> None:
        if self._selector is None:
            return
        for item, wanted in ((w.conn, conn), (w.process.sentinel if w.process else None, sentinel)):
            if wanted and item is not None:
                self._selector.unregister(item)  # ignores what is not registered

    def _feed_stage(self, k: int) -> None:
        """Deal stage ``k``'s waiting frames, lowest id first, each to the worker expected to finish it first.

        A worker may hold :data:`WORKER_DEPTH` jobs; :func:`expected_finish_ms`
        ranks them by when each would finish the frame: the end of what it holds
        (the job it serves began when it had it and had finished the one
        before) plus one more frame. So a free worker is preferred, a fast one
        may take a second frame before a slow one takes its first, and a
        queued frame goes to the worker that frees up first, not to whichever
        holds as many jobs and comes first in the row: with one frame more in
        flight than workers, that frame waits at the worker finishing next,
        which then never waits for the dispatcher between frames.
        """
        queue = self._ready[k]
        if not queue:
            return
        free_out = self._free[k + 1]
        row = self._workers[k]
        now_ms = time.perf_counter() * 1000.0
        while queue and free_out:
            best = None
            best_t = math.inf
            for w in row:
                n = len(w.jobs)
                if n >= WORKER_DEPTH or w.fd < 0 or w.broken:
                    continue
                if n:
                    t = expected_finish_ms(now_ms, n, max(w.jobs[0][2], w.last_done) * 1000.0, w.est_ms)
                elif now_ms - w.last_done * 1000.0 > STALE_IDLE * w.est_ms:
                    # idle for long: its estimate may be stale (slow frames on a busy host would
                    # otherwise keep it idle for good, as nothing but serving refreshes it)
                    t = now_ms + min(x.est_ms for x in row) - 1e-6
                else:
                    t = now_ms + w.est_ms
                if t < best_t:
                    best, best_t = w, t
            if best is None:
                return
            _, frame = heapq.heappop(queue)
            out_slot = free_out.popleft()
            try:
                if frame.area != RING and frame.area not in best.areas:
                    self._send_area(best, frame.area)
                os.write(best.fd, JOB.pack(frame.fid, frame.area, frame.slot, out_slot))
            except OSError:
                # It died under us; the sentinel will say so. Put things back.
                best.broken = True
                free_out.appendleft(out_slot)
                heapq.heappush(queue, (frame.fid, frame))
                continue
            sent = time.perf_counter()
            if not best.jobs and best.last_done >= self._t_reset:
                # it sat with nothing to do since its last reply: the feed or the dispatcher kept it waiting
                self._starved[k] += sent - best.last_done
            if not best.jobs and sent * 1000.0 - best.last_done * 1000.0 > STALE_IDLE * best.est_ms:
                best.probing = True
            best.jobs.append((frame, out_slot, sent))
            best.state = "busy"

    def _on_message(self, w: _Worker) -> None:
        if w.fd < 0:  # still starting: the one pickled message
            self._on_start_message(w)
            return
        try:
            data = os.read(w.fd, 65536)
        except OSError:
            data = b""
        if not data:
            self._unwatch(w, sentinel=False)
            w.conn.close()
            w.conn, w.fd = None, -1  # its sentinel will fire; the exit handler takes it from here
            return
        now = time.perf_counter()
        for fid, code, value, payload in w.parser.feed(data):
            if code == DONE:
                if not self._on_done(w, fid, value, now):
                    return
            elif code == NOTE:
                import pickle

                self._on_note(w, fid, pickle.loads(payload))
            elif code == ERROR:
                text = (payload or b"").decode("utf-8", "replace")
                self._fail(ExecutorError(f"{w.label} failed on frame {fid}: {text}"))
                return
            else:
                self._fail(ExecutorError(f"{w.label} sent an unknown reply code {code}"))
                return

    def _on_start_message(self, w: _Worker) -> None:
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            self._unwatch(w, sentinel=False)
            w.conn.close()
            w.conn = None  # its sentinel will fire; the exit handler takes it from here
            return
        kind = message[0]
        if kind == "ready":
            self._on_ready(w, message)
            return
        if kind == "error":
            self._fail(ExecutorError(f"{w.label} failed on frame {message[1]}: {message[2]}"))
            return
        self._fail(ExecutorError(f"{w.label} sent {kind!r} before it was ready"))

    def _on_ready(self, w: _Worker, message: Any) -> None:
        w.state, w.heavy_before_pin = "idle", tuple(message[2])
        w.fd = w.conn.fileno()  # from now on: fixed-size records (pipeit.executor.wire)
        self._throttle_threads(w, message[3])

    def _on_done(self, w: _Worker, fid: int, service_ms: float, now: float) -> bool:
        if not w.jobs or w.jobs[0][0].fid != fid:
            self._fail(ExecutorError(f"{w.label} answered frame {fid} it was not given"))
            return False
        frame, out_slot, sent = w.jobs.popleft()
        # it could start this frame when it had it and had finished the one before
        began = max(sent, w.last_done)
        w.last_done = now
        held = max(now - began, service_ms / 1000.0)
        est = w.est_ms
        if w.probing:  # a stale estimate: a fresh measurement replaces it
            w.est_ms, w.probing = service_ms, False
        else:
            w.est_ms = est + 0.2 * (min(service_ms, EST_CLAMP * est) - est)
        k = w.config.stage
        with self._stats_lock:
            self._service[k].append(service_ms)
            self._stage_frames[k] += 1
            self._handoff[k].append(held * 1000.0 - service_ms)
            self._worker_frames[k][w.config.worker] += 1
            self._worker_service[k][w.config.worker].append(service_ms)
            self._busy[k] += max(0.0, now - max(now - held, self._t_reset))
        if not w.jobs:
            w.state = "idle"
        if frame.area != RING:  # its inputs were in the caller's area: nothing of ring 0 to give back
            self._area_done(frame.area)
            frame.area = RING
        else:
            self._release(k, frame.slot)
        frame.slot, frame.stage = out_slot, k + 1
        if k + 1 < len(self._workers):
            heapq.heappush(self._ready[k + 1], (frame.fid, frame))
        else:
            if frame.out is None:
                outputs = self._rings[k + 1].read(out_slot)
            elif frame.out is _DISCARD:  # a stream's frame: only its time matters
                outputs = None
            else:  # the caller's own arrays: no allocation
                outputs = frame.out
                for name, view in self._rings[k + 1].views(out_slot).items():
                    np.copyto(outputs[name], view)
            self._release(k + 1, out_slot)
            self._results[fid] = (frame, outputs)
            self._deliver()
        return True

    def _release(self, edge: int, slot: int) -> None:
        if edge == 0:
            self._free0.put(slot)
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
                    self._frames_done += 1
                    self._t_last = now
                    if self._t_first is None or frame.t_submit < self._t_first:
                        self._t_first = frame.t_submit
            with self._lock:
                self._inflight.pop(frame.fid, None)
            if frame.future is None:  # fed by the dispatcher for a stream
                state = self._stream
                if state is not None:
                    state.latencies.append((now - frame.t_submit) * 1000.0)
                    state.done_times.append(now)
                    state.inflight -= 1
                    if state.inflight == 0 and state.next >= len(state.frames):
                        state.finish()
                continue
            self._completed.append((frame.future, outputs))  # resolved once the lock is let go

    def _on_exit(self, w: _Worker) -> None:
        w.process.join(0.5)
        w.last_exit = w.process.exitcode
        self._unwatch(w)
        if w.conn is not None:
            w.conn.close()
            w.conn = None
        held = list(w.jobs)
        w.jobs.clear()
        w.fd = -1
        for frame, out_slot, _ in held:  # every frame it held goes to its successor
            self._free[w.config.stage + 1].append(out_slot)
            heapq.heappush(self._ready[w.config.stage], (frame.fid, frame))
        if held:
            with self._stats_lock:
                self._redispatched[w.config.stage] += len(held)
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
        state = self._stream
        if state is not None:
            state.finish(self._error)
        for frame in frames:
            if frame.future is not None:
                _settle(frame.future, error=self._error)
        self._free0.close()


def _check_lead_ms(lead_ms: Any) -> None:
    """A gated frame's lead is a finite number of ms >= 0: a negative one moved its gate further away at
    every wake-up, so the frame never entered and every frame after it waited behind it, silently."""
    if isinstance(lead_ms, bool) or not isinstance(lead_ms, (int, float)) or not 0 <= lead_ms < math.inf:
        raise ExecutorError(f"lead_ms must be a finite number of ms >= 0, got {lead_ms!r}")


def _close_at_exit(pipeline: "Pipeline") -> Callable[[], None]:
    """Register a hook that closes ``pipeline`` when the interpreter exits, if no one has.

    Without it a script that never closes its pipeline leaves the exit to
    multiprocessing, which kills the workers first: the dispatcher took
    that for crashes and restarted them, and the cgroups and stage files
    stayed. atexit runs hooks last-registered first, so this one runs
    before multiprocessing's. It holds the pipeline weakly.
    """
    ref = weakref.ref(pipeline)

    def hook() -> None:
        alive = ref()
        if alive is not None:
            alive.close()

    atexit.register(hook)
    return hook


def _settle(future: Future, outputs: Any = None, error: Optional[BaseException] = None) -> None:
    """Resolve a frame's Future with its outputs or ``error``; one its caller cancelled (no longer wants
    the frame) is left as it is, rather than raising in the dispatcher and stranding the frames after it."""
    try:
        if error is None:
            future.set_result(outputs)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass


def _settle_all(completed: List[Tuple[Future, Any]]) -> None:
    """Resolve the completed frames' Futures, emptying ``completed``. In a function of its own so that no
    variable of the dispatcher's loop keeps the last frame's outputs while it waits: in the daemon they view
    a client's frame area, whose mapping then outlived the client's connection."""
    for future, outputs in completed:  # in order: a caller may wait on its frames one by one
        _settle(future, outputs)
    completed.clear()


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
