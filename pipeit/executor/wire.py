"""The per-frame messages between the dispatcher and a worker: fixed-size struct records.

After the start-up handshake (pickled, once), every message on a worker's
socket is a record of a fixed layout, written and read with one ``os.write``
/ ``os.read`` each and parsed with :mod:`struct`: no pickling, no length
header, no per-message Python objects beyond a tuple. One read can return
several records (the dispatcher handles them all for one wake-up), and a
worker keeps a second job queued in its socket so that it never waits for
the dispatcher between frames.

- main -> worker: ``JOB`` = ``(frame, area, in_slot, out_slot)``; ``area`` is
  -1 for a frame in the worker's in-ring, else the id of a caller's input
  area (a stage-0 frame read where its caller wrote it: no copy into the
  ring). Frame ``-1`` = stop; ``MAP`` = ``(-2, area, slots, slot_bytes)``
  arrives with the area's descriptor (``SCM_RIGHTS``) before the first job
  that reads it, ``UNMAP`` = ``(-3, area, 0, 0)`` once no job will.
- worker -> main: ``REPLY`` = ``(frame, code, value)`` with ``code``
  :data:`DONE` (``value`` = service ms), :data:`ERROR` or :data:`NOTE`
  (``value`` = bytes of payload that follow: UTF-8 text, or a pickled tuple of notes).

Pure standard library: workers import it before they pin themselves.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Tuple

__all__ = ["JOB", "REPLY", "STOP", "STOP_FRAME", "MAP", "UNMAP", "RING", "DONE", "ERROR", "NOTE", "ReplyParser",
           "JobParser"]

JOB = struct.Struct("<qiii")
REPLY = struct.Struct("<qqd")
#: ``JOB.area`` of a frame in the worker's in-ring
RING = -1
#: control records in the frame field of a JOB (frames are numbered from 0)
STOP_FRAME, MAP, UNMAP = -1, -2, -3
STOP = JOB.pack(STOP_FRAME, RING, 0, 0)
DONE, ERROR, NOTE = 0, 1, 2

#: (frame, code, value, payload bytes or None)
Reply = Tuple[int, int, float, Optional[bytes]]


class ReplyParser:
    """Accumulates bytes read from a worker and yields complete replies (payloads included)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> List[Reply]:
        buf = self._buf + data if self._buf else data
        out: List[Reply] = []
        size = REPLY.size
        pos = 0
        end = len(buf)
        while end - pos >= size:
            fid, code, value = REPLY.unpack_from(buf, pos)
            if code == DONE:
                out.append((fid, code, value, None))
                pos += size
                continue
            extra = int(value)
            if end - pos - size < extra:
                break  # the payload is still on its way
            out.append((fid, code, value, buf[pos + size:pos + size + extra]))
            pos += size + extra
        self._buf = buf[pos:]
        return out


class JobParser:
    """Accumulates bytes read by a worker and yields complete ``(frame, area, in_slot, out_slot)`` records."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> List[Tuple[int, int, int, int]]:
        buf = self._buf + data if self._buf else data
        size = JOB.size
        whole = len(buf) - len(buf) % size
        self._buf = buf[whole:]
        return [JOB.unpack_from(buf, pos) for pos in range(0, whole, size)]


def reply_bytes(fid: int, code: int, value: float = 0.0, payload: bytes = b"") -> bytes:
    """One reply record, with its payload for :data:`ERROR` and :data:`NOTE`."""
    if code == DONE:
        return REPLY.pack(fid, code, value)
    return REPLY.pack(fid, code, float(len(payload))) + payload
