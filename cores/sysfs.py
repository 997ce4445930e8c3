"""Tiny readers for sysfs/procfs files under a root folder.

Every reader takes the root explicitly (``/`` on a live machine, a fixture
tree in tests) and returns a fallback instead of raising: sysfs files come
and go with kernel versions, CPU hotplug and drivers, and a missing file is
information ("no cpufreq here"), not an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

from cores.errors import PlatformError
from cores.jsonfile import read_at_most

__all__ = ["SysRoot", "parse_cpu_list", "format_cpu_list", "MAX_CPU_ID"]

PathLike = Union[str, "os.PathLike[str]"]

#: the largest CPU id a list may name. Linux builds for at most 8192 CPUs
#: (NR_CPUS); the margin keeps odd hosts working while a typo such as
#: ``0-99999999`` is refused instead of building a set of 10^8 ids.
MAX_CPU_ID = 65535
#: the most of one sysfs or procfs file read (a 1024-CPU /proc/cpuinfo is about 1 MiB)
MAX_FILE_BYTES = 4 << 20


def _is_decimal(text: str) -> bool:
    """Whether ``text`` (spaces around allowed) is a run of ASCII digits."""
    text = text.strip()
    return bool(text) and text.isascii() and text.isdigit()


def parse_cpu_list(text: str) -> Tuple[int, ...]:
    """Parse the kernel's CPU list format (``0-3,6,8-9``) into sorted CPU ids.

    An empty string is an empty list (an offline-only mask reads as ``""``).
    Raises :class:`PlatformError` on anything else that is not a list, and on
    CPU ids above :data:`MAX_CPU_ID` (checked before the range is expanded).
    """
    cpus = set()
    text = text.strip()
    if not text:
        return ()
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise PlatformError(f"malformed CPU list {text!r}")
        lo, sep, hi = part.partition("-")
        # plain ASCII digits only: int() also takes "٣" as 3 and "1_0" as 10
        if not (_is_decimal(lo) and (not sep or _is_decimal(hi))):
            raise PlatformError(f"malformed CPU list {text!r}")
        try:
            first = int(lo)
            last = int(hi) if sep else first
        except ValueError:
            raise PlatformError(f"malformed CPU list {text!r}") from None
        if first < 0 or last < first:
            raise PlatformError(f"malformed CPU list {text!r}: bad range {part!r}")
        if last > MAX_CPU_ID:
            raise PlatformError(
                f"CPU list {text!r} names CPU {last}, beyond the largest CPU id {MAX_CPU_ID}"
            )
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus) -> str:
    """The inverse of :func:`parse_cpu_list`: ``(0, 1, 2, 5)`` -> ``"0-2,5"``."""
    ordered = sorted(set(int(c) for c in cpus))
    runs = []
    for cpu in ordered:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


class SysRoot:
    """A root folder that holds ``sys/`` and ``proc/`` (``/`` on a live host).

    Paths given to the readers are absolute-looking (``/sys/...``) and are
    resolved below the root, so the same code reads a fixture tree.
    """

    def __init__(self, root: Optional[PathLike] = None) -> None:
        self.root = Path(root) if root is not None else Path("/")

    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def exists(self, path: str) -> bool:
        return self.path(path).exists()

    def text(self, path: str, fallback: Optional[str] = None) -> Optional[str]:
        """The file's stripped text, or ``fallback`` when it cannot be read.

        Only a regular file is read (sysfs and procfs files are), and at most
        :data:`MAX_FILE_BYTES` of it: in a tree given with ``--sysfs`` a FIFO
        would block the read forever and ``/dev/zero`` would fill memory.
        """
        try:
            data = read_at_most(self.path(path), MAX_FILE_BYTES, regular_only=True)
        except OSError:
            return fallback
        return data.decode("utf-8", errors="replace").strip()

    def integer(self, path: str, fallback: Optional[int] = None) -> Optional[int]:
        """The file as an integer, or ``fallback`` when missing or not a number."""
        text = self.text(path)
        if text is None:
            return fallback
        try:
            return int(text.split()[0])
        except (ValueError, IndexError):
            return fallback

    def cpu_list(self, path: str, fallback: Optional[Tuple[int, ...]] = None) -> Optional[Tuple[int, ...]]:
        """A CPU-list file, or ``fallback`` when missing or malformed."""
        text = self.text(path)
        if text is None:
            return fallback
        try:
            return parse_cpu_list(text)
        except PlatformError:
            return fallback

    def listdir(self, path: str) -> Tuple[str, ...]:
        """Sorted entries of a folder, empty when it cannot be listed."""
        try:
            return tuple(sorted(os.listdir(self.path(path))))
        except OSError:
            return ()
