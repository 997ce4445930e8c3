"""The records every other part of pipeit reasons with: clusters, platforms, core setups.

They are frozen dataclasses so they can be hashed, compared and passed
between processes; detection, board files and emulation all produce them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from cores.cputypes import per_mhz, speed_rank
from cores.errors import PlatformError

__all__ = ["Cluster", "Platform", "CoreSetup"]


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
    def from_json(cls, doc: dict) -> "Cluster":
        try:
            return cls(
                name=str(doc["name"]),
                core_type=str(doc["core_type"]),
                cpus=tuple(int(c) for c in doc["cpus"]),
                max_freq_khz=None if doc.get("max_freq_khz") is None else int(doc["max_freq_khz"]),
                capacity=None if doc.get("capacity") is None else int(doc["capacity"]),
                speed=float(doc.get("speed", 1.0)),
                kind=str(doc.get("kind", "cpu")),
                device=None if doc.get("device") is None else str(doc["device"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PlatformError(f"malformed cluster record {doc!r}: {err}") from err


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
        try:
            cores = int(count)
        except ValueError:
            raise PlatformError(f"setup {text!r}: core count {count!r} is not an integer") from None
        if cores < 1:
            raise PlatformError(f"setup {text!r}: core count must be >= 1")
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
    def from_json(cls, doc: dict) -> "Platform":
        if not isinstance(doc, dict) or not isinstance(doc.get("clusters"), list):
            raise PlatformError("a platform document needs a 'clusters' list")
        return cls(
            clusters=tuple(Cluster.from_json(c) for c in doc["clusters"]),
            source=str(doc.get("source", "file")),
        )
