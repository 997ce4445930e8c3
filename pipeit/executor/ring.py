"""A shared-memory ring of fixed slots for one pipeline edge.

One ``SharedMemory`` segment holds ``slots`` equal slots laid out by an
:class:`~pipeit.executor.routes.EdgeLayout`; each slot holds every tensor of
one frame on that edge. The main process creates and unlinks the segment and
decides which slot is free (so no lock lives in shared memory, and a worker
killed mid-copy cannot wedge anyone); workers attach by name and only read or
write the slots they were told to. Tensors are numpy views on the segment:
nothing is pickled.
"""

from __future__ import annotations

import os
import secrets
from multiprocessing import shared_memory
from typing import Dict, List, Optional

import numpy as np

from pipeit.errors import ExecutorError
from pipeit.executor.routes import EdgeLayout

__all__ = ["SHM_PREFIX", "ShmRing"]

#: every segment pipeit creates starts with this (tests and cleanup look for it in /dev/shm)
SHM_PREFIX = "pipeit_"


class ShmRing:
    """``slots`` slots of ``layout.slot_bytes`` bytes in one shared-memory segment."""

    def __init__(self, layout: EdgeLayout, slots: int, name: Optional[str] = None, create: bool = True):
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
                self._shm = shared_memory.SharedMemory(name=name, create=True, size=size)
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
            base = slot * self.stride
            cached = {
                info.name: np.ndarray(
                    tuple(info.shape), dtype=np.dtype(info.dtype), buffer=self._shm.buf, offset=base + offset
                )
                for info, offset in zip(self.layout.tensors, self.layout.offsets)
            }
            self._views[slot] = cached
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

