"""Shared limit handling for the fixed strategies: keep what fits, or say by how much it misses."""

from __future__ import annotations

import math
from typing import Iterable, List, Sequence

from cores.model import CoreSetup
from pipeit.dse.cost import MB, Candidate, Limits
from pipeit.dse.tables import TOL
from pipeit.errors import PlanError
from pipeit.layer_times import LayerTimes

__all__ = ["require_within", "require_runnable", "unrunnable_reason", "pick_best", "rank_key"]


def rank_key(candidate: Candidate) -> tuple:
    """Sort key: higher throughput first, then lower latency."""
    return (-candidate.fps, candidate.latency_ms)


def require_within(strategy: str, candidate: Candidate, limits: Limits) -> Candidate:
    """``candidate`` if it meets ``limits``, else a PlanError saying which limit it misses."""
    if limits.latency_ms is not None and candidate.latency_ms > limits.latency_ms:
        raise PlanError(
            f"strategy {strategy!r} predicts {candidate.latency_ms:.3f} ms per frame, "
            f"over the {limits.latency_ms:g} ms latency limit"
        )
    if limits.memory_mb is not None and candidate.memory_bytes > limits.memory_mb * MB:
        raise PlanError(
            f"strategy {strategy!r} needs {candidate.memory_bytes / MB:.2f} MB of weights, "
            f"over the {limits.memory_mb:g} MiB memory limit"
        )
    return candidate


def pick_best(strategy: str, options: Sequence[Candidate], limits: Limits) -> Candidate:
    """The best of ``options`` within ``limits`` (fps, then latency); PlanError if none fits."""
    fitting = [c for c in options if limits.admits(c)]
    if not fitting:
        best = min(options, key=lambda c: c.latency_ms)
        require_within(strategy, best, limits)  # raises with the closest miss
        raise PlanError(f"strategy {strategy!r}: no layout meets {limits.describe()}")
    top = max(c.fps for c in fitting)
    ties = [c for c in fitting if c.fps >= top * (1 - TOL)]
    return min(ties, key=lambda c: c.latency_ms)


def _blocked(row: Sequence[float]) -> List[int]:
    """The layers a setup's row cannot run (inf)."""
    return [i for i, v in enumerate(row) if math.isinf(v)]


def _layers(indices: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:8]) + (", ..." if len(indices) > 8 else "")
    return f"layer {shown}" if len(indices) == 1 else f"layers {shown}"


def unrunnable_reason(times: LayerTimes, setups: Iterable[Iterable[CoreSetup]]) -> str:
    """Why no plan made of ``setups`` (groups of them: one per plan tried) runs: which layer stops it.

    A layer no setup of the table can run stops every strategy, and is said
    so; otherwise the setups tried that cannot run some layer are named.
    """
    nowhere = [i for i in range(times.num_layers) if all(math.isinf(row[i]) for row in times.times.values())]
    if nowhere:
        return f"no core setup can run {_layers(nowhere)} (every setup's time for it is inf)"
    used = sorted({setup for group in setups for setup in group if setup in times.times})
    stuck = [f"{setup} cannot run {_layers(_blocked(times.times[setup]))}" for setup in used
             if _blocked(times.times[setup])]
    if stuck:
        return "no plan it can make runs every layer (" + "; ".join(stuck) + ")"
    return "its plan's predicted throughput is 0 fps"


def require_runnable(strategy: str, candidate: Candidate, times: LayerTimes) -> Candidate:
    """``candidate`` if it runs at all (fps > 0), else a PlanError naming the layer that stops it.

    A plan of 0 fps (a stage holds a layer its setup cannot run) would be
    written and streamed as if it were a plan; it is refused here instead.
    """
    if candidate.fps > 0:
        return candidate
    workers = [w for stage in candidate.stages for w in stage.workers]
    raise PlanError(f"strategy {strategy!r}: {unrunnable_reason(times, [workers])}")
