"""What one hop between two pinned processes costs on this machine, timed as the executor makes it.

The planner prices every stage boundary with a :class:`~pipeit.transfer.HopModel`.
Its default is the development host's line, and a board's memory moves
bytes up to ten times slower than a desktop's: on a board, the default
makes long pipelines look cheaper than they are. So ``pipeit profile`` times
hops where it runs (:func:`time_hops`) and writes them beside the layer rows;
every plan made from that profile, or from a predictor fitted on it, prices
its cuts with this machine's line instead.

One hop, as the executor makes it: the sender copies a tensor into a
shared-memory ring slot and sends a small notification over a pipe; the
receiver, another process pinned to another CPU, copies the tensor out into
its own memory and answers. The round trip is the hop (two copies, two
notifications), the quantity :data:`pipeit.transfer.DEFAULT_POINTS` holds.

The receiver imports numpy only after pinning itself (as a stage worker
does), so this module imports nothing heavy at its top.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

from pipeit.errors import ExecutorError

__all__ = ["HOP_SIZES", "HopTiming", "hop_cpus", "time_hops"]

#: tensor sizes a profile times (bytes): a small feature map to a 224x224 float input and past it
HOP_SIZES: Tuple[int, ...] = (4 << 10, 64 << 10, 800 << 10, 4 << 20)

#: slots of the ring a hop timing cycles through (the executor's rings hold a few)
_SLOTS = 2

#: seconds to wait for the receiver's answer before calling it stuck
_ANSWER_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class HopTiming:
    """The timed hops of one tensor size: median ms, spread (inter-quartile range / median), count."""

    nbytes: int
    median_ms: float
    spread: float
    repeats: int


def hop_cpus(platform: Any) -> Tuple[int, int]:
    """The two CPUs a hop is timed between: a pipeline's first cut, from the fastest cluster to another.

    The sender is the first CPU of the fastest CPU cluster (``Platform.fastest``,
    as the profiler and the planner rank them); the receiver the first CPU of
    another CPU cluster, else a second CPU of the same one, else the same CPU
    (a one-core board's stages share it, and so does its hop).
    """
    if not platform.cpu_clusters:
        raise ExecutorError(f"platform {platform.source!r} has no CPU cluster to time hops on")
    first = platform.fastest
    others = [c for c in platform.cpu_clusters if c is not first]
    sender = first.cpus[0]
    if others:
        return sender, others[0].cpus[0]
    return sender, first.cpus[1] if len(first.cpus) > 1 else sender


def _tensor_layout(nbytes: int) -> Any:
    from pipeit.descriptor import TensorInfo
    from pipeit.executor.routes import EdgeLayout

    return EdgeLayout.build(0, [TensorInfo("t", (nbytes,), "uint8")])


def _receiver(conn: Any, cpu: int) -> None:
    """The receiving process: pinned first, then numpy; copies each announced slot out and answers."""
    from pipeit.executor.worker import pin_process

    try:
        pin_process((cpu,))
    except Exception as err:  # noqa: BLE001 -- cores' PinningError or an OSError: the sender says it, in one line
        conn.send(("failed", f"cannot pin the receiver to CPU {cpu}: {err}"))
        return
    import numpy as np

    from pipeit.executor.ring import ShmRing

    ring = None
    private = None
    conn.send("ready")
    try:
        while True:
            message = conn.recv()
            if message is None:
                return
            if message[0] == "attach":
                _, name, nbytes = message
                ring = ShmRing(_tensor_layout(nbytes), _SLOTS, name, create=False)
                private = np.empty(nbytes, dtype=np.uint8)
                conn.send("attached")
            elif message[0] == "detach":
                if ring is not None:
                    ring.close()
                ring = private = None
                conn.send("detached")
            else:
                frame, slot = message
                np.copyto(private, ring.views(slot)["t"])
                conn.send(frame)
    except (EOFError, OSError, KeyboardInterrupt):
        return  # the sender went away: nothing to answer
    finally:
        if ring is not None:
            ring.close()


def _answer(conn: Any, proc: Any) -> Any:
    """The receiver's next message, or an :class:`ExecutorError` when it died or hangs."""
    if not conn.poll(_ANSWER_TIMEOUT_S):
        raise ExecutorError(f"hop timing: the receiving process gave no answer in {_ANSWER_TIMEOUT_S:g} s")
    try:
        message = conn.recv()
    except (EOFError, OSError):
        proc.join(1)
        raise ExecutorError(f"hop timing: the receiving process ended (exit code {proc.exitcode})") from None
    if isinstance(message, tuple) and message[:1] == ("failed",):
        raise ExecutorError(f"hop timing: {message[1]}")
    return message


def _time_size(conn: Any, proc: Any, nbytes: int, repeats: int, warmup: int) -> HopTiming:
    import numpy as np

    from pipeit.executor.ring import ShmRing

    ring = ShmRing(_tensor_layout(nbytes), _SLOTS)
    try:
        conn.send(("attach", ring.name, nbytes))
        _answer(conn, proc)
        data = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
        taken = []
        for i in range(warmup + repeats):
            slot = i % _SLOTS
            start = time.perf_counter()
            np.copyto(ring.views(slot)["t"], data)
            conn.send((i, slot))
            _answer(conn, proc)
            taken.append((time.perf_counter() - start) * 1000.0)
        conn.send(("detach",))
        _answer(conn, proc)
    finally:
        ring.close()
    kept = taken[warmup:]
    median = statistics.median(kept)
    quartiles = statistics.quantiles(kept, n=4) if len(kept) > 1 else [median, median, median]
    return HopTiming(nbytes, median, (quartiles[2] - quartiles[0]) / median if median > 0 else 0.0, len(kept))


def time_hops(cpus: Tuple[int, int], sizes: Sequence[int] = HOP_SIZES, repeats: int = 200,
              warmup: int = 10) -> List[HopTiming]:
    """Time ``repeats`` hops of each size from ``cpus[0]`` (this thread) to ``cpus[1]`` (a spawned process).

    This thread is pinned to the sender's CPU while it times and given its
    own CPUs back after. Every ring is unlinked and the receiver ended on
    every way out; a receiver that dies or hangs is an :class:`ExecutorError`.
    """
    if repeats < 1 or warmup < 0:
        raise ExecutorError(f"hop timing needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 1 for s in sizes):
        raise ExecutorError(f"hop timing needs sizes of at least one byte, got {sizes}")
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(theirs, int(cpus[1])), daemon=True, name="pipeit-hop-receiver")
    before = os.sched_getaffinity(0)
    started = False
    try:
        proc.start()
        started = True
        theirs.close()
        _answer(mine, proc)
        try:
            os.sched_setaffinity(0, {int(cpus[0])})
        except OSError as err:
            raise ExecutorError(f"hop timing: cannot pin the sender to CPU {cpus[0]}: {err.strerror or err}") from None
        return [_time_size(mine, proc, nbytes, repeats, warmup) for nbytes in sizes]
    finally:
        os.sched_setaffinity(0, before)
        try:
            mine.send(None)
        except (OSError, ValueError):
            pass
        if started:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        theirs.close()
        mine.close()
