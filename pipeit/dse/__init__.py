"""Design-space exploration: which stages, which workers, which layers.

Strategies (one module each, one entry point ``plan(cost, platform, limits)``):

========================  =====================================================
``pipeit``                the full space (stages x workers), searched exactly
``pipe-it``               Pipe-it's own heuristic search, re-implemented
``all-cores``             one interpreter over every CPU core
``fastest-cluster``       one interpreter on the fastest cluster's cores
``replicas``              one interpreter per cluster or per core
========================  =====================================================

:func:`plan_pipeline` turns a :class:`~pipeit.layer_times.LayerTimes` into a
:class:`~pipeit.plan.Plan`; :func:`best_candidate` stops one step earlier;
:func:`pareto_front` gives the throughput/latency frontier. The cost model
they all share is :class:`~pipeit.dse.cost.CostModel` (docs/DSE.md).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional

from cores.model import Platform
from pipeit.dse import all_cores, fastest_cluster, pipe_it, pipeit, replicas
from pipeit.dse.cost import (
    MB,
    Candidate,
    CostModel,
    Limits,
    StagePlan,
    charged_hop,
    cost_model_for,
    device_copies,
    throttle_jitter_ms,
)
from pipeit.dse.optimal import SearchStats, SearchTooLarge, min_latency_ms, optimal_plan
from pipeit.dse.planfile import to_plan
from pipeit.errors import PlanError
from pipeit.layer_times import LayerTimes
from pipeit.plan import Plan
from pipeit.transfer import DEFAULT_OVERHEAD, ExecutorOverhead, HopModel

__all__ = [
    "STRATEGIES",
    "strategy_named",
    "MB",
    "Limits",
    "StagePlan",
    "Candidate",
    "CostModel",
    "cost_model_for",
    "admission_for",
    "throttle_jitter_ms",
    "device_copies",
    "SearchStats",
    "best_candidate",
    "plan_pipeline",
    "pareto_front",
    "optimal_plan",
    "min_latency_ms",
    "to_plan",
]

Strategy = Callable[[CostModel, Platform, Limits], Candidate]

#: strategy name (as ``--strategy`` spells it) -> entry point
STRATEGIES: Dict[str, Strategy] = {
    "pipeit": pipeit.plan,
    "pipe-it": pipe_it.plan,
    "all-cores": all_cores.plan,
    "fastest-cluster": fastest_cluster.plan,
    "replicas": replicas.plan,
}


def strategy_named(name: str) -> Strategy:
    """The strategy ``--strategy`` names; an unknown name is a :class:`PlanError` listing the valid ones
    (the commands check it before anything else is read)."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise PlanError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None


def best_candidate(
    times: LayerTimes,
    platform: Platform,
    strategy: str = "pipeit",
    latency_ms: Optional[float] = None,
    memory_mb: Optional[float] = None,
    hop: Optional[HopModel] = None,
    worker_bytes: int = 0,
    overhead: Optional[ExecutorOverhead] = DEFAULT_OVERHEAD,
    admission: Optional[str] = None,
) -> Candidate:
    """The evaluated plan candidate ``strategy`` picks for ``times`` on ``platform``.

    ``overhead``: the executor's own cost per frame, part of the cost the
    search optimises (``None``: layers and hops only; docs/DSE.md).
    ``admission``: how frames will be streamed (``cost.ADMISSIONS``); by
    default ``gated`` under a latency limit (what ``pipeit run`` and
    ``pipeit bench`` then do), else ``window``.
    """
    entry = strategy_named(strategy)
    limits = Limits(latency_ms, memory_mb)
    times.check_platform(platform)
    admission = admission_for(latency_ms) if admission is None else admission
    return entry(cost_model_for(times, platform, hop, worker_bytes, overhead, admission), platform, limits)


def admission_for(latency_ms: Optional[float]) -> str:
    """How a stream with this latency limit admits frames: ``gated`` under a limit, else ``window``.

    Without a limit throughput is all that counts and one frame per worker
    (plus a spare) in flight keeps every worker busy; under one, a frame is
    admitted only when it can pass every stage without waiting, so its
    latency is its path (docs/DSE.md, "Latency").
    """
    return "window" if latency_ms is None else "gated"


def plan_pipeline(
    times: LayerTimes,
    platform: Platform,
    strategy: str = "pipeit",
    latency_ms: Optional[float] = None,
    memory_mb: Optional[float] = None,
    model: str = "model.tflite",
    model_sha256: str = "",
    hop: Optional[HopModel] = None,
    worker_bytes: int = 0,
    overhead: Optional[ExecutorOverhead] = DEFAULT_OVERHEAD,
    admission: Optional[str] = None,
) -> Plan:
    """A validated :class:`Plan` for ``model`` from ``strategy`` within the limits.

    Raises :class:`PlanError` for an unknown strategy (listing the valid
    ones) and for limits nothing meets (naming the best latency achievable).
    """
    candidate = best_candidate(times, platform, strategy, latency_ms, memory_mb, hop, worker_bytes, overhead,
                               admission)
    plan = to_plan(
        candidate, platform, strategy=strategy, model=model, model_sha256=model_sha256,
        limits=Limits(latency_ms, memory_mb),
    )
    # which hop the prediction charged: the development host's default reads very differently on a board
    return dataclasses.replace(plan, notes=plan.notes + (f"hop between stages: {charged_hop(times, hop).describe()}",))


def pareto_front(
    times: LayerTimes,
    platform: Platform,
    memory_mb: Optional[float] = None,
    hop: Optional[HopModel] = None,
    worker_bytes: int = 0,
    max_points: int = 64,
    overhead: Optional[ExecutorOverhead] = DEFAULT_OVERHEAD,
    admission: str = "window",
) -> List[Candidate]:
    """The throughput/latency frontier of the full space, fastest frame rate first.

    Found exactly by repeated search: the unconstrained best, then the best
    with a latency strictly below the previous point's, and so on until no
    plan is faster to answer. Every returned candidate is Pareto-optimal;
    ``max_points`` caps the walk on huge frontiers.
    """
    times.check_platform(platform)
    cost = cost_model_for(times, platform, hop, worker_bytes, overhead, admission)
    front: List[Candidate] = []
    limit: Optional[float] = None
    try:
        floor = min_latency_ms(cost, platform)
    except SearchTooLarge:
        return front  # no exact frontier on a platform beyond the search (pipeit.plan says so)
    while len(front) < max_points:
        try:
            found = optimal_plan(cost, platform, Limits(limit, memory_mb))
        except PlanError:
            break
        front.append(found)
        if found.latency_ms <= floor * (1 + 1e-12):
            break
        limit = found.latency_ms * (1 - 1e-9)
    return front
