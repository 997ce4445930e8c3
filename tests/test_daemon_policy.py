"""The re-planner's pure logic: per-worker drift, the measured capacity of a plan, and the switch
hysteresis (cooldown in windows, margin over the measured fps)."""

from __future__ import annotations

import pytest

from pipeit.daemon.replan import (
    DriftDetector, StageReading, SwitchPolicy, Window, WorkerReading, measured_capacity_fps,
)
from pipeit.errors import PlanError


def _replicated(big_ms: float, little_ms: float, frames: int = 20) -> Window:
    """One stage served by a big and a little replica, both expected at 10 ms."""
    workers = (WorkerReading(0, "big", big_ms, 10.0, frames), WorkerReading(1, "little", little_ms, 10.0, frames))
    # The stage median over all its frames: the big replica serves more of them, so it hides the little one.
    return Window((StageReading(0, ("big", "little"), big_ms, 10.0, 2 * frames, workers),))


def test_one_slow_replica_is_seen_per_worker_and_blames_only_its_cluster():
    detector = DriftDetector(threshold=0.15, sustain=3)
    assert not detector.observe(_replicated(10.0, 14.0)).replan
    assert not detector.observe(_replicated(10.2, 14.0)).replan
    decision = detector.observe(_replicated(9.9, 14.0))
    assert decision.replan
    assert "stage 0 worker 1" in decision.reason and "little" in decision.reason
    assert dict(decision.factors) == {"little": pytest.approx(1.4)}  # big is not blamed


def test_stage_readings_without_workers_still_drift_per_stage():
    detector = DriftDetector(threshold=0.15, sustain=2)
    window = Window((StageReading(1, ("big",), 13.0, 10.0, 10),))
    assert not detector.observe(window).replan
    decision = detector.observe(window)
    assert decision.replan and dict(decision.factors) == {"big": pytest.approx(1.3)}


def test_drift_must_be_sustained_and_backed_by_frames():
    detector = DriftDetector(threshold=0.15, sustain=2, min_frames=5)
    assert not detector.observe(_replicated(10.0, 14.0)).replan
    assert not detector.observe(_replicated(10.0, 10.5)).replan  # back within 15 %: the streak restarts
    assert not detector.observe(_replicated(10.0, 14.0)).replan
    assert not detector.observe(_replicated(10.0, 14.0, frames=2)).replan  # too few frames: no evidence...
    assert detector.observe(_replicated(10.0, 14.0)).replan  # ...but the streak was kept


def test_measured_capacity_sums_replicas_and_takes_the_slowest_stage():
    stages = (
        StageReading(0, ("big", "little"), 12.0, 10.0, 40,
                     (WorkerReading(0, "big", 10.0, 10.0, 20), WorkerReading(1, "little", 20.0, 10.0, 20))),
        StageReading(1, ("big",), 8.0, 8.0, 40, (WorkerReading(0, "big", 8.0, 8.0, 40),)),
    )
    # stage 0: 100 + 50 = 150 fps; stage 1: 125 fps -> the plan sustains 125
    assert measured_capacity_fps(stages) == pytest.approx(125.0)
    assert measured_capacity_fps(stages[:1]) == pytest.approx(150.0)
    idle = (StageReading(0, ("big",), None, 10.0, 0, (WorkerReading(0, "big", None, 10.0, 0),)),)
    assert measured_capacity_fps(idle) is None


def test_switch_needs_the_margin_over_the_measured_fps():
    policy = SwitchPolicy(cooldown=0, margin=0.05)
    allowed, why = policy.allow(104.0, 100.0)
    assert not allowed and "105.0" in why
    assert policy.allow(106.0, 100.0)[0]
    assert policy.allow(50.0, None)[0]  # nothing measured (idle, or the platform changed): allowed


def test_cooldown_counts_windows_after_each_switch():
    policy = SwitchPolicy(cooldown=3, margin=0.05)
    assert policy.allow(200.0, 100.0)[0]
    policy.switched()
    for left in (3, 2, 1):
        assert policy.cooling == left
        allowed, why = policy.allow(200.0, 100.0)
        assert not allowed and f"{left} to go" in why
        policy.tick()
    assert policy.cooling == 0 and policy.allow(200.0, 100.0)[0]


def test_policy_refuses_nonsense():
    with pytest.raises(PlanError):
        SwitchPolicy(cooldown=-1)
    with pytest.raises(PlanError):
        SwitchPolicy(margin=-0.1)
