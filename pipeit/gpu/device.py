"""OpenCL devices: listing, choosing one, and a context that owns its program cache.

pyopencl is optional. It is imported once here (or set to ``None``) and only
:func:`require_opencl` raises, with the install hint, when a GPU path is
actually asked for -- importing :mod:`pipeit.gpu` never fails.

pocl (the CPU OpenCL device CI uses) keeps compiled kernels in a disk cache;
two processes writing one cache directory race, so every process gets its
own: :func:`make_context` points ``POCL_CACHE_DIR`` at a per-process
temporary directory before the first context is created (pocl reads it at
that moment). Built programs are cached per :class:`GpuContext` instead, so
a stage that uses one kernel twice compiles it once.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from cores.opencl import match_device
from pipeit.errors import PipeitError
from pipeit.tempdirs import make_private_dir, remove_orphans

def _ensure_writable_cache_home() -> None:
    """Give this process a private ``$XDG_CACHE_HOME`` where the usual one cannot be written.

    pyopencl (and pytools under it) keep compiled kernels under
    ``$XDG_CACHE_HOME`` (default ``~/.cache``) and fail with a traceback
    where that cannot be made: a HOME that is a file or read-only, as for a
    service user under ``ProtectHome=read-only``. A private folder there
    only costs the cache across runs; it is removed at exit.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    try:
        os.makedirs(base, exist_ok=True)
        usable = os.access(base, os.W_OK | os.X_OK)
    except OSError:
        usable = False
    if not usable:
        remove_orphans(CACHE_DIR_PREFIX)  # those of killed processes
        private = make_private_dir(CACHE_DIR_PREFIX)
        os.environ["XDG_CACHE_HOME"] = str(private)
        atexit.register(shutil.rmtree, str(private), True)


#: the start of a private cache folder's name (then the pid: pipeit.tempdirs)
CACHE_DIR_PREFIX = "pipeit-cache-"

try:  # optional dependency, guarded where used
    _ensure_writable_cache_home()  # before the import: pytools opens its caches as pyopencl loads
    import pyopencl as cl

    _IMPORT_PROBLEM = ""
except ImportError as _err:  # pragma: no cover - exercised only where pyopencl is missing
    cl = None
    # installed but broken (one of its own dependencies missing, say) reads differently from absent
    _IMPORT_PROBLEM = "" if getattr(_err, "name", None) == "pyopencl" else f"{_err}"

__all__ = [
    "ENV_DEVICE",
    "INSTALL_HINT",
    "GpuError",
    "DeviceInfo",
    "GpuContext",
    "require_opencl",
    "opencl_available",
    "list_devices",
    "select_device",
    "make_context",
]

#: environment variable naming the OpenCL device (index or name substring)
ENV_DEVICE = "PIPEIT_OPENCL_DEVICE"
INSTALL_HINT = "pip install 'pipeit[gpu]' (pyopencl; add pocl-binary-distribution for a CPU OpenCL device)"


class GpuError(PipeitError):
    """No usable OpenCL: pyopencl missing, no platform, no such device, or a kernel build failure."""


def opencl_available() -> bool:
    """True when pyopencl imports (it says nothing about platforms)."""
    return cl is not None


def require_opencl() -> Any:
    """The pyopencl module, or a :class:`GpuError` with the install hint."""
    if cl is None:
        if _IMPORT_PROBLEM:
            raise GpuError(f"the GPU path needs pyopencl, which does not import: {_IMPORT_PROBLEM} ({INSTALL_HINT})")
        raise GpuError(f"the GPU path needs pyopencl, which is not installed: {INSTALL_HINT}")
    return cl


@dataclass(frozen=True)
class DeviceInfo:
    """What the tuner and the DSE need to know of one OpenCL device.

    ``index`` is the position in :func:`list_devices` (platforms in order,
    then their devices); it is how ``--device 0`` picks a device.
    """

    index: int
    platform: str
    name: str
    vendor: str
    device_type: str
    version: str
    driver: str
    compute_units: int
    max_work_group_size: int
    local_mem_bytes: int
    global_mem_bytes: int
    fp16: bool
    extensions: Tuple[str, ...] = field(default=(), repr=False)

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "platform": self.platform,
            "name": self.name,
            "vendor": self.vendor,
            "type": self.device_type,
            "version": self.version,
            "driver": self.driver,
            "compute_units": self.compute_units,
            "max_work_group_size": self.max_work_group_size,
            "local_mem_bytes": self.local_mem_bytes,
            "global_mem_bytes": self.global_mem_bytes,
            "fp16": self.fp16,
        }

    def fingerprint(self) -> str:
        """A short hash of what makes tuned kernels comparable: device, driver, size."""
        doc = {
            "platform": self.platform, "name": self.name, "vendor": self.vendor,
            "driver": self.driver, "version": self.version, "compute_units": self.compute_units,
            "local_mem_bytes": self.local_mem_bytes,
        }
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _type_name(cl_mod: Any, value: int) -> str:
    names = []
    for name in ("GPU", "CPU", "ACCELERATOR", "CUSTOM"):
        flag = getattr(cl_mod.device_type, name, 0)
        if flag and value & flag:
            names.append(name.lower())
    return "+".join(names) or str(value)


def _platforms(cl_mod: Any) -> List[Any]:
    try:
        return list(cl_mod.get_platforms())
    except cl_mod.Error as err:  # e.g. PLATFORM_NOT_FOUND_KHR from the ICD loader
        raise GpuError(
            f"no OpenCL platform found ({err}); install a GPU driver with OpenCL, or "
            "pocl-binary-distribution for a CPU device"
        ) from err


def _raw_devices(cl_mod: Any) -> List[Tuple[Any, Any]]:
    """(platform, device) pairs, in the order :func:`list_devices` numbers them."""
    pairs = []
    for platform in _platforms(cl_mod):
        try:
            devices = platform.get_devices()
        except cl_mod.Error:
            continue  # a platform without devices (ICD installed, no hardware)
        pairs.extend((platform, d) for d in devices)
    return pairs


def _describe(index: int, platform: Any, device: Any, cl_mod: Any) -> DeviceInfo:
    extensions = tuple(sorted(str(device.extensions).split()))
    return DeviceInfo(
        index=index,
        platform=str(platform.name).strip(),
        name=str(device.name).strip(),
        vendor=str(device.vendor).strip(),
        device_type=_type_name(cl_mod, int(device.type)),
        version=str(device.version).strip(),
        driver=str(device.driver_version).strip(),
        compute_units=int(device.max_compute_units),
        max_work_group_size=int(device.max_work_group_size),
        local_mem_bytes=int(device.local_mem_size),
        global_mem_bytes=int(device.global_mem_size),
        fp16="cl_khr_fp16" in extensions,
        extensions=extensions,
    )


def list_devices() -> List[DeviceInfo]:
    """Every OpenCL device of every platform; :class:`GpuError` when there is none."""
    cl_mod = require_opencl()
    _ensure_pocl_cache_dir()
    pairs = _raw_devices(cl_mod)
    if not pairs:
        raise GpuError(
            "no OpenCL device found; install a GPU driver with OpenCL, or "
            "pocl-binary-distribution for a CPU device"
        )
    return [_describe(i, p, d, cl_mod) for i, (p, d) in enumerate(pairs)]


def select_device(spec: Optional[str] = None) -> DeviceInfo:
    """The device named by ``spec``, else ``$PIPEIT_OPENCL_DEVICE``, else the first one.

    ``spec`` is an index into :func:`list_devices` or a case-insensitive
    substring of the device or platform name; an ambiguous or unknown name
    is refused with the list of devices.
    """
    devices = list_devices()
    spec = spec if spec not in (None, "") else os.environ.get(ENV_DEVICE, "")
    if spec in (None, ""):
        # a GPU when there is one: a CPU OpenCL device is the fallback, not the choice
        gpus = [d for d in devices if "gpu" in d.device_type]
        return (gpus or devices)[0]
    return match_device(str(spec).strip(), devices, GpuError)


#: the start of every per-process pocl cache folder's name (then the pid, a dash, mkdtemp's suffix)
POCL_DIR_PREFIX = "pipeit-pocl-"


def remove_stale_pocl_dirs() -> List[str]:
    """Remove pocl cache folders of processes that are gone; return their paths.

    A process removes its own folder at exit (atexit), which a killed GPU
    worker (SIGKILL, a crash) never reaches; a pipeline with a GPU stage
    calls this when it starts, as it does for its stage folders.
    """
    return [str(path) for path in remove_orphans(POCL_DIR_PREFIX)]


def _ensure_pocl_cache_dir() -> str:
    """Give this process its own pocl kernel cache (pocl reads it when it first loads)."""
    marker = f"{POCL_DIR_PREFIX}{os.getpid()}-"
    current = os.environ.get("POCL_CACHE_DIR", "")
    if current and os.path.basename(current).startswith(marker) and os.path.isdir(current):
        return current
    remove_stale_pocl_dirs()  # those of killed processes (a gpu tune stopped with SIGKILL): as tempdirs promises
    path = str(make_private_dir(POCL_DIR_PREFIX))
    os.environ["POCL_CACHE_DIR"] = path
    atexit.register(shutil.rmtree, path, True)
    return path


class GpuContext:
    """One device, its context, a profiling-enabled queue, and the programs built on it.

    Programs are cached by source text, so two layers with the same kernel
    (same template, same parameters) share one build. A build failure is a
    :class:`GpuError` naming the first lines of the build log.
    """

    def __init__(self, info: DeviceInfo) -> None:
        cl_mod = require_opencl()
        pairs = _raw_devices(cl_mod)
        if info.index >= len(pairs):
            raise GpuError(f"OpenCL device {info.index} disappeared")
        self.cl = cl_mod
        self.info = info
        self.device = pairs[info.index][1]
        self.context = cl_mod.Context([self.device])
        self.queue = cl_mod.CommandQueue(
            self.context, properties=cl_mod.command_queue_properties.PROFILING_ENABLE
        )
        self._programs: Dict[str, Any] = {}

    def program(self, source: str) -> Any:
        """Build (or fetch the cached build of) an OpenCL C program."""
        built = self._programs.get(source)
        if built is None:
            try:
                built = self.cl.Program(self.context, source).build()
            except self.cl.Error as err:
                lines = [ln for ln in str(err).splitlines() if ln.strip()]
                detail = " | ".join(lines[:6])
                raise GpuError(f"OpenCL build failed on {self.info.name}: {detail}") from err
            self._programs[source] = built
        return built

    @property
    def programs_built(self) -> int:
        return len(self._programs)


def make_context(device: Optional[str] = None) -> GpuContext:
    """A :class:`GpuContext` on the device :func:`select_device` picks for ``device``."""
    _ensure_pocl_cache_dir()
    return GpuContext(select_device(device))
