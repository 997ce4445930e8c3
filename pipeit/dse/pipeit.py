"""Strategy ``pipeit``: the full design space (stages x workers), searched exactly.

One entry point, :func:`plan`; the search itself lives in
:mod:`pipeit.dse.optimal`. The simple strategies' answers (replicas,
fastest-cluster, Pipe-it's pipeline) are points of the same space and are
handed to the search as starting incumbents: they cost milliseconds and let
the bound prune from the first node.
"""

from __future__ import annotations

import warnings
from typing import List

from cores.model import Platform
from pipeit.dse import fastest_cluster, pipe_it, replicas
from pipeit.dse.cost import Candidate, CostModel, Limits
from pipeit.dse.optimal import SearchTooLarge, optimal_plan
from pipeit.errors import PlanError

__all__ = ["plan", "seeds", "SearchFallbackWarning"]


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
    """The highest-throughput plan of the whole space within ``limits`` (ties: lowest latency).

    On a platform with more clusters than the exact search enumerates
    (:class:`~pipeit.dse.optimal.SearchTooLarge`: a server with dozens of
    core complexes) the answer is the best of the simple strategies' plans
    that meets the limits, and a :class:`SearchFallbackWarning` says so.
    """
    quick = seeds(cost, platform)
    try:
        return optimal_plan(cost, platform, limits, seeds=quick)
    except SearchTooLarge as err:
        within = []
        for strategy in (replicas.plan, fastest_cluster.plan, pipe_it.plan):
            try:
                within.append(strategy(cost, platform, limits))  # pipe-it searches within the limits itself
            except PlanError:
                continue
        meeting = [c for c in quick + within if limits.admits(c)]
        if not meeting:
            raise PlanError(f"{err}; and no simple strategy's plan meets the limits ({limits.describe()})") from None
        best = max(meeting, key=lambda c: (c.fps, -c.latency_ms))
        warnings.warn(f"{err}: pipeit's plan is the best of the replicas, fastest-cluster and pipe-it plans",
                      SearchFallbackWarning, stacklevel=2)
        return best


class SearchFallbackWarning(UserWarning):
    """pipeit's plan came from the simple strategies because the exact search could not run."""
