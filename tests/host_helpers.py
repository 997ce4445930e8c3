"""What this test host allows, asked once by every test module that needs it."""

from __future__ import annotations

import pytest


def cgroups_writable() -> bool:
    """Whether a writable cgroup cpu controller is here (emulated slow clusters need one: root)."""
    from cores.emulation import find_cgroup_root
    from cores.errors import EmulationError

    try:
        find_cgroup_root()
    except EmulationError:
        return False
    return True


#: skip a test that slows a cluster through a cgroup quota where no controller is writable
needs_cgroups = pytest.mark.skipif(not cgroups_writable(), reason="needs a writable cgroup cpu controller (root)")
