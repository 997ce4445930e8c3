"""The per-frame messages between the dispatcher and a worker: fixed-size struct records.

After the start-up handshake (pickled, once), every message on a worker's
socket is a record of a fixed layout, written and read with one ``os.write``
/ ``os.read`` each and parsed with :mod:`struct`: no pickling, no length
header, no per-message Python objects beyond a tuple. One read can return
several records (the dispatcher handles them all for one wake-up), and a
worker keeps a second job queued in its socket so that it never waits for
the dispatcher between frames.

- main -> worker: ``JOB`` = ``(frame, in_slot, out_slot)``; frame ``-1`` = stop.
- worker -> main: ``REPLY`` = ``(frame, code, value)`` with ``code``
  :data:`DONE` (``value`` = service ms), :data:`ERROR` or :data:`NOTE`
  (``value`` = bytes of payload that follow: UTF-8 text, or a pickled tuple of notes).

Pure standard library: workers import it before they pin themselves.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Tuple

__all__ = ["JOB", "REPLY", "STOP", "DONE", "ERROR", "NOTE", "ReplyParser", "JobParser"]

JOB = struct.Struct("<qii")
REPLY = struct.Struct("<qqd")
STOP = JOB.pack(-1, 0, 0)
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
    """Accumulates bytes read by a worker and yields complete ``(frame, in_slot, out_slot)`` jobs."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> List[Tuple[int, int, int]]:
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
