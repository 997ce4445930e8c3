"""Strategy ``all-cores``: one interpreter with a thread on every CPU core (TFLite's default).

The layer table has times for per-cluster setups only, so the time of a
layer over all clusters is modelled, not looked up:

* XNNPACK (through pthreadpool) cuts each operator into equal tiles dealt
  evenly across its ``N`` threads, and the operator ends when the last
  thread does. A thread on cluster ``c`` runs ``1/N`` of the work at the
  per-thread pace cluster ``c`` shows with its ``n_c`` cores, i.e. in
  ``t_c(i) * n_c / N`` where ``t_c(i)`` is the layer's time on setup
  ``c:n_c`` (the largest measured core count of ``c`` stands in if ``c:n_c``
  is missing, scaled the same way);
* the slowest cluster's share dominates: ``t_all(i) = max_c(...)``;
* threads on different clusters synchronise through memory shared across
  the clusters' caches, which costs extra at every operator barrier:
  ``t_all(i) *= 1 + penalty`` (default 0.10) when more than one cluster
  takes part.

Checked against PAPERS.md's figures: on a Xiaomi A2, 4 big cores 143 ms and
8 threads 172 ms; with the LITTLE cluster about 2.2x slower per core the
model gives ``max(143, 315) * 4/8 * 1.1 = 173`` ms. On this project's
emulated 2-core big.LITTLE (LITTLE at 0.4) it predicts 1.38x the big core
alone where the prototype measured 1.0-1.06x (cgroup throttling is bursty,
so the slow "core" sometimes runs at full speed): the model is on the
pessimistic side for emulation and right for real clusters.
With one cluster the strategy is simply that cluster's ``c:n_c`` setup.
"""

from __future__ import annotations

import math
from typing import List, Tuple

from cores.model import CoreSetup, Platform
from pipeit.dse.cost import Candidate, CostModel, Limits, StagePlan
from pipeit.dse.limits import require_runnable, require_within
from pipeit.errors import PlanError

__all__ = ["plan", "all_cores_setup", "all_cores_times", "DEFAULT_PENALTY"]

#: extra time per operator when its threads span several clusters
DEFAULT_PENALTY = 0.10


def all_cores_setup(platform: Platform) -> CoreSetup:
    """The pseudo setup ``big+little:8`` naming every CPU cluster and the total thread count."""
    clusters = platform.cpu_clusters
    return CoreSetup("+".join(c.name for c in clusters), sum(c.size for c in clusters))


def all_cores_times(cost: CostModel, platform: Platform, penalty: float = DEFAULT_PENALTY) -> Tuple[float, ...]:
    """Per-layer ms of one interpreter over every CPU core (the model in this module's docstring)."""
    if not (math.isfinite(penalty) and penalty >= 0):
        raise PlanError(f"all-cores penalty must be >= 0, got {penalty!r}")
    clusters = platform.cpu_clusters
    total = sum(c.size for c in clusters)
    shares: List[Tuple[Tuple[float, ...], float]] = []
    for cluster in clusters:
        ks = [k for k in range(cluster.size, 0, -1) if CoreSetup(cluster.name, k) in cost.times.times]
        if not ks:
            raise PlanError(f"all-cores needs layer times for some setup of cluster {cluster.name!r}")
        k = ks[0]
        # per-thread pace measured with k threads, applied to this thread's 1/total share
        shares.append((cost.times.times[CoreSetup(cluster.name, k)], k / total))
    factor = 1.0 + penalty if len(clusters) > 1 else 1.0
    n = cost.num_layers
    return tuple(factor * max(row[i] * share for row, share in shares) for i in range(n))


def plan(cost: CostModel, platform: Platform, limits: Limits, penalty: float = DEFAULT_PENALTY) -> Candidate:
    """One stage, one worker with every CPU core; see the module docstring for its time model."""
    clusters = platform.cpu_clusters
    if not clusters:
        raise PlanError("all-cores needs at least one CPU cluster")
    if len(clusters) == 1:
        setup = CoreSetup(clusters[0].name, clusters[0].size)
        if setup not in cost.times.times:
            raise PlanError(f"all-cores needs layer times for {setup}, which the table lacks")
        model = cost
    else:
        setup = all_cores_setup(platform)
        model = cost.with_times(cost.times.with_setup(setup, all_cores_times(cost, platform, penalty)))
    found = model.evaluate((StagePlan(0, cost.num_layers, (setup,)),))
    require_runnable("all-cores", found, model.times)
    return require_within("all-cores", found, limits)
