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
import errno
import importlib
import os
import pkgutil
import signal
import sys
import warnings
from typing import Any, List, NoReturn, Optional, Sequence

from cores.errors import CoresError, process_limit_hint
from pipeit import __version__
from pipeit.errors import PipeitError
from pipeit.signals import handled

__all__ = ["main", "build_parser", "USER_ERRORS", "EXIT_USAGE", "one_line"]

#: exit status for bad input, as argparse uses for bad options
EXIT_USAGE = 2
USER_ERRORS = (PipeitError, CoresError)


def _command_modules() -> List[str]:
    package_path = __path__  # type: ignore[name-defined]
    return sorted(
        name for _, name, _ in pkgutil.iter_modules(package_path) if name.startswith("cmd_")
    )


class _OneLineParser(argparse.ArgumentParser):
    """argparse, with a bad command line said in one line like every other bad input (its usage
    block is what ``--help`` is for); subcommand parsers are made of the same class."""

    def error(self, message: str) -> "NoReturn":
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="pipeit",
        description="Predict, plan, split and stream CNN inference across a board's core clusters.",
    )
    parser.add_argument("--version", action="version", version=_version_text())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _command_modules():
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(sub)
    return parser


#: write errors that say the disk is full, not that pipeit is wrong
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
#: the system or this process ran out of descriptors or memory: the environment, said in one line
_NO_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


def _out_of(err: BaseException) -> str:
    """What ran out, and the limit to raise where it is this process's own (ulimit -n, ulimit -v)."""
    import resource

    if isinstance(err, MemoryError):
        return "out of memory" + process_limit_hint(resource.RLIMIT_AS, "ulimit -v")
    if err.errno == errno.EMFILE:
        return "too many open files" + process_limit_hint(resource.RLIMIT_NOFILE, "ulimit -n")
    return f"out of system resources: {err}"


def one_line(message: str) -> str:
    """``message`` as one line: a newline or carriage return (in a file name, say) is escaped."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning the library raises (e.g. a plan the exact search could not make) as one line, no source."""
    print(f"pipeit: warning: {one_line(str(message))}", file=sys.stderr if file is None else file)


#: signals that stop a command the way Ctrl-C does: a batch script's ``kill`` or ``timeout``
#: (SIGTERM), a closed terminal or dropped ssh session (SIGHUP)
SIGNALS_LIKE_CTRL_C = (signal.SIGTERM, signal.SIGHUP)


class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP taken the Ctrl-C way: code that unwinds on Ctrl-C unwinds on it too, and
    the command still exits with the shell's code for that signal (128 + its number)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop_like_ctrl_c(signum: int, frame: object) -> None:
    raise StopSignal(signum)


def _stops_unwind() -> Any:
    """SIGTERM and SIGHUP raise KeyboardInterrupt while a command runs, so every command unwinds
    through its ``finally`` blocks (workers stopped, rings unlinked, cgroups removed) instead of the
    process dying where it stands. ``pipeit serve`` installs its own handlers (drain, reload) inside."""
    return handled(SIGNALS_LIKE_CTRL_C, _stop_like_ctrl_c)


#: why pipeit cannot run without ai-edge-litert, whatever runtime runs the models: the TFLite model
#: schema pipeit reads and writes models through comes with it (not with tflite-runtime)
_NO_SCHEMA = ("pipeit reads and writes models through the TFLite schema that ai-edge-litert provides, "
              "and ai-edge-litert is not installed (it has no build for 32-bit ARM: use a 64-bit OS there)")


def _open_standard_descriptors() -> None:
    """Point a closed stdin, stdout or stderr at /dev/null (``pipeit run 2>&-``).

    A closed descriptor 2 is the number the next file opened gets: the
    runtime's native log line would then be written into a model file, an
    output or a shared-memory ring; and Python's ``sys.stderr`` is None, so
    the commands' messages crashed (``'NoneType' object has no attribute
    'flush'``, exit 1, nothing said).
    """
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))


def _version_text() -> str:
    """``pipeit X (runtime NAME==V)``: a report or a bug needs both (the runtime is part of every
    profile's fingerprint)."""
    try:
        from pipeit.runtime import runtime_info

        return f"pipeit {__version__} (runtime {runtime_info()})"
    except PipeitError as err:  # PIPEIT_RUNTIME names no backend pipeit knows
        return f"pipeit {__version__} (runtime: {err})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    _open_standard_descriptors()
    try:
        parser = build_parser()  # imports every command: a Ctrl-C here is no bug either
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("pipeit: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("ai_edge_litert"):
            raise
        print(f"pipeit: error: {_NO_SCHEMA}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with warnings.catch_warnings(), _stops_unwind():
            warnings.showwarning = _one_line_warning
            return int(args.run(args) or 0)
    except USER_ERRORS as err:
        print(f"pipeit: error: {one_line(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except StopSignal as stop:
        print(f"pipeit: stopped by {signal.Signals(stop.signum).name}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("pipeit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except ModuleNotFoundError as err:  # a command that imports the schema only when it runs
        if not (err.name or "").startswith("ai_edge_litert"):
            raise
        print(f"pipeit: error: {_NO_SCHEMA}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as err:
        print(f"pipeit: error: {_out_of(err)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        if err.errno in _NO_RESOURCES:
            print(f"pipeit: error: {one_line(_out_of(err))}", file=sys.stderr)
            return EXIT_USAGE
        if err.errno not in _FULL_DISK:
            raise
        # stdout (or a file being written) on a full disk: the environment, not a bug in pipeit
        if err.filename is None:
            _drop_stdout()  # else the interpreter's last flush of it fails again, with a traceback
        where = f"{err.filename}" if err.filename else "standard output"
        print(f"pipeit: error: cannot write {where}: {err.strerror}", file=sys.stderr)
        return EXIT_USAGE


def _drop_stdout() -> None:
    """Point file descriptor 1 at /dev/null: what is still buffered for it can no longer be written."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (captured in tests): nothing to drop
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
