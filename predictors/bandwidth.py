"""Streaming bandwidth of k threads: ``BW(k) = min(k * bw1, bw_max)``, fitted from layer rows.

Why: a layer whose bytes come from DRAM (AlexNet's FC6: 151 MB of weights,
far beyond a 32 MB L3) is not limited by its arithmetic but by how fast the
memory system streams those bytes, and k threads share that bandwidth: on
the development host one thread streams ~27 GB/s from DRAM, two together
well under twice that. The time of such a layer is the larger of its
compute time and ``bytes / BW(k)`` (:meth:`StreamBandwidth.ms`).

The two parameters are fitted per cluster from rows known to be
bandwidth-bound (:func:`fit_stream_bandwidth`): ``bw1`` from the one-thread
rows, ``bw_max`` from the k-thread rows. A setup of the cluster without rows
of its own (3 threads when only 1 and 2 were swept) follows the saturating
curve instead of being extrapolated from nothing. Units: MB and ms, so a
bandwidth in GB/s is also MB per ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["StreamBandwidth", "fit_stream_bandwidth", "bandwidth_of"]


@dataclass(frozen=True)
class StreamBandwidth:
    """One thread's streaming bandwidth and the cluster's ceiling, both in GB/s (= MB/ms);
    ``bw_max`` is infinite where no k-thread rows showed a ceiling."""

    bw1: float
    bw_max: float

    def at(self, cores: int) -> float:
        """Bandwidth of ``cores`` threads streaming together."""
        return min(max(int(cores), 1) * self.bw1, self.bw_max)

    def ms(self, mbytes: float, cores: int) -> float:
        """Milliseconds to stream ``mbytes`` MB with ``cores`` threads."""
        return float(mbytes) / self.at(cores)

    def to_json(self) -> Dict[str, Optional[float]]:
        # JSON has no infinity: an unsaturated ceiling (no k-thread rows) is written as null
        return {"bw1_gbs": self.bw1, "bw_max_gbs": self.bw_max if math.isfinite(self.bw_max) else None}

    @classmethod
    def from_json(cls, doc: Dict[str, Optional[float]]) -> "StreamBandwidth":
        bw1 = float(doc["bw1_gbs"])  # type: ignore[arg-type]
        raw = doc["bw_max_gbs"]
        bw_max = math.inf if raw is None else float(raw)
        if not (math.isfinite(bw1) and bw1 > 0 and bw_max >= bw1):
            raise ValueError(f"streaming bandwidth needs 0 < bw1 <= bw_max, got {bw1}, {bw_max}")
        return cls(bw1, bw_max)


def bandwidth_of(samples: Sequence[Tuple[float, float]]) -> float:
    """The bandwidth (MB/ms) that best explains ``(mbytes, ms)`` samples on relative error.

    ``ms = mbytes * b`` with ``b`` minimising ``sum(((mbytes*b - ms)/ms)^2)``;
    on relative error a 150 MB layer does not outvote a 40 MB one.
    """
    ratio = np.array([mb / ms for mb, ms in samples if ms > 0 and mb > 0])
    if ratio.size == 0:
        raise ValueError("no bandwidth-bound samples")
    # median of per-row bandwidths first, then least squares on the rows within 30 % of it:
    # one row measured while another process streamed must not set the cluster's bandwidth
    med = float(np.median(ratio))
    near = ratio[np.abs(ratio / med - 1.0) <= 0.3]
    near = near if near.size else ratio
    return float(np.sum(near ** 2) / np.sum(near))


def fit_stream_bandwidth(samples: Sequence[Tuple[int, float, float]]) -> StreamBandwidth:
    """Fit from ``(threads, mbytes, ms)`` rows of bandwidth-bound layers on one cluster.

    ``bw1`` from the one-thread rows (else the best k-thread bandwidth per
    thread, i.e. no saturation assumed); ``bw_max`` the largest k-thread
    bandwidth measured, never below ``bw1``, and never above ``k * bw1`` at
    the k it was measured at (more than k times one thread is noise).
    """
    by_k: Dict[int, list] = {}
    for k, mb, ms in samples:
        by_k.setdefault(max(int(k), 1), []).append((mb, ms))
    if not by_k:
        raise ValueError("no bandwidth-bound samples")
    bw = {k: bandwidth_of(v) for k, v in by_k.items()}
    bw1 = bw[1] if 1 in bw else max(b / k for k, b in bw.items())
    multi = [min(b, k * bw1) for k, b in bw.items() if k > 1]
    # only one-thread rows: nothing says where the bandwidth saturates, so it is not capped
    # (k threads get k times one; a later sweep on k threads gives the ceiling)
    bw_max = max(multi) if multi else math.inf
    return StreamBandwidth(bw1, max(bw_max, bw1))
