"""The body of one stage worker process (the target of a ``spawn``-ed Process).

Order matters here: the process pins every one of its threads to its CPUs
*before* it imports numpy or the runtime, so no thread pool is ever started
with the wrong affinity. That is why this module imports only the standard
library and pure-Python records at top level.

Protocol over the worker's own Pipe (small tuples, never tensors):

- worker -> main: ``("ready", pid, heavy_modules_before_pin, placements)`` once
  (``placements``: ``(tid, cpu)`` pairs when threads were spread one per CPU), then
  ``("done", frame, service_ms)`` per frame, or ``("error", frame_or_None, text)``.
- main -> worker: ``(frame, in_slot, out_slot)`` per frame; ``None`` to stop.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from pipeit.executor.routes import EdgeLayout, StageRoute

__all__ = ["WorkerConfig", "RingRef", "worker_main", "pin_process", "HEAVY_MODULES"]

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


def _quietly(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``func`` with file descriptor 2 muted.

    The runtime announces its delegate on stderr for every interpreter it
    builds ("INFO: Created TensorFlow Lite XNNPACK delegate"); with a worker
    per stage that drowns a user's terminal. Failures still reach the main
    process as exceptions sent over the pipe.
    """
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        return func(*args, **kwargs)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def worker_main(config: WorkerConfig, conn: Any) -> None:
    """Pin, then load, then serve frames until told to stop or the main process goes away."""
    # Ctrl-C reaches the whole process group; the main process decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    heavy = tuple(m for m in HEAVY_MODULES if m in sys.modules)
    try:
        pin_process(config.cpus)
        import numpy as np

        from pipeit.executor.ring import ShmRing
        from pipeit.runtime import make_interpreter

        interpreter = _quietly(make_interpreter, config.model_path, num_threads=config.threads,
                               backend=config.backend)
        ring_in = ShmRing(config.ring_in.layout, config.ring_in.slots, config.ring_in.name, create=False)
        ring_out = ShmRing(config.ring_out.layout, config.ring_out.slots, config.ring_out.name, create=False)
        by_name_in = {d["name"]: d for d in interpreter.get_input_details()}
        by_name_out = {d["name"]: d for d in interpreter.get_output_details()}
        feeds = []
        for name in config.route.inputs:
            detail = by_name_in.get(name)
            if detail is None:
                raise RuntimeError(f"stage sub-model has no input {name!r} (inputs: {sorted(by_name_in)})")
            info = config.ring_in.layout.info(name)
            if tuple(int(d) for d in detail["shape"]) != tuple(info.shape) or np.dtype(detail["dtype"]) != np.dtype(info.dtype):
                raise RuntimeError(f"stage input {name!r} is {tuple(detail['shape'])} {np.dtype(detail['dtype'])}, ring has {info.shape} {info.dtype}")
            feeds.append((name, detail["index"]))
        fetches = []
        for name in config.route.outputs:
            detail = by_name_out.get(name)
            if detail is None:
                raise RuntimeError(f"stage sub-model has no output {name!r} (outputs: {sorted(by_name_out)})")
            fetches.append((name, detail["index"]))
    except Exception as err:  # reported to the main process, which names the stage
        conn.send(("error", None, _one_line(err)))
        conn.close()
        sys.exit(1)
    placements = spread_threads(config.cpus) if config.spread_threads else ()
    conn.send(("ready", os.getpid(), heavy, placements))

    set_tensor = interpreter.set_tensor
    tensor = interpreter.tensor
    invoke = interpreter.invoke
    copyto = np.copyto
    forwards = config.route.forwards
    clock = time.perf_counter
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the main process is gone: nothing left to serve
            if message is None:
                break
            frame, in_slot, out_slot = message
            start = clock()
            try:
                src = ring_in.views(in_slot)
                dst = ring_out.views(out_slot)
                for name, index in feeds:
                    set_tensor(index, src[name])
                invoke()
                for name, index in fetches:
                    copyto(dst[name], tensor(index)())
                for name in forwards:
                    copyto(dst[name], src[name])
            except Exception as err:
                conn.send(("error", frame, _one_line(err)))
                break
            conn.send(("done", frame, (clock() - start) * 1000.0))
    finally:
        ring_in.close()
        ring_out.close()
        conn.close()
