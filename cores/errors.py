"""cores' own exception tree (cores does not depend on pipeit).

The pipeit CLI treats :class:`CoresError` like its own root error: one
line on stderr, exit 2.
"""


class CoresError(Exception):
    """Root of cores' errors caused by user input or the host's state."""


class PlatformError(CoresError):
    """A platform spec, board name or sysfs tree that cannot describe a platform."""


class PinningError(CoresError):
    """CPUs that do not exist or cannot be pinned to."""


class EmulationError(CoresError):
    """An emulated cluster that cannot be throttled here (cgroups not writable)."""
