"""Shared limit handling for the fixed strategies: keep what fits, or say by how much it misses."""

from __future__ import annotations

from typing import Sequence

from pipeit.dse.cost import MB, Candidate, Limits
from pipeit.dse.tables import TOL
from pipeit.errors import PlanError

__all__ = ["require_within", "pick_best", "rank_key"]


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
            f"over the {limits.memory_mb:g} MB memory limit"
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
