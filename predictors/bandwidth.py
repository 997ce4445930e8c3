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

Residency of a layer timed alone (``spans``): a layer invoked back to back
re-reads the same weights every invoke, and a last-level cache that does not
evict in plain LRU order (AMD's victim L3, Intel's adaptive insertion) keeps
part of a stream somewhat larger than itself between invokes. On the
development host (32 MB L3) a 36 MB FC ran at the in-L3 rate, 50 MB ones at
1.3-2x the DRAM rate, only layers of >= 2x the L3 (one thread) or ~4x (two
threads) at the DRAM rate. :func:`resident_mb` ramps the resident share from
the whole cache at ``W = LLC`` to nothing at ``W = span * LLC``; ``span`` is
chosen per thread count by the fit (1 = no residency, the earlier model), and
the bandwidth is fitted only from rows beyond ``span * LLC`` -- the partly
resident rows had set the two-thread "DRAM" bandwidth to 52 GB/s where the
fully streaming ones and AlexNet's own stage rows show 32. Inside a whole
model nothing stays resident (the rest of the frame evicts it): there a layer
streams all its weights (:meth:`StreamBandwidth.ms`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["StreamBandwidth", "fit_stream_bandwidth", "bandwidth_of", "resident_mb", "SPAN_CHOICES"]

#: candidate residency spans (multiples of the LLC where a stand-alone stream stops being
#: partly resident); 1.0 = no residency
SPAN_CHOICES: Tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0)


def resident_mb(mbytes: float, llc_mb: float, span: float) -> float:
    """MB of a ``mbytes`` stream that a layer timed alone finds still in the LLC on its next invoke:
    all of it up to the LLC, then a linear ramp down to none at ``span * llc_mb``."""
    if llc_mb <= 0 or span <= 1.0 or mbytes >= span * llc_mb:
        return 0.0
    if mbytes <= llc_mb:
        return float(mbytes)
    return float(llc_mb * (span - mbytes / llc_mb) / (span - 1.0))


@dataclass(frozen=True)
class StreamBandwidth:
    """One thread's streaming bandwidth and the cluster's ceiling, both in GB/s (= MB/ms);
    ``bw_max`` is infinite where no k-thread rows showed a ceiling."""

    bw1: float
    bw_max: float
    #: ``((threads, span), ...)``: the residency span fitted per thread count (empty: none)
    spans: Tuple[Tuple[int, float], ...] = ()

    def span_at(self, cores: int) -> float:
        """The span of the largest fitted thread count <= ``cores`` (else the smallest fitted)."""
        if not self.spans:
            return 1.0
        below = [sp for k, sp in self.spans if k <= cores]
        return below[-1] if below else self.spans[0][1]

    def standalone_ms(self, mbytes: float, cores: int, llc_mb: float, in_cache_ms: float) -> float:
        """A layer of ``mbytes`` weights timed alone: the resident part at its in-cache rate, the
        rest streamed from DRAM, never faster than the in-cache time."""
        res = resident_mb(mbytes, llc_mb, self.span_at(cores))
        hot = in_cache_ms * res / mbytes if mbytes > 0 else 0.0
        return max(in_cache_ms, hot + self.ms(mbytes - res, cores))

    def at(self, cores: int) -> float:
        """Bandwidth of ``cores`` threads streaming together."""
        return min(max(int(cores), 1) * self.bw1, self.bw_max)

    def ms(self, mbytes: float, cores: int) -> float:
        """Milliseconds to stream ``mbytes`` MB with ``cores`` threads."""
        return float(mbytes) / self.at(cores)

    def to_json(self) -> Dict[str, Optional[float]]:
        # JSON has no infinity: an unsaturated ceiling (no k-thread rows) is written as null
        doc: Dict[str, object] = {"bw1_gbs": self.bw1,
                                  "bw_max_gbs": self.bw_max if math.isfinite(self.bw_max) else None}
        if self.spans:
            doc["span"] = {str(k): sp for k, sp in self.spans}
        return doc  # type: ignore[return-value]

    @classmethod
    def from_json(cls, doc: Dict[str, Optional[float]]) -> "StreamBandwidth":
        bw1 = float(doc["bw1_gbs"])  # type: ignore[arg-type]
        raw = doc["bw_max_gbs"]
        bw_max = math.inf if raw is None else float(raw)
        if not (math.isfinite(bw1) and bw1 > 0 and bw_max >= bw1):
            raise ValueError(f"streaming bandwidth needs 0 < bw1 <= bw_max, got {bw1}, {bw_max}")
        # files written before the residency span: none (every byte beyond the LLC streams)
        raw_spans = doc.get("span") or {}
        spans = tuple(sorted((int(k), float(v)) for k, v in raw_spans.items()))  # type: ignore[union-attr]
        if any(k < 1 or not (math.isfinite(v) and v >= 1.0) for k, v in spans):
            raise ValueError(f"residency span needs threads >= 1 and span >= 1, got {dict(spans)}")
        return cls(bw1, bw_max, spans)


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


def fit_stream_bandwidth(
    samples: Sequence[Tuple[int, float, float]],
    llc_mb: Optional[float] = None,
    in_cache_ms: Optional[Sequence[float]] = None,
    spans: Sequence[float] = SPAN_CHOICES,
) -> StreamBandwidth:
    """Fit from ``(threads, mbytes, ms)`` rows of bandwidth-bound layers on one cluster.

    ``bw1`` from the one-thread rows (else the best k-thread bandwidth per
    thread, i.e. no saturation assumed); ``bw_max`` the largest k-thread
    bandwidth measured, never below ``bw1``, and never above ``k * bw1`` at
    the k it was measured at (more than k times one thread is noise).

    With ``llc_mb`` and ``in_cache_ms`` (each row's predicted in-cache time)
    the residency span is chosen per thread count from ``spans``: for each
    candidate the bandwidth comes from the rows beyond ``span * llc_mb`` only
    (fully streaming), and the candidate whose :meth:`StreamBandwidth.standalone_ms`
    explains all that thread count's rows best (relative error, each row's
    square capped at 0.09 so one disturbed row does not decide) is kept.
    """
    by_k: Dict[int, list] = {}
    hot = list(in_cache_ms) if in_cache_ms is not None else [0.0] * len(samples)
    if len(hot) != len(samples):
        raise ValueError("in_cache_ms needs one value per sample")
    for (k, mb, ms), c in zip(samples, hot):
        by_k.setdefault(max(int(k), 1), []).append((mb, ms, c))
    if not by_k:
        raise ValueError("no bandwidth-bound samples")
    bw: Dict[int, float] = {}
    chosen: Dict[int, float] = {}
    for k, rows in by_k.items():
        bw[k], chosen[k] = bandwidth_of([(mb, ms) for mb, ms, _ in rows]), 1.0
        if llc_mb is None or in_cache_ms is None:
            continue
        best = math.inf
        for span in sorted(spans):
            full = [(mb, ms) for mb, ms, _ in rows if mb >= span * llc_mb or span <= 1.0]
            if len(full) < (1 if span <= 1.0 else 2):
                continue  # one fully streaming row is too few to set the bandwidth
            cand_bw = bandwidth_of(full)
            trial = StreamBandwidth(cand_bw, cand_bw, ((k, float(span)),))
            # the trial's bandwidth is the k-thread one: price every row at "one thread" of it
            err = sum(min(((trial.standalone_ms(mb, 1, llc_mb, c) - ms) / ms) ** 2, 0.09)
                      for mb, ms, c in rows if ms > 0)
            if err < best * (1 - 1e-6) - 1e-12:
                best, bw[k], chosen[k] = err, cand_bw, float(span)
    bw1 = bw[1] if 1 in bw else max(b / k for k, b in bw.items())
    multi = [min(b, k * bw1) for k, b in bw.items() if k > 1]
    # only one-thread rows: nothing says where the bandwidth saturates, so it is not capped
    # (k threads get k times one; a later sweep on k threads gives the ceiling)
    bw_max = max(multi) if multi else math.inf
    fitted = tuple(sorted(chosen.items())) if any(sp > 1.0 for sp in chosen.values()) else ()
    return StreamBandwidth(bw1, max(bw_max, bw1), fitted)
