"""Cheap readings of the machine's state: current frequency and governor per cluster,
thermal zones, online CPUs.

A :class:`Monitor` resolves every file path once (which cpufreq policy
serves which cluster, which thermal zones exist), so a :meth:`Monitor.snapshot`
is a handful of small reads (tens of microseconds): cheap enough for the
daemon's loop and for stamping every profile row. Missing or unreadable
files give ``None``; a reading never raises.

On an emulated platform a cluster's speed is not a frequency but its
cgroup's CPU quota: given a ``speeds`` source (the emulation's
:class:`cores.emulation.Throttles`), each reading also carries the
cluster's current ``speed`` (declared speed x quota share now / at
calibration), so a quota cut shows in the next reading as a board's
frequency cap would. Real boards give ``speed`` None.

A thermal zone's ``temp`` outside -60..200 C is read as no reading: drivers
report failures as sentinels (``2147483647``, ``-273000``), and one such value
would become ``max_temp_c`` and trip any thermal policy. A zone reachable
under two names (a symlink) is read once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Tuple

from cores.model import Platform
from cores.sysfs import PathLike, SysRoot

__all__ = ["ClusterReading", "ThermalReading", "Snapshot", "Monitor", "SpeedSource", "snapshot"]

CPU_DIR = "/sys/devices/system/cpu"
THERMAL_DIR = "/sys/class/thermal"
#: plausible temperatures in degrees C (below: no silicon runs there; above: a sentinel or a bad read)
TEMP_RANGE_C = (-60.0, 200.0)


@dataclass(frozen=True)
class ClusterReading:
    name: str
    cur_freq_khz: Optional[int]
    governor: Optional[str]
    max_freq_khz: Optional[int]  # the policy's current scaling_max_freq (a cap, if one is set)
    #: an emulated cluster's current speed (1.0 = a full host CPU); None on real hardware
    speed: Optional[float] = None

    def to_json(self) -> dict:
        doc = {"name": self.name, "cur_freq_khz": self.cur_freq_khz,
               "governor": self.governor, "scaling_max_freq_khz": self.max_freq_khz}
        if self.speed is not None:
            doc["speed"] = self.speed
        return doc


class SpeedSource(Protocol):
    """What reports an emulated cluster's speed now (:meth:`cores.emulation.Throttles.speed_now`)."""

    def speed_now(self, cluster: str) -> Optional[float]:
        ...


@dataclass(frozen=True)
class ThermalReading:
    zone: str
    type: Optional[str]
    temp_c: Optional[float]

    def to_json(self) -> dict:
        return {"zone": self.zone, "type": self.type, "temp_c": self.temp_c}


@dataclass(frozen=True)
class Snapshot:
    """One reading of everything, stamped with ``time.monotonic()``."""

    monotonic_s: float
    online: Optional[Tuple[int, ...]]
    clusters: Tuple[ClusterReading, ...]
    thermal: Tuple[ThermalReading, ...]

    @property
    def max_temp_c(self) -> Optional[float]:
        temps = [t.temp_c for t in self.thermal if t.temp_c is not None]
        return max(temps) if temps else None

    def cluster(self, name: str) -> Optional[ClusterReading]:
        for reading in self.clusters:
            if reading.name == name:
                return reading
        return None

    def to_json(self) -> dict:
        return {
            "monotonic_s": self.monotonic_s,
            "online": None if self.online is None else list(self.online),
            "clusters": [c.to_json() for c in self.clusters],
            "thermal": [t.to_json() for t in self.thermal],
            "max_temp_c": self.max_temp_c,
        }


def _policy_dirs(root: SysRoot) -> Dict[int, str]:
    out: Dict[int, str] = {}
    base = f"{CPU_DIR}/cpufreq"
    for name in root.listdir(base):
        if name.startswith("policy"):
            for cpu in root.cpu_list(f"{base}/{name}/related_cpus", ()) or ():
                out[cpu] = f"{base}/{name}"
    return out


def _celsius(milli: Optional[int]) -> Optional[float]:
    """A zone's ``temp`` (millidegrees) in C, or None when missing or implausible."""
    if milli is None:
        return None
    low, high = TEMP_RANGE_C
    temp = milli / 1000.0
    return temp if low <= temp <= high else None


def _thermal_zones(root: SysRoot) -> Tuple[str, ...]:
    """``thermal_zoneN`` folders in N order, each real zone once (by resolved path)."""
    def number(zone: str) -> int:
        tail = zone[len("thermal_zone"):]
        return int(tail) if tail.isdigit() else 0

    zones = sorted((z for z in root.listdir(THERMAL_DIR) if z.startswith("thermal_zone")), key=number)
    seen = set()
    out: List[str] = []
    for zone in zones:
        path = root.path(f"{THERMAL_DIR}/{zone}")
        try:
            where = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop: keep the name as it is
            where = path
        if where not in seen:
            seen.add(where)
            out.append(zone)
    return tuple(out)


class Monitor:
    """Readings for one platform's clusters; paths resolved once at construction."""

    def __init__(self, platform: Optional[Platform] = None, sysfs_root: Optional[PathLike] = None,
                 speeds: Optional[SpeedSource] = None) -> None:
        self._root = SysRoot(sysfs_root)
        self._speeds = speeds
        if platform is None:
            from cores.topology import detect_platform

            try:
                platform = detect_platform(sysfs_root)
            except Exception:  # monitoring must not fail where detection does
                platform = None
        policies = _policy_dirs(self._root)
        self._clusters: Tuple[Tuple[str, Optional[str]], ...] = ()
        if platform is not None:
            entries = []
            for cluster in platform.cpu_clusters:
                folder = None
                for cpu in cluster.cpus:
                    if cpu in policies:
                        folder = policies[cpu]
                        break
                    own = f"{CPU_DIR}/cpu{cpu}/cpufreq"
                    if self._root.exists(f"{own}/scaling_cur_freq"):
                        folder = own
                        break
                entries.append((cluster.name, folder))
            self._clusters = tuple(entries)
        # A zone's type does not change; read it once.
        self._zones = tuple((z, self._root.text(f"{THERMAL_DIR}/{z}/type")) for z in _thermal_zones(self._root))

    def snapshot(self) -> Snapshot:
        """Read frequencies, governors, temperatures and online CPUs now."""
        root = self._root
        clusters = []
        for name, folder in self._clusters:
            speed = self._speed(name)
            if folder is None:
                clusters.append(ClusterReading(name, None, None, None, speed))
                continue
            clusters.append(ClusterReading(
                name,
                root.integer(f"{folder}/scaling_cur_freq"),
                root.text(f"{folder}/scaling_governor"),
                root.integer(f"{folder}/scaling_max_freq"),
                speed,
            ))
        thermal = []
        for zone, kind in self._zones:
            thermal.append(ThermalReading(zone, kind, _celsius(root.integer(f"{THERMAL_DIR}/{zone}/temp"))))
        return Snapshot(
            monotonic_s=time.monotonic(),
            online=root.cpu_list(f"{CPU_DIR}/online"),
            clusters=tuple(clusters),
            thermal=tuple(thermal),
        )


    def _speed(self, name: str) -> Optional[float]:
        if self._speeds is None:
            return None
        try:
            return self._speeds.speed_now(name)
        except Exception:  # noqa: BLE001 -- a reading never raises
            return None


def snapshot(platform: Optional[Platform] = None, sysfs_root: Optional[PathLike] = None) -> Snapshot:
    """One-off reading (builds a :class:`Monitor`; keep one for repeated readings)."""
    return Monitor(platform, sysfs_root).snapshot()
