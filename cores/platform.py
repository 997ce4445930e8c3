"""One entry point from a ``--platform`` spec string to a :class:`Platform`.

Specs: ``auto`` (detect this machine, or the tree under ``sysfs_root``),
``board:NAME`` (a known board file), ``emulate:big=0@1.0,little=1@0.4``
(clusters carved out of this host's CPUs, each slowed by a speed factor in
(0, 1]), or a path to a platform JSON file (``Platform.to_json`` layout).

The GPU (docs/GPU.md, "The GPU as a cluster"): ``emulate:...,gpu=SEL`` adds a
cluster ``gpu`` of kind ``"gpu"`` for the OpenCL device ``SEL`` (an index as
``pipeit gpu --list`` numbers them, or a name substring; any device type,
pocl's CPU device included). Its ``cpus`` are the one host CPU whose process
drives the device: the slowest CPU cluster's first CPU, or ``gpu=SEL@cpuN``.
``auto`` adds the first OpenCL device of type GPU when there is one and never
fails for want of OpenCL: the reason there is no GPU cluster is kept in
``Platform.extra`` as ``("gpu", why)`` for commands that print the topology.
An explicit ``gpu=`` on a host without OpenCL is a :class:`PlatformError`.

``auto`` on the live machine lists only the CPUs this process may run on
(``os.sched_getaffinity``: ``taskset``, a container's cpuset): a plan made
with the others would fail when its workers are pinned. The CPUs left out
go in ``extra`` as ``("outside_affinity", "2-7")``, as ``offline`` does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import AbstractSet, List, Optional, Sequence, Tuple

from cores.boards import load_board
from cores.errors import PlatformError
from cores.jsonfile import JsonFileError, read_json
from cores.model import MIN_SPEED, Cluster, Platform
from cores.sysfs import PathLike, format_cpu_list, parse_cpu_list
from cores.topology import detect_topology

__all__ = [
    "EmulatedCluster",
    "GpuRequest",
    "GPU_CLUSTER",
    "parse_emulate_spec",
    "split_gpu_request",
    "gpu_cluster",
    "emulated_platform",
    "detected_platform",
    "allowed_cpus_only",
    "load_platform",
    "platform_file",
]

#: an emulated cluster's speed factor: ASCII digits, a point, an exponent (0.4, 1, .5, 4e-1)
_FACTOR = re.compile(r"\s*(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*\Z", re.ASCII)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
EmulatedCluster = Tuple[str, Tuple[int, ...], float]

#: the name of the GPU cluster a spec adds (``gpu=`` in an emulate spec, or ``auto``)
GPU_CLUSTER = "gpu"


@dataclass(frozen=True)
class GpuRequest:
    """``gpu=SELECTOR[@cpuN]`` of an emulate spec: which OpenCL device, and which host CPU drives it."""

    selector: str
    host_cpu: Optional[int] = None


def split_gpu_request(text: str) -> Tuple[str, Optional[GpuRequest]]:
    """Take the ``gpu=SEL[@cpuN]`` piece out of an emulate spec: ``(the CPU part, request or None)``."""
    kept: List[str] = []
    request: Optional[GpuRequest] = None
    in_gpu = False
    for part in re.split(r"([;,])", text):
        if part in (",", ";"):
            kept.append(part)
            continue
        name, sep, rest = part.partition("=")
        if sep and name.strip() == GPU_CLUSTER:
            if request is not None:
                raise PlatformError("emulate spec: gpu= appears twice (one GPU cluster per platform)")
            request = _gpu_request(rest.strip())
            in_gpu = True
            if kept:
                kept.pop()  # the separator before the gpu piece
            continue
        if in_gpu and not sep and part.strip():
            raise PlatformError(f"emulate spec: gpu= takes one device, not a list (stray {part.strip()!r})")
        if sep:
            in_gpu = False
        if in_gpu:
            if kept:
                kept.pop()
            continue
        kept.append(part)
    cpu_text = "".join(kept).strip(" ,;")
    return cpu_text, request


def _gpu_request(value: str) -> GpuRequest:
    selector, at, host = value.rpartition("@cpu") if "@cpu" in value else (value, "", "")
    selector = selector.strip()
    if not selector:
        raise PlatformError("emulate spec: gpu= needs an OpenCL device index or name (gpu=0, gpu=Mali, gpu=0@cpu1)")
    if not at:
        if re.fullmatch(r".+@\d+", selector):  # the host CPU without "cpu": it read as a device name
            raise PlatformError(f"emulate spec: gpu={value}: name the host CPU as @cpuN (gpu="
                                f"{selector.rpartition('@')[0]}@cpu{selector.rpartition('@')[2]})")
        return GpuRequest(selector)
    host = host.strip()
    if not host.isdigit():
        raise PlatformError(f"emulate spec: gpu host CPU {host!r} is not a CPU number (gpu=0@cpu1)")
    return GpuRequest(selector, int(host))


def _slowest_first_cpu(clusters: Sequence[Cluster]) -> int:
    """The first CPU of the slowest CPU cluster: the GPU's host work should not take a big core."""
    def rank(c: Cluster) -> tuple:
        return (c.speed, c.capacity if c.capacity is not None else 0,
                c.max_freq_khz if c.max_freq_khz is not None else 0, -c.size)

    slowest = min((c for c in clusters if c.kind == "cpu"), key=rank)
    return min(slowest.cpus)


def gpu_cluster(device_name: str, selector: str, clusters: Sequence[Cluster],
                host_cpu: Optional[int] = None) -> Cluster:
    """The ``gpu`` cluster: one worker (size 1), host CPU as given or the slowest cluster's first."""
    cpu = _slowest_first_cpu(clusters) if host_cpu is None else int(host_cpu)
    return Cluster(name=GPU_CLUSTER, core_type=device_name, cpus=(cpu,), kind="gpu", device=str(selector))


def parse_emulate_spec(text: str) -> List[EmulatedCluster]:
    """Parse ``big=0-1@1.0,little=2,3@0.4`` into ``[(name, cpus, factor), ...]``.

    Commas separate clusters and also CPUs inside a list: a piece without
    ``=`` continues the previous cluster's CPU list. ``;`` also separates
    clusters. A missing ``@F`` means full speed. Checks names, factors in
    (0, 1] and CPUs repeated across clusters; whether the CPUs exist is
    checked by :func:`emulated_platform` against the host.
    """
    if not text.strip():
        raise PlatformError("emulate spec is empty; expected e.g. emulate:big=0@1.0,little=1@0.4")
    pieces: List[str] = []
    for part in re.split(r"[;,]", text):
        part = part.strip()
        if "=" in part or not pieces:
            pieces.append(part)
        else:
            pieces[-1] += "," + part
    out: List[EmulatedCluster] = []
    owner = {}
    for piece in pieces:
        name, sep, rest = piece.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise PlatformError(
                f"emulate spec piece {piece!r} is not NAME=CPUS@FACTOR (e.g. little=1@0.4)"
            )
        cpu_text, at, factor_text = rest.partition("@")
        try:
            cpus = parse_cpu_list(cpu_text)
        except PlatformError as err:
            raise PlatformError(f"emulate spec: cluster {name!r}: {err}") from None
        if not cpus:
            raise PlatformError(f"emulate spec: cluster {name!r} names no CPUs")
        # a plain decimal: float() also takes "١", "0.5_0", "nan" and "inf"
        if at and not _FACTOR.match(factor_text):
            raise PlatformError(f"emulate spec: cluster {name!r} factor {factor_text!r} is not a number")
        factor = float(factor_text) if at else 1.0
        if not (MIN_SPEED <= factor <= 1.0):
            raise PlatformError(
                f"emulate spec: cluster {name!r} factor {factor_text} is outside [{MIN_SPEED:g}, 1]"
            )
        if any(n == name for n, _, _ in out):
            raise PlatformError(f"emulate spec: cluster name {name!r} appears twice")
        for cpu in cpus:
            if cpu in owner:
                raise PlatformError(
                    f"emulate spec: CPU {cpu} appears twice (in {owner[cpu]!r} and {name!r})"
                )
            owner[cpu] = name
        out.append((name, cpus, factor))
    return out


def emulated_platform(text: str, sysfs_root: Optional[PathLike] = None) -> Platform:
    """Clusters carved out of this host's online CPUs, slowed by their factors (and a ``gpu=``)."""
    cpu_text, request = split_gpu_request(text)
    wanted = parse_emulate_spec(cpu_text)
    host = detect_topology(sysfs_root)
    records = {r.cpu: r for r in host.cpus}
    clusters = []
    for name, cpus, factor in wanted:
        missing = [c for c in cpus if c not in records]
        if missing:
            raise PlatformError(
                f"emulate spec: cluster {name!r} names CPU(s) {format_cpu_list(missing)} that this "
                f"host does not have online (online: {format_cpu_list(records)})"
            )
        first = records[cpus[0]]
        freqs = [records[c].max_freq_khz for c in cpus if records[c].max_freq_khz]
        base_capacity = first.capacity if first.capacity is not None else 1024
        clusters.append(
            Cluster(
                name=name,
                core_type=first.core_type,
                cpus=cpus,
                max_freq_khz=max(freqs) if freqs else None,
                capacity=max(1, int(round(base_capacity * factor))),
                speed=factor,
            )
        )
    if request is not None:
        if request.host_cpu is not None and request.host_cpu not in records:
            have = format_cpu_list(records)
            raise PlatformError(f"emulate spec: gpu host CPU {request.host_cpu} is not online here (online: {have})")
        from cores.opencl import find_device

        device = find_device(request.selector)
        clusters.append(gpu_cluster(device.name, request.selector, clusters, request.host_cpu))
    return Platform(clusters=tuple(clusters), source=f"emulate:{text}")


def allowed_cpus_only(platform: Platform, allowed: AbstractSet[int]) -> Platform:
    """``platform`` without the CPUs outside ``allowed``, and without clusters left empty.

    Cluster names stay as detected, so a plan made under ``taskset`` names the
    same clusters as one made on the whole machine. The CPUs dropped are kept
    in ``extra`` as ``outside_affinity``. Raises :class:`PlatformError` when
    no CPU is left.
    """
    kept: List[Cluster] = []
    dropped: List[int] = []
    for cluster in platform.clusters:
        cpus = tuple(c for c in cluster.cpus if c in allowed)
        dropped.extend(c for c in cluster.cpus if c not in allowed)
        if cpus:
            kept.append(cluster if len(cpus) == cluster.size else replace(cluster, cpus=cpus))
    if not dropped:
        return platform
    if not kept:
        raise PlatformError(
            f"auto: this process may run only on CPUs {format_cpu_list(allowed) or 'none'}, none of "
            f"which is an online CPU here ({format_cpu_list(platform.cpus)})"
        )
    extra = platform.extra + (("outside_affinity", format_cpu_list(dropped)),)
    return Platform(clusters=tuple(kept), source=platform.source, extra=extra)


def _affinity() -> Optional[AbstractSet[int]]:
    """This process's allowed CPUs; None where the OS cannot say (not Linux)."""
    getter = getattr(os, "sched_getaffinity", None)
    return None if getter is None else set(getter(0))


def detected_platform(sysfs_root: Optional[PathLike] = None) -> Platform:
    """``auto``: this machine's CPU clusters, plus its first OpenCL GPU when there is one.

    A fixture tree (``sysfs_root``) describes another machine, so OpenCL is
    not probed there and this process's CPU affinity does not apply. On the
    live machine only the CPUs the process may run on are listed (see the
    module docstring). Without a GPU the reason goes in ``extra`` as ``gpu``.
    """
    platform = detect_topology(sysfs_root).platform
    if sysfs_root is not None:
        return platform
    allowed = _affinity()
    if allowed is not None:
        platform = allowed_cpus_only(platform, allowed)
    from cores.opencl import first_gpu

    device, why = first_gpu()
    if device is None:
        return Platform(clusters=platform.clusters, source=platform.source, extra=platform.extra + (("gpu", why),))
    gpu = gpu_cluster(device.name, str(device.index), platform.clusters)
    return Platform(clusters=platform.clusters + (gpu,), source=platform.source, extra=platform.extra)


def _from_file(path: Path) -> Platform:
    try:
        doc = read_json(path, "platform")
    except JsonFileError as err:
        raise PlatformError(f"{path}: not a JSON platform file ({err.detail})") from None
    platform = Platform.from_json(doc, where=str(path))
    return Platform(clusters=platform.clusters, source=str(doc.get("source", f"file:{path}")))


def platform_file(spec: Optional[str]) -> Optional[str]:
    """The file a ``--platform`` spec names (None for ``auto``, ``board:`` and ``emulate:``): an input
    that a command's output must not overwrite, like any other."""
    spec = (spec or "auto").strip()
    return None if spec == "auto" or spec.startswith(("board:", "emulate:")) else spec


def load_platform(spec: str = "auto", sysfs_root: Optional[PathLike] = None) -> Platform:
    """Turn a ``--platform`` spec into a :class:`Platform` (see the module docstring)."""
    spec = (spec or "auto").strip()
    if spec == "auto":
        return detected_platform(sysfs_root)
    if spec.startswith("board:"):
        return load_board(spec[len("board:"):].strip())
    if spec.startswith("emulate:"):
        return emulated_platform(spec[len("emulate:"):], sysfs_root)
    path = Path(spec)
    if path.is_file() or spec.endswith(".json") or "/" in spec:
        if not path.exists():
            raise PlatformError(f"platform file {spec!r} does not exist")
        return _from_file(path)
    raise PlatformError(
        f"unknown platform spec {spec!r}; use auto, board:NAME, "
        "emulate:NAME=CPUS@FACTOR,... or a path to a platform JSON file"
    )
