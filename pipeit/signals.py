"""Signal handlers held for the length of a block, then given back.

Two places need one: the command line turns SIGTERM and SIGHUP into the
Ctrl-C path while a command runs (``pipeit.cli``), and a pipeline holds
stop signals while it cleans up, delivering them after
(``pipeit.executor.pipeline``). Python lets only the main thread set
handlers; elsewhere the block runs with nothing changed.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterable, Iterator

__all__ = ["handled"]


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
