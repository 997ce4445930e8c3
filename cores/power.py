"""Per-board power model: how many watts a core (or the GPU) draws busy and idle.

The satisfaction score needs energy per frame, and energy needs power. A
board's power file ``cores/power/<board>.json`` gives, per core type, the
power of one core busy at the cluster's top frequency (``active_w``) and
idle in WFI at that frequency (``idle_w``), and the same for the GPU where
the board has one. Every figure names its public source and is marked an
*estimate*: device-tree energy-model coefficients, board-level measurements
divided per core, or an order of magnitude where nothing better is public
(see docs/SATISFACTION.md for the table and the method).

Document (version 1)::

    {"version": 1, "board": "odroid-xu4", "description": "...",
     "cores": {"Cortex-A15": {"active_w": 1.34, "idle_w": 0.27, "freq_khz": 2000000,
                              "source": "...", "estimate": true}, ...},
     "gpu": {"name": "Mali-T628 MP6", "active_w": 2.0, "idle_w": 0.1,
             "source": "...", "estimate": true}}            # "gpu" optional

A file the user measured on their own board (``--power FILE``) says
``"estimate": false`` for its figures; the shipped files are all estimates.
A file that fails validation anywhere is refused whole with one line
(:class:`PowerError`), never half-used.

Platforms without a board file (``auto`` on an unknown host, ``emulate:``)
get a *placeholder*: :data:`GENERIC_CORE` per core (a big ARM core's order
of magnitude, not this host's real power), scaled for an emulated cluster
of speed ``s`` by ``s ** SPEED_EXPONENT`` (1.5), busy and idle alike. A
slower core design is also a more frugal one: across the LITTLE/big pairs
whose figures come from device-tree energy models, power per core goes as
capacity to the power 1.05 (RK3588), 1.34 (Exynos 5422) and 1.86 (RK3399);
1.5 sits in that range.

Average power of a run (:func:`average_power_w`): each CPU core draws
``idle + (active - idle) * u`` where ``u`` in [0, 1] is the share of the
run it was busy; cores the plan does not use draw idle power; the GPU alike.
Energy per frame is that power divided by the frame rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Tuple, Union

from cores.errors import CoresError
from cores.jsonfile import JsonFileError, is_version, read_json
from cores.model import Cluster, Platform

__all__ = [
    "POWER_DIR",
    "POWER_VERSION",
    "PowerError",
    "UnitPower",
    "BoardPower",
    "ClusterPower",
    "PlatformPower",
    "GENERIC_CORE",
    "GENERIC_GPU",
    "SPEED_EXPONENT",
    "list_power_boards",
    "parse_power_document",
    "load_power_file",
    "board_power",
    "power_for_platform",
    "average_power_w",
]

POWER_DIR = Path(__file__).resolve().parent / "power"
POWER_VERSION = 1


class PowerError(CoresError):
    """A power file that is missing, malformed, or asked for a board that has none."""


@dataclass(frozen=True)
class UnitPower:
    """One core (or one GPU): watts busy at the top frequency and idle; where the figure comes from."""

    active_w: float
    idle_w: float
    source: str
    estimate: bool = True

    def at(self, busy: float) -> float:
        """Average watts when busy for a share ``busy`` of the time (clipped to [0, 1])."""
        share = min(1.0, max(0.0, busy))
        return self.idle_w + (self.active_w - self.idle_w) * share

    def to_json(self) -> dict:
        return {"active_w": self.active_w, "idle_w": self.idle_w, "source": self.source,
                "estimate": self.estimate}


#: placeholder for a CPU core of a host without a power file (a big ARM core at its top OPP)
GENERIC_CORE = UnitPower(1.5, 0.15, "placeholder: generic big-core estimate (no power file for this host)")
#: an emulated cluster of speed s draws s ** SPEED_EXPONENT of the placeholder (see the module docstring)
SPEED_EXPONENT = 1.5
#: placeholder for a GPU of a host without a power file (a small mobile GPU)
GENERIC_GPU = UnitPower(2.0, 0.1, "placeholder: generic mobile-GPU estimate (no power file for this host)")


@dataclass(frozen=True)
class BoardPower:
    """The contents of one power file."""

    board: str
    description: str
    cores: Tuple[Tuple[str, UnitPower], ...]  # (core_type, power), in file order
    gpu: Optional[UnitPower] = None
    gpu_name: Optional[str] = None

    def core(self, core_type: str) -> Optional[UnitPower]:
        for name, power in self.cores:
            if name == core_type:
                return power
        return None


@dataclass(frozen=True)
class ClusterPower:
    """The power of one cluster's cores (or its GPU), as chosen for a platform."""

    cluster: str
    kind: str
    power: UnitPower


@dataclass(frozen=True)
class PlatformPower:
    """Per-cluster power for one platform, and which file (if any) it came from."""

    platform: str
    board: Optional[str]  # the power file used; None: placeholders only
    clusters: Tuple[ClusterPower, ...]

    def of(self, cluster: str) -> UnitPower:
        for entry in self.clusters:
            if entry.cluster == cluster:
                return entry.power
        known = ", ".join(c.cluster for c in self.clusters)
        raise PowerError(f"no power figure for cluster {cluster!r} (clusters: {known})")

    @property
    def placeholder(self) -> bool:
        """True when any cluster uses a generic placeholder rather than a board figure."""
        return any(c.power.source.startswith("placeholder") for c in self.clusters)

    @property
    def estimated(self) -> bool:
        """True when any cluster's figure is an estimate (placeholders included), not a measurement."""
        return any(c.power.estimate for c in self.clusters)

    def to_json(self) -> dict:
        return {
            "platform": self.platform,
            "board": self.board,
            "placeholder": self.placeholder,
            "estimate": self.estimated,
            "clusters": {c.cluster: {"kind": c.kind, **c.power.to_json()} for c in self.clusters},
        }


def list_power_boards() -> Tuple[str, ...]:
    """Boards that have a power file, sorted."""
    return tuple(sorted(p.stem for p in POWER_DIR.glob("*.json")))


_UNIT_KEYS = {"active_w", "idle_w", "source", "estimate", "freq_khz"}


def _unit(where: str, doc: object, gpu: bool = False) -> UnitPower:
    if not isinstance(doc, dict):
        raise PowerError(f"{where}: expected an object, got {type(doc).__name__}")
    allowed = _UNIT_KEYS | ({"name"} if gpu else set())
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise PowerError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    values = {}
    for key in ("active_w", "idle_w"):
        value = doc.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PowerError(f"{where}: {key} must be a finite number of watts, got {value!r}")
        values[key] = float(value)
    if values["active_w"] <= 0 or values["idle_w"] < 0 or values["idle_w"] > values["active_w"]:
        raise PowerError(f"{where}: need 0 <= idle_w <= active_w and active_w > 0 "
                         f"(got idle {values['idle_w']}, active {values['active_w']})")
    source = doc.get("source")
    if not isinstance(source, str) or not source.strip():
        raise PowerError(f"{where}: every figure needs a non-empty 'source'")
    estimate = doc.get("estimate")
    if not isinstance(estimate, bool):
        raise PowerError(f"{where}: 'estimate' must be true (a figure from elsewhere) or false (measured on this "
                         f"board), got {estimate!r}")
    freq = doc.get("freq_khz")
    if freq is not None and (isinstance(freq, bool) or not isinstance(freq, int) or freq <= 0):
        raise PowerError(f"{where}: freq_khz must be a positive integer, got {freq!r}")
    return UnitPower(values["active_w"], values["idle_w"], source.strip(), estimate)


def parse_power_document(doc: object, where: str = "power file") -> BoardPower:
    """Validate a parsed power document; :class:`PowerError` with one line at the first fault."""
    if not isinstance(doc, dict):
        raise PowerError(f"{where}: a power file is a JSON object")
    unknown = sorted(set(doc) - {"version", "board", "description", "cores", "gpu"})
    if unknown:
        raise PowerError(f"{where}: unknown key {unknown[0]!r}")
    if not is_version(doc.get("version"), POWER_VERSION):
        raise PowerError(f"{where}: version {doc.get('version')!r} is not {POWER_VERSION}")
    board = doc.get("board")
    if not isinstance(board, str) or not board:
        raise PowerError(f"{where}: 'board' must name the board")
    cores = doc.get("cores")
    if not isinstance(cores, dict) or not cores:
        raise PowerError(f"{where}: 'cores' must map core types to their power")
    parsed = tuple((str(name), _unit(f"{where}: core {name!r}", value)) for name, value in cores.items())
    gpu, gpu_name = None, None
    if doc.get("gpu") is not None:
        gpu = _unit(f"{where}: gpu", doc["gpu"], gpu=True)
        gpu_name = str(doc["gpu"].get("name") or "GPU")
    return BoardPower(board=board, description=str(doc.get("description", "")), cores=parsed,
                      gpu=gpu, gpu_name=gpu_name)


def load_power_file(path: Union[str, Path]) -> BoardPower:
    """Read and validate one power file (bytes are read here, checked by :func:`parse_power_document`)."""
    path = Path(path)
    try:
        # NaN/Infinity are read so that the check of each figure names it ("must be a finite number")
        doc = read_json(path, "power", allow_nonfinite=True)
    except JsonFileError as err:
        raise PowerError(f"{path}: cannot read power file ({err.reason})") from None
    return parse_power_document(doc, where=str(path))


def board_power(name: str) -> BoardPower:
    """The shipped power file of board ``name``; :class:`PowerError` listing those known if none."""
    path = POWER_DIR / f"{name}.json"
    if not name or "/" in name or not path.is_file():
        raise PowerError(f"no power file for board {name!r}; boards with one: {', '.join(list_power_boards())}")
    power = load_power_file(path)
    if power.board != name:
        raise PowerError(f"{path}: names board {power.board!r}, not {name!r}")
    return power


def _board_of(platform: Platform) -> Optional[str]:
    """The board a platform is: ``board:NAME``, else a board file with exactly its CPU clusters."""
    if platform.source.startswith("board:"):
        return platform.source[len("board:"):]
    from cores.boards import list_boards, load_board

    mine = sorted((c.core_type, c.size) for c in platform.cpu_clusters)
    for name in list_boards():
        theirs = sorted((c.core_type, c.size) for c in load_board(name).cpu_clusters)
        if theirs == mine and name in list_power_boards():
            return name
    return None


def _scaled(base: UnitPower, speed: float) -> UnitPower:
    if speed >= 1.0:
        return base
    factor = speed ** SPEED_EXPONENT
    return UnitPower(base.active_w * factor, base.idle_w * factor,
                     f"{base.source}; emulated speed {speed:g}: x speed^{SPEED_EXPONENT:g}", base.estimate)


def power_for_platform(platform: Platform, board: Optional[str] = None,
                       table: Optional[BoardPower] = None) -> PlatformPower:
    """Per-cluster power for ``platform``: its board's file when known, else documented placeholders.

    ``table`` (a file the user measured, :func:`load_power_file`) or
    ``board`` (a shipped board's name) force the figures used; by default a
    ``board:NAME`` platform uses that board's file and any other platform
    the board file with exactly its CPU clusters (core type and count), if
    any. A cluster whose core type the figures lack, or a GPU where they
    have none, gets the placeholder, so the result always covers every
    cluster.
    """
    if table is not None:
        name: Optional[str] = table.board
    else:
        name = board if board is not None else _board_of(platform)
        table = board_power(name) if name is not None else None
    entries = []
    for cluster in platform.clusters:
        entries.append(ClusterPower(cluster.name, cluster.kind, _cluster_power(cluster, table)))
    return PlatformPower(platform=platform.source, board=name, clusters=tuple(entries))


def _cluster_power(cluster: Cluster, table: Optional[BoardPower]) -> UnitPower:
    if cluster.kind == "gpu":
        found = table.gpu if table is not None else None
        return _scaled(found or GENERIC_GPU, cluster.speed)
    found = table.core(cluster.core_type) if table is not None else None
    return _scaled(found or GENERIC_CORE, cluster.speed)


def average_power_w(power: PlatformPower, platform: Platform, cpu_busy: Mapping[int, float],
                    gpu_busy: Optional[Mapping[str, float]] = None) -> float:
    """Average watts of the whole platform over a run.

    ``cpu_busy`` maps a CPU id to the share of the run it was busy (summed
    over the workers that share it, clipped to 1); CPUs not in it idle the
    whole run. ``gpu_busy`` maps a GPU cluster's name to its busy share.
    """
    gpu_busy = gpu_busy or {}
    total = 0.0
    for cluster in platform.clusters:
        unit = power.of(cluster.name)
        if cluster.kind == "gpu":
            total += unit.at(gpu_busy.get(cluster.name, 0.0))
        else:
            total += sum(unit.at(cpu_busy.get(cpu, 0.0)) for cpu in cluster.cpus)
    return total
