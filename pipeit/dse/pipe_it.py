"""Strategy ``pipe-it``: a re-implementation of Pipe-it's search (Wang et al., TCAD 2020), for comparison.

Only the paper's abstract and secondary descriptions are available
(PAPERS.md), so this module fixes what they leave open. Assumptions:

1. *Space.* A pipeline of stages, one worker per stage; a worker is a
   core configuration inside one cluster (type x count), parallel only
   inside it. Each used CPU cluster is split into ``d`` equal sub-clusters
   (``d`` divides its core count: 4 cores -> 4, 2+2 or 1+1+1+1) and every
   sub-cluster is a stage; any non-empty subset of the clusters may be used,
   in any cluster order, and the sub-clusters of one cluster are adjacent.
   GPU clusters are not part of Pipe-it's space.
2. *Times.* The per-layer times of the table (Pipe-it's own descriptor
   predictor supplies them when ``pipeit plan --predictor`` was fitted with
   ``--kind pipe-it``). Pipe-it balances *compute* times; it has no
   transfer model, so hops are ignored while balancing and only counted
   when the result is evaluated with the shared cost model.
3. *Layer split (the light heuristic).* Start from the proportional split:
   with ``T_j`` the whole model's time on stage ``j``'s configuration, the
   ideal stage time is ``tau = 1 / sum_j(1 / T_j)``; walk the layers and close
   stage ``j`` at the boundary whose time is nearest ``tau`` (leaving a layer
   for every later stage). Then hill-climb: move one boundary layer of the
   bottleneck stage into a neighbour while that lowers the bottleneck; stop
   when no single move helps. Not exhaustive, as the paper describes.
4. *Choice.* Of all configurations, the highest predicted throughput wins
   (ties: lower latency). Pipe-it has no latency or memory limit; here the
   configurations that miss the user's limits are dropped, and a PlanError
   is raised when none is left.
5. *Many clusters.* Pipe-it was built for two or three clusters; every
   order of every subset of clusters is ``sum_r m!/(m-r)!`` orders (109,600
   for 8 clusters) times the splits. With more than
   :data:`MAX_ORDERED_CLUSTERS` CPU clusters, only the ``r`` fastest clusters
   (``r = 1..m``) are used, in descending or ascending speed, with one split
   ``d`` for all of them (``d`` dividing every used cluster's size).
"""

from __future__ import annotations

import itertools
import math
from typing import List, Sequence, Tuple

from cores.model import CoreSetup, Platform
from pipeit.dse.cost import Candidate, CostModel, Limits, StagePlan
from pipeit.dse.limits import pick_best, unrunnable_reason
from pipeit.errors import PlanError

__all__ = ["plan", "configurations", "balance", "MAX_ORDERED_CLUSTERS"]

#: CPU clusters up to which every order of every subset is tried (assumption 5)
MAX_ORDERED_CLUSTERS = 4


def configurations(cost: CostModel, platform: Platform) -> List[Tuple[CoreSetup, ...]]:
    """Every stage sequence of assumption 1 the table has times for, at most one stage per layer."""
    per_cluster = {}
    for cluster in platform.cpu_clusters:
        splits = []
        for d in range(1, cluster.size + 1):
            if cluster.size % d == 0 and CoreSetup(cluster.name, cluster.size // d) in cost.times.times:
                splits.append((CoreSetup(cluster.name, cluster.size // d),) * d)
        if splits:
            per_cluster[cluster.name] = splits
    out = []
    names = list(per_cluster)
    if len(names) > MAX_ORDERED_CLUSTERS:
        return _speed_ordered(cost, platform, names)
    for r in range(1, len(names) + 1):
        for order in itertools.permutations(names, r):
            for choice in itertools.product(*(per_cluster[name] for name in order)):
                stages = tuple(s for part in choice for s in part)
                if len(stages) <= cost.num_layers:
                    out.append(stages)
    return out


def _speed_ordered(cost: CostModel, platform: Platform, names: List[str]) -> List[Tuple[CoreSetup, ...]]:
    """Assumption 5: the ``r`` fastest clusters, fastest or slowest first, one split ``d`` for all."""
    def speed(name: str) -> float:
        row = cost.times.times.get(CoreSetup(name, 1))
        return -math.fsum(row) if row else -math.inf

    ranked = sorted(names, key=speed, reverse=True)
    out = []
    for r in range(1, len(ranked) + 1):
        used = ranked[:r]
        sizes = [platform.cluster(name).size for name in used]
        for d in range(1, min(sizes) + 1):
            setups = [CoreSetup(name, size // d) for name, size in zip(used, sizes)]
            if any(size % d for size in sizes) or any(s not in cost.times.times for s in setups):
                continue
            for order in (setups, setups[::-1]):
                stages = tuple(s for setup in order for s in (setup,) * d)
                if len(stages) <= cost.num_layers and stages not in out:
                    out.append(stages)
    return out


def _prefix_sums(row: Sequence[float]) -> Tuple[List[float], List[int]]:
    """Running sums of a row's finite times, and running counts of the layers it cannot run (inf).

    Kept apart so that a stage's time is a difference of finite sums, or inf
    when the stage holds a layer the setup cannot run -- never ``inf - inf``.
    """
    acc, blocked = [0.0], [0]
    for v in row:
        acc.append(acc[-1] + (0.0 if math.isinf(v) else v))
        blocked.append(blocked[-1] + (1 if math.isinf(v) else 0))
    return acc, blocked


def balance(cost: CostModel, setups: Sequence[CoreSetup]) -> Tuple[int, ...]:
    """Stage boundaries ``(0, b1, ..., n)`` from assumption 3 (compute times only).

    A setup that cannot run some layer (an inf time) gives every stage
    holding that layer an infinite time; the split may then be infeasible,
    which :func:`plan` finds when it evaluates it.
    """
    n = cost.num_layers
    s = len(setups)
    sums = [_prefix_sums(cost.times.times[setup]) for setup in setups]

    def stage_ms(j: int, a: int, b: int) -> float:
        acc, blocked = sums[j]
        return math.inf if blocked[b] > blocked[a] else acc[b] - acc[a]

    inv = sum(1.0 / stage_ms(j, 0, n) if stage_ms(j, 0, n) > 0 else math.inf for j in range(s))
    tau = 1.0 / inv if 0 < inv < math.inf else 0.0  # inv 0: no setup runs the whole model alone
    cuts = [0]
    for j in range(s - 1):
        a = cuts[-1]
        lo, hi = a + 1, n - (s - 1 - j)
        cuts.append(min(range(lo, hi + 1), key=lambda b: (abs(stage_ms(j, a, b) - tau), b)))
    cuts.append(n)

    def bottleneck(c: Sequence[int]) -> float:
        return max(stage_ms(j, c[j], c[j + 1]) for j in range(s))

    current = bottleneck(cuts)
    for _ in range(4 * n):
        j = max(range(s), key=lambda k: stage_ms(k, cuts[k], cuts[k + 1]))
        best = None
        for move in ((j, +1), (j + 1, -1)):  # give away the first or the last layer
            edge, step = move
            if edge == 0 or edge == s:
                continue
            trial = list(cuts)
            trial[edge] += step
            if trial[edge] <= trial[edge - 1] or trial[edge] >= trial[edge + 1]:
                continue
            value = bottleneck(trial)
            if value < current and (best is None or value < best[0]):
                best = (value, trial)
        if best is None:
            break
        current, cuts = best
    return tuple(cuts)


def plan(cost: CostModel, platform: Platform, limits: Limits) -> Candidate:
    configs = configurations(cost, platform)
    if not configs:
        raise PlanError("pipe-it: the layer times cover no core configuration of the CPU clusters")
    options = []
    for setups in configs:
        cuts = balance(cost, setups)
        stages = tuple(StagePlan(a, b, (w,)) for w, a, b in zip(setups, cuts[:-1], cuts[1:]))
        found = cost.evaluate(stages)
        if found.fps > 0:  # 0: some stage holds a layer its setup cannot run
            options.append(found)
    if not options:
        raise PlanError(f"pipe-it: {unrunnable_reason(cost.times, configs)}")
    return pick_best("pipe-it", options, limits)
