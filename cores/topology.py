"""Detect the clusters of this machine (or of a fixture tree) from sysfs and ``/proc/cpuinfo``.

What is read, and the fallback for each (files vanish with kernel version,
hotplug and drivers, so every read has one):

* online CPUs: ``cpu/online``; else every ``cpuN`` folder; else cpuinfo.
* frequency domain: ``cpufreq/policy*/related_cpus`` (``affected_cpus`` on
  old kernels); else ``cpuN/cpufreq/related_cpus`` (kernels before 4.3 have
  no ``policy*`` folders); none when cpufreq is absent.
* max frequency: ``cpuN/cpufreq/cpuinfo_max_freq``; else the policy's.
* capacity: ``cpuN/cpu_capacity`` (arch_topology; absent on most x86).
  Zero or negative capacities and clocks are read as unknown.
* hardware cluster: ``topology/cluster_id``; ``65535``/``-1`` mean "unknown"
  and fall back to ``physical_package_id`` (the cluster on 32-bit ARM).
* SMT siblings: ``topology/core_cpus_list``; else ``thread_siblings_list``.
* core type: Intel hybrid ``/sys/devices/cpu_core|cpu_atom/cpus``; else the
  ARM ``CPU part``; else the arm64 ``regs/identification/midr_el1`` of a CPU
  cpuinfo does not list; else the x86 ``model name``. A CPU missing from
  cpuinfo borrows another's type only on x86 with one model name throughout
  (x86 prints the same name for every core); an ARM cpuinfo that lists only
  the boot cluster says nothing about the others, so they stay ``unknown``.
* arch: ARM when any CPU has an implementer (cpuinfo or MIDR); x86 from the
  ``vendor_id``/``model name``, or from x86-only sysfs folders; else other.

Clusters group CPUs of one core type and one frequency domain (ARM); on x86
every CPU has its own cpufreq policy and ``cluster_id`` is the L2 id, so there
CPUs group by core type and package only. On other or unknown arches (no
cpuinfo, no MIDR: 32-bit ARM in a sandbox, RISC-V) shared frequency domains
still split clusters; ``cluster_id`` does only when every id spans several
cores, since a per-core id is the x86 L2 signature and says nothing.

Then a group splits where its CPUs' ``cpu_capacity`` (else max frequency)
jumps by more than 15 % between consecutive distinct values (``GAP_RATIO``).
That catches heterogeneous cores the kernel names alike and does not put in
separate domains: AMD Zen5 + Zen5c (5.1 vs 3.3 GHz, one model name), Alder
Lake on a kernel without ``cpu_core``/``cpu_atom``, Meteor Lake's LP E-cores
(2.5 GHz) next to its E-cores (3.8 GHz), ARM parts with two clocks of one
core type and per-CPU policies. 15 % sits well above the few percent Intel
"favored cores" (ITMT: 5.3 vs 5.2 GHz) and AMD preferred cores spread over
one cluster, which must not split it, and well below the 30 %+ between real
core classes.

Cluster names are predictable:
one cluster is ``cpu``; otherwise the slowest is ``little`` and the others are
``big`` (one) or ``big0``, ``big1``, ... in ascending speed, ties by first CPU
(RK3588: little = A55 0-3, big0 = A76 4-5, big1 = A76 6-7). Clusters of equal
speed and type are ``cluster0``, ``cluster1``, ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from cores.cputypes import (
    ProcessorInfo, known_positive, parse_cpuinfo, per_mhz, processor_from_midr, speed_rank,
)
from cores.errors import PlatformError
from cores.model import MAX_CAPACITY, MAX_FREQ_KHZ, Cluster, Platform
from cores.sysfs import MAX_CPU_ID, PathLike, SysRoot, format_cpu_list

__all__ = ["CpuRecord", "Topology", "detect_topology", "detect_platform"]

CPU_DIR = "/sys/devices/system/cpu"
#: cluster_id values that mean "the kernel does not know"
_UNKNOWN_IDS = (65535, -1, 4294967295)
#: a group splits where consecutive distinct capacities or max clocks differ by more than this
#: factor (15 %): above Intel favored-core spreads (2-7 %), below real core classes (30 %+)
GAP_RATIO = 1.15
#: cpuinfo vendor_id values of x86 CPUs
_X86_VENDORS = ("genuineintel", "authenticamd", "hygongenuine", "centaurhauls", "shanghai")
#: sysfs folders only x86 kernels have (hybrid PMUs, the P-state drivers)
_X86_SYSFS = ("/sys/devices/cpu_core", "/sys/devices/cpu_atom", f"{CPU_DIR}/intel_pstate",
              f"{CPU_DIR}/amd_pstate")


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
    folders = {int(name[3:]) for name in root.listdir(CPU_DIR)
               if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) <= MAX_CPU_ID}
    online = root.cpu_list(f"{CPU_DIR}/online")
    if online:
        # A CPU the list names without a cpuN folder has nothing to read: no cluster is made up for it
        # (a tree without any cpuN folder is taken at its word).
        kept = tuple(cpu for cpu in online if cpu in folders) if folders else online
        return kept or online
    # Old or trimmed trees: every cpuN folder that is not marked offline.
    found = []
    for cpu in sorted(folders):
        if root.integer(f"{CPU_DIR}/cpu{cpu}/online", 1) == 1:
            found.append(cpu)
    if found:
        return tuple(sorted(found))
    return tuple(sorted(cpu for cpu in info if cpu <= MAX_CPU_ID))


def _plausible(value: Optional[int], top: int) -> Optional[int]:
    """A capacity or clock the platform documents can hold (1..``top``); else unknown (None):
    a driver's 0 or -1, or a number no CPU has (which a platform file would then refuse)."""
    value = known_positive(value)
    return value if value is not None and value <= top else None


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


def _borrowed(info: Dict[int, ProcessorInfo]) -> Optional[ProcessorInfo]:
    """cpuinfo's identity for a CPU it does not list, only where that is safe.

    x86 prints one model name for every core (hybrid P/E come from sysfs), so
    an unlisted CPU is one of the same. ARM prints each CPU's own part: a
    cpuinfo listing only the A7s of an Exynos 5422 says nothing about its A15s.
    """
    if not info or any(p.implementer is not None for p in info.values()):
        return None
    if len({p.core_type for p in info.values()}) != 1:
        return None
    return info[min(info)]


def _identity(root: SysRoot, cpu: int, info: Dict[int, ProcessorInfo]) -> Optional[ProcessorInfo]:
    """Who CPU ``cpu`` is: its cpuinfo block; else its arm64 MIDR; else a uniform x86 cpuinfo's."""
    proc = info.get(cpu)
    if proc is not None:
        return proc
    midr = processor_from_midr(cpu, root.text(f"{CPU_DIR}/cpu{cpu}/regs/identification/midr_el1"))
    return midr if midr is not None else _borrowed(info)


def _arch(root: SysRoot, idents: Dict[int, Optional[ProcessorInfo]]) -> str:
    known = [p for p in idents.values() if p is not None]
    if any(p.implementer is not None for p in known):
        return "arm"
    if any((p.vendor_id or "").strip().lower() in _X86_VENDORS for p in known):
        return "x86"
    names = " ".join(p.model_name or "" for p in known).lower()
    if any(word in names for word in ("intel", "amd", "epyc", "ryzen", "xeon", "core(tm)")):
        return "x86"
    if any(root.path(folder).is_dir() for folder in _X86_SYSFS):
        return "x86"
    return "other"


def _own_domain(root: SysRoot, cpu: int) -> Optional[Tuple[int, ...]]:
    """The CPU's own ``cpufreq/related_cpus``: the only domain file before Linux 4.3's ``policy*``."""
    base = f"{CPU_DIR}/cpu{cpu}/cpufreq"
    related = root.cpu_list(f"{base}/related_cpus") or root.cpu_list(f"{base}/affected_cpus")
    return related if related and cpu in related else None


def _record(
    root: SysRoot,
    cpu: int,
    proc: Optional[ProcessorInfo],
    domains: Dict[int, Tuple[Tuple[int, ...], Optional[int]]],
    hybrid: Dict[int, str],
) -> CpuRecord:
    base = f"{CPU_DIR}/cpu{cpu}"
    core_type = proc.core_type if proc is not None else "unknown"
    kind = hybrid.get(cpu)
    if kind is not None:
        core_type = f"{core_type} {'P-core' if kind == 'core' else 'E-core'}"
    domain, policy_max = domains.get(cpu, (None, None))
    if domain is None:
        domain = _own_domain(root, cpu)
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
        max_freq_khz=_plausible(max_freq, MAX_FREQ_KHZ),
        capacity=_plausible(root.integer(f"{base}/cpu_capacity"), MAX_CAPACITY),
        freq_domain=domain,
        cluster_id=cluster_id,
        package_id=root.integer(f"{base}/topology/physical_package_id"),
        siblings=siblings,
        hybrid=kind,
    )


def _ids_span_cores(records: List[CpuRecord]) -> bool:
    """Whether every ``cluster_id`` groups several cores (not just one core's SMT threads).

    A per-core id is what x86 reports (its ``cluster_id`` is the L2 id, one
    per P-core), so on an arch we cannot name it only ids that span cores
    are trusted as clusters.
    """
    cores: Dict[tuple, set] = {}
    for rec in records:
        if rec.cluster_id is None:
            return False
        cores.setdefault((rec.package_id, rec.cluster_id), set()).add(rec.siblings)
    return all(len(found) > 1 for found in cores.values())


def _group(records: List[CpuRecord], arch: str) -> List[List[CpuRecord]]:
    # A frequency domain is only a cluster boundary when domains are shared:
    # per-CPU policies (intel_pstate, ACPI CPPC) say nothing about clusters.
    shared = any(r.freq_domain is not None and len(r.freq_domain) > 1 for r in records)
    use_ids = arch == "arm" or (arch != "x86" and _ids_span_cores(records))
    groups: Dict[tuple, List[CpuRecord]] = {}
    for rec in records:
        if arch == "x86":
            key: tuple = (rec.core_type, rec.package_id)
        elif shared and rec.freq_domain is not None:
            key = (rec.core_type, "domain", rec.freq_domain)
        elif use_ids and rec.cluster_id is not None:
            key = (rec.core_type, "cluster", rec.package_id, rec.cluster_id)
        else:
            key = (rec.core_type, "package", rec.package_id)
        groups.setdefault(key, []).append(rec)
    return list(groups.values())


def _split_on(members: List[CpuRecord], field: str) -> List[List[CpuRecord]]:
    """Split ``members`` where sorted distinct values of ``field`` jump by more than ``GAP_RATIO``.

    Only when every member has the value: a partly missing file is no evidence.
    """
    values = [getattr(r, field) for r in members]
    if any(v is None for v in values):
        return [members]
    ordered = sorted(set(values))
    cuts = [hi for lo, hi in zip(ordered, ordered[1:]) if hi > lo * GAP_RATIO]
    if not cuts:
        return [members]
    bands: Dict[int, List[CpuRecord]] = {}
    for rec in members:
        band = sum(1 for cut in cuts if getattr(rec, field) >= cut)
        bands.setdefault(band, []).append(rec)
    return [bands[band] for band in sorted(bands)]


def _split_gaps(members: List[CpuRecord]) -> List[List[CpuRecord]]:
    """A group split by capacity gaps, then each part by max-clock gaps (see the module docstring).

    Both are checked: a device tree without ``capacity-dmips-mhz`` gives every
    CPU 1024 whatever its clock, and cores of one clock can differ in capacity.
    """
    parts = [members]
    for field in ("capacity", "max_freq_khz"):
        parts = [piece for part in parts for piece in _split_on(part, field)]
    return parts


def _typed(groups: List[List[CpuRecord]]) -> bool:
    """Whether every group's core type has a per-MHz figure (see :func:`cores.cputypes.speed_rank`)."""
    return all(per_mhz(m[0].core_type) for m in groups)


def _speed_rank(members: List[CpuRecord], typed: bool) -> tuple:
    """Per-core speed, best evidence first: hybrid P over E, capacity, then type x clock."""
    capacity = max((r.capacity or 0) for r in members)
    freq = max((r.max_freq_khz or 0) for r in members)
    return speed_rank(members[0].core_type, capacity, freq, typed)


def _names(ranked: List[List[CpuRecord]], typed: bool) -> List[str]:
    if len(ranked) == 1:
        return ["cpu"]
    ranks = [_speed_rank(m, typed) for m in ranked]
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
    idents = {cpu: _identity(root, cpu, info) for cpu in online}
    records = [_record(root, cpu, idents[cpu], domains, hybrid) for cpu in online]
    arch = _arch(root, idents)

    groups = [part for group in _group(records, arch) for part in _split_gaps(group)]
    typed = _typed(groups)
    groups.sort(key=lambda m: (_speed_rank(m, typed), min(r.cpu for r in m)))
    names = _names(groups, typed)
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
