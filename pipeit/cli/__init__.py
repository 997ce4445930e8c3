"""The ``pipeit`` command line.

Each sub-command lives in its own module ``pipeit/cli/cmd_<name>.py`` with a
``register(subparsers)`` function that adds its parser and sets
``run=<function(args) -> int>``. Modules are found by name, so adding a
command never touches this file.

Every user mistake (a :class:`pipeit.errors.PipeitError` or a
:class:`cores.errors.CoresError`) becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings
from typing import List, Optional, Sequence

from cores.errors import CoresError
from pipeit import __version__
from pipeit.errors import PipeitError

__all__ = ["main", "build_parser", "USER_ERRORS", "EXIT_USAGE"]

#: exit status for bad input, as argparse uses for bad options
EXIT_USAGE = 2
USER_ERRORS = (PipeitError, CoresError)


def _command_modules() -> List[str]:
    package_path = __path__  # type: ignore[name-defined]
    return sorted(
        name for _, name, _ in pkgutil.iter_modules(package_path) if name.startswith("cmd_")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeit",
        description="Predict, plan, split and stream CNN inference across a board's core clusters.",
    )
    parser.add_argument("--version", action="version", version=f"pipeit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _command_modules():
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning the library raises (e.g. a plan the exact search could not make) as one line, no source."""
    print(f"pipeit: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return int(args.run(args) or 0)
    except USER_ERRORS as err:
        print(f"pipeit: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("pipeit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
