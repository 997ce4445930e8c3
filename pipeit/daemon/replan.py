"""When to re-plan, and with which times: pure logic, no processes.

The daemon feeds :class:`DriftDetector` one :class:`Window` of measurements
at a time (each stage's median service time against the time the plan
expects, plus a platform reading). It answers with a :class:`Decision`:
nothing, or re-plan, with a reason a person can read in the log.

* **Drift**: a worker (or, where no per-worker times are given, a stage)
  whose measured median time differs from the expected one by more than
  ``threshold`` (15 %) in ``sustain`` consecutive windows (one slow window
  is noise on a shared board; several are a thermal throttle or a
  co-runner). Per worker, because a stage's median over all its frames
  hides one slow replica among fast ones.
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
    "WorkerReading",
    "StageReading",
    "Window",
    "Decision",
    "DriftDetector",
    "SwitchPolicy",
    "SWITCH_MARGIN",
    "measured_capacity_fps",
    "cluster_factors",
    "scaled_times",
    "shrink_platform",
    "plan_layout",
    "fit_times",
]

DRIFT_THRESHOLD = 0.15
FREQ_CHANGE = 0.05
#: a new plan must predict this much more than the current plan measures before the daemon switches
SWITCH_MARGIN = 0.05
#: a factor observed in one step is clamped to this range (a stalled window is not a 100x slowdown)
FACTOR_RANGE = (0.2, 5.0)


def drift_ratio(measured_ms: Optional[float], expected_ms: Optional[float]) -> Optional[float]:
    """Measured over expected time, or None where either is missing (nothing to judge yet)."""
    if not measured_ms or not expected_ms or expected_ms <= 0:
        return None
    return measured_ms / expected_ms


@dataclass(frozen=True)
class WorkerReading:
    """One worker of a stage over one window: its own median ms, the ms the plan expects of it, frames."""

    worker: int
    cluster: str
    measured_ms: Optional[float]
    expected_ms: Optional[float]
    frames: int

    @property
    def clusters(self) -> Tuple[str, ...]:
        return tuple(self.cluster.split("+"))

    @property
    def ratio(self) -> Optional[float]:
        return drift_ratio(self.measured_ms, self.expected_ms)


@dataclass(frozen=True)
class StageReading:
    """One stage over one window: median measured ms, the ms the plan expects, frames seen.

    ``workers`` (optional) are the per-worker readings; when given, drift is
    judged per worker and the stage-wide median is only reported.
    """

    index: int
    clusters: Tuple[str, ...]
    measured_ms: Optional[float]
    expected_ms: Optional[float]
    frames: int
    workers: Tuple[WorkerReading, ...] = ()

    @property
    def ratio(self) -> Optional[float]:
        return drift_ratio(self.measured_ms, self.expected_ms)


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
        self._streak: Dict[Tuple[int, Optional[int]], int] = {}  # (stage, worker or None) -> windows
        self._ratios: Dict[Tuple[int, Optional[int]], list] = {}
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
        drifting = []  # (key, label, clusters, expected_ms)
        for stage in window.stages:
            units = [((stage.index, w.worker), f"stage {stage.index} worker {w.worker}", w.clusters, w)
                     for w in stage.workers] or [((stage.index, None), f"stage {stage.index}", stage.clusters, stage)]
            for key, label, clusters, reading in units:
                ratio = reading.ratio
                if ratio is None or reading.frames < self.min_frames:
                    continue  # no evidence either way: keep the streak as it is
                if abs(ratio - 1.0) > self.threshold:
                    self._streak[key] = self._streak.get(key, 0) + 1
                    self._ratios.setdefault(key, []).append(ratio)
                else:
                    self._streak[key] = 0
                    self._ratios[key] = []
                if self._streak[key] >= self.sustain:
                    drifting.append((key, label, clusters, reading.expected_ms))
        if not drifting:
            return Decision(False)
        ratios = {key: _median(self._ratios[key][-self.sustain:]) for key, _l, _c, _e in drifting}
        factors = cluster_factors([(clusters, ratios[key]) for key, _l, clusters, _e in drifting])
        parts = [f"{label} at {ratios[key]:.2f}x its expected {expected:.2f} ms on {'+'.join(clusters)}"
                 for key, label, clusters, expected in drifting]
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

    A per-worker observation blames its worker's cluster only; a stage-wide
    one (no per-worker times) blames every cluster the stage runs on.
    """
    per: Dict[str, list] = {}
    for clusters, ratio in observations:
        if ratio is None or not math.isfinite(ratio) or ratio <= 0:
            continue
        for name in clusters:
            per.setdefault(name, []).append(ratio)
    low, high = FACTOR_RANGE
    return tuple(sorted((name, min(high, max(low, _median(r)))) for name, r in per.items()))


def measured_capacity_fps(stages: Sequence[StageReading]) -> Optional[float]:
    """Frames/s the running plan sustains by what was measured: its slowest stage's service rate.

    A stage's rate is the sum over its workers of ``1000 / worker ms`` (its
    replicas share the frames). This, not the frames answered, is the
    "measured fps" a new plan must beat: under light load the answered rate
    is the clients' demand, and every plan would look better than that.
    None when a stage measured nothing.
    """
    rates = []
    for stage in stages:
        worker_ms = [w.measured_ms for w in stage.workers]
        if worker_ms and all(ms and ms > 0 for ms in worker_ms):
            rates.append(sum(1000.0 / float(ms) for ms in worker_ms))
        elif stage.measured_ms and stage.measured_ms > 0:
            rates.append(1000.0 * max(1, len(stage.workers)) / stage.measured_ms)
        else:
            return None
    return min(rates) if rates else None


class SwitchPolicy:
    """Hysteresis between "the plan would change" and "switch pipelines" (see the module docstring).

    ``cooldown`` counts windows after a switch during which no other switch
    is allowed; :meth:`tick` is called once per closed window and
    :meth:`switched` after every switch.
    """

    def __init__(self, cooldown: int = 4, margin: float = SWITCH_MARGIN):
        if cooldown < 0:
            raise PlanError(f"cooldown must be >= 0 windows, got {cooldown}")
        if not (0 <= margin < 10):
            raise PlanError(f"switch margin must be in [0, 10), got {margin}")
        self.cooldown = int(cooldown)
        self.margin = float(margin)
        self._left = 0

    @property
    def cooling(self) -> int:
        """Windows still to close before another switch may happen."""
        return self._left

    def tick(self) -> None:
        if self._left > 0:
            self._left -= 1

    def switched(self) -> None:
        self._left = self.cooldown

    def allow(self, predicted_fps: Optional[float], measured_fps: Optional[float]) -> Tuple[bool, str]:
        """``(switch?, why)`` for a new plan predicting ``predicted_fps`` against the running plan's measured fps.

        With no measurement (an idle daemon, a platform change that broke
        the old plan) the margin cannot be judged and the switch is allowed.
        """
        if self._left > 0:
            return False, f"within {self.cooldown} windows of the last switch ({self._left} to go)"
        if measured_fps is None or measured_fps <= 0 or predicted_fps is None:
            return True, "no measured fps to compare with"
        need = measured_fps * (1.0 + self.margin)
        if predicted_fps < need:
            return False, (f"the new plan predicts {predicted_fps:.1f} fps, the current one measures "
                           f"{measured_fps:.1f} fps (a switch needs {need:.1f}, +{self.margin:.0%})")
        return True, (f"the new plan predicts {predicted_fps:.1f} fps against {measured_fps:.1f} measured "
                      f"(+{predicted_fps / measured_fps - 1.0:.0%})")


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

