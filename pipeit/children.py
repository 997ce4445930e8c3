"""Starting helper processes that the terminal's Ctrl-C and hang-up do not reach directly.

Ctrl-C and a closed terminal signal the whole foreground process group:
pipeit's worker processes as well as the command. The command decides how
its workers stop (it drains, unlinks the rings, removes the cgroups), so a
worker must not die of that signal on its own, nor print a KeyboardInterrupt
traceback from the middle of its start-up imports. A signal *mask* survives
fork and exec, while a Python handler does not: :func:`start_shielded`
blocks SIGINT and SIGHUP in the starting thread just while the child is
created, so the child begins life with them blocked, and the parent gets a
Ctrl-C that arrived meanwhile as soon as the mask is restored. A worker that
wants them ignored rather than pending calls :func:`ignore_shielded`. In the
parent, a stop signal that comes while the child is being started waits until
the start is done, so the child never reads half its start-up data.
"""

from __future__ import annotations

import signal
from multiprocessing import resource_tracker
from typing import Any

from pipeit.signals import deferred

__all__ = ["SHIELDED_SIGNALS", "start_shielded", "ignore_shielded"]

#: what the terminal sends the whole process group
SHIELDED_SIGNALS = (signal.SIGINT, signal.SIGHUP)


def start_shielded(process: Any) -> None:
    """``process.start()`` with SIGINT and SIGHUP blocked in the child from its first instruction."""
    # The first spawn in a process starts multiprocessing's resource tracker, which unblocks SIGINT in
    # this thread on its way (before our child is made): started first, it leaves our mask alone.
    resource_tracker.ensure_running()
    with deferred():
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, SHIELDED_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_shielded() -> None:
    """In a child started by :func:`start_shielded`: ignore the shielded signals, then unblock them
    (a Ctrl-C that came during start-up is dropped, not delivered late)."""
    for signum in SHIELDED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SHIELDED_SIGNALS)
