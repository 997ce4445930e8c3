"""When to re-plan, and with which times: pure logic, no processes.

The daemon feeds :class:`DriftDetector` one :class:`Window` of measurements
at a time (each stage's median service time against the time the plan
expects, plus a platform reading). It answers with a :class:`Decision`:
nothing, or re-plan, with a reason a person can read in the log.

* **Drift**: a worker (or, where no per-worker times are given, a stage)
  whose measured median time differs from the expected one by more than
  ``threshold`` (15 %), in the same direction, in ``sustain`` consecutive
  windows (one slow window is noise on a shared board; several are a
  thermal throttle or a co-runner; slow, fast, slow is noise too). Per
  worker, because a stage's median over all its frames hides one slow
  replica among fast ones.
* **Platform change**: CPUs going offline or online, or a cluster's
  frequency cap (``scaling_max_freq``) moving by more than 5 %, or an
  emulated cluster's speed (its cgroup quota, read by
  :class:`cores.monitor.Monitor`) moving by more than 5 %: re-plan at once
  with the exact factor (old/new), the old plan may not even be runnable.
* **Blame**: when units on several clusters drift in the same window, the
  cluster that drifted most (in log ratio) is the cause; another is blamed
  too only if its drift is comparable (at least :data:`CO_CAUSE` of the
  largest, in log ratio). A lesser drift elsewhere is most often the side
  effect of the main one (on a small host the coordinator, the frame feed
  and the clients move onto the CPUs left and crowd the stage there); if it
  is real, it survives the re-plan and is seen again against the new
  plan's expectations, one cause at a time. Scaling a cluster that did not
  slow makes a plan that measures worse and is reverted, which costs more.
* **After a platform change** the daemon switches at once, with no
  confirmation by measurement (the old plan is no reference any more), so
  the new plan's workers are expected to take what the scaled times
  predict. A cluster whose speed depends on its load (a CPU quota, an
  ondemand governor) runs a stage given fewer layers faster than that,
  which would read as drift at once and pull the plan back (measured: the
  little stage at 0.68x right after a forced switch, a second switch,
  reverted). So the detector takes the first ``anchor_windows`` windows
  with evidence after a platform change as each worker's normal (the
  median of their ratios) and judges later windows against it, as a
  confirmed switch re-bases its expectations on measured times.
* **Verified by measurement**: the factor a platform reading gives is a
  guess (the plan made after a halved quota predicted 202 fps and measured
  ~145: its stage on that cluster ran 1.27x slower than scaled). So the
  first window with evidence after a platform change checks it before it
  becomes a normal: a worker on a cluster whose factor was guessed that
  runs *slower* than its scaled expectation by more than ``threshold``
  means the plan cannot deliver what it was switched to for, and the
  detector asks at once (no sustain, no anchors) for a re-plan from those
  measured ratios (``Decision.follow_up``; the daemon lets it bypass the
  switch cooldown). Faster is left to the anchors: it is what a
  load-dependent cluster does with fewer layers (the 0.68x above); so is
  a drift on another cluster in that window (most often a side effect of
  the work moved there: seen at 1.8x on a busy host; if real, the
  sustained drift path sees it). At most one follow-up per platform
  change; it restarts the anchor collection (its plan is judged against
  its own first windows), and the daemon confirms or reverts it like any
  drift switch.

:func:`scaled_times` turns what was observed into the new plan's input:
every setup of a cluster gets its per-layer times multiplied by that
cluster's observed factor. :func:`shrink_platform` drops offline CPUs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

from cores.model import CoreSetup, Platform
from pipeit.errors import PlanError
from pipeit.layer_times import LayerTimes
from pipeit.plan import Plan

__all__ = [
    "DRIFT_THRESHOLD",
    "CO_CAUSE",
    "blame",
    "WorkerReading",
    "StageReading",
    "Window",
    "Decision",
    "DriftDetector",
    "SwitchPolicy",
    "SWITCH_MARGIN",
    "predicted_fps_of",
    "evidence_of",
    "measured_capacity_fps",
    "cluster_factors",
    "scaled_times",
    "shrink_platform",
    "plan_layout",
    "fit_times",
]

DRIFT_THRESHOLD = 0.15
FREQ_CHANGE = 0.05
#: a drifting cluster is blamed next to the one that drifted most only if its log ratio is at least this share
CO_CAUSE = 0.8
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
    #: the window's length; lets a slow worker that was busy all window count with few frames
    window_s: Optional[float] = None
    #: an emulated cluster's current speed (cgroup quota), judged like a frequency cap; () on real boards
    speeds: Tuple[Tuple[str, Optional[float]], ...] = ()


@dataclass(frozen=True)
class Decision:
    """``replan`` with a ``reason``; ``factors`` per cluster to scale times by (observed/expected).

    ``drifting`` names the units that drifted, as (stage, worker) pairs
    (worker None: the whole stage): the ones whose expectation a kept plan
    re-bases; the others keep theirs, a slowdown of their own may be
    building up."""

    replan: bool
    reason: str = ""
    factors: Tuple[Tuple[str, float], ...] = ()
    platform_changed: bool = False
    drifting: Tuple[Tuple[int, Optional[int]], ...] = ()
    #: what triggered it: "platform" (a reading of the platform moved), "drift" (measured times, sustained)
    #: or "verify" (a platform re-plan's first window measured slower than its factor said); "" for none
    trigger: str = ""
    #: a measured correction of the last platform re-plan: acted on at once, bypassing the switch cooldown
    follow_up: bool = False


class DriftDetector:
    """Sustained-drift and platform-change detection over a stream of windows.

    ``min_frames`` frames per stage make a window count (a nearly idle
    daemon measures nothing reliable and neither triggers nor resets); so
    do fewer frames that kept the worker busy for at least half the window
    (a worker slowed tenfold serves few frames, and that is the evidence).
    Call :meth:`rebase` after a re-plan: the new plan's expectations start
    from a clean history.
    """

    def __init__(self, threshold: float = DRIFT_THRESHOLD, sustain: int = 3, min_frames: int = 5,
                 anchor_windows: int = 2, verify: bool = True):
        if not (0 < threshold < 10):
            raise PlanError(f"drift threshold must be in (0, 10), got {threshold}")
        if sustain < 1:
            raise PlanError(f"sustain must be >= 1 window, got {sustain}")
        self.threshold = float(threshold)
        self.sustain = int(sustain)
        self.min_frames = int(min_frames)
        self.anchor_windows = max(0, int(anchor_windows))
        #: check a platform re-plan against its first window with evidence (see the module docstring)
        self.verify = bool(verify)
        self._verify_pending = False  # a platform change whose first evidence window is still to come
        self._verify_clusters: frozenset = frozenset()  # the clusters whose factor that change guessed
        self._anchor_left = 0  # windows still to collect as the normal after a platform change
        self._anchor_seen: Dict[Tuple[int, Optional[int]], list] = {}
        self._anchors: Dict[Tuple[int, Optional[int]], float] = {}  # measured/expected taken as 1.0
        self._streak: Dict[Tuple[int, Optional[int]], int] = {}  # (stage, worker or None) -> windows
        self._ratios: Dict[Tuple[int, Optional[int]], list] = {}
        self._online: Optional[Tuple[int, ...]] = None
        self._caps: Dict[str, int] = {}
        self._speeds: Dict[str, float] = {}

    def rebase(self, online: Optional[Tuple[int, ...]] = None,
               freq_caps_khz: Sequence[Tuple[str, Optional[int]]] = (),
               speeds: Sequence[Tuple[str, Optional[float]]] = ()) -> None:
        """Forget the drift history; take ``online``/caps/emulated speeds as the new normal.

        Anchors taken after a platform change are dropped too (the daemon
        calls this when it sets new expectations); a collection of them
        still under way goes on."""
        self._streak.clear()
        self._ratios.clear()
        self._anchors.clear()
        if online is not None:
            self._online = tuple(online)
        for name, cap in freq_caps_khz:
            if cap:
                self._caps[name] = int(cap)
        for name, speed in speeds:
            if speed and speed > 0:
                self._speeds[name] = float(speed)

    def is_evidence(self, reading: Union[WorkerReading, StageReading], window_s: Optional[float]) -> bool:
        """Whether a worker's (or stage's) reading over one window says anything about its speed."""
        if reading.measured_ms is None or reading.frames <= 0:
            return False
        if reading.frames >= self.min_frames:
            return True
        return window_s is not None and reading.frames * reading.measured_ms >= 500.0 * window_s

    def observe(self, window: Window) -> Decision:
        changed = self._platform_change(window)
        if changed is not None:
            reason, factors = changed
            self._anchor_left, self._anchor_seen = self.anchor_windows, {}
            self._anchors.clear()
            # Only a factor is a guess: CPUs going offline change the setups, not a speed to verify.
            self._verify_clusters = frozenset(name for name, _f in factors)
            self._verify_pending = self.verify and bool(self._verify_clusters)
            return Decision(True, reason, factors, platform_changed=True, trigger="platform")
        verdict = self._verify(window) if self._verify_pending else None
        if verdict is not None and verdict.replan:
            return verdict
        if self._anchor_left > 0:
            self._collect_anchors(window)
            return verdict or Decision(False)
        drifting = []  # (key, label, clusters, expected_ms)
        for key, label, clusters, reading in self._units(window):
            ratio = reading.ratio
            if ratio is None or not self.is_evidence(reading, window.window_s):
                continue  # no evidence either way: keep the streak as it is
            ratio /= self._anchors.get(key, 1.0)
            if abs(ratio - 1.0) > self.threshold:
                seen = self._ratios.get(key)
                if seen and (seen[-1] > 1.0) != (ratio > 1.0):
                    # Slower, then faster (or the reverse): scatter around the expectation, which a
                    # noisy host makes wider than the threshold -- not a drift. Start over from here.
                    self._streak[key], self._ratios[key] = 0, []
                self._streak[key] = self._streak.get(key, 0) + 1
                self._ratios.setdefault(key, []).append(ratio)
            else:
                self._streak[key] = 0
                self._ratios[key] = []
            if self._streak[key] >= self.sustain:
                drifting.append((key, label, clusters, reading.expected_ms))
        if not drifting:
            return Decision(False)
        # The factor is what the streak says *now*: the median of its windows but the first, which
        # straddles the change on a step slowdown (half the window at the old speed). Taking it in
        # under-estimates the slowdown (1.75x for a 2x step with two windows of half a second), and
        # the plan made from it drifts again at once: a second switch for one change.
        ratios = {key: _median(self._ratios[key][-self.sustain:][1:] or self._ratios[key][-1:])
                  for key, _l, _c, _e in drifting}
        every = cluster_factors([(clusters, ratios[key]) for key, _l, clusters, _e in drifting])
        causes = set(blame(every))
        factors = tuple((name, f) for name, f in every if name in causes)
        blamed = [d for d in drifting if any(c in causes for c in d[2])]
        spared = [d for d in drifting if not any(c in causes for c in d[2])]
        parts = [f"{label} at {ratios[key]:.2f}x its expected {expected:.2f} ms on {'+'.join(clusters)}"
                 for key, label, clusters, expected in blamed]
        reason = (f"drift over {self.threshold:.0%} for {self.sustain} windows: " + "; ".join(parts))
        if spared:
            reason += " (not blamed, taken as a side effect: " + "; ".join(
                f"{label} at {ratios[key]:.2f}x on {'+'.join(clusters)}" for key, label, clusters, _e in spared) + ")"
        if window.max_temp_c is not None:
            reason += f" (max temperature {window.max_temp_c:.1f} C)"
        return Decision(True, reason, factors, drifting=tuple(key for key, _l, _c, _e in blamed), trigger="drift")

    @staticmethod
    def _units(window: Window):
        """``(key, label, clusters, reading)`` of every unit judged: each worker, or the stage where the
        window has no per-worker readings."""
        for stage in window.stages:
            if stage.workers:
                for w in stage.workers:
                    yield (stage.index, w.worker), f"stage {stage.index} worker {w.worker}", w.clusters, w
            else:
                yield (stage.index, None), f"stage {stage.index}", stage.clusters, stage

    def _verify(self, window: Window) -> Optional[Decision]:
        """Check the plan made after a platform change against its first window with evidence.

        Only the units on a cluster whose factor the change guessed are
        checked: a drift elsewhere in that one window is most often the side
        effect of the change (work moved to the other cluster, where the
        coordinator and the clients crowd it too) or noise, and is left to
        the sustained drift path. None while no unit has evidence (the check
        waits for one), and when the plan gave no unit with evidence to those
        clusters (nothing of the guess is in use); a decision not to re-plan, with the readings as
        its reason (for the log), when none is slower than expected beyond the
        threshold (the window then counts as an anchor window as usual); else
        a re-plan from the measured ratios. Either way, once a window had
        evidence, this platform change is verified: no second follow-up
        comes from it.
        """
        slower = []  # (key, label, clusters, ratio, expected_ms)
        checked = []  # the same text for every unit checked, for the log
        seen = False
        for key, label, clusters, reading in self._units(window):
            ratio = reading.ratio
            if ratio is None or not self.is_evidence(reading, window.window_s):
                continue
            seen = True
            if not self._verify_clusters.intersection(clusters):
                continue
            checked.append(f"{label} at {ratio:.2f}x on {'+'.join(clusters)}")
            if ratio > 1.0 + self.threshold:
                slower.append((key, label, clusters, ratio, reading.expected_ms))
        if not seen:
            return None
        # One window: a check still pending later would judge a plan made since for other reasons.
        self._verify_pending = False
        if not checked:
            return None
        if not slower:
            return Decision(False, "platform re-plan verified by measurement: its first window measured "
                            + "; ".join(checked) + f" (not slower than expected by over {self.threshold:.0%})",
                            trigger="verify")
        every = tuple((name, f) for name, f in cluster_factors([(c, r) for _k, _l, c, r, _e in slower])
                      if name in self._verify_clusters)
        causes = set(blame(every))
        factors = tuple((name, f) for name, f in every if name in causes)
        blamed = [u for u in slower if any(c in causes for c in u[2])]
        parts = [f"{label} at {ratio:.2f}x its expected {expected:.2f} ms on {'+'.join(clusters)}"
                 for _k, label, clusters, ratio, expected in blamed]
        reason = ("platform re-plan corrected by measurement: its first window measured " + "; ".join(parts)
                  + " (the platform reading's factor under-estimated the slowdown)")
        # The corrected plan is a new layout on a possibly load-dependent cluster: its own first windows
        # are its normal, as after the platform change itself.
        self._anchor_left, self._anchor_seen = self.anchor_windows, {}
        self._anchors.clear()
        return Decision(True, reason, factors, drifting=tuple(u[0] for u in blamed), trigger="verify",
                        follow_up=True)

    def _collect_anchors(self, window: Window) -> None:
        """One window towards the normal after a platform change (see the module docstring)."""
        seen_any = False
        for key, _label, _clusters, reading in self._units(window):
            ratio = reading.ratio
            if ratio is not None and self.is_evidence(reading, window.window_s):
                self._anchor_seen.setdefault(key, []).append(ratio)
                seen_any = True
        if seen_any:
            self._anchor_left -= 1
        if self._anchor_left <= 0:
            self._anchor_left = 0
            self._anchors = {key: _median(r) for key, r in self._anchor_seen.items() if r}
            self._anchor_seen = {}

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
        for name, speed in window.speeds:
            if not speed or speed <= 0:
                continue
            was = self._speeds.get(name)
            if was is None:
                self._speeds[name] = float(speed)
            elif abs(speed - was) / was > FREQ_CHANGE:
                # An emulated cluster's quota is its frequency cap: the same path, the same exact factor.
                reasons.append(f"cluster {name} {'throttled' if speed < was else 'sped up'} {was:.3g} -> "
                               f"{speed:.3g} (emulated speed: its CPU quota)")
                factors.append((name, was / speed))
                self._speeds[name] = float(speed)
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


def blame(factors: Sequence[Tuple[str, float]], co_cause: float = CO_CAUSE) -> Tuple[str, ...]:
    """The clusters a drift is blamed on: the one whose factor is furthest from 1 (in log ratio, so 2x
    slower and 2x faster weigh alike), and any other at least ``co_cause`` as far (a common cause, such
    as a board-wide throttle). Sorted; () for no factor.

    >>> blame([("big", 1.64), ("little", 2.01)])
    ('little',)
    >>> blame([("big", 1.9), ("little", 2.0)])
    ('big', 'little')
    """
    size = {name: abs(math.log(f)) for name, f in factors if f and f > 0 and math.isfinite(f)}
    if not size:
        return ()
    top = max(size.values())
    return tuple(sorted(name for name, s in size.items() if s >= co_cause * top))


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
    """Hysteresis and back-off between "the plan would change" and "switch pipelines".

    A switch costs a pipeline start and a drain, and on a noisy host a
    re-planner that believes every window flaps between near-equal plans.
    The policy therefore checks afterwards that a switch paid off, and asks
    more of the next one each time one did not:

    * **cooldown, doubling**: after a switch no other one for ``cooldown``
      windows; each switch that did not pay off (:meth:`judge`: reverted, or
      kept under the margin) doubles that (up to ``max_cooldown``); one that
      paid off, or ``4 x cooldown`` windows without a switch, halve it back.
      A daemon whose switches work stays quick to react to the next real
      change; one that chases noise slows down;
    * **margin**: a new plan must predict ``margin`` more fps than the plan
      in use -- both predicted from the same (scaled) times when the caller
      gives the current plan's prediction, so executor overhead that no plan
      can remove (it dominates ~1 ms stages) does not make every new plan
      look better; else against the current plan's measured fps;
    * **confirmation** (:meth:`judge`): once the new pipeline has settled,
      its measured capacity is compared with the old one's just before the
      switch. Clearly worse (by more than the base margin): revert, and the
      plan is banned for ``ban_windows`` windows. A gain under the margin in
      force: keep it, but double the margin (up to ``max_margin``) -- the
      predictions were too optimistic to act on small gains. The margin
      halves back towards its base with the cooldown.

    :meth:`tick` is called once per closed window, :meth:`switched` after
    every switch (a revert included).
    """

    def __init__(self, cooldown: int = 4, margin: float = SWITCH_MARGIN, *, max_cooldown: int = 64,
                 max_margin: float = 0.5, ban_windows: int = 60):
        if cooldown < 0:
            raise PlanError(f"cooldown must be >= 0 windows, got {cooldown}")
        if not (0 <= margin < 10):
            raise PlanError(f"switch margin must be in [0, 10), got {margin}")
        if max_cooldown < cooldown or ban_windows < 0 or max_margin < margin:
            raise PlanError("max_cooldown and max_margin must be at least cooldown and margin; ban_windows >= 0")
        self.cooldown = int(cooldown)
        self.margin = float(margin)
        self.max_cooldown = int(max_cooldown)
        self.max_margin = float(max_margin)
        self.ban_windows = int(ban_windows)
        self._left = 0
        self._level = 0  # switches that did not pay off, each doubling the cooldown (decays)
        self._quiet = 0  # windows since the last switch
        self._margin = float(margin)
        self._banned: Dict[Tuple, int] = {}  # (layout, evidence) -> windows left

    @property
    def cooling(self) -> int:
        """Windows still to close before another switch may happen."""
        return self._left

    @property
    def current_cooldown(self) -> int:
        """The cooldown the next switch starts (``cooldown x 2^level``, capped)."""
        return min(self.max_cooldown, self.cooldown * (2 ** self._level))

    @property
    def current_margin(self) -> float:
        """The margin a switch needs now (raised by switches that did not pay off)."""
        return self._margin

    def banned(self, layout: Tuple, evidence: Tuple = ()) -> int:
        """Windows ``layout`` stays banned (0: not banned)."""
        return self._banned.get((layout, tuple(evidence)), 0)

    def tick(self) -> None:
        if self._left > 0:
            self._left -= 1
        self._quiet += 1
        for layout in list(self._banned):
            self._banned[layout] -= 1
            if self._banned[layout] <= 0:
                del self._banned[layout]
        relax = 4 * max(1, self.current_cooldown)
        if self._quiet >= relax and (self._level > 0 or self._margin > self.margin):
            self._level = max(0, self._level - 1)
            self._margin = max(self.margin, self._margin / 2.0)
            self._quiet = 0

    def switched(self) -> None:
        self._left = self.current_cooldown
        self._quiet = 0

    def _escalate(self) -> None:
        """A switch did not pay off: double the cooldown (from the next switch on) and the margin."""
        top = 0  # the level at which the cooldown reaches its cap: doubling further would only delay relaxing
        while self.cooldown and self.cooldown * (2 ** top) < self.max_cooldown:
            top += 1
        self._level = min(self._level + 1, top)
        self._margin = min(self.max_margin, max(self._margin, self.margin, 0.025) * 2.0)

    def allow(self, predicted_fps: Optional[float], measured_fps: Optional[float],
              current_predicted_fps: Optional[float] = None, layout: Optional[Tuple] = None,
              evidence: Tuple = (), ignore_cooldown: bool = False) -> Tuple[bool, str]:
        """``(switch?, why)`` for a new plan predicting ``predicted_fps``.

        ``current_predicted_fps``: the plan in use, predicted from the same
        times (like for like); without it the new plan is held against the
        current one's ``measured_fps``. With no figure to compare with (an
        idle daemon, a platform change that broke the old plan) the margin
        cannot be judged and the switch is allowed.

        ``ignore_cooldown``: the measured follow-up of a platform re-plan
        (:attr:`Decision.follow_up`): the cooldown guards against chasing
        noise with a switch the last one just made, while this one corrects
        a switch that was a guess; the ban and the margin still apply.
        """
        if self._left > 0 and not ignore_cooldown:
            return False, f"within the cooldown after the last switch ({self._left} to go)"
        if layout is not None and self.banned(layout, evidence):
            return False, (f"that plan was switched to on the same evidence and reverted; banned for "
                           f"{self.banned(layout, evidence)} more windows")
        margin = self._margin
        if current_predicted_fps is not None and current_predicted_fps > 0 and predicted_fps is not None:
            basis, what = current_predicted_fps, "predicts"
        elif measured_fps is not None and measured_fps > 0 and predicted_fps is not None:
            basis, what = measured_fps, "measures"
        else:
            return True, "no fps to compare with"
        need = basis * (1.0 + margin)
        if predicted_fps < need:
            return False, (f"the new plan predicts {predicted_fps:.1f} fps, the current one {what} "
                           f"{basis:.1f} fps (a switch needs {need:.1f}, +{margin:.0%})")
        return True, (f"the new plan predicts {predicted_fps:.1f} fps against {basis:.1f} the current one {what} "
                      f"(+{predicted_fps / basis - 1.0:.0%}, margin {margin:.0%})")

    def judge(self, layout: Tuple, before_fps: Optional[float], after_fps: Optional[float],
              answered_before: Optional[float] = None, answered_after: Optional[float] = None,
              evidence: Tuple = ()) -> Tuple[str, str]:
        """After a switch has settled: ``("confirmed" | "kept" | "revert", why)``.

        ``before_fps``/``after_fps``: the measured capacity (from service
        times) of the old plan just before the switch and of the new one
        since. ``answered_*``: the frames answered per second around it. The
        clients are the same on both sides, so answered fps that *fell* means
        the new pipeline cannot keep up, whatever its service times say (a
        busy coordinator, a core shared with others); answered fps that did
        not rise says nothing (it may be the clients' demand). "revert" bans
        ``layout`` (the new plan) for the same ``evidence`` (see
        :func:`evidence_of`: a later drift of another cluster, or the other
        way, may well call for that very plan); "kept" raises the margin.
        """
        if answered_before and answered_after and answered_before > 0:
            fell = answered_after / answered_before - 1.0
            if fell < -self.margin:
                return self._revert(layout, evidence, f"answered {answered_after:.1f} fps after the switch against "
                                            f"{answered_before:.1f} before ({fell:+.0%})")
        if not before_fps or not after_fps or before_fps <= 0:
            return "confirmed", "nothing measured to judge the switch by"
        gain = after_fps / before_fps - 1.0
        measured = f"measured {after_fps:.1f} fps after the switch against {before_fps:.1f} before ({gain:+.0%})"
        if gain < -self.margin:
            return self._revert(layout, evidence, measured)
        if gain < self._margin:
            old = self._margin
            self._escalate()
            return "kept", f"{measured}: under the {old:.0%} margin, which rises to {self._margin:.0%}"
        self._level = max(0, self._level - 1)
        return "confirmed", measured

    def _revert(self, layout: Tuple, evidence: Tuple, measured: str) -> Tuple[str, str]:
        self._banned[(layout, tuple(evidence))] = self.ban_windows
        self._escalate()
        return "revert", f"{measured}: worse, switching back; that plan is banned for {self.ban_windows} windows"


def evidence_of(factors: Mapping[str, float]) -> Tuple[Tuple[str, str], ...]:
    """What a re-plan was made on, coarsely: each cluster found slower or faster (sorted)."""
    return tuple(sorted((name, "slower" if f > 1.0 else "faster") for name, f in factors.items() if f != 1.0))


def predicted_fps_of(plan: Plan, times: LayerTimes, platform: Platform) -> Optional[float]:
    """What ``times`` predict for ``plan``'s stages and workers (None if a worker's setup has no times).

    Evaluated by the DSE's own cost model, so that a running plan and a
    candidate are compared like for like.
    """
    from pipeit.dse import StagePlan, cost_model_for

    try:
        cost = cost_model_for(times, platform)
        stages = [StagePlan(int(s.layers[0]), int(s.layers[1]),
                            tuple(CoreSetup(w.cluster, int(w.threads)) for w in s.workers)) for s in plan.stages]
        fps = cost.evaluate(stages).fps
    except (PlanError, KeyError, ValueError):
        return None
    return fps if math.isfinite(fps) and fps > 0 else None


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
    # replace: the hop and the GPU's copy model were measured with the times and stay theirs
    return dataclasses.replace(times, times=rows, source=f"{times.source} scaled({note})" if note else times.source)


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
    return dataclasses.replace(times, times=keep)


def plan_layout(plan: Plan) -> Tuple:
    """What makes two plans the same pipeline: layer ranges and (cluster, cpus, threads) per worker."""
    return tuple(
        (tuple(s.layers), tuple((w.cluster, tuple(w.cpus), w.threads) for w in s.workers)) for s in plan.stages
    )

