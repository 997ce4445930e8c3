"""Strategy ``fastest-cluster``: one interpreter on every core of the fastest cluster.

What a careful user does by hand on a big.LITTLE board (``taskset`` to the
big cores, ``num_threads`` = their count). The fastest cluster is the
platform's (capacity, then frequency, then emulated speed).
"""

from __future__ import annotations

from cores.model import CoreSetup, Platform
from pipeit.dse.cost import Candidate, CostModel, Limits, StagePlan
from pipeit.dse.limits import require_runnable, require_within
from pipeit.errors import PlanError

__all__ = ["plan"]


def plan(cost: CostModel, platform: Platform, limits: Limits) -> Candidate:
    cluster = platform.fastest
    setup = CoreSetup(cluster.name, cluster.size)
    if setup not in cost.times.times:
        raise PlanError(f"fastest-cluster needs layer times for {setup}, which the table lacks")
    found = cost.evaluate((StagePlan(0, cost.num_layers, (setup,)),))
    require_runnable("fastest-cluster", found, cost.times)
    return require_within("fastest-cluster", found, limits)
