"""cores' own exception tree (cores does not depend on pipeit), and the two helpers every
one-line error message of cores and pipeit is built with.

The pipeit CLI treats :class:`CoresError` like its own root error: one
line on stderr, exit 2.
"""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what one
    error line quotes of a runtime's, a driver's or a worker's multi-line report."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def process_limit_hint(which: int, option: str) -> str:
    """`` (the limit is N: raise it with OPTION)`` where this process's soft ``resource`` limit
    ``which`` is set, else ``""``: for a message saying what ran out."""
    import resource

    soft = resource.getrlimit(which)[0]
    return "" if soft == resource.RLIM_INFINITY else f" (the limit is {soft}: raise it with {option})"


class CoresError(Exception):
    """Root of cores' errors caused by user input or the host's state."""


class PlatformError(CoresError):
    """A platform spec, board name or sysfs tree that cannot describe a platform."""


class PinningError(CoresError):
    """CPUs that do not exist or cannot be pinned to."""


class EmulationError(CoresError):
    """An emulated cluster that cannot be throttled here (cgroups not writable)."""
