"""Detect the clusters of this machine (or of a fixture tree) from sysfs and ``/proc/cpuinfo``.

What is read, and the fallback for each (files vanish with kernel version,
hotplug and drivers, so every read has one):

* online CPUs: ``cpu/online``; else every ``cpuN`` folder; else cpuinfo.
* frequency domain: ``cpufreq/policy*/related_cpus`` (``affected_cpus`` on
  old kernels); none when cpufreq is absent.
* max frequency: ``cpuN/cpufreq/cpuinfo_max_freq``; else the policy's.
* capacity: ``cpuN/cpu_capacity`` (arch_topology; absent on most x86).
* hardware cluster: ``topology/cluster_id``; ``65535``/``-1`` mean "unknown"
  and fall back to ``physical_package_id`` (the cluster on 32-bit ARM).
* SMT siblings: ``topology/core_cpus_list``; else ``thread_siblings_list``.
* core type: Intel hybrid ``/sys/devices/cpu_core|cpu_atom/cpus``; else the
  ARM ``CPU part``; else the x86 ``model name``.

Clusters group CPUs of one core type and one frequency domain (ARM); on x86
every CPU has its own cpufreq policy and ``cluster_id`` is the L2 id, so there
CPUs group by core type and package only. Cluster names are predictable:
one cluster is ``cpu``; otherwise the slowest is ``little`` and the others are
``big`` (one) or ``big0``, ``big1``, ... in ascending speed, ties by first CPU
(RK3588: little = A55 0-3, big0 = A76 4-5, big1 = A76 6-7). Clusters of equal
speed and type are ``cluster0``, ``cluster1``, ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from cores.cputypes import PER_MHZ, ProcessorInfo, parse_cpuinfo
from cores.errors import PlatformError
from cores.model import Cluster, Platform
from cores.sysfs import PathLike, SysRoot, format_cpu_list

__all__ = ["CpuRecord", "Topology", "detect_topology", "detect_platform"]

CPU_DIR = "/sys/devices/system/cpu"
#: cluster_id values that mean "the kernel does not know"
_UNKNOWN_IDS = (65535, -1, 4294967295)


@dataclass(frozen=True)
class CpuRecord:
    """What the kernel says about one online CPU."""

    cpu: int
    core_type: str
    max_freq_khz: Optional[int]
    capacity: Optional[int]
    freq_domain: Optional[Tuple[int, ...]]
    cluster_id: Optional[int]
    package_id: Optional[int]
    siblings: Tuple[int, ...]
    hybrid: Optional[str] = None  # "core" (P) / "atom" (E) on Intel hybrid parts

    def to_json(self) -> dict:
        return {
            "cpu": self.cpu,
            "core_type": self.core_type,
            "max_freq_khz": self.max_freq_khz,
            "capacity": self.capacity,
            "freq_domain": None if self.freq_domain is None else list(self.freq_domain),
            "cluster_id": self.cluster_id,
            "package_id": self.package_id,
            "siblings": list(self.siblings),
            "hybrid": self.hybrid,
        }


@dataclass(frozen=True)
class Topology:
    """A detected platform plus the per-CPU facts it was built from."""

    platform: Platform
    cpus: Tuple[CpuRecord, ...]
    offline: Tuple[int, ...]
    arch: str  # "arm", "x86" or "other"

    @property
    def smt(self) -> bool:
        return any(len(r.siblings) > 1 for r in self.cpus)

    def threads_per_core(self, cluster: Cluster) -> int:
        members = [r for r in self.cpus if r.cpu in cluster.cpus]
        return max((len(r.siblings) for r in members), default=1)


def _online_cpus(root: SysRoot, info: Dict[int, ProcessorInfo]) -> Tuple[int, ...]:
    online = root.cpu_list(f"{CPU_DIR}/online")
    if online:
        return online
    # Old or trimmed trees: every cpuN folder that is not marked offline.
    found = []
    for name in root.listdir(CPU_DIR):
        if name.startswith("cpu") and name[3:].isdigit():
            cpu = int(name[3:])
            if root.integer(f"{CPU_DIR}/{name}/online", 1) == 1:
                found.append(cpu)
    if found:
        return tuple(sorted(found))
    return tuple(sorted(info))


def _freq_domains(root: SysRoot) -> Dict[int, Tuple[Tuple[int, ...], Optional[int]]]:
    """cpu -> (related CPUs, policy max kHz) from ``cpufreq/policy*``."""
    out: Dict[int, Tuple[Tuple[int, ...], Optional[int]]] = {}
    base = f"{CPU_DIR}/cpufreq"
    for name in root.listdir(base):
        if not name.startswith("policy"):
            continue
        related = root.cpu_list(f"{base}/{name}/related_cpus") or root.cpu_list(
            f"{base}/{name}/affected_cpus"
        )
        if not related:
            continue
        top = root.integer(f"{base}/{name}/cpuinfo_max_freq")
        for cpu in related:
            out[cpu] = (related, top)
    return out


def _hybrid_types(root: SysRoot) -> Dict[int, str]:
    out: Dict[int, str] = {}
    for kind in ("core", "atom"):
        for cpu in root.cpu_list(f"/sys/devices/cpu_{kind}/cpus", ()) or ():
            out[cpu] = kind
    return out


def _arch(info: Dict[int, ProcessorInfo]) -> str:
    if any(p.implementer is not None for p in info.values()):
        return "arm"
    names = " ".join(p.model_name or "" for p in info.values()).lower()
    if any(word in names for word in ("intel", "amd", "epyc", "ryzen", "xeon", "core(tm)")):
        return "x86"
    return "other"


def _record(
    root: SysRoot,
    cpu: int,
    info: Dict[int, ProcessorInfo],
    domains: Dict[int, Tuple[Tuple[int, ...], Optional[int]]],
    hybrid: Dict[int, str],
) -> CpuRecord:
    base = f"{CPU_DIR}/cpu{cpu}"
    proc = info.get(cpu)
    if proc is None and info:
        # cpuinfo lists only online CPUs and they share a model on x86; borrow one.
        proc = info[min(info)]
    core_type = proc.core_type if proc is not None else "unknown"
    kind = hybrid.get(cpu)
    if kind is not None:
        core_type = f"{core_type} {'P-core' if kind == 'core' else 'E-core'}"
    domain, policy_max = domains.get(cpu, (None, None))
    max_freq = root.integer(f"{base}/cpufreq/cpuinfo_max_freq", policy_max)
    cluster_id = root.integer(f"{base}/topology/cluster_id")
    if cluster_id in _UNKNOWN_IDS:
        cluster_id = None
    siblings = root.cpu_list(f"{base}/topology/core_cpus_list") or root.cpu_list(
        f"{base}/topology/thread_siblings_list"
    ) or (cpu,)
    return CpuRecord(
        cpu=cpu,
        core_type=core_type,
        max_freq_khz=max_freq,
        capacity=root.integer(f"{base}/cpu_capacity"),
        freq_domain=domain,
        cluster_id=cluster_id,
        package_id=root.integer(f"{base}/topology/physical_package_id"),
        siblings=siblings,
        hybrid=kind,
    )


def _group(records: List[CpuRecord], arch: str) -> List[List[CpuRecord]]:
    # A frequency domain is only a cluster boundary when domains are shared:
    # per-CPU policies (intel_pstate, ACPI CPPC) say nothing about clusters.
    shared = any(r.freq_domain is not None and len(r.freq_domain) > 1 for r in records)
    groups: Dict[tuple, List[CpuRecord]] = {}
    for rec in records:
        if arch != "arm":
            key: tuple = (rec.core_type, rec.package_id)
        elif shared and rec.freq_domain is not None:
            key = (rec.core_type, "domain", rec.freq_domain)
        elif rec.cluster_id is not None:
            key = (rec.core_type, "cluster", rec.package_id, rec.cluster_id)
        else:
            key = (rec.core_type, "package", rec.package_id)
        groups.setdefault(key, []).append(rec)
    return list(groups.values())


def _speed_rank(members: List[CpuRecord]) -> tuple:
    """Per-core speed, best evidence first: hybrid P over E, capacity, then type x clock."""
    first = members[0]
    capacity = max((r.capacity or 0) for r in members)
    freq = max((r.max_freq_khz or 0) for r in members)
    per_mhz = PER_MHZ.get(first.core_type, 0)
    estimate = per_mhz * freq if per_mhz and freq else (freq or per_mhz)
    hybrid = {"core": 1, "atom": 0}.get(first.hybrid or "", 0)
    return (hybrid, capacity, estimate, freq)


def _names(ranked: List[List[CpuRecord]]) -> List[str]:
    if len(ranked) == 1:
        return ["cpu"]
    ranks = [_speed_rank(m) for m in ranked]
    types = {m[0].core_type for m in ranked}
    if len(set(ranks)) == 1 and len(types) == 1:
        return [f"cluster{i}" for i in range(len(ranked))]
    slowest = ranks[0]
    lows = [i for i, r in enumerate(ranks) if r == slowest]
    names = ["little"] if len(lows) == 1 else [f"little{i}" for i in range(len(lows))]
    rest = len(ranked) - len(lows)
    names += ["big"] if rest == 1 else [f"big{i}" for i in range(rest)]
    return names


def detect_topology(sysfs_root: Optional[PathLike] = None) -> Topology:
    """Read the CPU topology under ``sysfs_root`` (``/`` when None).

    Raises :class:`PlatformError` when the root holds no readable CPU tree.
    """
    root = SysRoot(sysfs_root)
    where = str(root.root)
    if sysfs_root is not None and not os.path.isdir(root.root):
        raise PlatformError(f"sysfs root {where!r} is not a readable folder")
    if not root.path(CPU_DIR).is_dir():
        raise PlatformError(f"{where}: no {CPU_DIR.lstrip('/')} folder (not a sysfs tree)")
    info = parse_cpuinfo(root.text("/proc/cpuinfo", "") or "")
    online = _online_cpus(root, info)
    if not online:
        raise PlatformError(f"{where}: no online CPUs found under {CPU_DIR}")
    domains = _freq_domains(root)
    hybrid = _hybrid_types(root)
    records = [_record(root, cpu, info, domains, hybrid) for cpu in online]
    arch = _arch(info)

    groups = _group(records, arch)
    groups.sort(key=lambda m: (_speed_rank(m), min(r.cpu for r in m)))
    names = _names(groups)
    clusters = []
    for name, members in zip(names, groups):
        caps = [r.capacity for r in members if r.capacity is not None]
        freqs = [r.max_freq_khz for r in members if r.max_freq_khz is not None]
        clusters.append(
            Cluster(
                name=name,
                core_type=members[0].core_type,
                cpus=tuple(sorted(r.cpu for r in members)),
                max_freq_khz=max(freqs) if freqs else None,
                capacity=max(caps) if caps else None,
            )
        )

    present = root.cpu_list(f"{CPU_DIR}/present") or ()
    offline = set(root.cpu_list(f"{CPU_DIR}/offline") or ())
    offline |= set(present) - set(online)
    source = "auto" if sysfs_root is None else f"sysfs:{where}"
    extra = (("offline", format_cpu_list(offline)),) if offline else ()
    platform = Platform(clusters=tuple(clusters), source=source, extra=extra)
    return Topology(platform=platform, cpus=tuple(records), offline=tuple(sorted(offline)), arch=arch)


def detect_platform(sysfs_root: Optional[PathLike] = None) -> Platform:
    """The platform of this machine (or of the tree under ``sysfs_root``)."""
    return detect_topology(sysfs_root).platform
