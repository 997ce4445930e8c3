"""Independent pinned interpreters with no coordinator: the floor any executor is judged against.

The executor's efficiency (fps over the ideal, the sum of each core's
single-thread fps measured with the other cores idle) loses to two different
things: what the executor itself costs (the coordinating process's CPU, the
gap a worker waits between frames) and what running on every core at once
costs the silicon (shared caches, memory bandwidth, a common clock). No
executor can win the second back. This module measures it: one process per
CPU, each pinned before it imports numpy or the runtime, each running the
whole model in a loop on its own input, all starting and stopping together,
nothing between them. ``fps`` of such a run over the ideal is the best
efficiency any executor can reach on this machine; a pipeline that reaches
the bare run's fps has no overhead left to cut.

Each process does per frame what a replicas worker does: copy the input in
(``set_tensor``), ``invoke``, copy the output out, so the comparison is of
the coordination alone.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

from pipeit.children import start_shielded
from pipeit.errors import ExecutorError

__all__ = ["BareRun", "run_bare"]


@dataclass(frozen=True)
class BareRun:
    """One run of one pinned single-thread interpreter per CPU, side by side."""

    cpus: Tuple[int, ...]
    #: per process: frames it finished, its wall seconds from the first frame's start to the last's end
    frames: Tuple[int, ...]
    wall_s: Tuple[float, ...]
    #: per process: CPU seconds it used over those frames (``time.process_time``)
    cpu_s: Tuple[float, ...]

    @property
    def fps(self) -> float:
        """The sum of each process's frame rate: what the ideal sums, with every core busy."""
        return sum(n / w for n, w in zip(self.frames, self.wall_s) if w > 0)

    @property
    def cpu_ms_per_frame(self) -> Tuple[float, ...]:
        """CPU ms per frame of each process (above the solo figure: contention for caches and memory)."""
        return tuple(c * 1000.0 / n if n else 0.0 for c, n in zip(self.cpu_s, self.frames))

    def to_json(self) -> dict:
        return {
            "cpus": list(self.cpus),
            "fps": self.fps,
            "frames": list(self.frames),
            "wall_s": list(self.wall_s),
            "cpu_ms_per_frame": list(self.cpu_ms_per_frame),
        }


def _bare_main(model_path: str, cpu: int, warmup: int, backend: Optional[str], conn: Any,
               slow: Any = None) -> None:
    """One process: pin, load, warm up, wait for the common deadline, run frames until it passes."""
    from pipeit.executor.worker import pin_process

    try:
        pin_process((cpu,))
        import numpy as np

        from pipeit.frames import random_frames
        from pipeit.runtime import make_interpreter, native_stderr_silenced, tensor_infos

        with native_stderr_silenced():  # the runtime's "INFO: Created ... delegate" line, once per process
            interpreter = make_interpreter(model_path, num_threads=1, backend=backend, slow=slow)
        details = interpreter.get_input_details()
        infos = tensor_infos(details)
        frame_in = random_frames(infos, 1, seed=cpu)[0]  # the pipelines' own frames: bool inputs included
        feeds = [(d["index"], frame_in[info.name]) for d, info in zip(details, infos)]
        outs = [(d["index"], np.empty(tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"])))
                for d in interpreter.get_output_details()]

        def frame() -> None:
            for index, value in feeds:
                interpreter.set_tensor(index, value)
            interpreter.invoke()
            for index, out in outs:
                np.copyto(out, interpreter.tensor(index)())

        for _ in range(warmup):
            frame()
    except Exception as err:  # reported to the parent, which names the CPU
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    conn.send(("ready",))
    start_at, end_at = conn.recv()
    clock = time.perf_counter
    while clock() < start_at:
        pass  # a short spin, so that every process starts within microseconds of the others
    count = 0
    cpu0 = time.process_time()
    t0 = clock()
    now = t0
    while now < end_at:
        frame()
        count += 1
        now = clock()
    conn.send(("done", count, now - t0, time.process_time() - cpu0))


def run_bare(
    model_path: Union[str, Path],
    cpus: Sequence[int],
    seconds: float = 2.0,
    warmup: int = 5,
    backend: Optional[str] = None,
    start_timeout_s: float = 120.0,
    slow: Any = None,
) -> BareRun:
    """Run the whole model on each of ``cpus`` (one 1-thread process each) for ``seconds``, together.

    Every process is started, loaded and warmed up first; then all get the
    same start and end time, so they overlap for the whole measurement.
    With one CPU this is the ideal's single-thread throughput measured the
    same way, for a like-for-like comparison. ``slow`` (a
    ``cores.emulation.SlowCore``): the CPUs are an emulated slowed cluster's,
    and every invoke is padded to its speed, as a pipeline worker there does.
    """
    if not cpus:
        raise ExecutorError("run_bare needs at least one CPU")
    if seconds <= 0:
        raise ExecutorError(f"seconds must be > 0, got {seconds}")
    ctx = multiprocessing.get_context("spawn")
    procs = []
    try:
        for cpu in cpus:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_bare_main, args=(str(model_path), int(cpu), int(warmup), backend, child, slow),
                               name=f"pipeit-bare-cpu{cpu}", daemon=True)
            start_shielded(proc)
            child.close()
            procs.append((cpu, proc, parent))
        for cpu, proc, conn in procs:
            if not conn.poll(start_timeout_s):
                raise ExecutorError(f"bare interpreter on CPU {cpu} did not start within {start_timeout_s:.0f} s")
            message = conn.recv()
            if message[0] != "ready":
                raise ExecutorError(f"bare interpreter on CPU {cpu} failed to start: {message[1]}")
        start_at = time.perf_counter() + 0.05
        for _, _, conn in procs:
            conn.send((start_at, start_at + seconds))
        results = []
        for cpu, proc, conn in procs:
            if not conn.poll(seconds + start_timeout_s):
                raise ExecutorError(f"bare interpreter on CPU {cpu} did not finish")
            message = conn.recv()
            if message[0] != "done":
                raise ExecutorError(f"bare interpreter on CPU {cpu} failed: {message[1]}")
            results.append(message[1:])
    finally:
        for _, proc, conn in procs:
            conn.close()
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
    return BareRun(
        cpus=tuple(int(c) for c in cpus),
        frames=tuple(int(r[0]) for r in results),
        wall_s=tuple(float(r[1]) for r in results),
        cpu_s=tuple(float(r[2]) for r in results),
    )
