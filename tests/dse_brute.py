"""Brute force over the whole DSE space, written independently of pipeit.dse.optimal (tests only)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Iterator, List, Optional, Tuple

from cores.model import CoreSetup, Platform
from pipeit.layer_times import LayerTimes
from pipeit.transfer import HopModel

MB = 1024 * 1024


def _worker_sets(platform: Platform, times: LayerTimes) -> Iterator[Tuple[CoreSetup, ...]]:
    per_cluster = []
    for cluster in platform.clusters:
        size = 1 if cluster.kind == "gpu" else cluster.size
        ks = [k for k in range(1, size + 1) if CoreSetup(cluster.name, k) in times.times]
        options = []
        for count in range(size + 1):
            for combo in itertools.combinations_with_replacement(ks, count):
                if sum(combo) <= size:
                    options.append(tuple(CoreSetup(cluster.name, k) for k in combo))
        per_cluster.append(sorted(set(options)))
    for combo in itertools.product(*per_cluster):
        workers = tuple(w for part in combo for w in part)
        if workers:
            yield workers


def _ordered_groupings(workers: Counter) -> Iterator[Tuple[Tuple[CoreSetup, ...], ...]]:
    if not workers:
        yield ()
        return
    items = sorted(workers.items())
    for counts in itertools.product(*(range(c + 1) for _, c in items)):
        if not any(counts):
            continue
        group = tuple(s for (s, _), k in zip(items, counts) for _ in range(k))
        rest = Counter({s: c - k for (s, c), k in zip(items, counts) if c - k})
        for tail in _ordered_groupings(rest):
            yield (group,) + tail


def _jitter(platform: Platform, setup: CoreSetup) -> float:
    """(1 - f) * P of an emulated cluster of speed f < 1 (P = its quota period), else 0."""
    cluster = platform.cluster(setup.cluster)
    if cluster.kind != "cpu" or cluster.speed >= 1:
        return 0.0
    period_ms = max(5.0, (int(1000 / cluster.speed) + 1) / 1000.0)  # as cores.emulation picks it
    return (1.0 - cluster.speed) * period_ms


def brute_force(times: LayerTimes, platform: Platform, hop: HopModel,
                latency_ms: Optional[float] = None, memory_mb: Optional[float] = None,
                device_copy: Optional[HopModel] = None):
    """All admitted plans as (fps, latency, memory, description).

    Latency = max(path, queue): path = sum over stages of max over workers of
    (time + jitter); queue = workers * 1000 / fps + the largest jitter.
    A worker on a GPU cluster also pays ``device_copy`` (one direction) on the
    bytes of the cut at each end of its stage (when given).
    """
    n = times.num_layers
    hops = [hop.hop_ms(b) for b in times.cut_bytes]
    cal = times.calibration

    def worker_ms(setup, a, b):
        t = cal.scale * math.fsum(times.times[setup][a:b]) + cal.stage_ms + hops[a] / 2 + hops[b] / 2
        if device_copy is not None and platform.cluster(setup.cluster).kind == "gpu":
            t += device_copy.hop_ms(times.cut_bytes[a]) + device_copy.hop_ms(times.cut_bytes[b])
        return t

    plans = []
    for workers in _worker_sets(platform, times):
        for groups in _ordered_groupings(Counter(workers)):
            s = len(groups)
            if s > n:
                continue
            for inner in itertools.combinations(range(1, n), s - 1):
                cuts = (0,) + inner + (n,)
                fps = math.inf
                path = 0.0
                memory = 0.0
                for group, a, b in zip(groups, cuts[:-1], cuts[1:]):
                    ts = [worker_ms(w, a, b) for w in group]
                    rate = 0.0 if any(math.isinf(t) for t in ts) else sum(1000.0 / t for t in ts)
                    fps = min(fps, rate)
                    path += max(t + _jitter(platform, w) for t, w in zip(ts, group))
                    memory += len(group) * sum(times.weight_bytes[a:b])
                if fps <= 0:
                    continue
                everyone = [w for group in groups for w in group]
                queue = len(everyone) * 1000.0 / fps + max(_jitter(platform, w) for w in everyone)
                latency = max(path, queue)
                if latency_ms is not None and latency > latency_ms:
                    continue
                if memory_mb is not None and memory > memory_mb * MB:
                    continue
                plans.append((fps, latency, memory, (groups, cuts)))
    return plans


def best_of(plans, tol: float = 1e-9):
    if not plans:
        return None
    top = max(p[0] for p in plans)
    ties = [p for p in plans if p[0] >= top * (1 - tol)]
    return min(ties, key=lambda p: p[1])


def pareto(plans) -> List[Tuple[float, float]]:
    """Non-dominated (fps, latency) points, highest fps first."""
    points = sorted({(p[0], p[1]) for p in plans}, key=lambda p: (-p[0], p[1]))
    front = []
    for fps, lat in points:
        if not front or lat < front[-1][1] * (1 - 1e-9):
            front.append((fps, lat))
    return front
