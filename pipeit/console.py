"""The ``pipeit`` command's entry point (and ``python -m pipeit``'s).

A Ctrl-C in the first tenth of a second, while the CLI's modules still
load, raised KeyboardInterrupt out of the import and printed a traceback:
:func:`pipeit.cli.main` handles an interrupt only once it runs. Here the
import is inside the same handling, so such a Ctrl-C ends like any other
(one line, exit 130).
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> int:
    try:
        from pipeit.cli import main as run_cli
    except KeyboardInterrupt:
        if sys.stderr is not None:
            print("pipeit: interrupted", file=sys.stderr)
        return 130
    return run_cli()
