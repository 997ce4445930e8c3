"""One client connection of the daemon: its reader, its writer, its in-flight allowance, its frame area.

The reader reads and checks each request and hands its frame to the
pipeline itself (through the server's gate and engine), so a lone request
crosses no thread of the daemon but this reader and the executor's
dispatcher; replies go out on the dispatcher's thread when the socket takes
them at once, and through this connection's writer (started on first need)
when they must wait. The server (:mod:`pipeit.daemon.server`) owns what all
connections share: the gate, the engine, admission, latency records, the
reader pool; a connection reaches them through its ``server``.
"""

from __future__ import annotations

import collections
import functools
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Tuple

import numpy as np

from pipeit.daemon import protocol as wire
from pipeit.daemon.shm import FrameArea, shm_supported
from pipeit.errors import PipeitError

if TYPE_CHECKING:
    from pipeit.daemon.server import Server

__all__ = ["Connection", "Gate", "Request", "ThreadPool", "read_views", "release_reply", "request_problem",
           "SLOW_BODY_S", "ATTACH_READ_S", "MAX_QUEUED_REPLIES"]

_log = logging.getLogger("pipeit.daemon")
#: a request's body that is not all in the socket when its slot is free must arrive within this (seconds)
SLOW_BODY_S = 1.0
#: an ``attach`` is answered once its client has read every earlier reply; else refused after this (seconds)
ATTACH_READ_S = 5.0
#: replies a connection may have queued and unsent before its requests stop being read: a client that
#: sends and never reads then stalls itself (its socket fills), not the daemon's memory or descriptors
MAX_QUEUED_REPLIES = 64


class ThreadPool:
    """Daemon threads that run one task after another, kept idle for ``idle_s`` before they end.

    For connection readers: a garbage sender or a one-shot ``pipeit infer``
    opens a connection for a single exchange, and a fresh thread for each
    (a clone, a Python thread state, a start hand-shake) cost more CPU than
    the exchange. Daemon threads, unlike ``concurrent.futures``' workers,
    never hold up the process's exit.
    """

    def __init__(self, name: str, idle_s: float = 30.0):
        self.name = name
        self.idle_s = float(idle_s)
        self._lock = threading.Lock()
        self._idle: List[Any] = []  # [event, task] slots of waiting threads
        self._count = 0

    def run(self, task: Any) -> None:
        with self._lock:
            if self._idle:
                slot = self._idle.pop()
                slot[1] = task
                slot[0].set()
                return
            self._count += 1
            number = self._count
        threading.Thread(target=self._loop, args=(task,), name=f"{self.name}-{number}", daemon=True).start()

    def _loop(self, task: Any) -> None:
        slot = [threading.Event(), None]
        while True:
            try:
                task()
            except Exception:  # noqa: BLE001 -- a task's bug must not shrink the pool silently
                _log.exception("%s: a task failed", self.name)
            with self._lock:
                slot[0].clear()
                slot[1] = None
                self._idle.append(slot)
            if not slot[0].wait(self.idle_s):
                with self._lock:
                    if any(s is slot for s in self._idle):  # nobody took it meanwhile: end
                        self._idle = [s for s in self._idle if s is not slot]
                        return
                slot[0].wait()  # taken just as it timed out: the task is being handed over
            task = slot[1]


@dataclass
class Request:
    conn: "Connection"
    request_id: int
    t_received: float
    slot: Optional[int] = None  # a frame-area request: its slot, in ``area``
    area: Optional[FrameArea] = None
    in_place: bool = False  # the pipeline reads its inputs from the area and writes its outputs there
    #: Server._finish will count it out of ``_admitted`` once its reply is handed over (set once the frame is
    #: queued, or just before an error path calls _finish); until then the reader counts it out if it fails
    handed: bool = False


class Gate:
    """A first-come, first-served turn at the pipeline's first ring, handed from one reader to the next.

    Fairness between clients without a scheduler thread: a reader that has a
    frame to submit waits here for its turn (its body still in the socket),
    then waits for a free slot of edge 0 and reads the body straight into it.
    A reader holds at most one frame at a time, so first come, first served
    across readers is round robin across clients: a client that floods only
    queues behind itself. The gate is handed over directly to the longest
    waiter (one wake-up, no thundering herd, no barging).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = False
        self._waiting: Deque[Any] = collections.deque()

    def enter(self) -> None:
        with self._lock:
            if not self._busy:
                self._busy = True
                return
            turn = threading.Lock()  # a one-shot event: acquired here, released by the one handing over
            turn.acquire()
            self._waiting.append(turn)
        turn.acquire()

    def leave(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()  # still busy: the turn passes straight on
            else:
                self._busy = False

    @property
    def waiting(self) -> int:
        return len(self._waiting)


class Connection:
    """One client: its socket, its reply queue, its in-flight allowance."""

    def __init__(self, server: "Server", sock: socket.socket, number: int, peer: Optional[int] = None):
        self.server = server
        self.sock = sock  # written by the writer (blocking, never a timeout: see wire.PacedReader)
        self.reader = wire.PacedReader(sock)  # what the reader thread reads through, with its time limits
        self.number = number
        self.peer = peer  # the client's pid (its reject budget), where the kernel told
        # The in-flight allowance: ``per_client`` tokens in a C-level queue (taking one blocks while the
        # client has that many requests in flight). A threading.Semaphore does the same in a dozen
        # Python calls a request, on the reader's and the dispatcher's hot path.
        tokens: "queue.SimpleQueue[bool]" = queue.SimpleQueue()
        for _ in range(server.config.per_client):
            tokens.put(True)
        self._tokens = tokens
        self.take_allowance = tokens.get
        self.give_allowance = functools.partial(tokens.put, True)
        self.replies: Deque[Any] = collections.deque()
        # reply_ready's lock, entered directly on the reply path (the same lock, without the Python-level
        # Condition.__enter__/__exit__ frames); wait/notify go through reply_ready
        self._reply_lock = threading.RLock()
        self.reply_ready = threading.Condition(self._reply_lock)
        self.closed = False
        self.inbox = wire.Inbox()
        #: a body that did not arrive whole (the client's send buffer is smaller than a frame) is read
        #: here before its turn, so that a slow sender never holds a ring slot; made on first need
        self._staging: Optional[memoryview] = None
        self._checked: Optional[Tuple[Any, Any]] = None  # (input rules, tensor specs) last found to match
        self._writing = False  # the writer thread is sending (guarded by reply_ready)
        self._direct = False  # a caller of reply() is sending itself (guarded by reply_ready)
        self.writer: Optional[threading.Thread] = None  # started on the first reply that must wait
        self.done = threading.Event()  # set once the connection is closed and forgotten
        #: the connection's shared-memory frame area (``attach``), and the model I/O it was last found to fit
        self.area: Optional[FrameArea] = None
        self._area_fits: Any = None

    def start(self) -> None:
        self.server._readers.run(self._read_loop)

    def _queue(self, item: Any) -> None:
        """Queue for the writer, starting it if need be (call holding ``reply_ready``)."""
        self.replies.append(item)
        if self.writer is None:
            self.writer = threading.Thread(target=self._write_loop, name=f"pipeit-client{self.number}-write",
                                           daemon=True)
            self.writer.start()
        self.reply_ready.notify()

    # ---- replies ---------------------------------------------------------------------
    def reply(self, item: Any) -> None:
        """Send ``(buffers, request or None)`` now if the socket takes it, else queue it for the writer.

        ``"close"`` closes the connection after what is queued before it (at
        once, in the caller's thread, when nothing is). Never blocks on the
        client: what the socket does not take at once goes to the writer, in
        order, ahead of anything queued later.
        """
        with self._reply_lock:
            if self.done.is_set():
                release_reply(item)
                return  # closed and forgotten: a late reply has no one to go to
            idle = not self.replies and not self._writing and not self._direct
            if item == "close":
                if idle and self.writer is None:
                    self.done.set()  # no later reply() queues anything: the close happens just below
                else:
                    self._queue(item)
                    return
            elif idle and not self.closed:
                self._direct = True
            else:
                self._queue(item)
                return
        if item == "close":
            self._shut()
            return
        buffers, request = item
        try:
            rest = wire.send_nowait(self.sock, buffers)
        except OSError:
            rest = None
            release_reply(item)
            self.closed = True  # the client went away; the writer drops what comes after
        with self._reply_lock:
            self._direct = False
            if rest:
                self.replies.appendleft((rest, request))
            if self.replies:
                if self.writer is None:
                    self._queue(self.replies.popleft())  # starts the writer; keeps the order
                else:
                    self.reply_ready.notify()
        if rest == [] and request is not None:
            self.server._record_latency(request.t_received)

    def _write_loop(self) -> None:
        while True:
            with self.reply_ready:
                while not self.replies or self._direct:
                    self.reply_ready.wait()
                item = self.replies.popleft()
                self._writing = item != "close"
                if len(self.replies) == MAX_QUEUED_REPLIES - 1:
                    self.reply_ready.notify_all()  # the reader may be waiting for room (_await_reply_room)
            if item == "close":
                break
            buffers, request = item
            try:
                if self.closed:
                    release_reply(item)
                else:
                    wire.send_message(self.sock, buffers)
                    if request is not None:
                        self.server._record_latency(request.t_received)
            except OSError:
                self.closed = True  # the client went away; its remaining replies are dropped
            with self.reply_ready:
                self._writing = False
        with self.reply_ready:
            self.done.set()
        self._shut()

    def _await_reply_room(self) -> bool:
        """Before reading the next request: wait while :data:`MAX_QUEUED_REPLIES` replies are unsent
        (False: the connection closed meanwhile)."""
        if len(self.replies) < MAX_QUEUED_REPLIES:
            return True
        with self.reply_ready:
            while len(self.replies) >= MAX_QUEUED_REPLIES and not self.closed and not self.done.is_set():
                self.reply_ready.wait(0.5)
        return not self.closed

    def abort(self) -> None:
        """Cut the connection now (a client that does not take its replies when the daemon stops):
        a writer blocked on it fails, drops what is left and closes."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        with self.reply_ready:
            self.reply_ready.notify_all()

    def _shut(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self.area is not None:
            self._quiesce()  # frames still in flight write into the area: let them, then drop it
            self._drop_area()
        with self._reply_lock:  # a message queued after the close (never sent) may hold a descriptor
            while self.replies:
                release_reply(self.replies.popleft())
        self.server._forget(self)

    # ---- requests --------------------------------------------------------------------
    def _read_loop(self) -> None:
        server = self.server
        try:
            while not self.closed:
                if not self._await_reply_room():
                    break
                try:
                    self.reader.limit_after_first_bytes(SLOW_BODY_S)  # idle between messages, not inside one
                    # the limit of the model serving when the message arrives, not when the wait began
                    header = wire.read_head(self.reader, server.max_body, self.inbox)
                    self.reader.limit(None)
                    if header is None:
                        self._quiesce()  # a client may half-close and still read its answers
                        break
                    if not self._handle(header):
                        break
                except wire.ProtocolError as err:
                    rejected = server.count("rejected")
                    server._budgets.reject(self.peer, time.monotonic())
                    # A garbage sender must not flood the log (nor pay for a line each): the first
                    # few in full, then one line per thousand; each one still at debug level.
                    level = logging.INFO if rejected <= 10 or rejected % 1000 == 0 else logging.DEBUG
                    if _log.isEnabledFor(level):
                        _log.log(level, "client %d: %s (%s); closing its connection (%d rejected so far)",
                                 self.number, err, err.code, rejected)
                    if err.code != "truncated":
                        message = server.oversized_reason(err.header, str(err)) if err.header else str(err)
                        self.reply((wire.encode_error(err.request_id, err.code, message), None))
                    break
                except OSError:
                    break
        finally:
            self.reply("close")

    def _handle(self, header: wire.Header) -> bool:
        """Act on one request whose header is read (its body is still to read); False closes the connection."""
        t_read = time.perf_counter()
        server = self.server
        rid = header.id
        if rid is None or header.op not in wire.OPS:
            server.count("rejected")
            self._skip_body(header)
            what = "has no id" if rid is None else f"asks for unknown operation {header.op!r}"
            self.reply((wire.encode_error(rid, "bad_request", f"request {what}; ops: {', '.join(wire.OPS)}"),
                        None))
            return rid is not None
        problem = request_problem(header)
        if problem:
            server.count("rejected")
            self._skip_body(header)
            self.reply((wire.encode_error(rid, "bad_request", problem, header.op), None))
            return True
        if header.op in ("attach", "detach"):
            self._skip_body(header)
            if header.op == "attach":
                self._attach(header)
            else:
                self._detach(rid)
            return True
        if header.slot is not None and header.op == "infer":
            return self._handle_slot(header, t_read)
        if header.op != "infer":
            self._skip_body(header)
            if header.op == "status":
                self.reply((wire.encode_reply(rid, "status", info=server.status()), None))
            else:
                # in flight like a frame: a client that half-closes after asking still gets the answer
                # (_quiesce waits for every allowance before the connection closes)
                self.take_allowance()
                server.replan_for_client(self, rid)
            return True
        # A stream of infer requests repeats one header (the inbox hands back the same tensor specs):
        # checked once per model and layout, not per frame.
        rules = server._input_rules()
        if self._checked is None or self._checked[0] is not rules or self._checked[1] is not header.tensors:
            problem = server.check_specs(header.tensors)
            if problem:
                server.count("rejected")
                self._skip_body(header)
                self.reply((wire.encode_error(rid, "bad_request", problem, "infer"), None))
                return True
            self._checked = (rules, header.tensors)
        if not server._admit():
            self._skip_body(header)
            self.reply((wire.encode_error(rid, "unavailable", "the daemon is shutting down", "infer"), None))
            return True
        request = Request(self, rid, t_read)
        try:
            self.take_allowance()
            if self.closed:
                self.give_allowance()
                return False
            self._submit(header, request)
        finally:
            if not request.handed:
                server._admitted_done()
        return True

    # ---- the shared-memory frame area ---------------------------------------------------
    def _quiesce(self) -> bool:
        """Wait until none of this connection's requests is in flight (False: not within the drain timeout).

        Replacing or dropping a frame area is done at such a point: no frame
        of the old area is then read or written any more.
        """
        limit = self.server.config.per_client
        deadline = time.monotonic() + self.server.config.drain_timeout_s
        taken = 0
        try:
            while taken < limit:
                self._tokens.get(timeout=max(0.0, deadline - time.monotonic()))
                taken += 1
        except queue.Empty:
            pass
        for _ in range(taken):
            self.give_allowance()
        return taken == limit

    def _drop_area(self) -> None:
        area, self.area, self._area_fits = self.area, None, None
        if area is not None:
            self.server.engine.forget_area(area)
            area.close()  # a frame still using it (after a drain timeout) keeps its views: see FrameArea.close
            self.server.count("areas_closed")

    def _attach(self, header: wire.Header) -> None:
        """``attach``: a fresh frame area of ``slots`` slots (at most the in-flight limit), its fd in the reply."""
        server, rid = self.server, header.id
        slots = (header.info or {}).get("slots")
        if isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= wire.MAX_SLOTS:
            server.count("rejected")
            self.reply((wire.encode_error(rid, "bad_request", f"attach needs \"info\": {{\"slots\": N}} with N in "
                                          f"1..{wire.MAX_SLOTS}", "attach"), None))
            return
        if not shm_supported():
            self.reply((wire.encode_error(rid, "unavailable", "no shared-memory transport on this system (memfd); "
                                          "send frames inline", "attach"), None))
            return
        try:
            layout = server.area_layout(min(slots, server.config.per_client))
        except PipeitError as err:
            self.reply((wire.encode_error(rid, "unavailable", str(err), "attach"), None))
            return
        self._quiesce()
        if not self._replies_read(ATTACH_READ_S):
            server.count("rejected")
            self.reply((wire.encode_error(rid, "busy", f"earlier replies on this connection are still unread after "
                                          f"{ATTACH_READ_S:g} s: read them before attaching again", "attach"), None))
            return
        self._drop_area()
        try:
            area, fd = FrameArea.create(layout)
        except OSError as err:
            self.reply((wire.encode_error(rid, "unavailable", f"cannot create a frame area: {err}", "attach"), None))
            return
        self.area = area
        server.count("areas_created")
        self.reply((wire.WithFds(wire.encode_reply(rid, "attach", info=layout.to_json()), [fd]), None))

    def _replies_read(self, timeout_s: float) -> bool:
        """Wait until the client has read everything sent to it (False: not within ``timeout_s``, or closed).

        An attach reply carries a descriptor of a new area; one the client
        has not read yet keeps its area's memory alive after the daemon drops
        it, and counts against the daemon user's descriptors in flight. A
        client that sent ``attach`` after ``attach`` and never read would
        otherwise pile up areas without bound (and, past the user's limit,
        make every other client's attach fail). A client that reads has
        read the previous attach reply before its next attach, so at most
        one area per connection is ever in a socket unread.
        """
        deadline = time.monotonic() + timeout_s
        while not self.closed:
            with self._reply_lock:
                idle = not self.replies and not self._writing and not self._direct
            if idle and wire.unsent_bytes(self.sock) <= 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return False

    def _detach(self, rid: int) -> None:
        """``detach``: drop the frame area once this connection's frames are answered (infers go inline)."""
        self._quiesce()
        had = self.area is not None
        self._drop_area()
        self.reply((wire.encode_reply(rid, "detach", info={"detached": had}), None))

    def _handle_slot(self, header: wire.Header, t_read: float) -> bool:
        """An ``infer`` whose inputs are in a slot of the frame area: checked, then submitted (no body)."""
        server, rid, k = self.server, header.id, header.slot
        area = self.area
        problem = None
        code = "bad_request"
        if header.tensors:
            problem = "an infer with a slot carries no tensors"
        elif area is None:
            problem, code = "no frame area on this connection: attach first", "reattach"
        else:
            key = server._io_key()
            if self._area_fits is not key:  # checked once per area and pipeline, not per frame
                if area.layout.key != key:
                    problem, code = "the model's inputs or outputs changed (reloaded): attach again", "reattach"
                else:
                    self._area_fits = key
        if problem is None:
            if k >= area.layout.slots:  # type: ignore[union-attr]
                problem = f"slot {k} is outside 0..{area.layout.slots - 1}"  # type: ignore[union-attr]
            elif area.busy[k]:  # type: ignore[union-attr]
                problem = f"slot {k} is still in flight (wait for its reply before reusing it)"
        if problem is not None:
            server.count("rejected")
            self._skip_body(header)
            self.reply((wire.encode_error(rid, code, problem, "infer"), None))
            return True
        if not server._admit():
            self.reply((wire.encode_error(rid, "unavailable", "the daemon is shutting down", "infer"), None))
            return True
        request = Request(self, rid, t_read, k, area)
        try:
            self.take_allowance()
            if self.closed:
                self.give_allowance()
                return False
            area.busy[k] = 1  # type: ignore[union-attr]
            self._submit_slot(request)
        finally:
            if not request.handed:
                area.busy[k] = 0  # type: ignore[union-attr]
                server._admitted_done()
        return True

    def _submit_slot(self, request: Request) -> None:
        """Hand the pipeline a frame whose inputs are in the area's slot: read there by stage 0 (no copy),
        its outputs written back there by the dispatcher.

        The slot is the daemon's until the reply (the protocol's rule): a
        client that writes into it meanwhile garbles only its own frame. No
        turn at the gate: such a frame takes no slot of the first ring, and
        the client's allowance bounds what it has in flight. Where the
        pipeline cannot map the area, the slot's inputs are copied into its
        first ring in the reader's turn instead (:meth:`_copy_slot`).
        """
        server = self.server
        area, k = request.area, request.slot
        request.in_place = True  # before the frame can finish (its callback reads it)
        try:
            future = server.engine.submit_area(area, k, lambda f, r=request: server._finish(r, f, None))
        except PipeitError as err:
            server._refused(request, err)
            return
        if future is None:
            request.in_place = False
            self._copy_slot(request)
            return
        request.handed = True

    def _copy_slot(self, request: Request) -> None:
        """Copy the slot's inputs into the pipeline's ring slot in the reader's turn (one copy per input)."""
        server = self.server
        inputs = request.area.inputs[request.slot]  # type: ignore[union-attr,index]
        state = [True]

        def leave() -> None:
            if state[0]:
                state[0] = False
                server._gate.leave()

        def fill(views: Dict[str, np.ndarray]) -> None:
            leave()
            for name, source in inputs.items():
                np.copyto(views[name], source, casting="no")

        server._gate.enter()
        try:
            server.engine.submit_into(fill, lambda f, r=request: server._finish(r, f, None))
            request.handed = True
        except PipeitError as err:
            leave()
            server._refused(request, err)
        finally:
            leave()

    def _skip_body(self, header: wire.Header) -> None:
        """Read past the body of a request that is answered without it (the stream stays in step)."""
        if header.body_bytes:
            scratch = self._stage(min(header.body_bytes, 1 << 16))
            self._in_time(header, lambda: wire.discard(self.reader, header.body_bytes, scratch, self.inbox))

    def _in_time(self, header: wire.Header, read: Any) -> None:
        """``read()`` the rest of a body, which must come within :data:`SLOW_BODY_S` (else "truncated").

        A client that stops mid-body must not hold anything for long: a ring
        slot, a drain on SIGTERM. An honest one's body is already in the
        socket or on its way (a local ``sendmsg`` in progress).
        """
        self.reader.limit(SLOW_BODY_S)  # the whole body, not each recv: a dribbling client is cut off too
        try:
            read()
        except wire.MessageTimeout:
            raise wire.ProtocolError(f"the request's body did not arrive within {SLOW_BODY_S} s", "truncated",
                                     header.id) from None
        finally:
            self.reader.limit(None)

    def _stage(self, nbytes: int) -> memoryview:
        """The connection's staging buffer, at least ``nbytes`` (allocated once, bounded by the model's inputs)."""
        if self._staging is None or self._staging.nbytes < nbytes:
            self._staging = memoryview(bytearray(max(nbytes, self.server.max_body())))
        return self._staging

    def _submit(self, header: wire.Header, request: Request) -> None:
        """Give the frame to the pipeline, its body read from the socket straight into the ring slot.

        The gate is held only while waiting for a free slot of the first
        ring; it is handed on as soon as the slot is ours, before the body is
        read, so a body still on its way delays no one's turn. A body not all
        in the socket yet (the reader woke on the first bytes of a large
        send, the common case one request at a time) is read into the slot
        too, within :data:`SLOW_BODY_S` and by one connection at a time: a
        client that stalls mid-body holds one slot for that long at most,
        then its connection is closed. Another such body meanwhile is read
        into its connection's staging buffer first (one copy), before its
        turn, within the same limit.
        """
        sock, inbox, server = self.reader, self.inbox, self.server
        need = header.body_bytes - inbox.pending
        trickle = need > 0 and wire.queued_bytes(sock) < need
        staged: Optional[Dict[str, np.ndarray]] = None
        if trickle and not server._trickle.acquire(blocking=False):
            trickle = False
            buffer = self._stage(header.body_bytes)[:header.body_bytes]
            try:
                self._in_time(header, lambda: wire.read_body_into(sock, buffer, inbox))
            except wire.ProtocolError as err:
                self.give_allowance()
                err.request_id = header.id
                raise
            staged = wire.decode_tensors(header, buffer)
        state = [True, False]  # [holding the gate, the body was (being) read]

        def leave() -> None:
            if state[0]:
                state[0] = False
                server._gate.leave()

        def fill(views: Dict[str, np.ndarray]) -> None:
            leave()  # the slot is ours: the next reader may wait for the next one
            state[1] = True
            if staged is not None:
                for spec in header.tensors:
                    np.copyto(views[spec.name], staged[spec.name], casting="no")
                return
            if trickle:
                self._in_time(header, lambda: read_views(sock, inbox, header, views))
            else:
                read_views(sock, inbox, header, views)

        server._gate.enter()
        try:
            server.engine.submit_into(fill, lambda f, r=request: server._finish(r, f, None))
            request.handed = True
        except wire.ProtocolError as err:  # the client went away mid-body: the slot is back, the frame never was
            leave()
            self.give_allowance()
            err.request_id = header.id
            raise
        except PipeitError as err:
            leave()
            if not state[1] and staged is None:
                self._skip_body(header)  # the pipeline failed before the body was read: keep the stream in step
            server._refused(request, err)
            return
        finally:
            leave()
            if trickle:
                server._trickle.release()


def request_problem(header: wire.Header) -> str:
    """What makes a well-formed header no request of its operation ("" when nothing): reply fields,
    tensors or a slot where the operation takes none, an attach ``info`` other than ``{"slots": N}``."""
    if header.ok is not None or header.error is not None:
        return 'a request carries no "ok" or "error" (reply fields)'
    if header.op != "infer" and (header.tensors or header.slot is not None):
        return f"{header.op} takes no tensors and no slot"
    if header.op == "attach" and set(header.info or {}) - {"slots"}:
        return 'attach takes "info": {"slots": N} and nothing else'
    return ""


def release_reply(item: Any) -> None:
    """Close the descriptors of a reply that will never be sent (an ``attach`` reply to a client gone)."""
    if isinstance(item, tuple) and isinstance(item[0], wire.WithFds):
        item[0].release()


def read_views(sock: socket.socket, inbox: wire.Inbox, header: wire.Header, views: Dict[str, np.ndarray]) -> None:
    """Read a body's tensors, in header order, straight into ``views`` (a ring slot's input arrays)."""
    for spec in header.tensors:
        view = views[spec.name]
        if view.nbytes:
            wire.read_body_into(sock, memoryview(view).cast("B"), inbox)


