"""Progress on long work, fit for where it is read: a bar on a terminal, plain lines in a log.

Profiling a board takes minutes to an hour, and it is run from shell scripts
whose stderr goes to a file, and by the daemon, whose log is the journal.
tqdm's bar redraws itself with carriage returns: on a terminal that is one
live line, in a file one line holding every redraw (a two-thousand-row
profile made a 200 KB "line"). :func:`progress_for` gives the bar where
stderr is a terminal and :class:`ProgressLines` elsewhere: a whole line at
each tenth of the work, at most every ``min_interval_s``, and one at the end.
Both take the calls the code already makes on a tqdm bar (``update``,
``set_postfix_str``, ``close``, ``with``).
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, Union

__all__ = ["Progress", "ProgressLines", "progress_for", "say"]

#: where progress goes: True (stderr, a bar when it is a terminal), False (nowhere), or a function that
#: takes one finished line (the daemon's log)
Progress = Union[bool, Callable[[str], None]]


class ProgressLines:
    """Whole lines of progress: ``desc: done/total unit (pct), elapsed, about N s left (postfix)``.

    ``say`` takes one line (default: print it to stderr). ``total=None``
    counts without a total (GPU tuning trials): a line every
    ``min_interval_s``. The clock is injectable for tests that must not
    sleep.
    """

    def __init__(self, total: Optional[int], desc: str, unit: str, say: Optional[Callable[[str], None]] = None,
                 min_interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = None if total is None else max(0, int(total))
        self.desc = desc
        self.unit = unit
        self.n = 0
        self.postfix = ""
        self._say = say if say is not None else _to_stderr
        self._min_interval_s = float(min_interval_s)
        self._clock = clock
        self._start = clock()
        self._last_said: Optional[float] = None
        self._said_n = 0
        self._last_tenth = 0
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = self._clock()
        waited = self._last_said is None or now - self._last_said >= self._min_interval_s
        if self.total:
            tenth = min(10, self.n * 10 // self.total)
            if tenth > self._last_tenth and (waited or tenth == 10):
                self._last_tenth = tenth
                self._emit(now)
        elif waited and now - self._start >= self._min_interval_s:
            self._emit(now)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:  # noqa: ARG002 (tqdm's signature)
        self.postfix = str(text)

    def close(self) -> None:
        """The last line, unless the last one said was already at this count."""
        if self._closed:
            return
        self._closed = True
        if self.n != self._said_n:
            self._emit(self._clock())

    def line(self, now: float) -> str:
        elapsed = now - self._start
        if self.total:
            text = f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n // self.total}%), " \
                   f"{_duration(elapsed)} elapsed"
            if 0 < self.n < self.total:
                text += f", about {_duration(elapsed * (self.total - self.n) / self.n)} left"
        else:
            text = f"{self.desc}: {self.n} {self.unit}, {_duration(elapsed)} elapsed"
        return f"{text} ({self.postfix})" if self.postfix else text

    def _emit(self, now: float) -> None:
        self._last_said, self._said_n = now, self.n
        self._say(self.line(now))

    def __enter__(self) -> "ProgressLines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_for(progress: Progress, total: Optional[int], desc: str, unit: str, **bar_options):
    """A bar for a terminal, :class:`ProgressLines` for a file or a log function, a silent bar for False.

    ``bar_options`` go to tqdm only (``leave``, ``delay``).
    """
    from tqdm import tqdm

    if progress is False or total == 0:
        return tqdm(total=total, disable=True)
    if callable(progress):
        return ProgressLines(total, desc, unit, say=progress)
    if _is_terminal(sys.stderr):
        return tqdm(total=total, file=sys.stderr, unit=unit, desc=desc, dynamic_ncols=True, **bar_options)
    return ProgressLines(total, desc, unit)


def say(progress: Progress, line: str) -> None:
    """One line of progress news: to the log function, to stderr for True, nowhere for False."""
    if callable(progress):
        progress(line)
    elif progress:
        _to_stderr(line)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``: what a person reading a log wants."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
