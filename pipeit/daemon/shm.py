"""The shared-memory frame area: one anonymous ``memfd`` segment per attached client, N slots of inputs + outputs.

A local client need not push a 600 KB frame through the socket (two kernel
copies and the wake-ups between them): it asks the daemon to ``attach``, the
daemon creates an anonymous segment (``os.memfd_create``: nothing in
``/dev/shm``, nothing to clean up by name) and passes its descriptor over
the socket (``SCM_RIGHTS``). Both ends map it; a request then carries only a
slot number; the pipeline's stage-0 workers map the segment too and read
the slot's inputs in place (:meth:`pipeit.executor.Pipeline.add_input_area`),
and the outputs are written back into the same slot. The segment's memory
is freed by the kernel when the last mapping and descriptor of it are gone:
the client's, the daemon's and its workers' (dropped on detach, re-attach,
disconnect or exit), whichever goes last.

The daemon seals the segment's size (``F_SEAL_SHRINK | F_SEAL_GROW``)
before passing it: a client that truncated it would otherwise make the
daemon's next access to the mapping a SIGBUS, killing every client's
service. The client checks the layout it is sent against the segment's
real size before it maps anything.

Layout of one slot (``slot_bytes`` apart, a multiple of the page size)::

    input 0 | input 1 | ... | output 0 | output 1 | ...     each at a 64-byte aligned offset
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeit.daemon.protocol import DTYPES, MAX_NAME, MAX_RANK, MAX_SLOTS, MAX_TENSORS, ProtocolError

__all__ = ["TensorPlace", "AreaLayout", "FrameArea", "shm_supported", "TENSOR_ALIGN"]

#: tensors start on cache-line boundaries (numpy copies and the runtime read aligned memory faster)
TENSOR_ALIGN = 64
#: the largest frame area a client may be sent (a guard for the client; the daemon's are far smaller)
MAX_AREA_BYTES = 1 << 34
_SEALS = ("F_ADD_SEALS", "F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_SEAL")


def shm_supported() -> bool:
    """True where anonymous, sealable memfd segments exist (Linux >= 3.17 with Python's bindings)."""
    return hasattr(os, "memfd_create") and hasattr(os, "MFD_ALLOW_SEALING") and all(hasattr(fcntl, n) for n in _SEALS)


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class TensorPlace:
    """One tensor of a slot: name, dtype (wire name), shape and byte offset inside the slot."""

    name: str
    dtype: str
    shape: Tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return int(math.prod(self.shape)) * DTYPES[self.dtype].itemsize

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "offset": self.offset}


@dataclass(frozen=True)
class AreaLayout:
    """Where each tensor of each slot lies in a frame area (sent to the client as the ``attach`` reply's info)."""

    slots: int
    slot_bytes: int
    inputs: Tuple[TensorPlace, ...]
    outputs: Tuple[TensorPlace, ...]

    @property
    def size(self) -> int:
        return self.slots * self.slot_bytes

    @property
    def key(self) -> Tuple:
        """The model's I/O the area was laid out for (names, dtypes, shapes): a reload that changes it
        makes the area stale."""
        return (tuple((t.name, t.dtype, t.shape) for t in self.inputs),
                tuple((t.name, t.dtype, t.shape) for t in self.outputs))

    @classmethod
    def plan(cls, slots: int, inputs: Sequence[Tuple[str, str, Tuple[int, ...]]],
             outputs: Sequence[Tuple[str, str, Tuple[int, ...]]]) -> "AreaLayout":
        """Lay out ``slots`` slots for tensors given as ``(name, wire dtype, shape)``."""
        offset = 0
        places: List[List[TensorPlace]] = [[], []]
        for side, tensors in enumerate((inputs, outputs)):
            for name, dtype, shape in tensors:
                place = TensorPlace(name, dtype, tuple(int(d) for d in shape), offset)
                places[side].append(place)
                offset = _align(offset + place.nbytes, TENSOR_ALIGN)
        slot_bytes = _align(max(offset, 1), mmap.PAGESIZE)
        return cls(int(slots), slot_bytes, tuple(places[0]), tuple(places[1]))

    def to_json(self) -> dict:
        return {"slots": self.slots, "slot_bytes": self.slot_bytes, "size": self.size,
                "inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, doc: Any) -> "AreaLayout":
        """A layout from the daemon, checked: every tensor inside its slot, no overlaps, sizes bounded."""
        def bad(what: str) -> ProtocolError:
            return ProtocolError(f"frame area layout: {what}", "malformed")

        if not isinstance(doc, dict):
            raise bad("not an object")
        slots, slot_bytes = doc.get("slots"), doc.get("slot_bytes")
        for name, value, high in (("slots", slots, MAX_SLOTS), ("slot_bytes", slot_bytes, MAX_AREA_BYTES)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise bad(f"{name} must be an integer in 1..{high}")
        if slots * slot_bytes > MAX_AREA_BYTES or doc.get("size") != slots * slot_bytes:
            raise bad("size does not match slots x slot_bytes (or is too large)")
        sides = []
        for key in ("inputs", "outputs"):
            raw = doc.get(key)
            if not isinstance(raw, list) or not 0 < len(raw) <= MAX_TENSORS:
                raise bad(f"{key} must be a list of 1..{MAX_TENSORS} tensors")
            places = []
            for t in raw:
                if not isinstance(t, dict) or set(t) != {"name", "dtype", "shape", "offset"}:
                    raise bad("each tensor must have exactly name, dtype, shape, offset")
                name, dtype, shape, offset = t["name"], t["dtype"], t["shape"], t["offset"]
                if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or dtype not in DTYPES:
                    raise bad(f"tensor {name!r}: bad name or dtype")
                if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(
                        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape):
                    raise bad(f"tensor {name!r}: bad shape")
                if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or offset % TENSOR_ALIGN:
                    raise bad(f"tensor {name!r}: bad offset")
                places.append(TensorPlace(name, dtype, tuple(shape), offset))
            sides.append(tuple(places))
        spans = sorted((t.offset, t.offset + t.nbytes) for side in sides for t in side)
        if spans[-1][1] > slot_bytes or any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            raise bad("tensors overlap or reach past their slot")
        return cls(slots, slot_bytes, sides[0], sides[1])


class FrameArea:
    """A mapped frame area with numpy views of each slot's tensors.

    ``inputs[k]`` / ``outputs[k]``: name -> array viewing slot ``k``.
    :meth:`close` unmaps it (where no view is still in use elsewhere;
    otherwise the mapping goes when the last view does).
    """

    def __init__(self, layout: AreaLayout, segment: mmap.mmap, fd: Optional[int] = None):
        self.layout = layout
        self._mmap: Optional[mmap.mmap] = segment
        #: the daemon's own descriptor of the segment (its pipelines' stage-0 workers map it too), or None
        self.fd = fd
        #: 1 while slot k has a request in flight (the daemon refuses a slot reused before its reply)
        self.busy = bytearray(layout.slots)
        buf = np.frombuffer(segment, dtype=np.uint8)
        self.inputs: List[Dict[str, np.ndarray]] = []
        self.outputs: List[Dict[str, np.ndarray]] = []
        for k in range(layout.slots):
            base = k * layout.slot_bytes
            for places, views in ((layout.inputs, self.inputs), (layout.outputs, self.outputs)):
                views.append({t.name: buf[base + t.offset:base + t.offset + t.nbytes].view(DTYPES[t.dtype])
                              .reshape(t.shape) for t in places})
        del buf

    @classmethod
    def create(cls, layout: AreaLayout, name: str = "pipeit-frames") -> Tuple["FrameArea", int]:
        """A fresh anonymous segment for ``layout``, size-sealed; ``(area, fd)`` (the caller passes and closes
        fd; the area keeps a descriptor of its own, :attr:`fd`, until :meth:`close`)."""
        if not shm_supported():
            raise OSError("anonymous sealable memfd segments are not available on this system")
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, layout.size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            segment = mmap.mmap(fd, layout.size)
            own = os.dup(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(layout, segment, own), fd

    @classmethod
    def map(cls, fd: int, layout: AreaLayout) -> "FrameArea":
        """Map a segment received from the daemon (``fd`` stays the caller's to close)."""
        size = os.fstat(fd).st_size
        if size < layout.size:
            raise ProtocolError(f"frame area segment is {size} bytes, its layout needs {layout.size}", "malformed")
        return cls(layout, mmap.mmap(fd, layout.size))

    def close(self) -> None:
        segment, self._mmap = self._mmap, None
        self.inputs, self.outputs = [], []
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
        if segment is not None:
            try:
                segment.close()
            except BufferError:
                pass  # a view is still held elsewhere: the mapping goes with it

    @property
    def closed(self) -> bool:
        return self._mmap is None
