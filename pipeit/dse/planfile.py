"""From an evaluated candidate to the versioned plan file (pinned CPUs per worker)."""

from __future__ import annotations

from typing import Dict, List

from cores.model import Platform
from pipeit.dse.cost import MB, Candidate, Limits
from pipeit.errors import PlanError
from pipeit.plan import Plan, StageSpec, WorkerSpec

__all__ = ["to_plan"]


def to_plan(
    candidate: Candidate,
    platform: Platform,
    strategy: str,
    model: str,
    model_sha256: str,
    limits: Limits = Limits(),
) -> Plan:
    """Give each worker concrete CPUs (in cluster order, lowest ids first) and build the Plan.

    A worker whose setup names several clusters joined by ``+`` (all-cores)
    gets every CPU of those clusters. A GPU worker gets its cluster's host
    CPU(s), shared with nobody's pinning check.
    """
    free: Dict[str, List[int]] = {c.name: sorted(c.cpus) for c in platform.clusters}
    stages = []
    for stage, times, fps in zip(candidate.stages, candidate.worker_ms, candidate.stage_fps):
        workers = []
        for setup, ms in zip(stage.workers, times):
            names = setup.cluster.split("+")
            cpus: List[int] = []
            for name in names:
                cluster = platform.cluster(name)
                if cluster.kind == "gpu":
                    cpus.extend(cluster.cpus)
                    continue
                take = setup.cores if len(names) == 1 else cluster.size
                pool = free[name]
                if len(pool) < take:
                    raise PlanError(f"plan uses more cores of cluster {name!r} than it has")
                cpus.extend(pool[:take])
                free[name] = pool[take:]
            workers.append(WorkerSpec(cluster=setup.cluster, cpus=tuple(cpus), threads=setup.cores, predicted_ms=ms))
        stages.append(StageSpec(layers=(stage.start, stage.end), workers=tuple(workers), predicted_fps=fps))
    notes = (
        f"predicted memory {candidate.memory_bytes / MB:.2f} MB of weights",
        f"workers: {candidate.describe()}",
    )
    plan = Plan(
        model=model,
        model_sha256=model_sha256,
        platform=platform,
        strategy=strategy,
        stages=tuple(stages),
        predicted_fps=candidate.fps,
        predicted_latency_ms=candidate.latency_ms,
        latency_limit_ms=limits.latency_ms,
        memory_limit_mb=limits.memory_mb,
        notes=notes,
    )
    plan.validate(f"{strategy} plan")
    return plan
