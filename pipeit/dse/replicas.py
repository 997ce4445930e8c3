"""Strategy ``replicas``: one stage, the whole model, one interpreter per cluster or per core.

Frames are dealt to whichever replica is free, so the rate is the sum of
the replicas' rates -- the most frames per second a board gives when nothing
else limits -- and a frame on the slowest replica takes that replica's whole
time. Both layouts are evaluated; the better one within the limits wins
(ties: lower latency).
"""

from __future__ import annotations

from typing import List

from cores.model import CoreSetup, Platform
from pipeit.dse.cost import Candidate, CostModel, Limits, StagePlan
from pipeit.dse.limits import pick_best, unrunnable_reason
from pipeit.errors import PlanError

__all__ = ["plan"]


def plan(cost: CostModel, platform: Platform, limits: Limits) -> Candidate:
    n = cost.num_layers
    per_cluster: List[CoreSetup] = []
    per_core: List[CoreSetup] = []
    for cluster in platform.cpu_clusters:
        whole = CoreSetup(cluster.name, cluster.size)
        single = CoreSetup(cluster.name, 1)
        if whole in cost.times.times:
            per_cluster.append(whole)
        if single in cost.times.times:
            per_core.extend([single] * cluster.size)
    layouts = [ws for ws in (per_cluster, per_core) if ws]
    if not layouts:
        raise PlanError("replicas: the layer times have no whole-cluster or single-core setups")
    options = [c for c in (cost.evaluate((StagePlan(0, n, tuple(ws)),)) for ws in layouts) if c.fps > 0]
    if not options:  # every layout holds a replica that cannot run some layer
        raise PlanError(f"strategy 'replicas': {unrunnable_reason(cost.times, layouts)}")
    return pick_best("replicas", options, limits)
