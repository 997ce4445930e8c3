"""Pin whole processes (every thread) to CPU sets, and run work in pinned worker processes.

``os.sched_setaffinity(0, cpus)`` pins only the calling thread; threads a
library started earlier (numpy's OpenBLAS pool, a runtime's thread pool)
keep their old mask. So :func:`pin_all_threads` walks ``/proc/self/task``,
and :func:`start_pinned` starts its worker with the mask already set: the
parent's forking thread takes the worker's mask just for the ``start()``,
the new interpreter inherits it across exec, and every thread it ever makes
inherits it in turn, before anything (numpy, the runtime) is imported.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import traceback
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

from cores.errors import EmulationError, PinningError
from cores.sysfs import SysRoot

__all__ = [
    "host_cpus",
    "check_cpus",
    "pin_all_threads",
    "thread_affinities",
    "worker_threads",
    "PinnedProcess",
    "start_pinned",
    "run_pinned",
    "THREADS_ENV",
]

#: set in pinned workers to the number of CPUs they own; read by :func:`worker_threads`
THREADS_ENV = "PIPEIT_NUM_THREADS"
_POOL_ENVS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# The parent's mask juggling in start_pinned must not interleave between threads.
_START_LOCK = threading.Lock()


def host_cpus() -> Tuple[int, ...]:
    """CPUs that exist and are online on this host."""
    online = SysRoot().cpu_list("/sys/devices/system/cpu/online")
    if online:
        return online
    return tuple(range(os.cpu_count() or 1))


def check_cpus(cpus: Iterable[int]) -> Tuple[int, ...]:
    """Validate a CPU set: non-empty, integers, online here. Returns it sorted."""
    try:
        wanted = tuple(sorted({int(c) for c in cpus}))
    except (TypeError, ValueError):
        raise PinningError(f"CPU set {cpus!r} is not a set of CPU ids") from None
    if not wanted:
        raise PinningError("cannot pin to an empty CPU set")
    have = set(host_cpus())
    missing = [c for c in wanted if c not in have]
    if missing:
        raise PinningError(
            f"CPU(s) {missing} do not exist or are offline on this host "
            f"(online: {sorted(have)})"
        )
    return wanted


def _task_ids(pid: str = "self") -> Tuple[int, ...]:
    try:
        return tuple(sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")))
    except OSError:
        return ()


def pin_all_threads(cpus: Iterable[int]) -> Tuple[int, ...]:
    """Pin the calling process and every thread it has now to ``cpus``; returns the thread ids.

    Lists ``/proc/self/task`` until no new thread turns up, so a pool that
    grows while we pin is caught too. Threads that exit meanwhile are skipped.
    """
    wanted = check_cpus(cpus)
    done = set()
    for _ in range(5):
        tids = set(_task_ids())
        fresh = tids - done
        if not fresh:
            break
        for tid in sorted(fresh):
            try:
                os.sched_setaffinity(tid, wanted)
            except ProcessLookupError:
                continue  # the thread ended between listing and pinning
            except OSError as err:
                raise PinningError(
                    f"cannot pin thread {tid} to CPUs {list(wanted)}: {err.strerror or err}"
                ) from err
            done.add(tid)
    return tuple(sorted(done))


def thread_affinities(pid: int) -> Dict[int, Tuple[int, ...]]:
    """``{thread id: allowed CPUs}`` for every thread of ``pid``, from ``Cpus_allowed_list``."""
    from cores.sysfs import parse_cpu_list

    out: Dict[int, Tuple[int, ...]] = {}
    for tid in _task_ids(str(pid)):
        try:
            with open(f"/proc/{pid}/task/{tid}/status", "r", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("Cpus_allowed_list:"):
                        out[tid] = parse_cpu_list(line.split(":", 1)[1])
                        break
        except OSError:
            continue  # the thread ended
    return out


def worker_threads() -> int:
    """Threads a runtime should use in this process: the pinned CPU count."""
    value = os.environ.get(THREADS_ENV)
    if value and value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0))


def _entry(cpus, cgroup_procs, func, args, kwargs, conn) -> None:
    """Runs first in the worker: cgroup, pin, thread-pool sizes, then the work."""
    try:
        if cgroup_procs:
            try:
                with open(cgroup_procs, "w", encoding="ascii") as handle:
                    handle.write(str(os.getpid()))
            except OSError as err:
                raise EmulationError(
                    f"cannot move worker into cgroup {os.path.dirname(cgroup_procs)}: "
                    f"{err.strerror or err}"
                ) from err
        pin_all_threads(cpus)
        os.environ[THREADS_ENV] = str(len(cpus))
        for name in _POOL_ENVS:
            os.environ.setdefault(name, str(len(cpus)))
        result = func(*args, **kwargs)
    except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        try:
            _send_if_heard(conn, ("err", err, text))
        except Exception:  # the exception itself does not pickle
            _send_if_heard(conn, ("err", None, text))
    else:
        try:
            _send_if_heard(conn, ("ok", result))
        except Exception as err:  # noqa: BLE001 - a result that does not pickle: the parent hears why
            _send_if_heard(conn, ("err", None, "".join(traceback.format_exception(type(err), err,
                                                                                  err.__traceback__))))
    finally:
        conn.close()


def _send_if_heard(conn, message) -> None:
    """Send ``message`` to the parent; one that was killed meanwhile is no one to tell (the worker printed
    a chained BrokenPipeError traceback that told no one anything)."""
    try:
        conn.send(message)
    except OSError:
        pass


class PinnedProcess:
    """A started pinned worker: ``pid`` to inspect it, :meth:`result` to collect its return value."""

    def __init__(self, process, conn, cpus: Tuple[int, ...]) -> None:
        self._process = process
        self._conn = conn
        self.cpus = cpus

    @property
    def pid(self) -> int:
        return int(self._process.pid)

    def is_alive(self) -> bool:
        return self._process.is_alive()

    def result(self, timeout: Optional[float] = None) -> Any:
        """Wait for the worker; return its value or re-raise its exception."""
        if not self._conn.poll(timeout):
            self.terminate()
            raise PinningError(f"pinned worker {self.pid} gave no result within {timeout} s")
        try:
            message = self._conn.recv()
        except EOFError:
            self._process.join(5)
            raise PinningError(
                f"pinned worker {self.pid} died without a result (exit code {self._process.exitcode})"
            ) from None
        finally:
            self._conn.close()
        self._process.join(10)
        if message[0] == "ok":
            return message[1]
        if message[1] is not None:
            raise message[1]
        raise RuntimeError(f"pinned worker failed:\n{message[2]}")

    def terminate(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(5)

    def __enter__(self) -> "PinnedProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.terminate()


def start_pinned(
    func: Callable[..., Any],
    args: Sequence[Any] = (),
    cpus: Iterable[int] = (0,),
    throttle: Optional[str] = None,
    kwargs: Optional[dict] = None,
) -> PinnedProcess:
    """Start ``func(*args, **kwargs)`` in a ``spawn`` worker pinned to ``cpus``.

    ``throttle`` is a cgroup folder (from ``Throttles.cgroup_path(cluster)``)
    the worker joins before it runs anything of the caller's. In the worker,
    :func:`worker_threads` gives the CPU count to pass as ``num_threads``.
    ``func`` and ``args`` must pickle (a module-level function).
    """
    wanted = check_cpus(cpus)
    procs = os.path.join(throttle, "cgroup.procs") if throttle else None
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=_entry, args=(wanted, procs, func, tuple(args), dict(kwargs or {}), child_conn),
        daemon=True,
    )
    with _START_LOCK:
        old = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, wanted)
        except OSError as err:
            raise PinningError(f"cannot pin to CPUs {list(wanted)}: {err.strerror or err}") from err
        try:
            process.start()
        finally:
            os.sched_setaffinity(0, old)
    child_conn.close()
    return PinnedProcess(process, parent_conn, wanted)


def run_pinned(
    func: Callable[..., Any],
    args: Sequence[Any] = (),
    cpus: Iterable[int] = (0,),
    throttle: Optional[str] = None,
    kwargs: Optional[dict] = None,
    timeout: Optional[float] = None,
) -> Any:
    """Run ``func(*args)`` in a pinned (and optionally throttled) worker and return its value."""
    return start_pinned(func, args, cpus, throttle, kwargs).result(timeout)
