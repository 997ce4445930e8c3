"""Signal handlers held for the length of a block, then given back.

Two places need one: the command line turns SIGTERM and SIGHUP into the
Ctrl-C path while a command runs (``pipeit.cli``), and :func:`deferred`
holds stop signals while a pipeline cleans up or a child process is being
started, delivering them after. Python lets only the main thread set
handlers; elsewhere the block runs with nothing changed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Callable, Iterable, Iterator, List

__all__ = ["STOP_SIGNALS", "handled", "deferred"]

#: the signals that stop a command: Ctrl-C, ``kill``/``timeout``, a closed terminal
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def handled(signums: Iterable[int], handler: Callable[[int, Any], Any]) -> Iterator[bool]:
    """``handler`` handles ``signums`` inside the block (main thread only: yields whether it does);
    the previous handlers are back afterwards, however the block ends."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in signums:
            try:
                previous[signum] = signal.signal(signum, handler)
            except (ValueError, OSError):
                pass
    try:
        yield bool(previous)
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred(signums: Iterable[int] = STOP_SIGNALS) -> Iterator[None]:
    """Hold ``signums`` inside the block (main thread only), then deliver each one that came.

    For work that must not be cut in the middle by the KeyboardInterrupt a
    stop signal raises: cleaning up, or writing a spawned child its start-up
    data (cut there, the child reads a short pipe and prints an EOFError
    traceback of its own).
    """
    caught: List[int] = []
    try:
        with handled(signums, lambda signum, _frame: caught.append(signum)):
            yield
    finally:
        for signum in caught:
            os.kill(os.getpid(), signum)
