"""cores: know the board.

Clusters, core types, CPU ids and frequencies (detected from sysfs, read
from a board file, or emulated); pinning of whole processes (every thread)
to CPU sets; cheap monitoring of frequency, governor and temperature.
The unit the scheduler reasons in is a :class:`CoreSetup`: a cluster and a
number of its cores.
"""

from cores.errors import CoresError, EmulationError, PinningError, PlatformError
from cores.model import Cluster, CoreSetup, Platform
from cores.platform import load_platform

__all__ = [
    "Cluster",
    "CoreSetup",
    "Platform",
    "load_platform",
    "CoresError",
    "PlatformError",
    "PinningError",
    "EmulationError",
]
