"""Which OpenCL devices this host has, for the platform spec (``gpu=`` and ``auto``).

cores does not depend on pipeit, so this is a small probe of its own:
pyopencl imported only when asked, platforms and devices listed in the same
order :func:`pipeit.gpu.device.list_devices` numbers them (platforms in
order, then their devices; a platform whose device query fails is skipped),
so ``gpu=0`` here and ``--device 0`` there name the same device. Listing
creates no context and compiles nothing (pocl reads its kernel cache
directory only when a context is made).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple, Type

from cores.errors import PlatformError, first_line

__all__ = ["OpenClDevice", "OpenClUnavailable", "opencl_devices", "match_device", "find_device", "first_gpu"]


class OpenClUnavailable(PlatformError):
    """No pyopencl, no OpenCL platform, or no device: the reason is the message."""


@dataclass(frozen=True)
class OpenClDevice:
    """One OpenCL device: its index (as ``pipeit gpu --list`` shows it), name, platform and type."""

    index: int
    name: str
    platform: str
    device_type: str  # "gpu", "cpu", "accelerator", ... ("+"-joined when several bits are set)

    @property
    def is_gpu(self) -> bool:
        return "gpu" in self.device_type.split("+")


def _import_cl() -> Any:
    try:
        import pyopencl as cl
    except ImportError:
        raise OpenClUnavailable("pyopencl is not installed (pip install 'pipeit[gpu]')") from None
    return cl


def _type_name(cl: Any, value: int) -> str:
    names = [n.lower() for n in ("GPU", "CPU", "ACCELERATOR", "CUSTOM")
             if getattr(cl.device_type, n, 0) and value & getattr(cl.device_type, n)]
    return "+".join(names) or str(value)


def opencl_devices() -> Tuple[OpenClDevice, ...]:
    """Every OpenCL device, numbered as pipeit.gpu numbers them; :class:`OpenClUnavailable` if none."""
    cl = _import_cl()
    try:
        platforms = list(cl.get_platforms())
    except Exception as err:  # cl.Error (e.g. PLATFORM_NOT_FOUND_KHR from the ICD loader)
        raise OpenClUnavailable(f"no OpenCL platform found ({str(err).strip() or type(err).__name__})") from None
    out = []
    skipped = []  # why a platform gave no device: the only clue when none is found
    for platform in platforms:
        try:
            devices = platform.get_devices()
        except Exception as err:  # a platform without devices (ICD installed, no hardware), or a broken one
            why = first_line(err)
            skipped.append(f"{str(platform.name).strip()}: {why}")
            continue
        for device in devices:
            out.append(OpenClDevice(len(out), str(device.name).strip(), str(platform.name).strip(),
                                    _type_name(cl, int(device.type))))
    if not out:
        raise OpenClUnavailable("no OpenCL device found" + (f" ({'; '.join(skipped)})" if skipped else ""))
    return tuple(out)


def match_device(text: str, devices: Sequence, error: Type[Exception]):
    """The one of ``devices`` that ``text`` names: an index, or a case-insensitive substring of
    ``name`` + ``platform``; unknown or ambiguous names raise ``error`` with the list.

    Shared by the platform spec (``gpu=``) and :func:`pipeit.gpu.device.select_device`,
    which list devices in the same order, so an index means the same device to both.
    """
    listing = "; ".join(f"{d.index}: {d.name} ({d.platform})" for d in devices)
    if text.isdigit():
        k = int(text)
        if k >= len(devices):
            raise error(f"OpenCL device {k} does not exist; devices are {listing}")
        return devices[k]
    hits = [d for d in devices if text.lower() in f"{d.name} {d.platform}".lower()]
    if not hits:
        raise error(f"no OpenCL device matches {text!r}; devices are {listing}")
    if len(hits) > 1:
        raise error(f"{text!r} matches several OpenCL devices; give an index: {listing}")
    return hits[0]


def find_device(selector: str, devices: Optional[Tuple[OpenClDevice, ...]] = None) -> OpenClDevice:
    """The device ``selector`` names: an index, or a case-insensitive substring of device/platform name.

    Any device type is accepted (pocl's CPU device included): an explicit
    choice is the user's. Unknown or ambiguous names are refused with the list.
    """
    devices = opencl_devices() if devices is None else devices
    text = str(selector).strip()
    if not text:
        raise PlatformError("gpu= needs an OpenCL device index or name, e.g. gpu=0")
    return match_device(text, devices, PlatformError)


def first_gpu() -> Tuple[Optional[OpenClDevice], str]:
    """The first device of type GPU, or ``(None, why not)`` -- never raises (``auto`` must not fail)."""
    try:
        devices = opencl_devices()
    except OpenClUnavailable as err:
        return None, f"no GPU cluster: {err}"
    gpus = [d for d in devices if d.is_gpu]
    if gpus:
        return gpus[0], ""
    others = ", ".join(f"{d.name} ({d.device_type})" for d in devices)
    return None, (f"no GPU cluster: no OpenCL device of type GPU (found {others}); "
                  "emulate:...,gpu=0 uses any OpenCL device")
