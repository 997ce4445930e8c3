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


def opencl_device_available() -> bool:
    """Whether an OpenCL device (pocl here) can be selected: the GPU path's tests need one."""
    try:
        from pipeit.gpu.device import select_device

        select_device(None)
        return True
    except Exception:  # noqa: BLE001 -- no platform, no device, no ICD loader: all mean "none here"
        return False


#: skip a test of the GPU path where no OpenCL device is
needs_opencl = pytest.mark.skipif(not opencl_device_available(), reason="no OpenCL device (pocl) here")


def sigint_as_default() -> None:
    """``preexec_fn`` for a child a test will stop with SIGINT: start it with SIGINT's default action.

    A test run started in the background of a non-interactive shell (``cmd &``, ``nohup``) has SIGINT
    ignored, every child inherits that, and Python then never installs its KeyboardInterrupt handler:
    Ctrl-C tests would measure how the suite was launched, not pipeit.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
