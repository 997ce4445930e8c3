"""The on-device daemon: many clients on one Unix socket, one warm pipeline behind them.

Threads, and why each exists:

* the **main thread** accepts connections and handles signals (a self-pipe
  wakes it: SIGTERM/SIGINT drain and stop, SIGHUP reloads);
* per connection (:mod:`pipeit.daemon.connection`), a **reader** (reads and checks requests; blocks while its
  client has ``per_client`` requests in flight, so a greedy client throttles
  only itself; reader threads are kept for the next connection when one
  closes, since starting a thread costs more than a short connection's
  whole exchange) and, only once a reply has to wait for the client, a
  **writer** (a client that stops reading stalls only its own writer, never
  the pipeline; most connections never need one, garbage senders included);
* no scheduler: a reader with a frame waits for its turn at the pipeline's
  first ring (:class:`Gate`, first come first served; a reader holds one
  frame at a time, so that is round robin across clients), then reads the
  frame's body from its socket straight into the ring slot and submits it.
  Until its turn the body waits in the kernel's socket buffer: no copy, no
  buffer per request, no hand-off to another thread;
* one **monitor** closes a measurement window every ``window_s`` seconds,
  feeds the drift detector, re-plans and switches pipelines when told to.

A connection may ``attach`` a shared-memory frame area
(:mod:`pipeit.daemon.shm`): its ``infer`` requests then name a slot instead
of carrying a body; the reader hands the pipeline the slot itself (its
stage-0 workers map the area and read the frame there: no copy, no turn at
the first ring), and the finished frame's outputs are written back into the
slot before the header-only reply. An area is dropped (detach, re-attach,
disconnect) only once the connection's frames in flight are answered: each
one's allowance comes back after its outputs are in the area.

Replies are routed by request id: each future's callback sends its reply
on the connection that asked. The callback runs on the executor's
dispatcher thread and sends the reply itself with ``MSG_DONTWAIT`` when
the connection's writer has nothing queued, handing the writer only what
the socket would not take at once, so it never blocks. A lone request
thus crosses no thread of the daemon but its reader and the dispatcher
(each hand-off is a futex wake-up and a GIL hand-over, 30-80 us on a busy
2-core board, and CPU the workers need).
"""

from __future__ import annotations

import collections
import errno
import heapq
import logging
import os
import selectors
import signal
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cores.errors import CoresError
from cores.jsonfile import finite_or_null
from cores.model import Platform
from pipeit.daemon import protocol as wire
from pipeit.daemon.engine import Engine
from pipeit.daemon.replan import (
    DriftDetector, StageReading, SwitchPolicy, Window, WorkerReading, fit_times, measured_capacity_fps, plan_layout,
    evidence_of, predicted_fps_of, scaled_times, shrink_platform,
)
from pipeit.daemon.peers import DEFAULT_REJECT_BURST, DEFAULT_REJECT_RATE, PeerBudgets, RejectBudget, peer_pid
from pipeit.daemon.connection import Connection, Gate, Request, ThreadPool
from pipeit.daemon.shm import AreaLayout
from pipeit.daemon.sockets import bind_socket, claim_socket_path
from pipeit.daemon.state import PlanSource, Planned, make_plan, obtain_plan
from pipeit.errors import PipeitError
from pipeit.executor.stats import percentile
from pipeit.plan import file_sha256

__all__ = ["ServerConfig", "ReplanEvent", "Server"]

_log = logging.getLogger("pipeit.daemon")
_LATENCY_KEEP = 4096
#: on SIGTERM, how long all connections together get to take their last replies before they are cut
FLUSH_S = 5.0
#: re-plan events kept for status (the log has them all)
MAX_EVENTS = 1000
#: accept() errors that say the process (or system) has no descriptor left for a connection
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: how long the daemon stops listening once out of descriptors (connections wait in the backlog)
ACCEPT_PAUSE_S = 0.25
#: events that changed the pipeline (``status``'s "replans")
SWITCH_KINDS = ("switch", "revert", "reload", "restart")


@dataclass(frozen=True)
class ServerConfig:
    """How the daemon serves (the ``pipeit serve`` options)."""

    socket_path: str
    group: Optional[str] = None
    per_client: int = 4
    max_clients: int = 64
    #: connections one client process may hold (idle ones included): one process cannot take every slot
    max_clients_per_peer: int = 16
    window_s: float = 2.0
    sustain: int = 3
    threshold: float = 0.15
    replan: bool = True
    #: windows not judged after any re-plan (a new pipeline's first frames are warm-up, not drift)
    settle_windows: int = 2
    #: windows after the settle windows in which a switch's gain is measured (then confirmed, kept or reverted)
    confirm_windows: int = 2
    #: windows after a switch during which no other switch happens (hysteresis, see SwitchPolicy)
    cooldown_windows: int = 4
    #: a new plan must predict this much more fps than the current plan (like for like; see SwitchPolicy)
    switch_margin: float = 0.05
    drain_timeout_s: float = 60.0
    slots: int = 4
    #: connections closed on a protocol error that one client process may cause per second once its
    #: ``reject_burst`` is spent; its further connections wait for the budget (0 turns this off; see peers.py)
    reject_rate: float = DEFAULT_REJECT_RATE
    reject_burst: int = DEFAULT_REJECT_BURST


@dataclass(frozen=True)
class ReplanEvent:
    """One re-plan: when, why, what happened, and the frame rate around it."""

    at: float  # seconds since the daemon started
    kind: str  # switch | revert | confirm | recalibrate | reload | restart | skipped | failed
    reason: str
    generation_before: int
    generation_after: int
    fps_before: Optional[float]
    fps_after: Optional[float] = None
    layout_before: Tuple = ()
    layout_after: Tuple = ()
    measured_fps_before: Optional[float] = None  # what the old plan's service times sustain
    predicted_fps_after: Optional[float] = None  # what the plan in use afterwards predicts

    def to_json(self) -> dict:
        return {
            "at_s": round(self.at, 3), "kind": self.kind, "reason": self.reason,
            "generation_before": self.generation_before, "generation_after": self.generation_after,
            "fps_before": self.fps_before, "fps_after": self.fps_after,
            "measured_fps_before": self.measured_fps_before, "predicted_fps_after": self.predicted_fps_after,
            "stages_before": [[list(r), [list(w[1]) + [w[0]] for w in ws]] for r, ws in self.layout_before],
            "stages_after": [[list(r), [list(w[1]) + [w[0]] for w in ws]] for r, ws in self.layout_after],
        }


@dataclass
class _PendingCheck:
    """A switch waiting for its measured verdict (see SwitchPolicy.judge)."""

    generation: int  # the new pipeline's number
    layout: Tuple  # the new plan's layout (banned if reverted, for the same evidence)
    evidence: Tuple  # evidence_of() the drift the switch was made on
    old_plan: Any  # switched back to on a revert
    before_fps: Optional[float]  # the old plan's measured capacity just before the switch
    #: the time scale per cluster and the per-worker ms expected before the re-plan that made the switch:
    #: a revert undoes the switch *and* the evidence it was made on, so a real drift is seen again
    #: (and re-planned for, without the banned plan) while noise is forgotten
    old_factors: Dict[str, float]
    old_expected: Tuple[Tuple[Optional[float], ...], ...]
    old_predicted: Optional[float]  # its fps predicted from the times the switch was decided on
    answered_before: Optional[float]  # frames answered per second in the windows before the switch (median)
    samples: List[float]  # the new plan's measured capacity, one per window
    answered: List[float]  # and its answered fps


class Server:
    """Serves one model on one platform over a Unix socket (see the module docstring)."""

    def __init__(self, config: ServerConfig, model_path: str, platform: Platform, source: PlanSource):
        self.config = config
        self.model_path = Path(model_path)
        self.platform = platform
        self.source = source
        self.engine = Engine(self.model_path, platform, slots=config.slots, drain_timeout_s=config.drain_timeout_s)
        self.draining = False
        self._stopping = threading.Event()  # set when shutdown begins (see _reload)
        self.counters: Dict[str, int] = collections.Counter()
        self.events: List[ReplanEvent] = []
        self._client_replan = False  # a client's replan is running (replan_for_client)
        self._t0 = time.monotonic()
        self._fds_warned = 0.0  # when the last "out of descriptors" line was logged
        self._spare_fd = -1  # a descriptor kept for refusing a client when all others are in use
        self._planned: Optional[Planned] = None
        self._factors: Dict[str, float] = {}
        self._expected: Tuple[Optional[float], ...] = ()
        self._expected_workers: Tuple[Tuple[Optional[float], ...], ...] = ()
        self._last_readings: Tuple[StageReading, ...] = ()
        self._lock = threading.Lock()
        self._connections: Dict[int, Connection] = {}
        self._next_conn = 0
        self._gate = Gate()  # turns at the pipeline's first ring, first come first served
        self._trickle = threading.Lock()  # held by the one reader reading a body still on its way into a slot
        #: infer requests read and accepted whose reply is not yet handed to their connection (guarded by _lock):
        #: the drain on SIGTERM waits for it, not only for the pipeline (a frame is out of the pipeline a
        #: moment before its reply is sent)
        self._admitted = 0
        self._rules: Any = None  # (generation number, _input_rules()) cache
        self._io: Any = None  # (generation number, _io_key()) cache
        self._replies = wire.Encoder("infer", reply=True)  # reply headers built once per output layout
        self._readers = ThreadPool("pipeit-reader")
        self._budgets = PeerBudgets(RejectBudget(config.reject_rate, config.reject_burst))
        #: connections of over-budget peers waiting for a token: (due, sequence, socket, pid), a heap the
        #: accept loop serves (only it touches it)
        self._parked: List[Tuple[float, int, socket.socket, int]] = []
        self._parked_seq = 0
        self._latencies: Deque[float] = collections.deque(maxlen=_LATENCY_KEEP)
        self._done_times: Deque[float] = collections.deque(maxlen=100_000)
        self._window_stats: Any = None
        self._window_fps: Optional[float] = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._pending_signals: Deque[int] = collections.deque()
        self._listener: Optional[socket.socket] = None
        self._monitor = None
        self._detector = DriftDetector(config.threshold, config.sustain)
        self._cooldown = 0  # settle windows left (not judged)
        self._policy = SwitchPolicy(config.cooldown_windows, config.switch_margin)
        self._check: Optional[_PendingCheck] = None
        self._answered: Deque[float] = collections.deque(maxlen=3)  # answered fps of the last windows
        self._replan_lock = threading.Lock()
        #: the monitor's window clock: when the current window began, how long the last one lasted, and
        #: whether the current one is the short settle window after a platform-forced switch
        self._window_began = time.monotonic()
        self._window_len = config.window_s
        self._short_window = False

    def count(self, key: str) -> int:
        with self._lock:
            self.counters[key] += 1
            return self.counters[key]

    # ---- start and stop ----------------------------------------------------------------
    def start(self) -> None:
        """Plan, start the pipeline, bind the socket (in that order: a client never waits on a cold start)."""
        # the path is ours before minutes of planning: a second daemon started meanwhile is refused now
        lock_fd = claim_socket_path(self.config.socket_path, self.config.group)
        try:
            planned = obtain_plan(self.model_path, self.platform, self.source)
            self._planned = planned
            _log.info("plan from %s: %d stage(s), %s, predicted %.1f fps", planned.source,
                      len(planned.plan.stages), planned.plan.strategy, planned.plan.predicted_fps)
            generation = self.engine.start(planned.plan)
            self._set_expected(planned.plan)
            try:
                from cores.monitor import Monitor

                self._monitor = Monitor(self.platform, speeds=self.engine.speed_source)  # emulated: quota = speed
            except Exception as err:  # noqa: BLE001 -- readings are optional, serving is not
                _log.warning("no platform monitor (%s)", err)
            snap = self._snapshot()
            if snap is not None:
                self._detector.rebase(snap.online, [(c.name, c.max_freq_khz) for c in snap.clusters],
                                      [(c.name, c.speed) for c in snap.clusters])
        except BaseException:
            os.close(lock_fd)
            self.engine.close()  # nothing to close when planning failed
            raise
        try:
            self._listener = bind_socket(self.config.socket_path, self.config.group, lock_fd=lock_fd)
        except BaseException:  # the lock is closed by bind_socket
            self.engine.close()
            raise
        _log.info("serving %s (pipeline %d) on %s", self.model_path.name, generation.number,
                  self.config.socket_path)
        threading.Thread(target=self._monitor_loop, name="pipeit-monitor", daemon=True).start()

    def serve_forever(self, install_signals: bool = True) -> int:
        """Accept clients until SIGTERM/SIGINT (or :meth:`request_stop`); then drain and clean up."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        previous = {}
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                previous[signum] = signal.signal(signum, self._on_signal)
        selector = selectors.DefaultSelector()
        assert self._listener is not None, "start() first"
        self._listener.setblocking(False)
        selector.register(self._listener, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._spare_fd = _open_spare()
        paused_until = None  # out of descriptors, even the spare: not listening until then
        try:
            while not self._stop.is_set():
                timeout = 1.0
                if self._parked:
                    timeout = min(timeout, max(0.0, self._parked[0][0] - time.monotonic()))
                if paused_until is not None:
                    if time.monotonic() >= paused_until:
                        selector.register(self._listener, selectors.EVENT_READ, "accept")
                        paused_until = None
                    else:
                        timeout = min(timeout, max(0.0, paused_until - time.monotonic()))
                for key, _ in selector.select(timeout=timeout):
                    if key.data == "accept":
                        if not self._accept():
                            selector.unregister(self._listener)
                            paused_until = time.monotonic() + ACCEPT_PAUSE_S
                    else:
                        try:
                            while os.read(self._wake_r, 64):
                                pass
                        except BlockingIOError:
                            pass
                if self._parked:
                    self._unpark_due()
                while self._pending_signals:
                    signum = self._pending_signals.popleft()
                    if signum == signal.SIGHUP:
                        threading.Thread(target=self._reload, name="pipeit-reload", daemon=True).start()
                    else:
                        _log.info("signal %d: draining and stopping", signum)
                        self._stop.set()
        finally:
            selector.close()
            while self._parked:  # never read: nothing to answer
                heapq.heappop(self._parked)[2].close()
            self.shutdown()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self._spare_fd >= 0:
                os.close(self._spare_fd)
                self._spare_fd = -1
            wake_fds, (self._wake_r, self._wake_w) = (self._wake_r, self._wake_w), (-1, -1)
            for fd in wake_fds:  # a late request_stop() must not write into a reused descriptor
                os.close(fd)
        return 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._ask(signum)

    def request_reload(self) -> None:
        """Read the model and plan source again, as SIGHUP does (handled by :meth:`serve_forever`)."""
        self._ask(signal.SIGHUP)

    def request_stop(self) -> None:
        self._ask(signal.SIGTERM)

    def _ask(self, signum: int) -> None:
        """Queue ``signum`` for :meth:`serve_forever`'s loop and wake it (when it runs)."""
        self._pending_signals.append(signum)
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"s")
            except OSError:
                pass

    def shutdown(self) -> None:
        """Stop accepting, answer every frame already accepted, then remove everything we made."""
        self._stopping.set()  # a reload that is profiling stops at its next measurement
        with self._lock:
            self.draining = True  # from here on _admit() refuses: the count below can only fall
        if self._listener is not None:
            self._listener.stop(self.config.socket_path)  # the socket file goes before the path's lock
            self._listener = None
        deadline = time.monotonic() + self.config.drain_timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                admitted = self._admitted
            if admitted == 0 and self.engine.inflight() == 0:
                break
            time.sleep(0.02)
        with self._lock:
            connections = list(self._connections.values())
        for conn in connections:  # writers flush what is queued, then close
            conn.reply("close")
        flushed_by = time.monotonic() + FLUSH_S  # one limit for all: clients that do not read add no time
        for conn in connections:
            conn.done.wait(max(0.0, flushed_by - time.monotonic()))
        for conn in connections:
            if not conn.done.is_set():
                conn.abort()
        for conn in connections:
            conn.done.wait(1.0)
        self._stop.set()
        # A re-plan or reload under way may be starting a pipeline: let it finish (the engine then
        # refuses it and closes it) so that no worker or segment outlives the daemon.
        got = self._replan_lock.acquire(timeout=self.config.drain_timeout_s)
        try:
            self.engine.close()
        finally:
            if got:
                self._replan_lock.release()
        _log.info("stopped: %d request(s) served, %d rejected", self.counters["served"], self.counters["rejected"])

    # ---- connections -------------------------------------------------------------------
    def _accept(self) -> bool:
        """Take one waiting connection; False when the process is out of descriptors (then the
        caller stops listening a while: the connection stays queued, and select() would report it
        again at once, a loop at 100 % CPU)."""
        try:
            sock, _ = self._listener.accept()  # type: ignore[union-attr]
        except BlockingIOError:
            return True
        except OSError as err:
            if err.errno not in _OUT_OF_DESCRIPTORS:
                return True
            self.count("out_of_descriptors")
            if self.counters["out_of_descriptors"] == 1 or time.monotonic() - self._fds_warned > 60:
                self._fds_warned = time.monotonic()
                _log.warning("cannot accept clients: %s (%d connections open) -- raise the open-file limit "
                             "(LimitNOFILE) or lower --max-clients", err.strerror or err, len(self._connections))
            return self._refuse_with_spare()
        pid = peer_pid(sock)
        wait = self._budgets.wait_s(pid, time.monotonic())
        if wait > 0 and pid is not None:
            self.count("throttled")
            if self._budgets.park(pid):
                self._park_until(time.monotonic() + wait, sock, pid)
            else:
                sock.close()  # its budget is spent and it already has enough connections waiting
            return True
        self._open(sock, pid)
        return True  # (None, falsy, stopped the listening for 0.25 s after every connection)

    def _refuse_with_spare(self) -> bool:
        """Out of descriptors: give up the spare one for as long as it takes to accept the waiting
        client and tell it so (it would otherwise wait in the backlog, unanswered); False when even
        that failed (the caller then stops listening for :data:`ACCEPT_PAUSE_S`)."""
        if self._spare_fd < 0:
            self._spare_fd = _open_spare()
            return False
        os.close(self._spare_fd)
        self._spare_fd = -1
        try:
            sock, _ = self._listener.accept()  # type: ignore[union-attr]
        except OSError:
            sock = None
        if sock is not None:
            self.count("refused_connections")
            _refuse(sock, "the daemon has no file descriptor left for another connection")
        self._spare_fd = _open_spare()
        return sock is not None and self._spare_fd >= 0

    def _unpark_due(self) -> None:
        """Open the parked connections whose peer has a token again (the others wait on)."""
        now = time.monotonic()
        while self._parked and self._parked[0][0] <= now:
            _, _, sock, pid = heapq.heappop(self._parked)
            wait = self._budgets.wait_s(pid, now)
            if wait > 0:
                self._park_until(now + wait, sock, pid)
                continue
            self._budgets.unpark(pid)
            self._open(sock, pid)

    def _park_until(self, due: float, sock: socket.socket, pid: int) -> None:
        """Hold an accepted, unread connection until ``due`` (the sequence number keeps the heap off sockets)."""
        self._parked_seq += 1
        heapq.heappush(self._parked, (due, self._parked_seq, sock, pid))

    def _open(self, sock: socket.socket, pid: Optional[int]) -> None:
        """Serve an accepted connection (or refuse it when the daemon is full or stopping)."""
        sock.setblocking(True)
        wire.tune_socket(sock)
        why = ""
        with self._lock:
            mine = sum(1 for c in self._connections.values() if pid is not None and c.peer == pid)
            if len(self._connections) >= self.config.max_clients or self.draining:
                busy, why = True, "too many clients, or shutting down"
            elif mine >= self.config.max_clients_per_peer:
                busy, why = True, f"this process already holds {mine} connections (the most one may hold)"
            else:
                busy = False
                self._next_conn += 1
                conn = Connection(self, sock, self._next_conn, pid)
                self._connections[conn.number] = conn
        if busy:
            self.count("refused_connections")
            _refuse(sock, why)
            return
        self.count("connections")
        conn.start()

    def _forget(self, conn: Connection) -> None:
        with self._lock:
            self._connections.pop(conn.number, None)

    # ---- requests ----------------------------------------------------------------------
    def _input_rules(self) -> Tuple[int, Dict[str, Tuple[Tuple[int, ...], str]]]:
        """``(body bytes, name -> (shape, dtype name))`` of the serving model, worked out once per pipeline."""
        generation = self.engine.current
        key = generation.number if generation is not None else None
        cached = self._rules
        if cached is not None and cached[0] == key:
            return cached[1]
        inputs = self.engine.inputs
        rules = (sum(int(_nbytes(t)) for t in inputs),
                 {t.name: (tuple(int(d) for d in t.shape), str(np.dtype(t.dtype))) for t in inputs})
        self._rules = (key, rules)
        return rules

    def max_body(self) -> int:
        return self._input_rules()[0]

    def _io_key(self) -> Tuple:
        """The serving model's inputs and outputs as an :attr:`AreaLayout.key` (one object per pipeline)."""
        generation = self.engine.current
        number = generation.number if generation is not None else None
        cached = self._io
        if cached is not None and cached[0] == number:
            return cached[1]
        if generation is None:
            raise PipeitError("the daemon has no pipeline running")
        pipeline = generation.pipeline
        key = tuple(tuple((t.name, np.dtype(t.dtype).name, tuple(int(d) for d in t.shape)) for t in side)
                    for side in (pipeline.inputs, pipeline.outputs))
        if cached is not None and cached[1] == key:
            key = cached[1]  # same model I/O (a re-plan, a reload of the same model): areas stay valid cheaply
        self._io = (number, key)
        return key

    def area_layout(self, slots: int) -> AreaLayout:
        """The frame-area layout for ``slots`` slots of the serving model's inputs and outputs."""
        inputs, outputs = self._io_key()
        for name, dtype, _shape in inputs + outputs:
            if dtype not in wire.DTYPES:
                raise PipeitError(f"tensor {name!r} has dtype {dtype}, which the frame area cannot carry")
        return AreaLayout.plan(slots, inputs, outputs)

    def check_specs(self, specs: Sequence[wire.TensorSpec]) -> Optional[str]:
        """None if a request's tensors (from its header) are exactly the model's inputs, else what is wrong.

        Checked before the body is read, so a refused body is skipped, never stored.
        """
        expected = self._input_rules()[1]
        names = [t.name for t in specs]
        if len(names) != len(expected) or set(names) != expected.keys():
            takes = ", ".join(f"{name!r} {shape} {dtype}" for name, (shape, dtype) in sorted(expected.items()))
            return f"inputs {sorted(names)} do not match the model's {sorted(expected)} (it takes {takes})"
        for spec in specs:
            shape, dtype = expected[spec.name]
            if spec.shape != shape or wire.DTYPES[spec.dtype] != np.dtype(dtype):
                return (f"input {spec.name!r} is {tuple(spec.shape)} {spec.dtype}, "
                        f"the model takes {shape} {dtype}")
        return None

    def oversized_reason(self, header: wire.Header, fallback: str) -> str:
        """Why a request's body is over the limit: an input of another shape or dtype, if that is it.

        The limit is the exact size of the model's inputs, so an ``infer``
        with a wrong shape or dtype usually lands here rather than in
        :meth:`check_specs`. Its body is never read (the limit stands), but
        the answer names the input and what the model takes.
        """
        if header.op != "infer" or header.slot is not None:
            return fallback
        try:
            problem = self.check_specs(header.tensors)
        except PipeitError:  # no pipeline to compare with (stopping): the size is all there is to say
            return fallback
        return f"{problem}; {fallback}" if problem else fallback

    def _refused(self, request: Request, error: PipeitError) -> None:
        """The pipeline would not take a frame: answer it with ``error``; start a fresh pipeline if it failed."""
        request.handed = True
        self._finish(request, None, error)
        try:
            reason = self.engine.restart_if_failed()
        except PipeitError as err:  # the failed pipeline stays; the next refused frame tries again
            _log.error("a fresh pipeline did not start: %s", err)
            self._add_event("failed", f"restart failed: {err}", None)
            return
        if reason:
            self._add_event("restart", reason, None)

    def _admit(self) -> bool:
        """Count an ``infer`` request in (False once draining: it is answered ``unavailable``)."""
        with self._lock:
            if self.draining:
                return False
            self._admitted += 1
            return True

    def _admitted_done(self) -> None:
        with self._lock:
            self._admitted -= 1

    def _finish(self, request: Request, future: Optional[Future], error: Optional[BaseException]) -> None:
        """Answer a frame (the pipeline's callback, or an error path), then count it out of the drain."""
        try:
            self._answer(request, future, error)
        finally:
            self._admitted_done()

    def _answer(self, request: Request, future: Optional[Future], error: Optional[BaseException]) -> None:
        conn = request.conn
        if request.slot is None:
            conn.give_allowance()
        outputs = None
        if error is None and future is not None:
            try:
                outputs = future.result()  # done: one look at the future, not two (exception(), result())
            except Exception as err:  # noqa: BLE001 -- the frame's failure, answered below
                error = err
        if request.slot is not None:
            # The allowance comes back only once the outputs are in the area: a detach, re-attach or
            # disconnect waits for every allowance (Connection._quiesce) before it drops the area.
            area, k = request.area, request.slot
            views = area.outputs  # type: ignore[union-attr]
            if error is None:
                if views:  # the area is still the connection's (else it was dropped after a drain timeout)
                    if not request.in_place:  # else the dispatcher wrote them there
                        for name, view in views[k].items():
                            np.copyto(view, outputs[name])
                else:
                    error = _StaleArea("the frame area was dropped while the frame was in flight: attach again")
            area.busy[k] = 0  # type: ignore[union-attr] -- before the reply: the client may reuse it then
            conn.give_allowance()
            if error is None:
                self.count("served")
                self._done_times.append(time.monotonic())
                conn.reply((wire.encode_slot_reply(request.request_id, k), request))
                return
        if error is None:
            self.count("served")
            self._done_times.append(time.monotonic())
            conn.reply((self._replies.encode(request.request_id, outputs), request))
        else:
            self.count("failed")
            code = "reattach" if isinstance(error, _StaleArea) else \
                "bad_request" if type(error).__name__ == "InputError" else "unavailable"
            conn.reply((wire.encode_error(request.request_id, code, str(error), "infer"), None))

    def _record_latency(self, t_received: float) -> None:
        self._latencies.append((time.perf_counter() - t_received) * 1000.0)

    # ---- status ------------------------------------------------------------------------
    def _snapshot(self) -> Any:
        if self._monitor is None:
            return None
        try:
            return self._monitor.snapshot()
        except Exception:  # noqa: BLE001 -- a reading never stops serving
            return None

    def status(self) -> dict:
        """The document ``pipeit status`` prints (see docs/PROTOCOL.md); non-finite numbers (a plan
        that predicts an infinite rate) are null, as JSON has no infinity."""
        return finite_or_null(self._status())

    def _status(self) -> dict:
        generation = self.engine.current
        stats = self._window_stats
        latencies = list(self._latencies)
        snap = self._snapshot()
        stages = []
        if generation is not None:
            depths = generation.pipeline.queue_depths()  # frames waiting for each stage
            for k, spec in enumerate(generation.plan.stages):
                row = stats.stages[k] if stats is not None and k < len(stats.stages) else None
                depth = depths[k] if k < len(depths) else None
                stages.append({
                    "index": k, "layers": list(spec.layers),
                    "workers": [f"{w.cluster}:{w.threads}@{','.join(map(str, w.cpus))}" for w in spec.workers],
                    "measured_ms": row.measured_ms if row else None,
                    "worker_ms": list(row.worker_ms) if row else None,
                    "expected_ms": self._expected[k] if k < len(self._expected) else None,
                    "worker_expected_ms": (list(self._expected_workers[k]) if k < len(self._expected_workers)
                                           else None),
                    "busy": row.busy if row else None,
                    "queue_depth": depth,
                    "restarts": row.restarts if row else 0,
                })
        clusters = []
        for cluster in self.platform.cpu_clusters:
            reading = snap.cluster(cluster.name) if snap is not None else None
            clusters.append({
                "name": cluster.name, "cpus": list(cluster.cpus), "speed": cluster.speed,
                "cur_freq_khz": reading.cur_freq_khz if reading else None,
                "scaling_max_freq_khz": reading.max_freq_khz if reading else None,
                "governor": reading.governor if reading else None,
                "temp_c": _cluster_temp(snap, cluster) if snap is not None else None,
                "factor": self._factors.get(cluster.name, 1.0),
            })
        now = time.monotonic()
        recent = [t for t in list(self._done_times) if now - t <= self.config.window_s]
        throttles = self.engine.throttles
        emulation = None
        if throttles is not None:
            emulation = {name: {"cgroup": throttles.cgroup_path(name), **cal.to_json()}
                         for name, cal in throttles.calibrations.items()}
        return {
            "pid": os.getpid(),
            "uptime_s": round(now - self._t0, 3),
            "model": str(self.model_path),
            "model_sha256": generation.plan.model_sha256 if generation else None,
            "socket": str(self.config.socket_path),
            "platform": self.platform.source,
            "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": str(t.dtype)}
                       for t in (generation.pipeline.inputs if generation else ())],
            "draining": self.draining,
            "generation": generation.number if generation else None,
            "plan": generation.plan.to_json() if generation else None,
            "plan_source": self._planned.source if self._planned else None,
            "requests": {"served": self.counters["served"], "failed": self.counters["failed"],
                         "rejected": self.counters["rejected"], "inflight": self.engine.inflight(),
                         "clients": len(self._connections), "connections": self.counters["connections"],
                         "throttled": self.counters["throttled"],
                         "refused_connections": self.counters["refused_connections"]},
            "frame_areas": {"open": sum(1 for c in list(self._connections.values()) if c.area is not None),
                            "created": self.counters["areas_created"], "closed": self.counters["areas_closed"]},
            "fps": len(recent) / self.config.window_s if recent else 0.0,
            "pipeline_fps": self._window_fps,
            "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                           "p99": percentile(latencies, 99), "samples": len(latencies)},
            "stages": stages,
            "clusters": clusters,
            "max_temp_c": snap.max_temp_c if snap is not None else None,
            "online": list(snap.online) if snap is not None and snap.online is not None else None,
            "replans": self.counters["replans"],
            "replanning": self._replanning(),
            "switch_cooldown_windows": self._policy.cooling,
            "switch_margin": self._policy.current_margin,
            "events": [e.to_json() for e in self.events[-50:]],
            "emulation": emulation,
        }

    # ---- re-planning ---------------------------------------------------------------------
    def _replanning(self) -> str:
        """``"on"``, or ``"off: why"`` (status: a daemon serving a plan file with no layer times cached for it
        watches and reports, but has nothing to re-plan from, which its status did not say)."""
        if not self.config.replan:
            return "off: --no-replan"
        planned = self._planned
        if planned is not None and planned.times is None:
            return ("off: no layer times to re-plan from (a plan file alone; serve with --predictor, --profile or "
                    "--times, or start once without a plan so its times are cached)")
        return "on"

    def _set_expected(self, plan: Any) -> None:
        """Expect each worker to take what the plan predicts for it (a stage: its workers' mean)."""
        self._set_expected_ms(tuple(
            tuple(w.predicted_ms if w.predicted_ms and w.predicted_ms > 0 else None for w in stage.workers)
            for stage in plan.stages))

    def _set_expected_ms(self, per_worker: Tuple[Tuple[Optional[float], ...], ...]) -> None:
        expected = []
        for row in per_worker:
            values = [v for v in row if v]
            expected.append(sum(values) / len(values) if values else None)
        self._expected_workers = per_worker
        self._expected = tuple(expected)

    def _measured_expectations(self, drifting: Sequence[Tuple[int, Optional[int]]]
                               ) -> Optional[Tuple[Tuple[Optional[float], ...], ...]]:
        """The expectations with the last window's times for the ``drifting`` units, where they are evidence.

        Every other worker keeps its old expectation: a worker whose slowdown
        has just begun (one window, not yet sustained) or that served too few
        frames must not have that taken as its new normal (None: the readings
        do not match the plan)."""
        readings = self._last_readings
        if len(readings) != len(self._expected_workers):
            return None
        window_s = self._window_len

        def rebased(stage: int, worker: int) -> bool:
            return (stage, worker) in drifting or (stage, None) in drifting

        return tuple(
            tuple((w.measured_ms if rebased(r.index, w.worker) and self._detector.is_evidence(w, window_s) else old)
                  for w, old in zip(r.workers, olds)) if len(r.workers) == len(olds)
            else olds
            for r, olds in zip(readings, self._expected_workers))

    def _expect_measured(self, drifting: Sequence[Tuple[int, Optional[int]]]) -> None:
        """Take the drifting units' last times as their new normal (a re-plan that kept the plan)."""
        measured = self._measured_expectations(drifting)
        if measured is not None:
            self._set_expected_ms(measured)

    def _add_event(self, kind: str, reason: str, fps_before: Optional[float], before: int = 0, after: int = 0,
                   layout_before: Tuple = (), layout_after: Tuple = (), measured_fps: Optional[float] = None,
                   predicted_fps: Optional[float] = None) -> ReplanEvent:
        event = ReplanEvent(time.monotonic() - self._t0, kind, reason, before, after, fps_before, None,
                            layout_before, layout_after, measured_fps, predicted_fps)
        with self._lock:
            self.events.append(event)
            if event.kind in SWITCH_KINDS:
                self.counters["replans"] += 1
            if len(self.events) > MAX_EVENTS:  # the log keeps every one; status shows the last 50
                del self.events[:len(self.events) - MAX_EVENTS]
        return event

    def _monitor_loop(self) -> None:
        self._window_began = time.monotonic()  # the pipeline has just started: the first window begins
        while not self._stop.wait(self._window_left()):
            try:
                self._close_window()
            except Exception as err:  # noqa: BLE001 -- the monitor must outlive one bad window
                _log.exception("monitor window failed: %s", err)

    def _window_left(self) -> float:
        """Seconds until the current window closes: ``window_s`` after it began; half that for the settle
        window after a platform-forced switch (it only lets the new workers' first frames pass, and the
        switch it follows is a guess waiting for its first real window, see :meth:`replan`)."""
        length = self.config.window_s * (0.5 if self._short_window else 1.0)
        return max(0.01, self._window_began + length - time.monotonic())

    def _close_window(self) -> None:
        now = time.monotonic()
        self._window_len, self._window_began, self._short_window = now - self._window_began, now, False
        generation = self.engine.current
        if generation is None or self.draining:
            return
        stats = generation.pipeline.stats()
        generation.pipeline.reset_stats()
        self._window_stats = stats
        self._window_fps = stats.fps if stats.frames else None
        if self._window_fps:
            self._answered.append(self._window_fps)
        self._fill_fps_after(generation.number, stats)
        self._policy.tick()
        snap = self._snapshot()
        if self._cooldown > 0:
            self._cooldown -= 1
            self._observe(snap, ())
            return
        readings = []
        for k, spec in enumerate(generation.plan.stages):
            row = stats.stages[k] if k < len(stats.stages) else None
            clusters = tuple(sorted({n for w in spec.workers for n in w.cluster.split("+")}))
            wanted = self._expected_workers[k] if k < len(self._expected_workers) else ()
            workers = tuple(
                WorkerReading(j, w.cluster,
                              row.worker_ms[j] if row and j < len(row.worker_ms) else None,
                              wanted[j] if j < len(wanted) else None,
                              row.worker_frames[j] if row and j < len(row.worker_frames) else 0)
                for j, w in enumerate(spec.workers))
            readings.append(StageReading(k, clusters, row.measured_ms if row else None,
                                         self._expected[k] if k < len(self._expected) else None,
                                         row.frames if row else 0, workers))
        self._last_readings = tuple(readings)
        if self._judge_switch(generation.number):
            self._observe(snap, ())
            return
        self._observe(snap, tuple(readings))

    def _observe(self, snap: Any, readings: Tuple[StageReading, ...]) -> None:
        """Feed the detector one window and act on its decision.

        ``readings`` () in a settle window and in one a switch's verdict
        used: their times are not judged, but a platform reading is no
        measurement, and a CPU going offline or a cluster throttled then is
        acted on at once, not a settle and a verdict later."""
        window = Window(
            stages=readings,
            online=snap.online if snap is not None else None,
            freq_caps_khz=tuple((c.name, c.max_freq_khz) for c in snap.clusters) if snap is not None else (),
            speeds=tuple((c.name, c.speed) for c in snap.clusters) if snap is not None else (),
            max_temp_c=snap.max_temp_c if snap is not None else None,
            window_s=self._window_len,
        )
        decision = self._detector.observe(window)
        if decision.reason and not decision.replan:
            _log.info("%s", decision.reason)  # a platform re-plan's guess checked and kept
        if not (decision.replan and self.config.replan):
            return
        if self._policy.cooling and not (decision.platform_changed or decision.follow_up):
            # Too soon after a switch: keep the drift streak (it fires again once the cooldown is
            # over, if the drift lasts) and keep the scaling factors untouched until then.
            _log.debug("%s; not acting: %d window(s) of switch cooldown left", decision.reason, self._policy.cooling)
            return
        self.replan(decision.reason, dict(decision.factors), snap.online if snap is not None else None,
                    force=decision.platform_changed, drifting=decision.drifting, follow_up=decision.follow_up)

    def _judge_switch(self, number: int) -> bool:
        """Feed the pending switch check one window; True once it judged the switch (the window is consumed:
        confirmed, the expectations are re-based on it; reverted, another pipeline serves)."""
        check = self._check
        if check is None:
            return False
        if check.generation != number:
            self._check = None  # another switch, reload or restart came in between: nothing to judge
            return False
        capacity = measured_capacity_fps(self._last_readings)
        if capacity is not None:
            check.samples.append(capacity)
        if self._window_fps:
            check.answered.append(self._window_fps)
        if max(len(check.samples), len(check.answered)) < max(1, self.config.confirm_windows):
            return False
        self._check = None
        after = sorted(check.samples)[len(check.samples) // 2] if check.samples else None
        answered = sorted(check.answered)[len(check.answered) // 2] if check.answered else None
        verdict, why = self._policy.judge(check.layout, check.before_fps, after, check.answered_before, answered,
                                          check.evidence)
        _log.info("pipeline %d: %s (%s)", number, why, verdict)
        if verdict != "revert":
            # The pipeline stays: what its workers measure at this load is their normal from now on,
            # not the prediction that chose the plan. On a cluster whose speed depends on its load (an
            # ondemand governor; a CPU-bandwidth quota) a stage given fewer layers
            # runs faster than the scaled times say, and judged against them it "drifts" at once and
            # pulls the plan back -- a second switch for one change, then a revert.
            measured = self._measured_expectations([(k, None) for k in range(len(self._expected_workers))])
            if measured is not None:
                self._set_expected_ms(measured)
            self._detector.rebase()
            self._add_event("confirm", f"switch {verdict}: {why}", self._window_fps, number, number,
                            check.layout, check.layout, after, None)
            return True
        self._revert(check, why, after)
        return True

    def _revert(self, check: _PendingCheck, why: str, after: Optional[float]) -> None:
        """Switch back to the plan in use before a switch that did not pay off."""
        with self._replan_lock:
            generation = self.engine.current
            if generation is None or generation.number != check.generation or self.draining:
                return
            fps_before = self._window_fps
            try:
                _old, new = self.engine.switch(check.old_plan)
            except PipeitError as err:
                _log.error("could not switch back (%s); the new pipeline keeps serving", err)
                self._add_event("failed", f"revert failed: {err}", fps_before, generation.number, generation.number)
                return
            self._factors = dict(check.old_factors)
            if len(check.old_expected) == len(check.old_plan.stages):
                self._set_expected_ms(check.old_expected)
            else:
                self._set_expected(check.old_plan)
            self._detector.rebase()
            self._policy.switched()
            self._restart_window(new)
            self._cooldown = self.config.settle_windows
            _log.info("switched back: pipeline %d -> %d: %s", generation.number, new.number, why)
            self._add_event("revert", why, fps_before, generation.number, new.number, check.layout,
                            plan_layout(check.old_plan), after, check.old_predicted)

    def _restart_window(self, generation: Any) -> None:
        """A switch just drained the old pipeline: the window restarts with the new one alone."""
        generation.pipeline.reset_stats()
        self._window_began = time.monotonic()

    def _fill_fps_after(self, number: int, stats: Any) -> None:
        with self._lock:
            for i, event in enumerate(self.events):
                # a skipped or failed re-plan changed no pipeline: it has no "after" to measure
                if event.fps_after is None and event.generation_after == number \
                        and event.kind not in ("skipped", "failed") and stats.frames:
                    self.events[i] = ReplanEvent(**{**event.__dict__, "fps_after": stats.fps})
                    _log.info("after %s (%s): %.1f fps (was %s)", event.kind, event.reason, stats.fps,
                              "n/a" if event.fps_before is None else f"{event.fps_before:.1f}")

    def replan(self, reason: str, factors: Dict[str, float], online: Optional[Tuple[int, ...]] = None,
               force: bool = False, drifting: Sequence[Tuple[int, Optional[int]]] = (),
               follow_up: bool = False) -> ReplanEvent:
        """Re-plan with times scaled by ``factors``; switch pipelines if the plan changes enough.

        Unless ``force`` (a platform change: the old plan may not even run),
        a different plan replaces the running one only when the switch
        policy allows it: out of the cooldown after the last switch, and
        predicting ``switch_margin`` more fps than the running plan measures.
        A refused switch keeps the plan and takes the ``drifting`` units'
        measured times as their new expectation, so the same drift does not
        fire again next window.

        ``follow_up``: the measured correction of a platform re-plan
        (:attr:`DriftDetector` verifies one per platform change): it ignores
        the cooldown the forced switch started, but needs the margin and is
        confirmed or reverted like any drift switch.

        After a switch the new pipeline's measurements restart once the old
        one is drained (frames served beside a draining pipeline are not
        this plan's normal). A forced switch is then followed by a single
        settle window of half ``window_s``: its plan is a guess from a
        nominal factor, to be verified by the next window as soon as can be.
        """
        with self._replan_lock:
            generation = self.engine.current
            before = generation.number if generation else 0
            fps_before = self._window_fps
            planned = self._planned
            if generation is None or planned is None:
                return self._add_event("skipped", reason + " (no pipeline)", fps_before, before, before)
            if self.draining:  # stopping: a window that closed as SIGTERM came in starts no pipeline
                return self._add_event("skipped", reason + " (draining)", fps_before, before, before)
            if planned.times is None:
                _log.warning("%s; cannot re-plan: no layer times (start with --predictor, --profile or --times)",
                             reason)
                self._detector.rebase()
                self._cooldown = self.config.settle_windows
                return self._add_event("skipped", reason + "; no layer times to re-plan from", fps_before,
                                       before, before)
            old_factors, old_expected = dict(self._factors), self._expected_workers
            for name, factor in factors.items():
                self._factors[name] = self._factors.get(name, 1.0) * factor
            try:
                platform = shrink_platform(self.platform, online)
                times = fit_times(scaled_times(planned.times, self._factors), platform)
                plan = make_plan(times, platform, self.model_path, generation.plan.model_sha256, self.source)
            except PipeitError as err:
                _log.error("%s; re-planning failed: %s", reason, err)
                self._cooldown = self.config.settle_windows
                return self._add_event("failed", f"{reason}; re-planning failed: {err}", fps_before, before, before)
            old_layout, new_layout = plan_layout(generation.plan), plan_layout(plan)
            measured = measured_capacity_fps(self._last_readings)
            self._detector.rebase()
            self._cooldown = self.config.settle_windows
            if old_layout == new_layout:
                self._set_expected(plan)
                _log.info("%s; the plan stays the same, expectations re-based", reason)
                return self._add_event("recalibrate", reason, fps_before, before, before, old_layout, new_layout,
                                       measured, plan.predicted_fps)
            current = None if force else predicted_fps_of(generation.plan, times, platform)
            allowed, why = (True, "forced by a platform change") if force else \
                self._policy.allow(plan.predicted_fps, measured, current, new_layout, evidence_of(factors),
                                   ignore_cooldown=follow_up)
            if not allowed:
                self._expect_measured(tuple(drifting))
                _log.info("%s; a new plan was found but not switched to: %s", reason, why)
                return self._add_event("skipped", f"{reason}; kept the plan: {why}", fps_before, before, before,
                                       old_layout, old_layout, measured, generation.plan.predicted_fps)
            try:
                _old, new = self.engine.switch(plan)
            except PipeitError as err:
                _log.error("%s; the new pipeline did not start (%s); the old one keeps serving", reason, err)
                return self._add_event("failed", f"{reason}; switch failed: {err}", fps_before, before, before)
            self._set_expected(plan)
            self._detector.rebase()
            self._policy.switched()
            answered = sorted(self._answered)[len(self._answered) // 2] if self._answered else None
            self._check = None if force else _PendingCheck(new.number, new_layout, evidence_of(factors),
                                                           generation.plan, measured,
                                                           old_factors, old_expected, current, answered, [], [])
            self._answered.clear()
            self._restart_window(new)
            if force and self.config.settle_windows > 0:
                self._cooldown, self._short_window = 1, True
            else:
                self._cooldown = self.config.settle_windows
            _log.info("switched pipeline %d -> %d: %s; %s; fps before %s; stages %s -> %s", before, new.number,
                      reason, why, "n/a" if fps_before is None else f"{fps_before:.1f}", _describe(old_layout),
                      _describe(new_layout))
            return self._add_event("switch", f"{reason}; {why}", fps_before, before, new.number, old_layout,
                                   new_layout, measured, plan.predicted_fps)

    def replan_for_client(self, conn: Connection, rid: int) -> None:
        """A client's ``replan``, on its own thread; one at a time: asked while one runs, it is refused."""
        with self._lock:
            busy, self._client_replan = self._client_replan, True
        if busy:
            conn.reply((wire.encode_error(rid, "unavailable", "a re-plan asked for by a client is under way; "
                                          "ask again when it is answered", "replan"), None))
            conn.give_allowance()
            return
        threading.Thread(target=self._replan_request, args=(conn, rid), daemon=True,
                         name="pipeit-replan-request").start()

    def _replan_request(self, conn: Connection, rid: int) -> None:
        try:
            event = self.replan("requested by a client", {})
            conn.reply((wire.encode_reply(rid, "replan", info=event.to_json()), None))
        except Exception as err:  # noqa: BLE001 -- answer, whatever happened
            conn.reply((wire.encode_error(rid, "internal", f"re-plan failed: {err}", "replan"), None))
        finally:
            with self._lock:
                self._client_replan = False
            conn.give_allowance()  # taken when the request was read

    def _reload(self) -> None:
        """SIGHUP: read the model and plan source again and switch to what they give."""
        with self._replan_lock:
            generation = self.engine.current
            fps_before = self._window_fps
            before = generation.number if generation else 0
            try:
                if self.draining:
                    _log.info("reload skipped: the daemon is stopping")
                    return
                planned = obtain_plan(self.model_path, self.platform, self.source, stop=self._stopping, serving=True)
                if self.draining:  # a SIGTERM came while the plan was made: no new pipeline now
                    _log.info("reload abandoned: the daemon is stopping")
                    return
                _old, new = self.engine.switch(planned.plan)
            except (PipeitError, CoresError, OSError) as err:  # a plan naming a cluster this platform lacks, a
                # full state directory: the file the user changed is wrong, not the daemon that serves
                if self.draining:  # profiling cut short by a SIGTERM: nothing failed
                    _log.info("reload abandoned: the daemon is stopping (%s)", err)
                    return
                _log.error("reload failed, the old pipeline keeps serving: %s", err)
                self._add_event("failed", f"reload failed: {err}", fps_before, before, before)
                return
            self._planned = planned
            self._factors.clear()
            self._set_expected(planned.plan)
            self._detector.rebase()
            self._policy.switched()
            self._restart_window(new)
            self._cooldown = self.config.settle_windows
            _log.info("reloaded %s (sha256 %s...) from %s: pipeline %d -> %d", self.model_path.name,
                      file_sha256(self.model_path)[:12], planned.source, before, new.number)
            self._add_event("reload", f"SIGHUP: reloaded from {planned.source}", fps_before, before, new.number,
                            plan_layout(generation.plan) if generation else (), plan_layout(planned.plan))


class _StaleArea(PipeitError):
    """A frame finished after its connection's frame area was dropped (answered ``reattach``)."""


def _refuse(sock: socket.socket, why: str) -> None:
    """One ``unavailable`` reply on a connection not served, then close it."""
    try:
        wire.send_message(sock, wire.encode_error(None, "unavailable", why))
    except OSError:
        pass
    sock.close()


def _open_spare() -> int:
    """A descriptor held in reserve (on /dev/null), -1 if none is left."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _nbytes(info: Any) -> int:
    count = 1
    for d in info.shape:
        count *= int(d)
    return count * np.dtype(info.dtype).itemsize


def _cluster_temp(snap: Any, cluster: Any) -> Optional[float]:
    """A thermal zone named after the cluster (``bigcore0-thermal``...), else the hottest zone."""
    names = {cluster.name.lower(), str(cluster.core_type or "").lower()}
    own = [t.temp_c for t in snap.thermal
           if t.temp_c is not None and t.type and any(n and n in t.type.lower() for n in names)]
    return max(own) if own else snap.max_temp_c


def _describe(layout: Tuple) -> str:
    return " | ".join(f"[{r[0]},{r[1]})@" + "+".join(f"{w[0]}:{w[2]}" for w in ws) for r, ws in layout)
