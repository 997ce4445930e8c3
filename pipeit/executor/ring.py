"""A shared-memory ring of fixed slots for one pipeline edge.

One ``SharedMemory`` segment holds ``slots`` equal slots laid out by an
:class:`~pipeit.executor.routes.EdgeLayout`; each slot holds every tensor of
one frame on that edge. The main process creates and unlinks the segment and
decides which slot is free (so no lock lives in shared memory, and a worker
killed mid-copy cannot wedge anyone); workers attach by name and only read or
write the slots they were told to. Tensors are numpy views on the segment:
nothing is pickled. A :class:`MappedArea` is a stage-0 worker's view of a
caller's own segment laid out like edge 0's slots (its frames are read there).
"""

from __future__ import annotations

import errno
import mmap
import os
import resource
import secrets
from multiprocessing import resource_tracker, shared_memory
from typing import Any, Dict, List, Optional

import numpy as np

from pipeit.errors import ExecutorError
from pipeit.executor.routes import EdgeLayout

__all__ = ["SHM_PREFIX", "ShmRing", "MappedArea", "slot_views"]

#: every segment pipeit creates starts with this (tests and cleanup look for it in /dev/shm)
SHM_PREFIX = "pipeit_"


#: where POSIX shared memory lives on Linux (a tmpfs: Docker gives containers 64 MB of it by default)
SHM_DIR = "/dev/shm"


def _room_hint(size: int, edge: int, slots: int, free: Optional[int], least: int) -> str:
    """The error line; fewer ``--slots`` is advised only where the ring has more than the ``least`` it needs."""
    have = f", {free / 2**20:.1f} MB free" if free is not None else ""
    larger = f"a larger {SHM_DIR}: e.g. docker run --shm-size=1g"
    advice = f"fewer --slots, down to {least}, or {larger}" if slots > least else \
        f"its workers need {least} slot(s) whatever --slots says: {larger}"
    return (f"not enough shared memory for edge {edge}: its ring of {slots} slots needs {size / 2**20:.1f} MB "
            f"in {SHM_DIR}{have} ({advice})")


def _check_room(size: int, edge: int, slots: int, least: int) -> None:
    """Refuse a ring bigger than what is free in /dev/shm, before creating it.

    A tmpfs hands out pages when they are first written, so a ring created
    past its free space is created fine and then kills the first process
    that writes the missing pages with SIGBUS, mid-stream.
    """
    try:
        stat = os.statvfs(SHM_DIR)
    except OSError:
        return  # no /dev/shm to ask (not Linux): SharedMemory says what it says
    free = stat.f_bavail * stat.f_frsize
    if size > free:
        raise ExecutorError(_room_hint(size, edge, slots, free, least))
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and size > limit:
        # SharedMemory would create the segment, fail to size it (EFBIG), and unregister a name it never
        # registered: the resource tracker then prints a KeyError traceback of its own
        raise ExecutorError(f"cannot create shared memory for edge {edge}: its ring of {slots} slots needs "
                            f"{size / 2**20:.1f} MB, over this process's file size limit of {limit} bytes "
                            "(ulimit -f)")


def _create_segment(name: str, size: int) -> shared_memory.SharedMemory:
    """``SharedMemory(name, create=True, size)``, leaving no segment behind when it fails.

    The standard library creates and maps the segment before it starts the
    resource tracker; where that fails (no descriptor left: EMFILE) it
    raised with the segment created and known to no one. The tracker is
    started first, and a segment of ours left by any failure is unlinked.
    """
    resource_tracker.ensure_running()
    try:
        return shared_memory.SharedMemory(name=name, create=True, size=size)
    except FileExistsError:
        raise  # someone else's segment of that name: not ours to remove
    except BaseException:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except OSError:
            pass  # never created, already unlinked, or segments live elsewhere on this system
        raise


def _reserve(name: str, size: int, edge: int, slots: int, least: int) -> None:
    """Allocate the ring's pages now (``posix_fallocate``), so running out is an error here, not a SIGBUS later."""
    if not hasattr(os, "posix_fallocate") or size == 0:
        return
    try:
        descriptor = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return  # segments live elsewhere on this system
    try:
        os.posix_fallocate(descriptor, 0, size)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            raise ExecutorError(_room_hint(size, edge, slots, None, least)) from None
        # EOPNOTSUPP/EINVAL: a file system that cannot reserve; the pages come on first write as before
    finally:
        os.close(descriptor)


class ShmRing:
    """``slots`` slots of ``layout.slot_bytes`` bytes in one shared-memory segment.

    ``least``: the fewest slots its users can work with (a pipeline raises a
    small ``--slots`` to what its workers keep in flight); a ring that does
    not fit in /dev/shm says whether fewer ``--slots`` could help.
    """

    def __init__(self, layout: EdgeLayout, slots: int, name: Optional[str] = None, create: bool = True,
                 least: int = 1):
        if slots < 1:
            raise ExecutorError(f"a ring needs at least one slot, got {slots}")
        self.layout = layout
        self.slots = int(slots)
        self.stride = layout.slot_bytes
        self._owner = create
        size = self.stride * self.slots
        try:
            if create:
                name = name or f"{SHM_PREFIX}{os.getpid()}_e{layout.index}_{secrets.token_hex(4)}"
                _check_room(size, layout.index, self.slots, least)
                self._shm = _create_segment(name, size)
                try:
                    _reserve(self._shm.name, size, layout.index, self.slots, least)
                except ExecutorError:
                    self._shm.close()
                    self._shm.unlink()
                    raise
            else:
                if name is None:
                    raise ExecutorError("attaching to a ring needs its name")
                self._shm = shared_memory.SharedMemory(name=name, create=False)
        except OSError as err:
            raise ExecutorError(f"cannot {'create' if create else 'open'} shared memory for edge {layout.index}: {err}") from err
        if self._shm.size < size:
            raise ExecutorError(f"shared memory {name!r} is {self._shm.size} bytes, expected {size}")
        self._views: List[Optional[Dict[str, np.ndarray]]] = [None] * self.slots

    @property
    def name(self) -> str:
        return self._shm.name

    def views(self, slot: int) -> Dict[str, np.ndarray]:
        """Arrays that alias slot ``slot`` (built once per slot, then reused)."""
        cached = self._views[slot]
        if cached is None:
            cached = self._views[slot] = slot_views(self._shm.buf, self.layout, slot * self.stride)
        return cached

    def write(self, slot: int, tensors: Dict[str, np.ndarray]) -> None:
        """Copy a frame's tensors into a slot (names must match the layout)."""
        views = self.views(slot)
        for name, view in views.items():
            np.copyto(view, tensors[name], casting="no")

    def read(self, slot: int) -> Dict[str, np.ndarray]:
        """Fresh copies of a slot's tensors (safe to keep after the slot is reused)."""
        return {name: view.copy() for name, view in self.views(slot).items()}

    def close(self) -> None:
        """Drop the views and the mapping; the owner also unlinks the segment."""
        self._views = [None] * self.slots
        try:
            self._shm.close()
        except BufferError:
            # A caller still holds a view; the mapping goes when it does. Unlinking below
            # still removes the name from /dev/shm, which is what must not leak.
            pass
        if self._owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
            self._owner = False


def slot_views(buffer: Any, layout: EdgeLayout, base: int) -> Dict[str, np.ndarray]:
    """Arrays for each tensor of ``layout`` in ``buffer``, the slot starting at byte ``base``."""
    return {
        info.name: np.ndarray(tuple(info.shape), dtype=np.dtype(info.dtype), buffer=buffer, offset=base + offset)
        for info, offset in zip(layout.tensors, layout.offsets)
    }


class MappedArea:
    """A worker's mapping of a caller's input area: ``slots`` slots ``stride`` bytes apart, each laid out
    like a slot of edge 0 (see :meth:`pipeit.executor.Pipeline.add_input_area`).

    The stage-0 worker reads a frame where its caller wrote it, sparing the
    copy into ring 0. Takes ownership of ``fd`` (closed once mapped: the
    mapping keeps the memory).
    """

    def __init__(self, fd: int, layout: EdgeLayout, slots: int, stride: int):
        try:
            if slots < 1 or stride < layout.slot_bytes:
                raise ExecutorError(f"an input area of {slots} slot(s) of {stride} bytes cannot hold edge 0's "
                                    f"{layout.slot_bytes}-byte slots")
            size = slots * stride
            if os.fstat(fd).st_size < size:
                raise ExecutorError(f"the input area's segment is smaller than {size} bytes")
            self._mmap: Optional[mmap.mmap] = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.layout = layout
        self.slots = int(slots)
        self.stride = int(stride)
        self._views: List[Optional[Dict[str, np.ndarray]]] = [None] * self.slots

    def views(self, slot: int) -> Dict[str, np.ndarray]:
        if not 0 <= slot < self.slots:
            raise ExecutorError(f"input area slot {slot} is outside 0..{self.slots - 1}")
        cached = self._views[slot]
        if cached is None:
            cached = self._views[slot] = slot_views(self._mmap, self.layout, slot * self.stride)
        return cached

    def close(self) -> None:
        self._views = [None] * self.slots
        segment, self._mmap = self._mmap, None
        if segment is not None:
            try:
                segment.close()
            except BufferError:
                pass  # a view is still alive (an exception's frame): the mapping goes with it
