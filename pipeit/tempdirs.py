"""Private temporary folders named after the process that owns them.

A pipeline's stage files, a daemon's copy of the model it serves and a GPU
worker's kernel cache each live in a folder ``<prefix><pid>-<random>`` under
the temporary directory. The owner removes its folder when it stops; a
process killed with SIGKILL never does, so whoever next makes such a folder
first removes those whose owner is gone (:func:`remove_orphans`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import List

__all__ = ["make_private_dir", "remove_orphans"]


def make_private_dir(prefix: str) -> Path:
    """A new folder ``<prefix><this pid>-<random>`` in the temporary directory (mode 0700)."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def remove_orphans(prefix: str) -> List[Path]:
    """Remove the ``<prefix><pid>-*`` folders whose process is gone; return them.

    A folder whose pid is alive is left alone, even if that pid now belongs
    to another program: a folder too many beats one removed under its owner.
    """
    import psutil

    removed = []
    root = Path(tempfile.gettempdir())
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        path = root / name
        if pid_text.isdigit() and not psutil.pid_exists(int(pid_text)) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
