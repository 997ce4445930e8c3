"""The daemon's wire format: a fixed prefix, a small JSON header, raw tensor bytes.

Every message, in both directions, is::

    prefix  16 bytes  magic b"PIT1" | header length (u32, big-endian) | body length (u64, big-endian)
    header  JSON object, UTF-8, at most MAX_HEADER_BYTES
    body    the tensors' raw bytes, one after the other in header order (C order, little-endian)

The header names the request id, the operation and each tensor's name,
dtype and shape; the body length must equal the sum of those tensors'
sizes. Nothing is pickled and nothing in a header is evaluated: a header is
checked field by field against a fixed schema, and sizes are bounded
*before* any memory is allocated (the server passes the exact byte count
its model takes). See ``docs/PROTOCOL.md`` for the full specification.

The decoder is split so that tests work on bytes: :func:`decode_prefix`,
:func:`decode_header`, :func:`decode_tensors`; :func:`read_message` glues
them onto a socket, reading tensors straight into numpy buffers.

Socket costs matter here (the daemon's budget is 0.3 ms on top of the
in-process API for a 600 KB frame), so the socket side is shaped by what
was measured on the project's 2-core host: :func:`tune_socket` widens the
send buffer (with Linux's default 208 KiB a 600 KB frame crosses in three
ping-pongs between sender and reader, 0.16 ms instead of 0.06 ms); an
:class:`Inbox` reads the prefix, the header and the start of the body in
one ``recv`` (and keeps bytes of a following message for the next read);
:func:`send_nowait` lets a thread that must never block (the executor's
dispatcher, which runs the reply callback) send a reply itself when the
socket has room, instead of waking a writer thread.
"""

from __future__ import annotations

import array as _array
import errno
import fcntl
import json
import math
import os
import select
import socket
import struct
import termios
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from pipeit.errors import PipeitError

__all__ = [
    "MAGIC",
    "PREFIX",
    "PREFIX_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_TENSORS",
    "MAX_RANK",
    "DTYPES",
    "OPS",
    "ERROR_CODES",
    "ProtocolError",
    "MessageTimeout",
    "PacedReader",
    "TensorSpec",
    "Header",
    "Message",
    "tensor_specs",
    "encode",
    "encode_request",
    "encode_reply",
    "encode_error",
    "decode_prefix",
    "decode_header",
    "decode_tensors",
    "decode_message",
    "read_message",
    "read_head",
    "read_body_into",
    "discard",
    "queued_bytes",
    "recv_exactly",
    "send_message",
    "send_nowait",
    "tune_socket",
    "Inbox",
    "Encoder",
    "SOCKET_BUFFER_BYTES",
    "MAX_SLOTS",
    "MAX_FDS",
    "WithFds",
    "encode_slot_request",
    "encode_slot_reply",
]

MAGIC = b"PIT1"
PREFIX = struct.Struct(">4sIQ")
PREFIX_BYTES = PREFIX.size  # 16
#: a header is a few hundred bytes; 64 KiB leaves room for many tensor names, not for abuse
MAX_HEADER_BYTES = 64 * 1024
MAX_TENSORS = 64
MAX_RANK = 8
MAX_NAME = 256
MAX_ID = 2**53 - 1  # exact in every JSON implementation
#: dtype names on the wire -> numpy dtype (always little-endian)
DTYPES: Dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
}
#: requests a client may send (``attach``/``detach``: the shared-memory frame area, see docs/PROTOCOL.md)
OPS = ("infer", "status", "replan", "attach", "detach")
#: the most slots a frame area may have (the daemon grants at most its per-client in-flight limit)
MAX_SLOTS = 1024
#: file descriptors a reader accepts with one message (the daemon passes one, with an ``attach`` reply)
MAX_FDS = 4
#: the ``error.code`` values a reply may carry
ERROR_CODES = (
    "malformed",      # prefix/header not as specified; connection closed
    "too_large",      # header or body over the limit; connection closed
    "truncated",      # the peer closed mid-message (never sent: the socket is gone)
    "bad_request",    # well framed, but the op or its tensors do not fit this model
    "busy",           # an attach while earlier replies (an earlier area's descriptor) are unread
    "unavailable",    # the daemon is draining or its pipeline failed
    "internal",       # a bug in the daemon (the request may be retried)
    "reattach",       # the frame area does not fit the model any more (reloaded) or is gone: attach again
)
_HEADER_KEYS = {"id", "op", "tensors", "ok", "error", "info", "slot"}
#: send/receive buffer asked for on every daemon socket (the kernel caps it at net.core.wmem_max/rmem_max)
SOCKET_BUFFER_BYTES = 4 << 20
#: bytes an :class:`Inbox` asks for at once: a prefix, any sane header, and the start of a body
INBOX_BYTES = 16 * 1024


class ProtocolError(PipeitError):
    """A message that breaks the wire format; ``code`` is one of :data:`ERROR_CODES`.

    ``header``: the message's decoded header when the error is about its
    body (over the limit), so that the reader can say why the body is that
    large -- a tensor of another shape or dtype than the model's -- rather
    than only that it is.
    """

    def __init__(self, message: str, code: str = "malformed", request_id: Optional[int] = None,
                 header: Optional["Header"] = None):
        super().__init__(message)
        self.code = code
        self.request_id = request_id
        self.header = header


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype name and shape of one tensor in a message body."""

    name: str
    dtype: str
    shape: Tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(math.prod(self.shape)) * DTYPES[self.dtype].itemsize

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Header:
    """A decoded, schema-checked header.

    Requests carry ``op`` (one of :data:`OPS`) and, for ``infer``, tensors.
    Replies carry ``ok``; a failed one carries ``error = {"code", "message"}``;
    ``info`` holds an op's JSON result (status document, re-plan event).
    """

    id: Optional[int]
    op: Optional[str] = None
    tensors: Tuple[TensorSpec, ...] = ()
    ok: Optional[bool] = None
    error: Optional[Dict[str, str]] = None
    info: Optional[Dict[str, Any]] = None
    #: ``infer`` through the frame area: the slot holding the inputs (request) and then the outputs (reply)
    slot: Optional[int] = None

    @property
    def body_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def to_json(self) -> dict:
        doc: Dict[str, Any] = {"id": self.id}
        if self.op is not None:
            doc["op"] = self.op
        if self.tensors:
            doc["tensors"] = [t.to_json() for t in self.tensors]
        if self.ok is not None:
            doc["ok"] = self.ok
        if self.error is not None:
            doc["error"] = dict(self.error)
        if self.info is not None:
            doc["info"] = self.info
        if self.slot is not None:
            doc["slot"] = self.slot
        return doc


@dataclass(frozen=True)
class Message:
    """A header and its tensors (name -> array, in header order)."""

    header: Header
    tensors: Dict[str, np.ndarray] = field(default_factory=dict)


# ---------------------------------------------------------------------------- encoding


def tensor_specs(tensors: Mapping[str, np.ndarray]) -> Tuple[TensorSpec, ...]:
    """Specs for arrays about to be sent; refuses dtypes the wire does not carry."""
    specs = []
    for name, array in tensors.items():
        dtype = np.asarray(array).dtype
        if dtype.name not in DTYPES:
            raise ProtocolError(f"tensor {name!r}: dtype {dtype} cannot be sent (use one of {', '.join(DTYPES)})",
                                "bad_request")
        specs.append(TensorSpec(str(name), dtype.name, tuple(int(d) for d in np.shape(array))))
    return tuple(specs)


def _wire_views(tensors: Mapping[str, np.ndarray]) -> List[memoryview]:
    views = []
    for array in tensors.values():
        array = np.asarray(array)
        wire = DTYPES[array.dtype.name]
        if array.dtype != wire or not array.flags.c_contiguous:
            array = np.ascontiguousarray(array, dtype=wire)
        views.append(memoryview(array).cast("B") if array.size else memoryview(b""))
    return views


def encode(header: Header, tensors: Optional[Mapping[str, np.ndarray]] = None) -> List[Any]:
    """The message as buffers to send in order (prefix+header, then each tensor, no copies)."""
    views = _wire_views(tensors) if tensors else []
    head = json.dumps(header.to_json(), separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}", "too_large")
    body = sum(v.nbytes for v in views)
    if body != header.body_bytes:
        raise ProtocolError(f"tensors hold {body} bytes, the header describes {header.body_bytes}", "bad_request")
    return [PREFIX.pack(MAGIC, len(head), body) + head, *views]


def encode_request(request_id: int, op: str, tensors: Optional[Mapping[str, np.ndarray]] = None) -> List[Any]:
    """A request: ``op`` with (for ``infer``) the input tensors."""
    if op not in OPS:
        raise ProtocolError(f"unknown operation {op!r}; one of {', '.join(OPS)}", "bad_request")
    specs = tensor_specs(tensors) if tensors else ()
    return encode(Header(id=int(request_id), op=op, tensors=specs), tensors)


def encode_reply(request_id: Optional[int], op: Optional[str], tensors: Optional[Mapping[str, np.ndarray]] = None,
                 info: Optional[Dict[str, Any]] = None) -> List[Any]:
    """A successful reply: output tensors and/or a JSON ``info`` document."""
    specs = tensor_specs(tensors) if tensors else ()
    return encode(Header(id=request_id, op=op, tensors=specs, ok=True, info=info), tensors)


def encode_error(request_id: Optional[int], code: str, message: str, op: Optional[str] = None) -> List[Any]:
    """A failed reply; ``message`` is cut to one line of at most 500 characters."""
    if code not in ERROR_CODES:
        code = "internal"
    line = " ".join(str(message).split())[:500]
    return encode(Header(id=request_id, op=op, ok=False, error={"code": code, "message": line}))


# A frame-area request or reply is the same 30-50 bytes but for two numbers: formatted, not built as a
# dict and dumped (the bytes are exactly what :func:`encode` gives for the same Header).
_SLOT_REQUEST = b'{"id":%d,"op":"infer","slot":%d}'
_SLOT_REPLY = b'{"id":%d,"op":"infer","ok":true,"slot":%d}'


def _slot_message(template: bytes, request_id: int, slot: int) -> List[Any]:
    request_id, slot = int(request_id), int(slot)
    if not (0 <= request_id <= MAX_ID and 0 <= slot < MAX_SLOTS):
        raise ProtocolError(f"request id {request_id} or slot {slot} out of range", "bad_request")
    head = template % (request_id, slot)
    return [PREFIX.pack(MAGIC, len(head), 0) + head]


def encode_slot_request(request_id: int, slot: int) -> List[Any]:
    """An ``infer`` whose inputs are in slot ``slot`` of the connection's frame area (no body)."""
    return _slot_message(_SLOT_REQUEST, request_id, slot)


def encode_slot_reply(request_id: int, slot: int) -> List[Any]:
    """The reply to a slot ``infer``: the outputs are in the slot's output part (no body)."""
    return _slot_message(_SLOT_REPLY, request_id, slot)


class WithFds(list):
    """The buffers of one message and file descriptors passed with its first byte (``SCM_RIGHTS``).

    The sender owns the descriptors: :func:`send_message` and
    :func:`send_nowait` close them once the kernel holds its own copies (the
    first bytes went out), and :meth:`release` closes them if the message is
    dropped unsent, so no path leaves a descriptor open.
    """

    def __init__(self, buffers: Sequence[Any], fds: Sequence[int]):
        super().__init__(buffers)
        self.fds: Tuple[int, ...] = tuple(int(fd) for fd in fds)

    def release(self) -> None:
        fds, self.fds = self.fds, ()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


# ---------------------------------------------------------------------------- decoding


def decode_prefix(data: bytes, max_body: int) -> Tuple[int, int]:
    """``(header_bytes, body_bytes)`` from the 16-byte prefix, both checked against limits."""
    head_len, body_len = _prefix_lengths(data)
    _check_body(body_len, max_body)
    return head_len, body_len


def _prefix_lengths(data: bytes) -> Tuple[int, int]:
    """``(header_bytes, body_bytes)`` from the prefix, the header's length checked (the body's is not)."""
    if len(data) != PREFIX_BYTES:
        raise ProtocolError(f"message prefix is {len(data)} bytes, expected {PREFIX_BYTES}", "truncated")
    magic, head_len, body_len = PREFIX.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {MAGIC!r}): not a pipeit message", "malformed")
    if head_len == 0 or head_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"header length {head_len} is outside 1..{MAX_HEADER_BYTES}", "too_large"
                            if head_len else "malformed")
    return head_len, body_len


def _check_body(body_len: int, max_body: int, header: Optional["Header"] = None) -> None:
    """Refuse a body over ``max_body`` bytes (before any of it is read); ``header``, if read, rides on the error."""
    if body_len > max_body:
        raise ProtocolError(f"body of {body_len} bytes exceeds the limit of {max_body}", "too_large",
                            header.id if header is not None else None, header)


def _int(value: Any, what: str, low: int, high: int, request_id: Optional[int]) -> int:
    # bool is an int in Python; JSON true is not a number
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise ProtocolError(f"{what} must be an integer in {low}..{high}, got {value!r}", "malformed", request_id)
    return value


def _tensor_spec(doc: Any, request_id: Optional[int]) -> TensorSpec:
    if not isinstance(doc, dict) or set(doc) != {"name", "dtype", "shape"}:
        raise ProtocolError("each tensor must be an object with exactly name, dtype, shape", "malformed", request_id)
    name, dtype, shape = doc["name"], doc["dtype"], doc["shape"]
    if not isinstance(name, str) or not (0 < len(name) <= MAX_NAME):
        raise ProtocolError(f"tensor name must be a string of 1..{MAX_NAME} characters", "malformed", request_id)
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError(f"tensor {name!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}", "malformed",
                            request_id)
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        raise ProtocolError(f"tensor {name!r}: shape must be a list of at most {MAX_RANK} sizes", "malformed",
                            request_id)
    dims = tuple(_int(d, f"tensor {name!r} dimension", 0, 2**31 - 1, request_id) for d in shape)
    return TensorSpec(name, dtype, dims)


def decode_header(data: bytes, body_bytes: int) -> Header:
    """Parse and check a header against the schema and the prefix's body length."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ProtocolError(f"header is not UTF-8 JSON ({type(err).__name__})", "malformed") from None
    if not isinstance(doc, dict):
        raise ProtocolError("header must be a JSON object", "malformed")
    request_id = doc.get("id")
    if request_id is not None:
        request_id = _int(request_id, "id", 0, MAX_ID, None)
    unknown = set(doc) - _HEADER_KEYS
    if unknown:
        raise ProtocolError(f"unknown header field(s) {sorted(unknown)[:5]}", "malformed", request_id)
    op = doc.get("op")
    if op is not None and not isinstance(op, str):
        raise ProtocolError("op must be a string", "malformed", request_id)
    raw_tensors = doc.get("tensors", [])
    if not isinstance(raw_tensors, list) or len(raw_tensors) > MAX_TENSORS:
        raise ProtocolError(f"tensors must be a list of at most {MAX_TENSORS}", "malformed", request_id)
    tensors = tuple(_tensor_spec(t, request_id) for t in raw_tensors)
    if len({t.name for t in tensors}) != len(tensors):
        raise ProtocolError("tensor names repeat", "malformed", request_id)
    ok = doc.get("ok")
    if ok is not None and not isinstance(ok, bool):
        raise ProtocolError("ok must be true or false", "malformed", request_id)
    error = doc.get("error")
    if error is not None:
        if (not isinstance(error, dict) or set(error) != {"code", "message"}
                or not all(isinstance(v, str) for v in error.values())):
            raise ProtocolError("error must be an object with string code and message", "malformed", request_id)
    info = doc.get("info")
    if info is not None and not isinstance(info, dict):
        raise ProtocolError("info must be a JSON object", "malformed", request_id)
    slot = doc.get("slot")
    if slot is not None:
        slot = _int(slot, "slot", 0, MAX_SLOTS - 1, request_id)
    header = Header(id=request_id, op=op, tensors=tensors, ok=ok, error=error, info=info, slot=slot)
    if header.body_bytes != body_bytes:
        raise ProtocolError(
            f"the tensors described take {header.body_bytes} bytes, the prefix announces {body_bytes}",
            "malformed", request_id,
        )
    return header


def decode_tensors(header: Header, body: Any) -> Dict[str, np.ndarray]:
    """Arrays viewing ``body`` (bytes or a writable buffer) as the header describes."""
    view = memoryview(body).cast("B")
    if view.nbytes != header.body_bytes:
        raise ProtocolError(f"body is {view.nbytes} bytes, the header describes {header.body_bytes}", "truncated",
                            header.id)
    out = {}
    offset = 0
    for spec in header.tensors:
        n = spec.nbytes
        out[spec.name] = np.frombuffer(view[offset:offset + n], dtype=DTYPES[spec.dtype]).reshape(spec.shape)
        offset += n
    return out


def _split_id(data: bytes) -> Tuple[Optional[bytes], bytes]:
    """``(digits, rest)`` of a header written as ``{"id":DIGITS,...``; ``(None, b"")`` for any other form."""
    if not data.startswith(b'{"id":'):
        return None, b""
    comma = data.find(b",", 6, 6 + 17)
    digits = data[6:comma] if comma > 6 else b""
    if not digits.isdigit() or (len(digits) > 1 and digits[:1] == b"0"):
        return None, b""
    return digits, data[comma:]


class Encoder:
    """Encodes one kind of message (an ``op``, a reply or not) for tensors that keep their layout.

    The header's JSON is built once for a set of tensor names, dtypes and
    shapes and reused with only the id formatted in: a per-request cost that
    counts on a busy board, where every line of Python on a request's path
    runs several times slower than in a warm loop. Safe to share between
    threads (the cache is one tuple, replaced whole).
    """

    def __init__(self, op: str, reply: bool = False):
        if op not in OPS:
            raise ProtocolError(f"unknown operation {op!r}; one of {', '.join(OPS)}", "bad_request")
        self.op = op
        self.ok = True if reply else None
        self._cached: Optional[Tuple[Any, bytes, int]] = None  # (layout key, b',"op":...}', body bytes)

    def encode(self, request_id: int, tensors: Mapping[str, np.ndarray]) -> List[Any]:
        """Buffers for :func:`send_message`: the same bytes as :func:`encode` would give."""
        if not all(isinstance(a, np.ndarray) for a in tensors.values()):
            return encode(Header(id=int(request_id), op=self.op, tensors=tensor_specs(tensors), ok=self.ok), tensors)
        key = tuple((name, a.dtype.str, a.shape) for name, a in tensors.items())
        cached = self._cached
        if cached is None or cached[0] != key:
            header = Header(id=0, op=self.op, tensors=tensor_specs(tensors), ok=self.ok)
            head = json.dumps(header.to_json(), separators=(",", ":"), allow_nan=False).encode("utf-8")
            digits, rest = _split_id(head)
            if digits != b"0" or len(head) > MAX_HEADER_BYTES - 16:
                raise ProtocolError("header does not fit the wire format", "too_large")
            cached = (key, rest, header.body_bytes)
            self._cached = cached
        request_id = int(request_id)
        if not 0 <= request_id <= MAX_ID:
            raise ProtocolError(f"request id {request_id} is outside 0..{MAX_ID}", "bad_request")
        head = b'{"id":%d' % request_id + cached[1]
        views = _wire_views(tensors)
        return [PREFIX.pack(MAGIC, len(head), cached[2]) + head, *views]


def decode_message(data: bytes, max_body: int) -> Message:
    """One whole message from bytes (tests and fuzzing); trailing bytes are an error."""
    head_len, body_len = decode_prefix(bytes(data[:PREFIX_BYTES]), max_body)
    end = PREFIX_BYTES + head_len + body_len
    if len(data) < end:
        raise ProtocolError(f"message is {len(data)} bytes, its prefix announces {end}", "truncated")
    if len(data) > end:
        raise ProtocolError(f"{len(data) - end} bytes after the message", "malformed")
    header = decode_header(bytes(data[PREFIX_BYTES:PREFIX_BYTES + head_len]), body_len)
    return Message(header, decode_tensors(header, bytes(data[PREFIX_BYTES + head_len:end])))


# ---------------------------------------------------------------------------- sockets


class MessageTimeout(ProtocolError):
    """A message that stopped arriving part way (:class:`PacedReader`'s limit passed)."""


class PacedReader:
    """The read side of a connection, with time limits that leave the socket itself blocking.

    The daemon reads a connection in one thread and writes it in another. A
    socket timeout (``settimeout``) is a property of the socket, shared by
    both: the reader's one-second limit on a slow body made the writer's
    ``sendmsg`` to a client that paused reading time out too, and the
    connection's queued replies were dropped. This wrapper waits in
    ``poll`` before each ``recv`` instead, until :attr:`deadline`
    (``time.monotonic()``, None: no limit), and raises a "truncated"
    :class:`ProtocolError` when it passes. :meth:`limit_after_first_bytes`
    arms the limit when a message's first bytes arrive: a connection may
    stay idle between messages, but not in the middle of one.
    """

    __slots__ = ("sock", "deadline", "_window")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline: Optional[float] = None
        self._window: Optional[float] = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def limit(self, seconds: Optional[float]) -> None:
        """Everything read from now on must come within ``seconds`` (None: no limit)."""
        self._window = None
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def limit_after_first_bytes(self, seconds: float) -> None:
        """No limit until some bytes arrive; from then on, everything within ``seconds``."""
        self.deadline, self._window = None, seconds

    def _wait(self) -> None:
        if self.deadline is None:
            return
        left = self.deadline - time.monotonic()
        if left > 0:
            fd = self.sock.fileno()
            if fd < 0:  # closed under us (the daemon's stop closes every connection): not a malformed message
                raise OSError(errno.EBADF, "the connection was closed")
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLPRI)
            if poller.poll(left * 1000.0):
                return
        raise MessageTimeout("the rest of the message did not arrive in time", "truncated")

    def _arm(self, got: int) -> None:
        if got and self._window is not None:
            self.deadline, self._window = time.monotonic() + self._window, None

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self._wait()
        got = self.sock.recv_into(buffer, nbytes, flags)
        self._arm(got)
        return got

    def recvmsg_into(self, buffers: Any, ancbufsize: int = 0, flags: int = 0) -> Any:
        self._wait()
        result = self.sock.recvmsg_into(buffers, ancbufsize, flags)
        self._arm(result[0])
        return result


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock``; :class:`ProtocolError` ("truncated") if the peer closes first."""
    got = 0
    total = view.nbytes
    while got < total:
        n = sock.recv_into(view[got:], total - got)
        if n == 0:
            raise ProtocolError(f"connection closed after {got} of {total} bytes", "truncated")
        got += n


class Inbox:
    """Bytes read from a socket ahead of the message being decoded (one per connection, one reader).

    One ``recv`` of up to :data:`INBOX_BYTES` takes a small message whole,
    or a big one's prefix, header and first bytes of body; what lies beyond
    the current message stays here for the next :func:`read_message`.

    It also remembers the headers it decoded: a stream of ``infer``
    messages repeats one header but for its id (or a few: one per frame-area
    slot), and :meth:`decode_header` then only parses the id (see there for
    why that is exact).

    ``capture_fds``: read ahead with ``recvmsg`` and keep descriptors passed
    with the bytes (``SCM_RIGHTS``) in :attr:`fds` (a client waiting for an
    ``attach`` reply); otherwise the kernel closes any that come.
    """

    #: distinct headers remembered (a stream uses one, or one per slot); past this the memory starts afresh
    TEMPLATES = 64

    def __init__(self, size: int = INBOX_BYTES):
        self._buf = bytearray(max(size, PREFIX_BYTES + 1))
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        #: header after its id (b',"op":...}') -> the header it decodes to, id aside
        self._templates: Dict[bytes, Header] = {}
        self.capture_fds = False
        self.fds: List[int] = []

    def decode_header(self, data: bytes, body_bytes: int) -> Header:
        """:func:`decode_header`, with the schema checks skipped for a header seen before but for its id.

        Exact, not a heuristic: ``{"id":N`` + the same remaining bytes is the
        same JSON document but for ``N``, once ``N`` is a JSON integer (ASCII
        digits, no leading zero) and the rest names no other ``"id"`` (a
        repeated key would override it) and has no escape at all (``"\\u0069d"``
        spells ``"id"`` too). Only headers without ``error`` and ``info`` are
        remembered (those are mutable dicts, and rare).
        """
        digits, suffix = _split_id(data)
        template = self._templates.get(suffix) if digits is not None else None
        if template is not None and body_bytes == template.body_bytes:
            request_id = int(digits)  # type: ignore[arg-type]
            if request_id <= MAX_ID:
                return Header(request_id, template.op, template.tensors, template.ok, None, None, template.slot)
        header = decode_header(data, body_bytes)
        if digits is not None and header.error is None and header.info is None and header.id == int(digits) \
                and b'"id"' not in suffix and b"\\" not in suffix:
            if len(self._templates) >= self.TEMPLATES:
                self._templates.clear()
            self._templates[suffix] = header
        return header

    @property
    def pending(self) -> int:
        """Bytes held for the messages still to be read."""
        return self._end - self._start

    def _fill(self, sock: socket.socket, need: int) -> int:
        """Hold at least ``need`` bytes (need <= the inbox size); returns what is held (less: the peer closed)."""
        if self._end - self._start >= need:
            return self._end - self._start
        if self._start:
            held = self._end - self._start
            self._view[:held] = self._view[self._start:self._end]
            self._start, self._end = 0, held
        while self._end < need:
            n = self._recv_fds(sock) if self.capture_fds else sock.recv_into(self._view[self._end:])
            if n == 0:
                break
            self._end += n
        return self._end - self._start

    def _recv_fds(self, sock: socket.socket) -> int:
        """``recv_into`` the free space, keeping passed descriptors (closing any beyond :data:`MAX_FDS`)."""
        n, ancillary, _flags, _addr = sock.recvmsg_into([self._view[self._end:]],
                                                        socket.CMSG_SPACE(MAX_FDS * _array.array("i").itemsize))
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = _array.array("i")
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
                self.fds.extend(fds)
        while len(self.fds) > MAX_FDS:
            os.close(self.fds.pop())
        return n

    def take(self, n: int) -> memoryview:
        """The next ``n`` held bytes (valid until the next fill)."""
        out = self._view[self._start:self._start + n]
        self._start += n
        if self._start == self._end:
            self._start = self._end = 0
        return out

    def read_into(self, sock: socket.socket, target: memoryview) -> None:
        """Fill ``target``: held bytes first, then straight from the socket (no copy through here)."""
        held = min(self.pending, target.nbytes)
        if held:
            target[:held] = self.take(held)
        if held < target.nbytes:
            recv_exactly(sock, target[held:])

    def read_exactly(self, sock: socket.socket, n: int) -> bytes:
        """``n`` bytes as ``bytes`` (for a header: at most the inbox size, checked by the caller)."""
        if n > len(self._buf):
            out = bytearray(n)
            self.read_into(sock, memoryview(out))
            return bytes(out)
        got = self._fill(sock, n)
        if got < n:
            self.take(got)
            raise ProtocolError(f"connection closed after {got} of {n} bytes", "truncated")
        return bytes(self.take(n))


def read_head(sock: socket.socket, max_body: Union[int, Callable[[], int]],
              inbox: Optional[Inbox] = None) -> Optional[Header]:
    """The next message's prefix and header, checked; its body is left to read (None: a clean close).

    For a reader that puts the body where it wants it (the daemon: straight
    into the pipeline's ring slot) with :meth:`Inbox.read_into`, or skips it
    with :func:`discard`. Errors as for :func:`read_message`.

    A body over ``max_body`` is refused before any of it is read, but after
    the header (itself bounded by :data:`MAX_HEADER_BYTES`): the
    ``too_large`` error carries the header and its id, so the reader can
    answer which tensor made the body too large, and to which request.
    ``max_body`` may be a callable, asked once the header is in: a daemon
    waits here between messages, and a reload while it waits changes the
    limit the next message must meet.
    """
    if inbox is None:
        prefix = bytearray(PREFIX_BYTES)
        first = sock.recv_into(prefix, PREFIX_BYTES)
        if first == 0:
            return None
        if first < PREFIX_BYTES:
            recv_exactly(sock, memoryview(prefix)[first:])
        head_len, body_len = _prefix_lengths(bytes(prefix))
        head = bytearray(head_len)
        recv_exactly(sock, memoryview(head))
        header = decode_header(bytes(head), body_len)
    else:
        held = inbox._fill(sock, PREFIX_BYTES)  # noqa: SLF001 -- the inbox is this module's helper
        if held == 0:
            return None
        if held < PREFIX_BYTES:
            inbox.take(held)
            raise ProtocolError(f"connection closed after {held} of {PREFIX_BYTES} bytes", "truncated")
        head_len, body_len = _prefix_lengths(bytes(inbox.take(PREFIX_BYTES)))
        header = inbox.decode_header(inbox.read_exactly(sock, head_len), body_len)
    _check_body(body_len, max_body() if callable(max_body) else max_body, header)
    return header


def read_message(sock: socket.socket, max_body: int, inbox: Optional[Inbox] = None) -> Optional[Message]:
    """The next message, tensors read straight into fresh arrays; None on a clean close.

    A clean close is one between messages. Everything else that goes wrong
    is a :class:`ProtocolError` whose ``code`` says what to answer. With an
    ``inbox`` (one per connection) the prefix, header and the body's start
    come in one ``recv``; without one, exactly the bytes of this message are
    read (three ``recv`` calls or more).
    """
    header = read_head(sock, max_body, inbox)
    if header is None:
        return None
    tensors: Dict[str, np.ndarray] = {}
    for spec in header.tensors:
        array = np.empty(spec.shape, dtype=DTYPES[spec.dtype])
        if array.nbytes:
            try:
                read_body_into(sock, memoryview(array).cast("B"), inbox)
            except ProtocolError as err:
                err.request_id = header.id
                raise
        tensors[spec.name] = array
    return Message(header, tensors)


def read_body_into(sock: socket.socket, target: memoryview, inbox: Optional[Inbox] = None) -> None:
    """Fill ``target`` (bytes of the current body): the inbox's held bytes first, then the socket's."""
    if inbox is None:
        recv_exactly(sock, target)
    else:
        inbox.read_into(sock, target)


def discard(sock: socket.socket, nbytes: int, scratch: memoryview, inbox: Optional[Inbox] = None) -> None:
    """Read and drop ``nbytes`` of the current body (a request refused after its header), through ``scratch``."""
    while nbytes > 0:
        n = min(nbytes, scratch.nbytes)
        read_body_into(sock, scratch[:n], inbox)
        nbytes -= n


def queued_bytes(sock: socket.socket) -> int:
    """Bytes the kernel holds for ``sock`` that a ``recv`` would return now (``FIONREAD``; 0 if unknown).

    On a Unix stream socket a sender's message is queued whole when the
    sender's buffer takes it: the daemon reads a body straight into a ring
    slot only when it is all there, so a client that stalls mid-body never
    holds a slot the others need.
    """
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0


def unsent_bytes(sock: socket.socket) -> int:
    """What ``sock`` has sent that its peer has not read yet (``SIOCOUTQ``: on a Unix socket, the kernel's
    accounting of those messages, at least their bytes, 0 once the peer has read them all; -1 if unknown).

    The daemon checks it before it passes a descriptor: one its client has not read yet
    holds a frame area's memory although the daemon has dropped it.
    """
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return -1


def tune_socket(sock: socket.socket, size: int = SOCKET_BUFFER_BYTES) -> None:
    """Ask for ``size``-byte send and receive buffers (best effort: the kernel caps them, errors are ignored).

    A Unix stream socket queues what the sender wrote against the *sender's*
    buffer: a frame bigger than it crosses in several wake-ups of both sides.
    """
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            pass


def _views(buffers: Sequence[Any]) -> List[memoryview]:
    views = []
    for b in buffers:
        view = b if isinstance(b, memoryview) and b.format == "B" and b.ndim == 1 else memoryview(b).cast("B")
        if view.nbytes:
            views.append(view)
    return views


def _advance(pending: List[memoryview], sent: int) -> None:
    while pending and sent >= pending[0].nbytes:
        sent -= pending[0].nbytes
        pending.pop(0)
    if sent:
        pending[0] = pending[0][sent:]


def _ancillary(buffers: Sequence[Any]) -> List[Any]:
    fds = getattr(buffers, "fds", ())
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _array.array("i", fds))] if fds else []


def send_message(sock: socket.socket, buffers: Sequence[Any]) -> None:
    """Send the buffers of :func:`encode` (one ``sendmsg`` where it takes them all).

    A :class:`WithFds` message passes its descriptors with the first bytes
    and closes them once sent (or released, if the send fails).
    """
    pending = _views(buffers)
    ancillary = _ancillary(buffers)
    try:
        while pending:
            _advance(pending, sock.sendmsg(pending, ancillary))
            if ancillary:
                ancillary = []
                buffers.release()  # type: ignore[attr-defined] -- the kernel holds its own copies now
    finally:
        if ancillary:
            buffers.release()  # type: ignore[attr-defined] -- never sent: still ours to close


def send_nowait(sock: socket.socket, buffers: Sequence[Any]) -> Sequence[Any]:
    """Send what the socket takes now without blocking; returns what is left (empty: all sent).

    For a thread that must not wait on a client (a reader that stopped
    reading must stall only its own connection): the caller hands what is
    left to a thread that may block. ``OSError`` other than "would block"
    propagates (the peer is gone). A :class:`WithFds` message of which
    nothing went out comes back as it was (its descriptors still to pass).
    """
    pending = _views(buffers)
    ancillary = _ancillary(buffers)
    while pending:
        try:
            sent = sock.sendmsg(pending, ancillary, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            break
        if ancillary:
            ancillary = []
            buffers.release()  # type: ignore[attr-defined]
        _advance(pending, sent)
    if ancillary and pending:
        return buffers  # nothing sent: the descriptors go with the whole message later
    return pending
