"""The body of one stage worker process (the target of a ``spawn``-ed Process).

Order matters here: the process pins every one of its threads to its CPUs
*before* it imports numpy or the runtime, so no thread pool is ever started
with the wrong affinity. That is why this module imports only the standard
library and pure-Python records at top level.

Protocol over the worker's own Pipe (small tuples, never tensors):

- worker -> main, pickled, once: ``("ready", pid, heavy_modules_before_pin, placements)``
  (``placements``: ``(tid, cpu)`` pairs when threads were spread one per CPU), or
  ``("error", None, text)`` when it cannot start.
- then fixed-size records only (:mod:`pipeit.executor.wire`): main -> worker a job
  ``(frame, area, in_slot, out_slot)`` (frame -1: stop; up to two queued; a stage-0
  job may read a caller's input area, mapped from a descriptor that comes with a
  ``MAP`` record); worker -> main
  ``DONE`` with the service ms per frame, ``ERROR`` with a one-line text, or ``NOTE``
  before that frame's ``DONE`` when the runner has something to report (a GPU
  stage's calibration switch: a pickled tuple of dicts).

The serving loop knows nothing of what computes a stage: it calls a *runner*
(:class:`TfliteRunner` for a CPU worker, ``pipeit.executor.gpu_worker.GpuRunner``
for a worker on a cluster of kind ``"gpu"``), chosen by :func:`make_runner`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from pipeit.children import ignore_shielded
from pipeit.executor.routes import EdgeLayout, StageRoute

__all__ = ["WorkerConfig", "RingRef", "TfliteRunner", "make_runner", "worker_main", "pin_process", "HEAVY_MODULES"]

#: modules that start thread pools or are big: they must not be loaded before pinning
HEAVY_MODULES = ("numpy", "ai_edge_litert", "tflite_runtime")


@dataclass(frozen=True)
class RingRef:
    """How a worker finds a ring: its segment name, layout and slot count."""

    name: str
    layout: EdgeLayout
    slots: int


@dataclass(frozen=True)
class WorkerConfig:
    """Everything one worker needs; plain data so that it pickles cheaply."""

    stage: int
    worker: int
    cpus: Tuple[int, ...]
    threads: int
    model_path: str  # a file, not bytes: big spawn arguments can wedge start() if the child dies early
    route: StageRoute
    ring_in: RingRef
    ring_out: RingRef
    backend: Optional[str] = None
    #: pin each thread to one CPU (round robin) instead of all to the set: an
    #: interpreter spanning an emulated fast and slowed cluster needs it, so that
    #: only the threads on the slowed CPUs are throttled
    spread_threads: bool = False
    #: set for a worker on a cluster of kind "gpu" (a ``pipeit.executor.gpu_worker.GpuWorkerSpec``):
    #: the worker then runs its layer range on an OpenCL device; ``model_path`` stays the stage's
    #: TFLite sub-model (the CPU reference its calibration compares with)
    gpu: Any = None
    #: set for a worker wholly on an emulated slowed cluster (a ``cores.emulation.SlowCore``): its
    #: interpreter pads every invoke to the cluster's speed instead of running under the quota
    slow: Any = None


def spread_threads(cpus: Tuple[int, ...]) -> Tuple[Tuple[int, int], ...]:
    """Pin every thread of this process to one CPU of ``cpus``, the calling thread to the first.

    The runtime's pool threads exist once the interpreter is built; they are
    dealt round robin over the CPUs, so ``num_threads == len(cpus)`` gives one
    thread per CPU, as on a board where the scheduler keeps them apart.
    Returns the ``(tid, cpu)`` placements.
    """
    own = threading_native_id()
    others = sorted(int(t) for t in os.listdir("/proc/self/task") if int(t) != own)
    placements = []
    for i, tid in enumerate([own] + others):
        cpu = cpus[i % len(cpus)]
        try:
            os.sched_setaffinity(tid, {cpu})
        except ProcessLookupError:
            continue  # the thread ended between listing and pinning
        placements.append((tid, cpu))
    return tuple(placements)


def threading_native_id() -> int:
    import threading

    return threading.get_native_id()


def pin_process(cpus: Tuple[int, ...]) -> None:
    """Pin every thread of this process; cores.pinning when present, else the same by hand."""
    try:
        from cores.pinning import pin_all_threads
    except ImportError:  # the cores engineer's module is optional to this worker
        pin_all_threads = None
    if pin_all_threads is not None:
        pin_all_threads(cpus)
        return
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), set(cpus))
        except ProcessLookupError:
            pass  # the thread ended between listing and pinning


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


class TfliteRunner:
    """A CPU stage: the stage's TFLite sub-model in one interpreter.

    ``run`` returns views of the interpreter's own output buffers (no copy):
    the serving loop copies them into the out-ring at once and drops them, as
    the interpreter refuses to invoke while such a view is alive.
    """

    def __init__(self, config: WorkerConfig) -> None:
        from pipeit.runtime import make_interpreter, native_stderr_silenced

        # the runtime announces its delegate on stderr for every interpreter; with a worker per stage
        # that drowns a user's terminal (failures still reach the main process as exceptions)
        with native_stderr_silenced():
            self.interpreter = make_interpreter(config.model_path, num_threads=config.threads,
                                                backend=config.backend, slow=config.slow)
        self.input_details = {d["name"]: d for d in self.interpreter.get_input_details()}
        self.output_details = {d["name"]: d for d in self.interpreter.get_output_details()}
        self._feeds = tuple((name, d["index"]) for name, d in self.input_details.items())
        self._fetches = tuple((name, d["index"]) for name, d in self.output_details.items())

    def io(self) -> Tuple[Dict[str, Tuple[Tuple[int, ...], str]], Tuple[str, ...]]:
        """(input name -> (shape, dtype name), output names): what the loop checks against the rings."""
        import numpy as np

        inputs = {name: (tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name)
                  for name, d in self.input_details.items()}
        return inputs, tuple(self.output_details)

    def run(self, inputs: Mapping[str, Any]) -> Dict[str, Any]:
        set_tensor = self.interpreter.set_tensor
        for name, index in self._feeds:
            set_tensor(index, inputs[name])
        self.interpreter.invoke()
        tensor = self.interpreter.tensor
        return {name: tensor(index)() for name, index in self._fetches}

    def take_notes(self) -> Tuple[dict, ...]:
        """Nothing to report: a TFLite stage is exact."""
        return ()

    def frame_steps(self, in_names: Tuple[str, ...], out_names: Tuple[str, ...]) -> Any:
        """A function ``step(src, dst)`` for one frame between ring-slot views, with the least Python.

        ``src``/``dst`` are a slot's views (name -> array); the tensor names
        are resolved to interpreter indices once here, not per frame, and no
        dict is built per frame: a frame costs the input copies, ``invoke``
        and the output copies.
        """
        import numpy as np

        interpreter = self.interpreter
        set_tensor, invoke, tensor = interpreter.set_tensor, interpreter.invoke, interpreter.tensor
        copyto = np.copyto
        feeds = tuple(dict(self._feeds)[name] for name in in_names)
        fetches = tuple(dict(self._fetches)[name] for name in out_names)

        def step(src: Mapping[str, Any], dst: Mapping[str, Any]) -> None:
            for index, name in zip(feeds, in_names):
                set_tensor(index, src[name])
            invoke()
            for index, name in zip(fetches, out_names):
                copyto(dst[name], tensor(index)())  # the view of its buffer dies at once

        return step


def make_runner(config: WorkerConfig) -> Any:
    """The runner for this worker's cluster kind (call after pinning: it loads the runtime)."""
    if config.gpu is not None:
        from pipeit.executor.gpu_worker import GpuRunner

        return GpuRunner(config)
    return TfliteRunner(config)


def _check_io(runner: Any, config: WorkerConfig) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """The route's input and output names, once checked against what the runner takes and gives."""
    import numpy as np

    takes, gives = runner.io()
    for name in config.route.inputs:
        if name not in takes:
            raise RuntimeError(f"stage has no input {name!r} (inputs: {sorted(takes)})")
        shape, dtype = takes[name]
        info = config.ring_in.layout.info(name)
        if tuple(shape) != tuple(info.shape) or np.dtype(dtype) != np.dtype(info.dtype):
            raise RuntimeError(f"stage input {name!r} is {tuple(shape)} {np.dtype(dtype)}, ring has {info.shape} {info.dtype}")
    for name in config.route.outputs:
        if name not in gives:
            raise RuntimeError(f"stage has no output {name!r} (outputs: {sorted(gives)})")
    return tuple(config.route.inputs), tuple(config.route.outputs)


def _input_area_record(mapping: bool, area: int, slots: int, stride: int, areas: Dict[int, Any],
                       received: list, config: WorkerConfig) -> None:
    """Apply a MAP (map the next received descriptor as input area ``area``) or UNMAP record."""
    from pipeit.executor.ring import MappedArea

    old = areas.pop(area, None)
    if old is not None:
        old.close()
    if mapping:
        areas[area] = MappedArea(received.pop(0), config.ring_in.layout, slots, stride)


def _tell_or_exit(conn: Any, message: tuple) -> None:
    """Send a start-up message to the main process; where it is gone (killed while this worker loaded),
    exit quietly: each worker printed a BrokenPipeError traceback that told no one anything."""
    try:
        conn.send(message)
    except OSError:
        sys.exit(1)


def worker_main(config: WorkerConfig, conn: Any) -> None:
    """Pin, then load, then serve frames until told to stop or the main process goes away."""
    # Ctrl-C and hang-up reach the whole process group; the main process decides when workers stop.
    ignore_shielded()
    heavy = tuple(m for m in HEAVY_MODULES if m in sys.modules)
    try:
        pin_process(config.cpus)
        import numpy as np

        from pipeit.executor.ring import ShmRing

        runner = make_runner(config)
        ring_in = ShmRing(config.ring_in.layout, config.ring_in.slots, config.ring_in.name, create=False)
        ring_out = ShmRing(config.ring_out.layout, config.ring_out.slots, config.ring_out.name, create=False)
        in_names, out_names = _check_io(runner, config)
    except Exception as err:  # reported to the main process, which names the stage
        _tell_or_exit(conn, ("error", None, _one_line(err)))
        conn.close()
        sys.exit(1)
    placements = spread_threads(config.cpus) if config.spread_threads else ()
    _tell_or_exit(conn, ("ready", os.getpid(), heavy, placements))

    run = runner.run
    take_notes = runner.take_notes
    # A CPU stage goes straight from ring views to interpreter indices (TfliteRunner.frame_steps).
    step = runner.frame_steps(in_names, out_names) if isinstance(runner, TfliteRunner) else None
    copyto = np.copyto
    forwards = config.route.forwards
    clock = time.perf_counter
    # From here on the socket carries fixed-size records (pipeit.executor.wire), read and
    # written with one syscall each; the dispatcher keeps up to two jobs queued here, so the
    # next frame is usually waiting in the socket when this one is done.
    import pickle

    import socket

    from pipeit.executor.wire import DONE, ERROR, MAP, NOTE, REPLY, RING, UNMAP, JobParser, reply_bytes

    fd = conn.fileno()
    # recvmsg, not read: a MAP record brings a caller's input area as a descriptor (SCM_RIGHTS)
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(fd))
    parser = JobParser()
    jobs: list = []
    received: list = []  # descriptors that came with MAP records not yet handled, in order
    areas: Dict[int, Any] = {}  # input area id -> pipeit.executor.ring.MappedArea
    pack_done = REPLY.pack
    write = os.write
    receive = socket.recv_fds
    cloexec = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
    try:
        while True:
            if not jobs:
                try:
                    data, fds, _flags, _addr = receive(channel, 65536, 4, cloexec)
                except OSError:
                    break  # the main process is gone: nothing left to serve
                received.extend(fds)
                if not data:
                    break
                jobs = parser.feed(data)
                jobs.reverse()  # pop() from the end takes them in order
                continue
            frame, area, in_slot, out_slot = jobs.pop()
            if frame < 0:
                if frame not in (MAP, UNMAP):
                    break  # stop
                try:
                    _input_area_record(frame == MAP, area, in_slot, out_slot, areas, received, config)
                except Exception as err:  # noqa: BLE001 -- reported: the pipeline names this worker and fails
                    write(fd, reply_bytes(-1, ERROR, payload=f"cannot map input area {area}: "
                                          f"{_one_line(err)}".encode("utf-8", "replace")))
                    break
                continue
            start = clock()
            try:
                src = ring_in.views(in_slot) if area == RING else areas[area].views(in_slot)
                dst = ring_out.views(out_slot)
                if step is not None:
                    step(src, dst)
                    notes = ()
                else:
                    results = run({name: src[name] for name in in_names})
                    for name in out_names:
                        copyto(dst[name], results[name])
                    results = None  # TFLite refuses to invoke while views of its buffers live
                    notes = take_notes()
                for name in forwards:
                    copyto(dst[name], src[name])
            except Exception as err:
                write(fd, reply_bytes(frame, ERROR, payload=_one_line(err).encode("utf-8", "replace")))
                break
            try:
                if notes:
                    write(fd, reply_bytes(frame, NOTE, payload=pickle.dumps(tuple(notes))))
                write(fd, pack_done(frame, DONE, (clock() - start) * 1000.0))
            except OSError:
                break
    finally:
        for mapped in areas.values():
            mapped.close()
        for leftover in received:
            os.close(leftover)
        channel.close()
        ring_in.close()
        ring_out.close()
        conn.close()
