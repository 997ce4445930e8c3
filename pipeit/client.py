"""Talk to a running ``pipeit serve`` daemon over its Unix socket.

>>> with Client("/run/pipeit/pipeit.sock") as client:       # doctest: +SKIP
...     outputs = client.infer(frame)                         # dict name -> array
...     print(client.status()["fps"])

One client is one connection; requests on it are answered in the order the
daemon finishes them, matched by id. :meth:`Client.infer_many` keeps several
frames in flight for throughput. Threads may share a client: its calls take
turns on one lock (a thread waiting in :meth:`Client.receive` holds it until
its reply comes), so one connection per thread is the faster way.

Frames travel one of two ways (``transport``):

* ``"inline"``: the tensors' bytes go through the socket with each request
  and reply (works with any daemon; two kernel copies of each frame);
* ``"shm"``: on the first ``infer`` the client ``attach``-es: the daemon
  passes it a shared-memory frame area (an anonymous memfd segment of
  ``slots`` slots) over the socket; the client copies each frame into a free
  slot and sends only the slot number, and reads the outputs back from the
  slot. A frame with no free slot (more in flight than slots) goes inline;
* ``"auto"`` (default): ``shm`` when the daemon offers it, else ``inline``.

The area is the client's until it closes (or :meth:`Client.detach`); a
daemon reloaded with a model whose inputs or outputs differ answers
``reattach``, and :meth:`Client.infer` then attaches again and resends once.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import socket
import threading
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np

from pipeit.daemon import protocol as wire
from pipeit.daemon.shm import AreaLayout, FrameArea
from pipeit.errors import PipeitError

__all__ = ["Client", "DaemonError", "ReplyTimeout", "DEFAULT_MAX_REPLY_BYTES", "TRANSPORTS", "check_timeout"]

#: how frames travel: see the module docstring
TRANSPORTS = ("auto", "inline", "shm")

#: the largest reply body a client accepts (outputs of any sensible CNN are far below)
DEFAULT_MAX_REPLY_BYTES = 1 << 30

#: error codes after which the daemon closes the connection (docs/PROTOCOL.md)
CLOSING_CODES = ("malformed", "too_large")


class DaemonError(PipeitError):
    """The daemon cannot be reached, or answered a request with an error (``code`` says which)."""

    def __init__(self, message: str, code: str = "unavailable"):
        super().__init__(message)
        self.code = code


class ReplyTimeout(DaemonError):
    """No reply within the client's timeout (code ``unavailable``): the daemon is slow or stuck, which
    says nothing about what it supports (an ``"auto"`` client that times out attaching stays on shm)."""


#: the longest wait for a reply a client may ask for (a socket timeout is bounded by the C library)
MAX_TIMEOUT_S = 1e9


def check_timeout(timeout: Optional[float], option: str = "timeout") -> None:
    """Refuse a reply timeout that is not None or a finite number of seconds in (0, 1e9]."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise DaemonError(f"{option} must be a number of seconds > 0 and at most {MAX_TIMEOUT_S:g}, "
                          f"got {timeout!r}", "bad_request")


def _refused(path: str) -> str:
    """Why a connection to ``path`` was refused, in words: not a socket at all, or no daemon on it."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISSOCK(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a socket"
        return f"{path} is {kind}; give the socket `pipeit serve --socket` listens on"
    return f"no daemon listens on {path} (a socket left by one that stopped?); start `pipeit serve`"


def _one_at_a_time(method: Any) -> Any:
    """Run ``method`` holding the client's lock: two threads interleaving an ``attach`` or a reply's
    bytes got each other's frame areas and outputs, silently."""

    @functools.wraps(method)
    def locked(self: "Client", *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class Client:
    """A connection to the daemon at ``socket_path``; ``timeout`` (s) bounds each wait for a reply.

    ``transport``: ``"auto"``, ``"inline"`` or ``"shm"`` (module docstring);
    ``slots``: frame-area slots asked for (the daemon grants at most its
    per-client in-flight limit).
    """

    def __init__(self, socket_path: Union[str, Path], timeout: Optional[float] = 120.0,
                 max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES, transport: str = "auto", slots: int = 4):
        if transport not in TRANSPORTS:
            raise DaemonError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}", "bad_request")
        _check_slots(slots)
        check_timeout(timeout)
        self.timeout = timeout  # each receive() waits at most this long for its whole reply (None: forever)
        self.socket_path = str(socket_path)
        self.max_reply_bytes = int(max_reply_bytes)
        self.transport = transport
        self.slots = slots
        self._area: Optional[FrameArea] = None
        self._free: List[int] = []  # the area's slots with no request in flight
        self._slot_of: Dict[int, int] = {}  # request id -> its slot
        self._reserved: set = set()  # slots handed out by reserve(), not yet submitted
        self._orphans: set = set()  # slot requests in flight when their area was dropped: outputs lost
        self._shm_refused: Optional[str] = None  # why an "auto" client went inline
        self._ids = itertools.count(1)
        self._early: Dict[int, wire.Message] = {}
        self._abandoned: set = set()  # ids whose caller gave up waiting (a timeout): their replies are dropped
        self._input_name: Optional[str] = None  # the model's one input, for infer(array); read from status
        self._input_dtype: Optional[str] = None
        self._inbox = wire.Inbox()
        self._infer = wire.Encoder("infer")  # the header is built once per input layout
        self._lock = threading.RLock()  # see _one_at_a_time
        self._owner_pid = os.getpid()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        wire.tune_socket(sock)  # a whole frame fits the send buffer: one copy, no ping-pong with the reader
        sock.settimeout(timeout)
        try:
            sock.connect(self.socket_path)
        except FileNotFoundError:
            sock.close()
            raise DaemonError(f"no daemon socket at {self.socket_path} (is `pipeit serve` running?)") from None
        except ConnectionRefusedError:
            sock.close()
            raise DaemonError(_refused(self.socket_path)) from None
        except OSError as err:
            sock.close()
            raise DaemonError(f"cannot connect to {self.socket_path}: {err.strerror or err}") from err
        self._sock: Optional[socket.socket] = sock

    # ---- plumbing ----------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection and unmap the frame area (the daemon drops its side when it sees the close).

        From another thread too: a thread waiting for a reply is woken at once
        (the socket is shut down first, without the lock it holds) and gets a
        DaemonError; the area is unmapped only once no call is using it.
        """
        sock = self._sock
        if sock is not None and self._owner_pid == os.getpid():  # a fork's shutdown would cut the parent's too
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            self._drop_area()
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _conn(self) -> socket.socket:
        if self._sock is None:
            raise DaemonError("the client is closed")
        if self._owner_pid != os.getpid():  # the connection and frame area are shared with the parent
            raise DaemonError(f"this client belongs to process {self._owner_pid}, not this forked child: "
                              "connect a Client in the child", "unavailable")
        return self._sock

    @_one_at_a_time
    def send(self, op: str, tensors: Optional[Mapping[str, np.ndarray]] = None) -> int:
        """Send one request; returns its id (pair with :meth:`receive`).

        An ``infer`` goes through a free slot of the frame area when there is
        one and the tensors fit it (attaching first, on the first ``infer``
        of a ``"shm"``/``"auto"`` client); otherwise inline.
        """
        if op == "infer" and tensors and self.transport != "inline" and self._area is None \
                and self._shm_refused is None:
            self.attach()
        request_id = next(self._ids)
        slot = self._to_slot(tensors) if op == "infer" and tensors and self._area is not None else None
        try:
            if slot is not None:
                buffers = wire.encode_slot_request(request_id, slot)
            elif op == "infer" and tensors:
                buffers = self._infer.encode(request_id, tensors)
            else:
                buffers = wire.encode_request(request_id, op, tensors)
        except wire.ProtocolError as err:  # a tensor no message can carry, an unknown operation: refused here
            if slot is not None:
                self._free.append(slot)
            raise DaemonError(str(err), "bad_request") from err
        try:
            wire.send_message(self._conn(), buffers)
        except OSError as err:
            self._refusal_or_lost(err, request_id)
        if slot is not None:
            self._slot_of[request_id] = slot
        return request_id

    # ---- the frame area ------------------------------------------------------------------
    @property
    def transport_in_use(self) -> str:
        """``"shm"`` while a frame area is attached, else ``"inline"``."""
        return "shm" if self._area is not None else "inline"

    @_one_at_a_time
    def attach(self, slots: Optional[int] = None) -> Optional[AreaLayout]:
        """Ask the daemon for a frame area (replacing any held) and map it; returns its layout.

        If the daemon cannot give one (an older daemon, no memfd), a
        ``"shm"`` client raises :class:`DaemonError`; any other goes inline
        from then on (why: :attr:`shm_refused`) and gets None.
        """
        self._conn()  # closed: say so (an "auto" client would otherwise take it for a refusal, and go inline)
        if slots is not None:
            _check_slots(slots)
        if self._slot_of or self._reserved:
            raise DaemonError("attach with frames in flight or slots reserved: receive their replies first",
                              "bad_request")
        self._drop_area()
        request_id = next(self._ids)
        # the count goes in "info", which every daemon's schema takes: one without frame areas answers
        # "unknown operation" (bad_request) and keeps the connection, and an "auto" client goes inline
        header = wire.Header(id=request_id, op="attach", info={"slots": slots or self.slots})
        inbox = self._inbox
        inbox.capture_fds = True  # the reply's descriptor comes with its first byte: read ahead with recvmsg
        try:
            try:
                wire.send_message(self._conn(), wire.encode(header))
            except OSError as err:
                self._refusal_or_lost(err, request_id)
            message = self.receive(request_id)
            fds, inbox.fds = inbox.fds, []
        except DaemonError as err:
            fds, inbox.fds = inbox.fds, []
            _close_fds(fds)
            if self.transport == "shm" or err.code not in ("bad_request", "unavailable") \
                    or isinstance(err, ReplyTimeout):
                raise
            self._shm_refused = str(err)
            return None
        finally:
            inbox.capture_fds = False
        try:
            if len(fds) != 1:
                raise DaemonError(f"the daemon's attach reply carried {len(fds)} descriptor(s), expected 1",
                                  "malformed")
            try:
                layout = AreaLayout.from_json(message.header.info)
                self._area = FrameArea.map(fds[0], layout)
            except (wire.ProtocolError, OSError, ValueError) as err:
                raise DaemonError(f"cannot map the daemon's frame area: {err}", "malformed") from err
        finally:
            _close_fds(fds)  # the mapping keeps the segment; the descriptor is not needed any more
        self._free = list(range(layout.slots - 1, -1, -1))
        return layout

    @_one_at_a_time
    def detach(self) -> None:
        """Give the frame area back (frames go inline until the next :meth:`attach`)."""
        if self._slot_of or self._reserved:
            raise DaemonError("detach with frames in flight or slots reserved: receive their replies (or submit "
                              "the reserved slots) first", "bad_request")
        if self._area is None:
            return
        self._drop_area()
        self.receive(self.send("detach"))

    @property
    def shm_refused(self) -> Optional[str]:
        """Why an ``"auto"`` client sends inline (the daemon refused ``attach``), or None."""
        return self._shm_refused

    @_one_at_a_time
    def reserve(self) -> Tuple[int, Dict[str, np.ndarray]]:
        """A free slot and its input arrays, for a producer that writes a frame straight into the area.

        Spares the copy :meth:`infer` makes from the caller's arrays into a
        slot (a 600 KB frame: 0.05-0.1 ms on a small board). Write every
        element of the arrays, then :meth:`submit` the slot. Raises
        :class:`DaemonError` when there is no frame area (``"inline"``, or the
        daemon offers none) or no free slot (receive a reply first).
        """
        if self._area is None and self.transport != "inline" and self._shm_refused is None:
            self.attach()
        if self._area is None:
            raise DaemonError("no frame area on this connection (inline transport, or the daemon offers none)",
                              "unavailable")
        if not self._free:
            raise DaemonError("every slot of the frame area is in flight or reserved: receive a reply first", "busy")
        slot = self._free.pop()
        self._reserved.add(slot)
        return slot, self._area.inputs[slot]

    @_one_at_a_time
    def submit(self, slot: int) -> int:
        """Send the frame written into a :meth:`reserve`-d slot; returns its request id (pair with :meth:`receive`)."""
        self._conn()  # closed (a lost connection drops the reservations too): say that, not "not reserved"
        if slot not in self._reserved:
            raise DaemonError(f"slot {slot} is not reserved (reserve() it, and submit it once)", "bad_request")
        request_id = next(self._ids)
        try:
            wire.send_message(self._conn(), wire.encode_slot_request(request_id, slot))
        except OSError as err:
            self.close()
            raise DaemonError(f"lost the connection to {self.socket_path}: {err.strerror or err}") from err
        self._reserved.discard(slot)
        self._slot_of[request_id] = slot
        return request_id

    def _drop_area(self) -> None:
        area, self._area = self._area, None
        self._orphans.update(self._slot_of)
        self._free, self._slot_of, self._reserved = [], {}, set()
        if area is not None:
            area.close()

    def _to_slot(self, tensors: Mapping[str, np.ndarray]) -> Optional[int]:
        """Copy ``tensors`` into a free slot and return it; None (send inline) if none is free or they do not fit."""
        area = self._area
        if not self._free or area is None:
            return None
        views = area.inputs[self._free[-1]]
        if len(tensors) != len(views):
            return None
        for name, array in tensors.items():
            view = views.get(name)
            if view is None or not isinstance(array, np.ndarray) or array.shape != view.shape \
                    or array.dtype != view.dtype:
                return None  # inline: the daemon then says what does not match, as for any client
        for name, array in tensors.items():
            np.copyto(views[name], array, casting="no")
        return self._free.pop()

    @_one_at_a_time
    def receive(self, request_id: int, out: Optional[Mapping[str, np.ndarray]] = None) -> wire.Message:
        """The reply to ``request_id`` (replies to other ids read meanwhile are kept).

        ``out``: arrays to receive the output tensors into (name -> array of
        the output's shape and dtype, C-contiguous), e.g. kept from the last
        call: the reply's bytes go from the socket straight into them, and
        the message's tensors are these arrays. A tensor that does not fit
        its array (or has none) is received into a fresh array.
        """
        _check_out(out)  # before a byte is read: a reply left half-read puts the connection out of step
        reader = wire.PacedReader(self._conn())
        reader.limit(self.timeout)  # the whole reply within the timeout, however slowly its bytes come
        while request_id not in self._early:
            try:
                header = wire.read_head(reader, self.max_reply_bytes, self._inbox)
                if header is None:
                    self.close()
                    raise DaemonError(f"the daemon at {self.socket_path} closed the connection")
                if header.ok is None:  # e.g. an echo of the request: no pipeit daemon answers without "ok"
                    self.close()
                    raise DaemonError(f"{self.socket_path} answered with a message that is not a pipeit reply "
                                      "(no \"ok\" field): is it a `pipeit serve` socket?", "malformed")
                message = wire.Message(header, self._body(header, out if header.id == request_id else None, reader))
            except (socket.timeout, wire.MessageTimeout):
                raise ReplyTimeout(f"no reply from {self.socket_path} in time", "unavailable") from None
            except (OSError, wire.ProtocolError) as err:
                self.close()
                raise DaemonError(f"lost the connection to {self.socket_path}: {err}") from err
            rid = header.id
            if rid is None:  # a reply to no request: the daemon is refusing this connection
                self.close()
                _raise(message)
            if rid in self._abandoned:  # late: the daemon is done with its slot, and nobody wants the outputs
                self._abandoned.discard(rid)
                self._orphans.discard(rid)
                slot = self._slot_of.pop(rid, None)
                if slot is not None:
                    self._free.append(slot)
                continue
            self._early[rid] = message
        message = self._early.pop(request_id)
        if request_id in self._orphans:
            self._orphans.discard(request_id)
            if message.header.ok and message.header.slot is not None:
                raise DaemonError(f"request {request_id}: its frame area was dropped before the reply was read "
                                  "(a re-attach); send the frame again", "reattach")
        slot = self._slot_of.pop(request_id, None)
        if slot is not None:
            self._free.append(slot)  # answered (either way): the daemon is done with the slot
            if message.header.ok:
                if message.header.slot != slot or self._area is None:
                    self.close()
                    raise DaemonError(f"the daemon answered request {request_id} for slot {message.header.slot}, "
                                      f"not {slot}", "malformed")
                return wire.Message(message.header, self._from_slot(slot, out))
            if (message.header.error or {}).get("code") == "reattach":
                self._drop_area()  # stale (the daemon reloaded another model): the next send attaches again
        if not message.header.ok:
            if (message.header.error or {}).get("code") in CLOSING_CODES:
                self.close()  # the daemon closes its side after this answer: drop ours (and the area) now
            _raise(message)
        return message

    def _from_slot(self, slot: int, out: Optional[Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        """The outputs in ``slot``, copied into the caller's ``out`` arrays where they fit, else fresh ones."""
        tensors: Dict[str, np.ndarray] = {}
        for name, view in self._area.outputs[slot].items():  # type: ignore[union-attr]
            array = out.get(name) if out else None
            if isinstance(array, np.ndarray) and array.shape == view.shape and array.dtype == view.dtype \
                    and array.flags.writeable:
                np.copyto(array, view)
            else:
                array = view.copy()
            tensors[name] = array
        return tensors

    def _refusal_or_lost(self, err: OSError, request_id: int) -> None:
        """A send failed: if the daemon refused the connection ("too many clients") or this very request
        (a frame too large, answered before its bytes were all read) first, say that, not the broken
        pipe the refusal caused. Always raises."""
        sock = self._conn()
        try:
            reader = wire.PacedReader(sock)
            reader.limit(0.5)
            header = wire.read_head(reader, 1 << 16, self._inbox)
        except (OSError, wire.ProtocolError):
            header = None
        self.close()
        if header is not None and header.ok is False and header.id in (None, request_id):
            _raise(wire.Message(header, {}))
        raise DaemonError(f"lost the connection to {self.socket_path}: {err.strerror or err}") from err

    def _body(self, header: wire.Header, out: Optional[Mapping[str, np.ndarray]],
              reader: "wire.PacedReader") -> Dict[str, np.ndarray]:
        tensors: Dict[str, np.ndarray] = {}
        for spec in header.tensors:
            array = out.get(spec.name) if out else None
            if not (isinstance(array, np.ndarray) and array.shape == spec.shape
                    and array.dtype == wire.DTYPES[spec.dtype] and array.flags.c_contiguous and array.flags.writeable):
                array = np.empty(spec.shape, dtype=wire.DTYPES[spec.dtype])
            if array.nbytes:
                wire.read_body_into(reader, memoryview(array).cast("B"), self._inbox)
            tensors[spec.name] = array
        return tensors

    # ---- operations --------------------------------------------------------------------
    @_one_at_a_time
    def infer(self, inputs: Union[np.ndarray, Mapping[str, np.ndarray]],
              out: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
        """Run one frame; ``inputs`` is a dict name -> array (or one array, named by the daemon's model).

        The input arrays are sent as they are (no copy in Python: ``sendmsg``
        takes them whole). ``out`` (see :meth:`receive`) receives the outputs
        in place, for a caller that keeps its output buffers between frames.
        Through the frame area, a ``reattach`` answer (the daemon reloaded a
        model with other inputs or outputs) attaches again and resends once.
        """
        _check_out(out)  # before the frame is sent
        named = self._named(inputs)
        try:
            return self._reply(self.send("infer", named), out).tensors
        except DaemonError as err:
            if err.code == "bad_request" and named is not inputs and self._input_renamed():
                return self._reply(self.send("infer", self._named(inputs)), out).tensors
            if err.code != "reattach" or self.transport == "inline":
                raise
            self._shm_refused = None
            return self._reply(self.send("infer", named), out).tensors

    def _reply(self, request_id: int, out: Optional[Mapping[str, np.ndarray]] = None) -> wire.Message:
        """:meth:`receive` for a request this client sent itself: on a timeout the request is given up,
        and its reply, when it comes, frees its slot and is dropped (else every timed-out frame would keep a
        slot of the frame area, and its reply the memory of its outputs, for good)."""
        try:
            return self.receive(request_id, out)
        except ReplyTimeout:
            self._abandoned.add(request_id)
            raise

    def infer_many(self, frames: Iterable[Union[np.ndarray, Mapping[str, np.ndarray]]],
                   window: int = 4) -> Iterator[Dict[str, np.ndarray]]:
        """Outputs of each frame in order, keeping up to ``window`` frames in flight."""
        if window < 1:
            raise DaemonError("window must be >= 1", "bad_request")
        pending: Deque[Tuple[int, Mapping[str, np.ndarray]]] = collections.deque()
        for frame in frames:
            named = self._named(frame)
            pending.append((self.send("infer", named), named))
            if len(pending) >= window:
                yield self._received_or_resent(*pending.popleft())
        while pending:
            yield self._received_or_resent(*pending.popleft())

    def _received_or_resent(self, request_id: int, named: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The outputs of ``request_id``; a frame answered ``reattach`` (the daemon reloaded a model with
        other inputs or outputs) is sent again, through a new frame area, as :meth:`infer` does."""
        try:
            return self._reply(request_id).tensors
        except DaemonError as err:
            if err.code != "reattach" or self.transport == "inline":
                raise
            self._shm_refused = None
            return self._reply(self.send("infer", named)).tensors

    @_one_at_a_time
    def status(self) -> Dict[str, Any]:
        """The daemon's status document (fps, latency, stages, plan, clusters, re-plans)."""
        return dict(self._reply(self.send("status")).header.info or {})

    @_one_at_a_time
    def replan(self) -> Dict[str, Any]:
        """Ask for a re-plan now; returns the event (``kind`` says whether the pipeline switched)."""
        return dict(self._reply(self.send("replan")).header.info or {})

    def _input_renamed(self) -> bool:
        """After a refused ``infer(array)``: did a reload give the model's input another name? (Read again.)"""
        before, self._input_name = self._input_name, None
        plan_inputs = self.status().get("inputs") or []
        return len(plan_inputs) == 1 and plan_inputs[0]["name"] != before

    def _named(self, inputs: Union[np.ndarray, Mapping[str, np.ndarray]]) -> Mapping[str, np.ndarray]:
        if type(inputs) is dict or isinstance(inputs, Mapping):  # a plain dict skips the ABC check (~10 us here)
            return inputs
        if self._input_name is None:
            plan_inputs = self.status().get("inputs") or []
            if len(plan_inputs) != 1:
                raise DaemonError(f"the model has {len(plan_inputs)} inputs; pass a dict name -> array",
                                  "bad_request")
            self._input_name = plan_inputs[0]["name"]
            self._input_dtype = plan_inputs[0].get("dtype")
        if not isinstance(inputs, np.ndarray) and self._input_dtype:  # nested lists: the model's dtype, not float64
            try:
                return {self._input_name: np.asarray(inputs, dtype=self._input_dtype)}
            except (TypeError, ValueError) as err:
                raise DaemonError(f"cannot make a {self._input_dtype} array of the input: {err}", "bad_request") \
                    from err
        return {self._input_name: np.asarray(inputs)}


def _check_slots(slots: Any) -> None:
    """A frame-area slot count must be an integer in 1..MAX_SLOTS (the constructor's and attach()'s)."""
    if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= wire.MAX_SLOTS:
        raise DaemonError(f"slots must be an integer in 1..{wire.MAX_SLOTS}, not {slots!r}", "bad_request")


def _check_out(out: Any) -> None:
    """``out`` must be None or a mapping name -> array (see :meth:`Client.receive`)."""
    if out is not None and not isinstance(out, Mapping):
        raise TypeError(f"out must be a dict name -> array (or None), not {type(out).__name__}")


def _close_fds(fds: List[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _raise(message: wire.Message) -> None:
    error = message.header.error or {}
    code = error.get("code", "internal")
    raise DaemonError(f"daemon refused the request ({code}): {error.get('message', 'no message')}", code)
