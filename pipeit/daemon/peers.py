"""A budget of rejected connections per client process: a garbage sender slows itself down, not the daemon.

Every malformed message costs the daemon an accept, a reader's turn, an
error reply and a close (about 0.3 ms of CPU here), and costs the other
clients that much of the board. A client that reconnects and sends garbage
in a loop would otherwise take a fixed share of the CPU for as long as it
likes. So each peer process (its pid, from ``SO_PEERCRED``) has a token
bucket of rejections: ``burst`` at once, refilled at ``rate`` per second.
A connection from a peer whose bucket is empty waits, unread, until a
token is back; an honest client that never sends garbage never waits, and
one that erred a few times (a test, a client upgraded mid-run) is not
slowed either. A peer that opens more than ``max_parked`` connections while
it waits has the extra ones closed at once: its budget is spent.

Peers are known by pid: threads of one process share its budget, and a
pid reused by a later process inherits at most ``burst / rate`` seconds
of the old one's debt.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass
from typing import Dict, Optional

from pipeit.errors import PipeitError

__all__ = ["RejectBudget", "PeerBudgets", "peer_pid", "DEFAULT_REJECT_RATE", "DEFAULT_REJECT_BURST"]

#: rejected connections a peer may cause per second, once its burst is spent
DEFAULT_REJECT_RATE = 10.0
#: rejected connections a peer may cause at once before it is slowed down
DEFAULT_REJECT_BURST = 20

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_pid(sock: socket.socket) -> Optional[int]:
    """The pid of the process at the other end of a Unix socket (None where the kernel does not say)."""
    try:
        pid, _uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except (OSError, AttributeError, struct.error):
        return None
    return pid if pid > 0 else None


@dataclass(frozen=True)
class RejectBudget:
    """How many rejected connections a peer may cause: ``burst`` at once, then ``rate`` per second.

    ``rate == 0`` turns the budget off (every peer is always served at once).
    """

    rate: float = DEFAULT_REJECT_RATE
    burst: int = DEFAULT_REJECT_BURST
    max_parked: int = 16

    def __post_init__(self) -> None:
        if self.rate < 0 or self.burst < 1 or self.max_parked < 1:
            raise PipeitError(f"a reject budget needs rate >= 0, burst >= 1 and max_parked >= 1, got {self}")

    @property
    def enabled(self) -> bool:
        return self.rate > 0


class PeerBudgets:
    """The token buckets of the peers that have been rejected (others take no memory)."""

    def __init__(self, budget: RejectBudget):
        self.budget = budget
        self._lock = threading.Lock()
        self._tokens: Dict[int, float] = {}  # pid -> tokens left at ``_stamp[pid]``
        self._stamp: Dict[int, float] = {}
        self._parked: Dict[int, int] = {}  # pid -> connections waiting for a token

    def _level(self, pid: int, now: float) -> float:
        """The peer's tokens now (refilled since the last look; call holding the lock)."""
        tokens = self._tokens.get(pid)
        if tokens is None:
            return float(self.budget.burst)
        tokens = min(float(self.budget.burst), tokens + (now - self._stamp[pid]) * self.budget.rate)
        self._tokens[pid], self._stamp[pid] = tokens, now
        return tokens

    def reject(self, pid: Optional[int], now: float) -> None:
        """Take a token from ``pid`` for a connection closed on a protocol error."""
        if pid is None or not self.budget.enabled:
            return
        with self._lock:
            self._tokens[pid] = self._level(pid, now) - 1.0
            self._stamp[pid] = now
            if len(self._tokens) > 4096:  # forget those back at a full bucket (bounded memory)
                for other in [p for p in self._tokens if self._level(p, now) >= self.budget.burst]:
                    del self._tokens[other], self._stamp[other]

    def wait_s(self, pid: Optional[int], now: float) -> float:
        """How long a new connection from ``pid`` must wait for a token (0: serve it now)."""
        if pid is None or not self.budget.enabled:
            return 0.0
        with self._lock:
            if pid not in self._tokens:
                return 0.0
            missing = 1.0 - self._level(pid, now)
            return missing / self.budget.rate if missing > 0 else 0.0

    def park(self, pid: int) -> bool:
        """Count a connection from ``pid`` as waiting; False when it already has ``max_parked`` waiting."""
        with self._lock:
            if self._parked.get(pid, 0) >= self.budget.max_parked:
                return False
            self._parked[pid] = self._parked.get(pid, 0) + 1
            return True

    def unpark(self, pid: int) -> None:
        with self._lock:
            left = self._parked.get(pid, 0) - 1
            if left > 0:
                self._parked[pid] = left
            else:
                self._parked.pop(pid, None)
