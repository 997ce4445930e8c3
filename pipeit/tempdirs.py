"""Private temporary folders named after the process that owns them.

A pipeline's stage files, a daemon's copy of the model it serves and a GPU
worker's kernel cache each live in a folder ``<prefix><pid>-<random>`` under
the temporary directory. The owner removes its folder when it stops; a
process killed with SIGKILL never does, so whoever next makes such a folder
first removes those whose owner is gone (:func:`remove_orphans`).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import List

from cores.filewrite import owner_gone
from pipeit.errors import PipeitError

__all__ = ["make_private_dir", "remove_orphans"]


def make_private_dir(prefix: str) -> Path:
    """A new folder ``<prefix><this pid>-<random>`` in the temporary directory (mode 0700).

    Where ``tempfile`` finds no usable temporary directory it says so as
    ENOENT, whatever the cause; the common cause in a process is that it has
    no descriptor left to try one with, which is said as such (EMFILE: the
    command line's one line names ``ulimit -n``).
    """
    try:
        return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    except FileNotFoundError as err:
        try:
            os.close(os.open(os.devnull, os.O_RDONLY))
        except OSError as probe:
            if probe.errno == errno.EMFILE:
                raise probe from None
        raise PipeitError(f"cannot create a private folder for {prefix.rstrip('-')}: {err}; set TMPDIR to a "
                          "folder you can write") from None


def remove_orphans(prefix: str) -> List[Path]:
    """Remove the ``<prefix><pid>-*`` folders whose process is gone; return them.

    A folder whose pid is alive is left alone, even if that pid now belongs
    to another program: a folder too many beats one removed under its owner
    (:func:`cores.filewrite.owner_gone`). Tidying is best effort: where the
    temporary folder cannot be found or listed (no descriptor left to look
    with, say), nothing is removed now and the caller goes on to its own error.
    """
    removed: List[Path] = []
    try:
        root = Path(tempfile.gettempdir())
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        path = root / name
        if owner_gone(name[len(prefix):].split("-", 1)[0]) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
