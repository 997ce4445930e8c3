"""The records every other part of pipeit reasons with: clusters, platforms, core setups.

They are frozen dataclasses so they can be hashed, compared and passed
between processes; detection, board files and emulation all produce them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from cores.cputypes import per_mhz, speed_rank
from cores.errors import PlatformError
from cores.sysfs import MAX_CPU_ID

__all__ = ["Cluster", "Platform", "CoreSetup"]

#: the slowest emulated cluster: 1/100 of a core (slower, a frame takes minutes and the padding
#: timers overflow; no board's slowest core is that far behind its fastest)
MIN_SPEED = 0.01
#: highest CPU number a platform document may name: the same bound as a sysfs CPU list's
MAX_CPU = MAX_CPU_ID
#: highest clock a platform document may give, in kHz (100 GHz: no CPU clocks near it)
MAX_FREQ_KHZ = 100_000_000
#: highest capacity (the kernel scales ``cpu_capacity`` to 1024; room left for other scales)
MAX_CAPACITY = 1 << 20


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: object) -> str:
    """A JSON value's type in JSON's words, for messages."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _short(value: object) -> str:
    """``repr(value)`` cut to one short line (a message must not carry a whole list a user pasted)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Cluster:
    """CPUs of one core type in one frequency domain.

    ``speed`` is 1.0 on real hardware; an emulated cluster declares a factor
    in (0, 1] and its work is throttled by a CPU bandwidth quota.
    ``kind`` is ``"cpu"`` or ``"gpu"`` (an OpenCL device the DSE places like
    a cluster; its ``cpus`` are the host core that drives it, and ``device``
    selects the OpenCL device, as ``PIPEIT_OPENCL_DEVICE`` would: an index or
    a name substring).
    """

    name: str
    core_type: str
    cpus: Tuple[int, ...]
    max_freq_khz: Optional[int] = None
    capacity: Optional[int] = None
    speed: float = 1.0
    kind: str = "cpu"
    device: Optional[str] = None

    @property
    def size(self) -> int:
        return len(self.cpus)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "core_type": self.core_type,
            "cpus": list(self.cpus),
            "max_freq_khz": self.max_freq_khz,
            "capacity": self.capacity,
            "speed": self.speed,
            "kind": self.kind,
            "device": self.device,
        }

    @classmethod
    def from_json(cls, doc: object, where: str = "platform") -> "Cluster":
        """A cluster record as :meth:`to_json` writes it; :class:`PlatformError` naming the field otherwise.

        Strict on types (a CPU given as ``"4"`` or ``4.5`` is a hand edit gone
        wrong, not a CPU to round), and on ranges that would only fail later
        and less clearly: no CPUs, a CPU number no kernel has, a speed outside
        (0, 1] (the emulation factor), a name holding the ``+`` of an
        all-cores worker or the ``:`` of a core setup.
        """
        if not isinstance(doc, dict):
            raise PlatformError(f"{where}: a cluster must be a JSON object, got {_kind(doc)}")
        name = doc.get("name")
        if not isinstance(name, str) or not name or any(ch in name for ch in "+:") or name != name.strip():
            raise PlatformError(f"{where}: a cluster's 'name' must be a non-empty string without '+' or ':', "
                                f"got {_short(name)}")
        where = f"{where}: cluster {name!r}"
        core_type = doc.get("core_type")
        if not isinstance(core_type, str):
            raise PlatformError(f"{where}: 'core_type' must be a string, got {_short(core_type)}")
        cpus = doc.get("cpus")
        if not isinstance(cpus, list) or not cpus:
            raise PlatformError(f"{where}: 'cpus' must be a non-empty list of CPU numbers, got {_short(cpus)}")
        for cpu in cpus:
            if not _is_int(cpu) or not 0 <= cpu <= MAX_CPU:
                raise PlatformError(f"{where}: CPU {_short(cpu)} is not a CPU number 0..{MAX_CPU}")
        if len(set(cpus)) != len(cpus):
            raise PlatformError(f"{where}: 'cpus' lists a CPU twice")
        for key, top in (("max_freq_khz", MAX_FREQ_KHZ), ("capacity", MAX_CAPACITY)):
            value = doc.get(key)
            if value is not None and (not _is_int(value) or not 0 < value <= top):
                raise PlatformError(f"{where}: {key!r} must be null or an integer in 1..{top}, got {_short(value)}")
        speed = doc.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not MIN_SPEED <= speed <= 1.0:
            raise PlatformError(f"{where}: 'speed' must be a number in [{MIN_SPEED:g}, 1], got {_short(speed)}")
        kind = doc.get("kind", "cpu")
        if kind not in ("cpu", "gpu"):
            raise PlatformError(f"{where}: 'kind' must be \"cpu\" or \"gpu\", got {_short(kind)}")
        device = doc.get("device")
        if device is not None and not isinstance(device, str):
            raise PlatformError(f"{where}: 'device' must be null or a string, got {_short(device)}")
        return cls(name=name, core_type=core_type, cpus=tuple(cpus),
                   max_freq_khz=doc.get("max_freq_khz"), capacity=doc.get("capacity"),
                   speed=float(speed), kind=kind, device=device)


@dataclass(frozen=True, order=True)
class CoreSetup:
    """``cores`` cores of cluster ``cluster``, running one interpreter with that many threads."""

    cluster: str
    cores: int

    def __str__(self) -> str:
        return f"{self.cluster}:{self.cores}"

    @classmethod
    def parse(cls, text: str) -> "CoreSetup":
        """Parse ``CLUSTER:K`` (as given to ``--setup``)."""
        name, sep, count = text.rpartition(":")
        if not sep or not name:
            raise PlatformError(f"setup {text!r} is not CLUSTER:K")
        if not (count.isascii() and count.isdigit()):  # int() also takes "+3", "3_0", " 3" and "٣"
            raise PlatformError(f"setup {text!r}: core count {count!r} is not an integer")
        cores = int(count)
        if not 1 <= cores <= MAX_CPU + 1:
            raise PlatformError(f"setup {text!r}: core count must be in 1..{MAX_CPU + 1}")
        return cls(name, cores)


@dataclass(frozen=True)
class Platform:
    """A set of clusters, and where the description came from (``auto``, ``board:X``, ...)."""

    clusters: Tuple[Cluster, ...]
    source: str = "auto"
    extra: Tuple[Tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.clusters:
            raise PlatformError(f"platform {self.source!r} has no clusters")
        if not any(c.kind == "cpu" for c in self.clusters):
            raise PlatformError(f"platform {self.source!r} has no CPU cluster (a GPU stage needs a CPU "
                                "to drive it, and the model's other layers one to run on)")
        names = [c.name for c in self.clusters]
        if len(set(names)) != len(names):
            raise PlatformError(f"platform {self.source!r}: duplicate cluster names {names}")
        seen: Dict[int, str] = {}
        for cluster in self.clusters:
            for cpu in cluster.cpus:
                if cpu in seen and cluster.kind == "cpu" and seen[cpu] != cluster.name:
                    raise PlatformError(
                        f"platform {self.source!r}: CPU {cpu} is in both "
                        f"{seen[cpu]!r} and {cluster.name!r}"
                    )
                if cluster.kind == "cpu":
                    seen[cpu] = cluster.name

    @property
    def cpu_clusters(self) -> Tuple[Cluster, ...]:
        return tuple(c for c in self.clusters if c.kind == "cpu")

    @property
    def cpus(self) -> Tuple[int, ...]:
        return tuple(sorted(cpu for c in self.cpu_clusters for cpu in c.cpus))

    def cluster(self, name: str) -> Cluster:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        known = ", ".join(c.name for c in self.clusters)
        raise PlatformError(f"no cluster {name!r} on this platform (clusters: {known})")

    @property
    def fastest(self) -> Cluster:
        """The CPU cluster with the highest per-core speed.

        Ranked by emulation speed, then as detection names clusters
        (:func:`cores.cputypes.speed_rank`: hybrid P over E, capacity, core
        type x clock, clock, the type's per-MHz figure), then size; ties go to
        the first listed. Sharing detection's ranking keeps ``fastest`` on
        ``big`` where capacity and clock are missing (A72 over A53 on a kernel
        without cpufreq); a board's big cores win on every one of these.
        """
        clusters = self.cpu_clusters
        typed = all(per_mhz(c.core_type) for c in clusters)

        def rank(c: Cluster) -> tuple:
            return (c.speed,) + speed_rank(c.core_type, c.capacity, c.max_freq_khz, typed) + (c.size,)

        return max(clusters, key=rank)

    def setups(self) -> Tuple[CoreSetup, ...]:
        """Every core setup: each cluster with 1..n of its cores (a GPU: 1)."""
        out = []
        for cluster in self.clusters:
            top = 1 if cluster.kind == "gpu" else cluster.size
            out.extend(CoreSetup(cluster.name, k) for k in range(1, top + 1))
        return tuple(out)

    def check_setup(self, setup: CoreSetup) -> None:
        cluster = self.cluster(setup.cluster)
        top = 1 if cluster.kind == "gpu" else cluster.size
        if setup.cores > top:
            raise PlatformError(
                f"setup {setup}: cluster {cluster.name!r} has only {top} core(s)"
            )

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "clusters": [c.to_json() for c in self.clusters],
            "fastest": self.fastest.name,
        }

    @classmethod
    def from_json(cls, doc: object, where: str = "platform") -> "Platform":
        """A platform document (:meth:`to_json`); ``where`` (the file) starts every error message."""
        if not isinstance(doc, dict) or not isinstance(doc.get("clusters"), list):
            raise PlatformError(f"{where}: a platform document needs a 'clusters' list")
        source = doc.get("source", "file")
        if not isinstance(source, str):
            raise PlatformError(f"{where}: 'source' must be a string, got {_short(source)}")
        clusters = tuple(Cluster.from_json(c, where) for c in doc["clusters"])
        try:
            return cls(clusters=clusters, source=source)
        except PlatformError as err:  # no clusters, a name or a CPU twice: say which file
            raise PlatformError(f"{where}: {err}") from None
