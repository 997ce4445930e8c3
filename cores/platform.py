"""One entry point from a ``--platform`` spec string to a :class:`Platform`.

Specs: ``auto`` (detect this machine, or the tree under ``sysfs_root``),
``board:NAME`` (a known board file), ``emulate:big=0@1.0,little=1@0.4``
(clusters carved out of this host's CPUs, each slowed by a speed factor in
(0, 1]), or a path to a platform JSON file (``Platform.to_json`` layout).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List, Optional, Tuple

from cores.boards import load_board
from cores.errors import PlatformError
from cores.model import Cluster, Platform
from cores.sysfs import PathLike, parse_cpu_list
from cores.topology import detect_topology

__all__ = ["EmulatedCluster", "parse_emulate_spec", "emulated_platform", "load_platform"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
EmulatedCluster = Tuple[str, Tuple[int, ...], float]


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
        except PlatformError:
            raise PlatformError(f"emulate spec: cluster {name!r} has a malformed CPU list {cpu_text!r}") from None
        if not cpus:
            raise PlatformError(f"emulate spec: cluster {name!r} names no CPUs")
        try:
            factor = float(factor_text) if at else 1.0
        except ValueError:
            raise PlatformError(f"emulate spec: cluster {name!r} factor {factor_text!r} is not a number") from None
        if not (0.0 < factor <= 1.0):
            raise PlatformError(
                f"emulate spec: cluster {name!r} factor {factor_text} is outside (0, 1]"
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
    """Clusters carved out of this host's online CPUs, slowed by their factors."""
    wanted = parse_emulate_spec(text)
    host = detect_topology(sysfs_root)
    records = {r.cpu: r for r in host.cpus}
    clusters = []
    for name, cpus, factor in wanted:
        missing = [c for c in cpus if c not in records]
        if missing:
            have = ",".join(str(c) for c in sorted(records))
            raise PlatformError(
                f"emulate spec: cluster {name!r} names CPU(s) {missing} that this host does not "
                f"have online (online: {have})"
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
                capacity=int(round(base_capacity * factor)),
                speed=factor,
            )
        )
    return Platform(clusters=tuple(clusters), source=f"emulate:{text}")


def _from_file(path: Path) -> Platform:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise PlatformError(f"{path}: cannot read platform file: {err.strerror or err}") from err
    except ValueError as err:
        raise PlatformError(f"{path}: not a JSON platform file: {err}") from err
    platform = Platform.from_json(doc)
    return Platform(clusters=platform.clusters, source=str(doc.get("source", f"file:{path}")))


def load_platform(spec: str = "auto", sysfs_root: Optional[PathLike] = None) -> Platform:
    """Turn a ``--platform`` spec into a :class:`Platform` (see the module docstring)."""
    spec = (spec or "auto").strip()
    if spec == "auto":
        return detect_topology(sysfs_root).platform
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
