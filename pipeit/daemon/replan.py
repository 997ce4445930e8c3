"""When to re-plan, and with which times: pure logic, no processes.

The daemon feeds :class:`DriftDetector` one :class:`Window` of measurements
at a time (each stage's median service time against the time the plan
expects, plus a platform reading). It answers with a :class:`Decision`:
nothing, or re-plan, with a reason a person can read in the log.

* **Drift**: a stage whose measured time differs from the expected one by
  more than ``threshold`` (15 %) in ``sustain`` consecutive windows (one
  slow window is noise on a shared board; several are a thermal throttle
  or a co-runner).
* **Platform change**: CPUs going offline or online, or a cluster's
  frequency cap (``scaling_max_freq``) moving by more than 5 %: re-plan at
  once, the old plan may not even be runnable.

:func:`scaled_times` turns what was observed into the new plan's input:
every setup of a cluster gets its per-layer times multiplied by that
cluster's observed factor. :func:`shrink_platform` drops offline CPUs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

from cores.model import CoreSetup, Platform
from pipeit.errors import PlanError
from pipeit.layer_times import LayerTimes
from pipeit.plan import Plan

__all__ = [
    "DRIFT_THRESHOLD",
    "StageReading",
    "Window",
    "Decision",
    "DriftDetector",
    "cluster_factors",
    "scaled_times",
    "shrink_platform",
    "plan_layout",
    "fit_times",
]

DRIFT_THRESHOLD = 0.15
FREQ_CHANGE = 0.05
#: a factor observed in one step is clamped to this range (a stalled window is not a 100x slowdown)
FACTOR_RANGE = (0.2, 5.0)


@dataclass(frozen=True)
class StageReading:
    """One stage over one window: median measured ms, the ms the plan expects, frames seen."""

    index: int
    clusters: Tuple[str, ...]
    measured_ms: Optional[float]
    expected_ms: Optional[float]
    frames: int

    @property
    def ratio(self) -> Optional[float]:
        if not self.measured_ms or not self.expected_ms or self.expected_ms <= 0:
            return None
        return self.measured_ms / self.expected_ms


@dataclass(frozen=True)
class Window:
    """Everything observed in one monitoring window."""

    stages: Tuple[StageReading, ...]
    online: Optional[Tuple[int, ...]] = None
    freq_caps_khz: Tuple[Tuple[str, Optional[int]], ...] = ()
    max_temp_c: Optional[float] = None


@dataclass(frozen=True)
class Decision:
    """``replan`` with a ``reason``; ``factors`` per cluster to scale times by (observed/expected)."""

    replan: bool
    reason: str = ""
    factors: Tuple[Tuple[str, float], ...] = ()
    platform_changed: bool = False


class DriftDetector:
    """Sustained-drift and platform-change detection over a stream of windows.

    ``min_frames`` frames per stage make a window count (a nearly idle
    daemon measures nothing reliable and neither triggers nor resets).
    Call :meth:`rebase` after a re-plan: the new plan's expectations start
    from a clean history.
    """

    def __init__(self, threshold: float = DRIFT_THRESHOLD, sustain: int = 3, min_frames: int = 5):
        if not (0 < threshold < 10):
            raise PlanError(f"drift threshold must be in (0, 10), got {threshold}")
        if sustain < 1:
            raise PlanError(f"sustain must be >= 1 window, got {sustain}")
        self.threshold = float(threshold)
        self.sustain = int(sustain)
        self.min_frames = int(min_frames)
        self._streak: Dict[int, int] = {}
        self._ratios: Dict[int, list] = {}
        self._online: Optional[Tuple[int, ...]] = None
        self._caps: Dict[str, int] = {}

    def rebase(self, online: Optional[Tuple[int, ...]] = None,
               freq_caps_khz: Sequence[Tuple[str, Optional[int]]] = ()) -> None:
        """Forget the drift history; take ``online``/caps as the new normal."""
        self._streak.clear()
        self._ratios.clear()
        if online is not None:
            self._online = tuple(online)
        for name, cap in freq_caps_khz:
            if cap:
                self._caps[name] = int(cap)

    def observe(self, window: Window) -> Decision:
        changed = self._platform_change(window)
        if changed is not None:
            reason, factors = changed
            return Decision(True, reason, factors, platform_changed=True)
        drifting = []
        for stage in window.stages:
            ratio = stage.ratio
            if ratio is None or stage.frames < self.min_frames:
                continue  # no evidence either way: keep the streak as it is
            if abs(ratio - 1.0) > self.threshold:
                self._streak[stage.index] = self._streak.get(stage.index, 0) + 1
                self._ratios.setdefault(stage.index, []).append(ratio)
            else:
                self._streak[stage.index] = 0
                self._ratios[stage.index] = []
            if self._streak[stage.index] >= self.sustain:
                drifting.append(stage)
        if not drifting:
            return Decision(False)
        ratios = {s.index: _median(self._ratios[s.index][-self.sustain:]) for s in drifting}
        factors = cluster_factors([(s.clusters, ratios[s.index]) for s in drifting])
        parts = [f"stage {s.index} at {ratios[s.index]:.2f}x its expected {s.expected_ms:.2f} ms "
                 f"on {'+'.join(s.clusters)}" for s in drifting]
        reason = (f"drift over {self.threshold:.0%} for {self.sustain} windows: " + "; ".join(parts))
        if window.max_temp_c is not None:
            reason += f" (max temperature {window.max_temp_c:.1f} C)"
        return Decision(True, reason, factors)

    def _platform_change(self, window: Window) -> Optional[Tuple[str, Tuple[Tuple[str, float], ...]]]:
        reasons = []
        factors = []
        if window.online is not None:
            online = tuple(window.online)
            if self._online is None:
                self._online = online
            elif online != self._online:
                gone = sorted(set(self._online) - set(online))
                back = sorted(set(online) - set(self._online))
                reasons.append("CPUs " + ", ".join(
                    ([f"{gone} went offline"] if gone else []) + ([f"{back} came online"] if back else [])))
                self._online = online
        for name, cap in window.freq_caps_khz:
            if not cap:
                continue
            old = self._caps.get(name)
            if old is None:
                self._caps[name] = int(cap)
            elif abs(cap - old) / old > FREQ_CHANGE:
                reasons.append(f"cluster {name} frequency cap {old} -> {cap} kHz")
                factors.append((name, old / cap))  # a lower cap: times grow by old/new
                self._caps[name] = int(cap)
        if not reasons:
            return None
        return "platform changed: " + "; ".join(reasons), tuple(factors)


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def cluster_factors(observations: Sequence[Tuple[Sequence[str], float]]) -> Tuple[Tuple[str, float], ...]:
    """Per-cluster factor from ``(clusters, ratio)`` observations (median per cluster, clamped).

    A stage served by workers on two clusters blames both: the executor
    measures a stage, not a worker.
    """
    per: Dict[str, list] = {}
    for clusters, ratio in observations:
        if ratio is None or not math.isfinite(ratio) or ratio <= 0:
            continue
        for name in clusters:
            per.setdefault(name, []).append(ratio)
    low, high = FACTOR_RANGE
    return tuple(sorted((name, min(high, max(low, _median(r)))) for name, r in per.items()))


def scaled_times(times: LayerTimes, factors: Mapping[str, float]) -> LayerTimes:
    """``times`` with every setup of cluster ``c`` multiplied by ``factors[c]``.

    A pseudo setup over several clusters (``big+little``) takes the largest
    of its clusters' factors: it waits for its slowest part.
    """
    rows: Dict[CoreSetup, Tuple[float, ...]] = {}
    for setup, row in times.times.items():
        parts = setup.cluster.split("+")
        factor = max(float(factors.get(p, 1.0)) for p in parts)
        rows[setup] = tuple(v * factor for v in row)
    note = ",".join(f"{k}x{v:.3g}" for k, v in sorted(factors.items()) if v != 1.0)
    return LayerTimes(times.num_layers, rows, times.cut_bytes, times.weight_bytes, times.calibration,
                      f"{times.source} scaled({note})" if note else times.source)


def shrink_platform(platform: Platform, online: Optional[Sequence[int]]) -> Platform:
    """``platform`` without the CPUs not in ``online`` (clusters left empty are dropped)."""
    if online is None:
        return platform
    alive = set(online)
    clusters = []
    for cluster in platform.clusters:
        if cluster.kind != "cpu":
            clusters.append(cluster)
            continue
        cpus = tuple(c for c in cluster.cpus if c in alive)
        if cpus:
            clusters.append(cluster if cpus == cluster.cpus else dataclasses.replace(cluster, cpus=cpus))
    if not any(c.kind == "cpu" for c in clusters):
        raise PlanError("no CPU of the platform is online")
    return Platform(clusters=tuple(clusters), source=platform.source)


def fit_times(times: LayerTimes, platform: Platform) -> LayerTimes:
    """Only the setups ``platform`` can still run (after CPUs went offline)."""
    keep = {}
    for setup, row in times.times.items():
        names = setup.cluster.split("+")
        try:
            if len(names) == 1:
                platform.check_setup(setup)
            else:
                for name in names:
                    platform.cluster(name)
        except Exception:  # noqa: BLE001 -- cores' PlatformError or ours: the setup is gone
            continue
        keep[setup] = row
    if not keep:
        raise PlanError("no core setup of the layer times fits the platform any more")
    return LayerTimes(times.num_layers, keep, times.cut_bytes, times.weight_bytes, times.calibration, times.source)


def plan_layout(plan: Plan) -> Tuple:
    """What makes two plans the same pipeline: layer ranges and (cluster, cpus, threads) per worker."""
    return tuple(
        (tuple(s.layers), tuple((w.cluster, tuple(w.cpus), w.threads) for w in s.workers)) for s in plan.stages
    )

