"""The daemon's listening socket: created 0660 with a chosen group, in a directory others cannot write.

A Unix socket's permissions are its only access control. If the directory
holding it were world-writable, anyone could replace the socket with their
own between two starts and catch the frames clients send, so such a
directory is refused outright (``/tmp`` included; use ``/run/pipeit`` as the
systemd unit does, or a folder of your own), and so is a directory inside a
world-writable one that lacks the sticky bit (the directory itself could be
renamed away and replaced).
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import socket
import stat
from pathlib import Path
from typing import Optional, Tuple, Union

from pipeit.errors import PipeitError

__all__ = ["SocketError", "SOCKET_MODE", "check_socket_dir", "check_socket_path", "claim_socket_path",
           "swappable_ancestor", "bind_socket", "remove_socket"]

SOCKET_MODE = 0o660
#: the kernel's limit on sun_path (108 bytes with the terminating NUL)
MAX_PATH = 107


class SocketError(PipeitError):
    """A socket path that cannot be used safely, or that another daemon holds."""


def check_socket_dir(path: Union[str, Path]) -> Path:
    """Refuse a socket whose directory is missing, not a directory, or world-writable."""
    path = Path(path)
    if len(os.fsencode(str(path.absolute()))) > MAX_PATH:
        raise SocketError(f"socket path {path} is longer than {MAX_PATH} bytes (a Unix-socket limit)")
    folder = path.absolute().parent
    try:
        info = folder.stat()
    except FileNotFoundError:
        raise SocketError(f"socket directory {folder} does not exist") from None
    except OSError as err:
        raise SocketError(f"cannot inspect socket directory {folder}: {err.strerror or err}") from err
    if not stat.S_ISDIR(info.st_mode):
        raise SocketError(f"{folder} is not a directory")
    if info.st_mode & stat.S_IWOTH:
        raise SocketError(
            f"socket directory {folder} is world-writable (mode {stat.S_IMODE(info.st_mode):o}); "
            "use a directory only the daemon's user and group can write, e.g. /run/pipeit"
        )
    swappable = swappable_ancestor(folder)
    if swappable is not None:
        above, mode = swappable
        raise SocketError(
            f"socket directory {folder} lies inside {above}, which anyone may write (mode "
            f"{mode:o}, no sticky bit), so anyone could swap {folder} for their own; "
            "use a path whose every folder only its owner (or root) can change, e.g. /run/pipeit"
        )
    return folder


def swappable_ancestor(folder: Union[str, Path]) -> Optional[Tuple[Path, int]]:
    """The first folder above ``folder`` that anyone may write without the sticky bit, and its mode.

    Anyone may rename an entry of such a folder (``/tmp`` has the sticky bit
    to prevent exactly that), so ``folder`` could be swapped for theirs,
    with whatever it holds. None when every folder above is safe.
    """
    for above in Path(folder).absolute().parents:
        try:
            mode = above.stat().st_mode
        except OSError:
            continue
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            return above, stat.S_IMODE(mode)
    return None


def check_socket_path(path: Union[str, Path], group: Optional[Union[str, int]] = None) -> Path:
    """Everything :func:`bind_socket` would refuse, without binding: the directory (see
    :func:`check_socket_dir`), a path that exists and is not a socket, a socket another daemon
    listens on or has claimed, and an unknown ``group``. For a quick check before any work."""
    os.close(claim_socket_path(path, group))
    return Path(path)


def claim_socket_path(path: Union[str, Path], group: Optional[Union[str, int]] = None) -> int:
    """:func:`check_socket_path`, keeping the path's lock: its descriptor, for :func:`bind_socket`.

    A daemon claims its path before it plans, so that a second one started meanwhile is refused at
    once, not after the first has spent minutes profiling (and then the first, once it binds).
    """
    path = Path(path)
    check_socket_dir(path)
    _gid(group)
    lock_fd = _lock_path(path)  # held by another daemon, maybe still planning or profiling
    try:
        _stale_socket(path)
        return lock_fd
    except BaseException:
        os.close(lock_fd)
        raise


def _stale_socket(path: Path) -> bool:
    """Whether a socket no one listens on is at ``path`` (False: nothing is); SocketError for any
    other file there, or a socket a daemon listens on."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    except OSError as err:
        raise SocketError(f"cannot inspect {path}: {err.strerror or err}") from err
    if not stat.S_ISSOCK(mode):
        raise SocketError(f"{path} exists and is not a socket; refusing to replace it")
    if _is_live(path):
        raise SocketError(f"{path}: another daemon is listening there")
    return True


def _gid(group: Optional[Union[str, int]]) -> int:
    if group is None:
        return -1
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    try:
        return grp.getgrnam(str(group)).gr_gid
    except KeyError:
        raise SocketError(f"no such group {group!r}") from None


def _is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class Listener(socket.socket):
    """The daemon's listening socket, and the lock on ``<path>.lock`` that makes its path its own while
    it lives (:func:`_lock_path`). :meth:`stop` ends both, in the order that keeps the path ours."""

    __slots__ = ("lock_fd",)

    def stop(self, path: Union[str, Path]) -> None:
        """Stop listening, remove the socket file, then let the path go: while the lock is held no
        other daemon can have bound there, so the file removed is this daemon's own."""
        self.close()
        remove_socket(path)
        lock_fd = getattr(self, "lock_fd", -1)
        if lock_fd >= 0:
            self.lock_fd = -1
            os.close(lock_fd)


def _lock_path(path: Path) -> int:
    """An exclusive lock on ``<path>.lock`` (its descriptor), or SocketError if another daemon holds it.

    Checking for a live socket, removing a stale one and binding are three
    steps: two daemons starting at once both passed the check, and the
    second unlinked the first's socket, leaving a daemon no client could
    reach. A daemon holds the lock from before the check until it stops.
    """
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise SocketError(f"cannot open {lock}: {err.strerror or err}") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SocketError(f"{path}: another daemon is starting or serving there (it holds {lock})") from None
    return fd


def bind_socket(path: Union[str, Path], group: Optional[Union[str, int]] = None, backlog: int = 64,
                lock_fd: Optional[int] = None) -> Listener:
    """A listening socket at ``path``, mode 0660, group ``group`` (name or id; None: ours).

    A stale socket file (no one listening) is replaced; a live one or any
    other kind of file is refused, and so is a path another daemon has
    locked (:func:`_lock_path`). ``lock_fd``: the lock :func:`claim_socket_path` took (it is the
    listener's from then on, closed here on failure); None takes it now.
    """
    path = Path(path)
    try:
        check_socket_dir(path)
        gid = _gid(group)
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        raise
    if lock_fd is None:
        lock_fd = _lock_path(path)
    try:
        return _bind_locked(path, gid, backlog, lock_fd)
    except BaseException:
        os.close(lock_fd)
        raise


def _bind_locked(path: Path, gid: int, backlog: int, lock_fd: int) -> Listener:
    if _stale_socket(path):
        path.unlink(missing_ok=True)
    staging = _staging_path(path)
    where = path if staging is None else staging
    if staging is not None:
        remove_socket(staging)  # left by a daemon killed in the moment between its bind and its link
    sock = Listener(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.lock_fd = -1  # set once listening: until then the caller releases its lock on failure
    # The umask makes the socket 0660 from the moment it exists (no window with wider access).
    old_umask = os.umask(0o117)
    try:
        sock.bind(str(where))
    except OSError as err:
        sock.close()
        raise SocketError(f"cannot bind {where}: {err.strerror or err}") from err
    finally:
        os.umask(old_umask)
    try:
        try:
            os.chmod(where, SOCKET_MODE)
            if gid >= 0:
                os.chown(where, -1, gid)
        except OSError as err:
            what = "set group of" if err.errno == errno.EPERM else "set mode of"
            raise SocketError(f"cannot {what} {where}: {err.strerror or err}") from err
        sock.listen(backlog)
        if staging is not None:
            _publish(staging, path)
    except BaseException:
        sock.close()
        remove_socket(where)
        raise
    sock.lock_fd = lock_fd
    return sock


def _staging_path(path: Path) -> Optional[Path]:
    """Where the socket is bound before it listens: a hidden sibling, None when no name fits MAX_PATH.

    ``bind`` makes the file and ``listen`` comes after it: a client that
    saw the file appear (a start-up script waiting for it, say) and
    connected in between was refused, and told no daemon listens there. So
    the socket is bound under this name and linked to ``path`` once it
    listens (:func:`_publish`): the file at ``path`` always accepts.
    """
    for name in (f".{path.name}.{os.getpid()}", f".{os.getpid()}"):
        staging = path.with_name(name)
        if len(os.fsencode(str(staging))) <= MAX_PATH:
            return staging
    return None


def _publish(staging: Path, path: Path) -> None:
    """Put the listening socket at ``staging`` in place at ``path``, never over a file that appeared there.

    A hard link fails where anything exists at ``path``; a file system without
    hard links gets a rename (the path's lock keeps other daemons out).
    """
    try:
        os.link(staging, path)
    except FileExistsError:
        raise SocketError(f"{path} appeared while the daemon bound its socket; refusing to replace it") from None
    except OSError:
        try:
            os.rename(staging, path)
        except OSError as err:
            raise SocketError(f"cannot put the socket at {path}: {err.strerror or err}") from err
        return
    try:
        os.unlink(staging)
    except OSError:
        pass  # a second name for the socket this daemon removes at ``path``: harmless, and stale once it stops


def remove_socket(path: Union[str, Path]) -> None:
    """Unlink the socket file if it is still a socket (never anything else)."""
    path = Path(path)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
