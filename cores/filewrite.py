"""Write a file whole or not at all: the one writer for the files pipeit hands between its steps.

A plan, a predictor, layer times or a tables file written in place is
truncated first and filled after; a Ctrl-C, a full disk or a killed daemon in
between leaves a half file where a good one was, and the next step (or the
daemon's next start, which reads its cached plan) refuses it. Here the bytes
go to a temporary file beside the target, which then replaces it in one
``rename``: a reader sees the old file or the new one, never a part.

A path that exists and is not a regular file (``/dev/null``, a FIFO), and
any name under ``/dev`` or ``/proc`` (``/dev/stdout`` redirected to a file
or a pipe), are written as they are, never renamed over; for a symbolic
link the target is replaced and the link kept.

Files that several processes write at once (a profile two runs append
to, a tuning file two runs update) take :func:`exclusive_lock` around each
change.

This module is in :mod:`cores`, the lowest package: it imports nothing from
:mod:`pipeit` or :mod:`predictors`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator, Union

__all__ = ["write_file", "exclusive_lock", "owner_gone"]


@contextlib.contextmanager
def exclusive_lock(fd: int) -> Iterator[None]:
    """An exclusive ``flock`` on the open file or folder ``fd`` for the block.

    Best effort: where it cannot be taken (a file system without locks, a
    device), the block runs unlocked, as it did before there was a lock.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass


def _default_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0666 less the umask (read without changing it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


def _is_descriptor_name(path: Union[str, Path]) -> bool:
    """``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``: an open descriptor (a pipe, a shell's ``>``
    file), written through, as the caller's redirection expects."""
    text = os.path.abspath(path)
    return text.startswith("/dev/") or text.startswith("/proc/")


def owner_gone(pid_text: str) -> bool:
    """Whether ``pid_text``, the pid in a leftover's name, is a number whose process has ended.

    A leftover whose pid is alive is never someone else's to remove, even if
    the pid now belongs to another program: a file too many beats one removed
    under its writer. psutil is imported here, not with the module: cores is
    imported by every command, and rarely finds a leftover.
    """
    if not pid_text.isdigit():
        return False
    import psutil

    return not psutil.pid_exists(int(pid_text))


def _remove_stale_temporaries(target: Path) -> None:
    """Remove ``.<name>.<pid>-*.tmp`` files beside ``target`` whose writer is gone.

    A writer killed mid-write (SIGKILL, a power cut) cannot remove its
    temporary: a 100 MB model's stayed beside the model for good. The next
    write of the same file removes it. A temporary whose pid is alive (its
    writer, or a process that took the pid since) is left alone.
    """
    prefix = f".{target.name}."
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        if not owner_gone(name[len(prefix):].split("-", 1)[0]):
            continue
        try:
            os.unlink(target.parent / name)
        except OSError:
            pass


def write_file(path: Union[str, Path], data: Union[bytes, str]) -> None:
    """Put ``data`` (text is UTF-8) at ``path`` atomically; an ``OSError`` leaves the old file as it was.

    The new file keeps an existing file's permission bits, else gets the
    mode a plain ``open`` would. The caller turns ``OSError`` into its own
    one-line error, as it did for a plain write.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        existing = os.stat(path)
    except FileNotFoundError:
        existing = None
    if (existing is not None and not stat.S_ISREG(existing.st_mode)) or _is_descriptor_name(path):
        with open(path, "wb") as handle:  # a device, a FIFO, /dev/stdout: renaming over it would replace it
            handle.write(payload)
        return
    target = Path(os.path.realpath(path))  # a symlink's target is replaced, the link kept
    mode = stat.S_IMODE(existing.st_mode) if existing is not None else _default_mode()
    _remove_stale_temporaries(target)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())  # on the disk before the rename: a board's power cut keeps old or new
        os.replace(temporary, target)
    except BaseException:  # a full disk, or Ctrl-C mid-write: no temporary file left beside the target
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
