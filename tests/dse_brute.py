"""Brute force over the whole DSE space, written independently of pipeit.dse.optimal (tests only)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Iterator, List, Optional, Tuple

from cores.emulation import choose_period_us
from cores.model import CoreSetup, Platform
from pipeit.layer_times import LayerTimes
from pipeit.transfer import ExecutorOverhead, HopModel, frame_ms_of

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


def _jitter(platform: Platform, setup: CoreSetup, tick_ms: float = 4.0) -> float:
    """For a setup spanning clusters, the largest (1 - f) * (P + tick / f) of its emulated clusters of
    speed f < 1 (P = the quota period): its threads there run under the quota. A setup wholly on one
    cluster pads its jobs instead (cores.emulation.PaddedInvoke): 0."""
    names = setup.cluster.split("+")
    if len(names) == 1:
        return 0.0
    worst = 0.0
    for name in names:
        cluster = platform.cluster(name)
        if cluster.kind == "cpu" and cluster.speed < 1:
            period_ms = choose_period_us(cluster.speed) / 1000.0
            worst = max(worst, (1.0 - cluster.speed) * (period_ms + tick_ms / cluster.speed))
    return worst


def _largest(ok, top: float) -> float:
    """The largest R in [0, top] with ok(R), for ok true on [0, R*] and false above (bisection)."""
    if ok(top):
        return top
    low, high = 0.0, top
    for _ in range(80):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if ok(mid) else (low, mid)
    return low


def _coordinator(platform: Platform, overhead: Optional[ExecutorOverhead]):
    """(names, cores, idle core-units) where the coordinator runs, or None (no overhead modelled).

    The placement rule, restated: the slowest CPU cluster of a platform whose
    CPU clusters differ, else all of them; an emulated cluster of speed f < 1
    leaves (1 - f) of each core idle.
    """
    if overhead is None:
        return None
    cpu = [c for c in platform.clusters if c.kind == "cpu"]
    if not cpu:
        return None
    slowest = min(cpu, key=lambda c: (c.speed, c.capacity or 0, c.max_freq_khz or 0))
    fastest = max(cpu, key=lambda c: (c.speed, c.capacity or 0, c.max_freq_khz or 0))
    if len(cpu) > 1 and not (slowest.speed >= 1.0 and slowest.capacity == fastest.capacity):
        cpu = [slowest]
    return ({c.name for c in cpu}, sum(c.size for c in cpu),
            sum((1 - c.speed) * c.size for c in cpu if 0 < c.speed < 1))


def brute_force(times: LayerTimes, platform: Platform, hop: HopModel,
                latency_ms: Optional[float] = None, memory_mb: Optional[float] = None,
                device_copy: Optional[HopModel] = None, overhead: Optional[ExecutorOverhead] = None,
                gated: bool = False):
    """All admitted plans as (fps, latency, memory, description).

    Latency = max(path, queue): path = sum over stages of max over workers of
    (time + jitter); queue = workers * 1000 / fps + the largest jitter, or 0
    when ``gated`` (frames admitted only when they wait nowhere).
    A worker on a GPU cluster also pays ``device_copy`` (one direction) on the
    bytes of the cut at each end of its stage (when given).

    ``overhead``: every worker also pays ``dispatch_ms``; the coordinator
    needs ``R * coordinator_ms / 1000`` of a core at ``R`` frames/s, idle
    time on its CPUs first, the rest slows the workers on its ``N`` CPUs to
    ``s(R) = 1 - steal / N``. The plan's rate is found as the definition
    says -- the largest ``R`` with ``R <= a_k + s(R) b_k`` for every stage
    (bisection), not from a closed form; a stage's path share uses ``s`` at
    the stage's own largest such ``R``.
    """
    n = times.num_layers
    if overhead is not None:  # its flat figures for this model, as every cost model takes them
        overhead = overhead.for_frame(frame_ms_of(times.times))
    dispatch = overhead.dispatch_ms if overhead is not None else 0.0
    hops = [hop.hop_ms(b) + dispatch for b in times.cut_bytes]
    cal = times.calibration
    coordinator = _coordinator(platform, overhead)

    def on(setup) -> bool:
        return coordinator is not None and bool(coordinator[0] & set(setup.cluster.split("+")))

    def speed(rate: float) -> float:
        if coordinator is None or overhead.coordinator_ms <= 0 or coordinator[1] <= 0:
            return 1.0
        steal = max(0.0, rate * overhead.coordinator_ms / 1000.0 - coordinator[2])
        return max(1e-9, 1.0 - steal / coordinator[1])

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
                path = 0.0
                memory = 0.0
                parts = []
                for group, a, b in zip(groups, cuts[:-1], cuts[1:]):
                    ts = [worker_ms(w, a, b) for w in group]
                    if any(math.isinf(t) for t in ts):
                        parts.append((0.0, 0.0))
                        continue
                    off = sum(1000.0 / t for t, w in zip(ts, group) if not on(w))
                    mine = sum(1000.0 / t for t, w in zip(ts, group) if on(w))
                    parts.append((off, mine))
                    s = 1.0
                    if mine and coordinator is not None:
                        cap = min(off + mine, 1000.0 / overhead.coordinator_ms) if overhead.coordinator_ms > 0 else off + mine
                        s = speed(_largest(lambda r: r <= off + speed(r) * mine * (1 + 1e-13), cap))
                    path += max((t / s if on(w) else t) + _jitter(platform, w) for t, w in zip(ts, group))
                    memory += len(group) * sum(times.weight_bytes[a:b])
                if min(off + mine for off, mine in parts) <= 0:
                    continue
                top = min(off + mine for off, mine in parts)
                if coordinator is not None and overhead.coordinator_ms > 0:
                    top = min(top, 1000.0 / overhead.coordinator_ms)  # one coordinating thread
                fps = _largest(lambda r: all(r <= off + speed(r) * mine * (1 + 1e-13) for off, mine in parts), top)
                everyone = [w for group in groups for w in group]
                queue = 0.0 if gated else len(everyone) * 1000.0 / fps + max(_jitter(platform, w) for w in everyone)
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
    front: List[Tuple[float, float]] = []
    for fps, lat in points:
        if front and fps >= front[-1][0] * (1 - 1e-9):  # a tie in throughput, as the search counts one
            if lat < front[-1][1] * (1 - 1e-12):
                front[-1] = (front[-1][0], lat)
            continue
        if not front or lat < front[-1][1] * (1 - 1e-9):
            front.append((fps, lat))
    return front
