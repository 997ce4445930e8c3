"""Strategy ``pipeit``: the full design space (stages x workers), searched exactly.

One entry point, :func:`plan`; the search itself lives in
:mod:`pipeit.dse.optimal`. The simple strategies' answers (replicas,
fastest-cluster, Pipe-it's pipeline) are points of the same space and are
handed to the search as starting incumbents: they cost milliseconds and let
the bound prune from the first node.
"""

from __future__ import annotations

from typing import List

from cores.model import Platform
from pipeit.dse import fastest_cluster, pipe_it, replicas
from pipeit.dse.cost import Candidate, CostModel, Limits
from pipeit.dse.optimal import optimal_plan
from pipeit.errors import PlanError

__all__ = ["plan", "seeds"]


def seeds(cost: CostModel, platform: Platform) -> List[Candidate]:
    """Quick plans from the simple strategies (unconstrained; the search checks the limits)."""
    out = []
    for strategy in (replicas.plan, fastest_cluster.plan, pipe_it.plan):
        try:
            out.append(strategy(cost, platform, Limits()))
        except PlanError:
            continue  # a strategy the table cannot serve is simply no seed
    return out


def plan(cost: CostModel, platform: Platform, limits: Limits) -> Candidate:
    """The highest-throughput plan of the whole space within ``limits`` (ties: lowest latency)."""
    return optimal_plan(cost, platform, limits, seeds=seeds(cost, platform))
