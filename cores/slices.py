"""A short scheduler slice for the threads a frame waits on (Linux EEVDF custom slices, 6.12 and later).

A pipeline's coordinator (the executor's dispatcher, the daemon's readers)
shares CPUs with workers that compute for milliseconds at a stretch. Under
the EEVDF scheduler a thread woken on such a CPU waits until the running
worker's slice ends (1.4 ms by default on this host's 6.18 kernel, longer
where a tick is late), and a frame whose reply lands then waits with it:
on the emulated big.LITTLE board, with the dispatcher pinned beside the
LITTLE worker, the first stage's hand-off measured 3.1 ms at p90 and 4.9 at
p99 (its median 0.1). A fair-class thread may ask for a shorter slice
(``sched_attr.sched_runtime``, 0.1 to 100 ms, no privilege needed): its
deadlines then come sooner, so it preempts a worker when it wakes and runs
its short job at once. With a 0.1 ms slice the same hand-off measured 0.4 ms
at p90 and 3.8 at p99, at the same frame rate.

Nothing else changes for the thread: its policy and nice value stay (a
thread under another policy than ``SCHED_OTHER`` is left alone). Kernels
before 6.12 ignore the field; a kernel or architecture that refuses the
call leaves the thread as it was. Python has no wrapper for
``sched_setattr``, hence the raw system call through :mod:`ctypes`.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Optional, Tuple

__all__ = ["SHORT_SLICE_NS", "request_short_slice", "thread_slice_ns"]

#: the slice asked for: the least the kernel takes (it clamps to 0.1..100 ms)
SHORT_SLICE_NS = 100_000

#: (sched_setattr, sched_getattr) system call numbers per machine
_SYSCALLS = {
    "x86_64": (314, 315),
    "amd64": (314, 315),
    "aarch64": (274, 275),
    "arm64": (274, 275),
    "riscv64": (274, 275),
    "armv7l": (380, 381),
    "armv6l": (380, 381),
    "armv8l": (380, 381),
    "i686": (351, 352),
    "i386": (351, 352),
}


class _SchedAttr(ctypes.Structure):
    """``struct sched_attr`` as of Linux 5.3 (``SCHED_ATTR_SIZE_VER1``)."""

    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32),
        ("sched_util_max", ctypes.c_uint32),
    ]


def _syscalls() -> Optional[Tuple[ctypes.CDLL, Tuple[int, int]]]:
    """libc and this machine's (sched_setattr, sched_getattr) numbers, or None where either is missing."""
    numbers = _SYSCALLS.get(platform.machine().lower())
    if numbers is None:
        return None
    try:
        return ctypes.CDLL(None, use_errno=True), numbers
    except OSError:
        return None


def thread_slice_ns(tid: int = 0) -> Optional[int]:
    """The scheduler slice of thread ``tid`` (0: the calling thread) in ns, or None where it cannot be read."""
    found = _syscalls()
    if found is None:
        return None
    libc, (_set, get) = found
    attr = _SchedAttr()
    if libc.syscall(get, int(tid), ctypes.byref(attr), ctypes.sizeof(_SchedAttr), 0) != 0:
        return None
    return int(attr.sched_runtime)


def request_short_slice(tid: int = 0, slice_ns: int = SHORT_SLICE_NS) -> bool:
    """Ask for a ``slice_ns`` scheduler slice for thread ``tid`` (0: the calling thread); True if the kernel took it.

    Only a ``SCHED_OTHER`` thread is changed, and its nice value is kept.
    False (and the thread unchanged) where the kernel, the architecture or
    the thread's policy does not allow it.
    """
    found = _syscalls()
    if found is None or not hasattr(os, "sched_getscheduler"):
        return False
    libc, (set_attr, _get) = found
    try:
        if os.sched_getscheduler(int(tid)) != os.SCHED_OTHER:
            return False
        nice = os.getpriority(os.PRIO_PROCESS, int(tid))
    except OSError:
        return False
    attr = _SchedAttr()
    attr.size = ctypes.sizeof(_SchedAttr)
    attr.sched_policy = os.SCHED_OTHER
    attr.sched_nice = nice
    attr.sched_runtime = int(slice_ns)
    if libc.syscall(set_attr, int(tid), ctypes.byref(attr), 0) != 0:
        return False
    return thread_slice_ns(tid) == int(slice_ns)
