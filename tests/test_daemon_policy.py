"""The re-planner's pure logic: per-worker drift, the measured capacity of a plan, and the switch
hysteresis (cooldown in windows, margin over the measured fps)."""

from __future__ import annotations

import pytest

from pipeit.daemon.replan import (
    DriftDetector, StageReading, SwitchPolicy, Window, WorkerReading, blame, measured_capacity_fps,
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
    assert decision.drifting == ((0, 1),)  # only this worker's expectation may be re-based


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


def test_a_worker_slowed_tenfold_counts_with_few_frames_when_busy_all_window():
    """A worker cut to a tenth of a core serves 3 frames in a 0.5 s window: too few by count, but
    those frames kept it busy for the whole window, so they are evidence of the slowdown."""
    def window(frames: int, ms: float) -> Window:
        workers = (WorkerReading(0, "little", ms, 10.0, frames),)
        return Window((StageReading(0, ("little",), ms, 10.0, frames, workers),), window_s=0.5)

    detector = DriftDetector(threshold=0.15, sustain=2, min_frames=5)
    assert detector.is_evidence(WorkerReading(0, "little", 150.0, 10.0, 3), 0.5)  # 450 ms of 500 busy
    assert not detector.is_evidence(WorkerReading(0, "little", 50.0, 10.0, 3), 0.5)  # idle most of it
    assert not detector.is_evidence(WorkerReading(0, "little", 150.0, 10.0, 3), None)  # window unknown
    assert not detector.observe(window(3, 150.0)).replan
    decision = detector.observe(window(3, 150.0))
    assert decision.replan and dict(decision.factors) == {"little": pytest.approx(5.0)}  # clamped
    idle = DriftDetector(threshold=0.15, sustain=2, min_frames=5)
    assert not idle.observe(window(2, 20.0)).replan
    assert not idle.observe(window(2, 20.0)).replan  # 40 ms busy of 500: a quiet client, not a drift


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


def test_like_for_like_margin_ignores_overhead_no_plan_can_remove():
    """With ~1 ms stages every prediction beats every measurement (the executor's own time per frame is in
    the measurement only): held against the current plan's *prediction* from the same times, a new plan
    that is not really better is refused however low the measured fps is."""
    policy = SwitchPolicy(cooldown=0, margin=0.05)
    assert policy.allow(110.0, 80.0)[0]  # against the measurement: looks 37 % better
    allowed, why = policy.allow(110.0, 80.0, current_predicted_fps=108.0)
    assert not allowed and "predicts 108.0" in why
    assert policy.allow(120.0, 80.0, current_predicted_fps=108.0)[0]


def test_each_switch_that_did_not_pay_off_doubles_the_cooldown_and_quiet_windows_relax_it():
    policy = SwitchPolicy(cooldown=2, margin=0.05, max_cooldown=16)
    lengths = []
    for k in range(5):
        policy.switched()
        lengths.append(policy.cooling)
        while policy.cooling:
            policy.tick()
        assert policy.judge((k,), 100.0, 100.0)[0] == "kept"  # no gain
    assert lengths == [2, 4, 8, 16, 16]  # doubled, then capped
    for _ in range(4 * 16):  # quiet for four cooldowns: one step back
        policy.tick()
    assert policy.current_cooldown == 8
    assert policy.judge(("x",), 100.0, 200.0)[0] == "confirmed"  # a switch that paid off: another step
    assert policy.current_cooldown == 4


def test_switches_that_pay_off_keep_the_cooldown_short():
    """A board that really keeps changing (heating, co-runners) must be followed as fast as the first time."""
    policy = SwitchPolicy(cooldown=4, margin=0.05)
    for k in range(6):
        policy.switched()
        assert policy.cooling == 4
        while policy.cooling:
            policy.tick()
        assert policy.judge((k,), 100.0, 150.0)[0] == "confirmed"
    assert policy.current_margin == pytest.approx(0.05)


def test_a_switch_that_measured_worse_is_reverted_and_its_plan_banned():
    policy = SwitchPolicy(cooldown=0, margin=0.05, ban_windows=3)
    new_plan = ("layout B",)
    verdict, why = policy.judge(new_plan, before_fps=100.0, after_fps=90.0)
    assert verdict == "revert" and "banned" in why
    assert policy.current_margin == pytest.approx(0.10)
    allowed, why = policy.allow(500.0, 100.0, layout=new_plan)  # no evidence given: the same (none)
    assert not allowed and "banned" in why
    assert policy.allow(500.0, 100.0, layout=("layout C",))[0]  # only that plan
    for _ in range(3):
        policy.tick()
    assert policy.banned(new_plan) == 0 and policy.allow(500.0, 100.0, layout=new_plan)[0]


def test_a_switch_that_gained_less_than_the_margin_raises_it():
    policy = SwitchPolicy(cooldown=0, margin=0.05, max_margin=0.3)
    assert policy.judge(("B",), 100.0, 103.0)[0] == "kept"
    assert policy.current_margin == pytest.approx(0.10)
    assert not policy.allow(108.0, None, current_predicted_fps=100.0)[0]  # 8 % no longer enough
    assert policy.judge(("C",), 100.0, 101.0)[0] == "kept"
    assert policy.judge(("D",), 100.0, 100.0)[0] == "kept"
    assert policy.current_margin == pytest.approx(0.3)  # capped
    assert policy.judge(("E",), 100.0, 140.0)[0] == "confirmed"
    assert policy.judge(("F",), None, 140.0)[0] == "confirmed"  # nothing measured before: nothing to judge


def _simulate(policy: SwitchPolicy, windows: int, seed: int = 3, confirm: bool = True) -> int:
    """A daemon on a noisy host whose re-planner, every window, finds "the other" of two equal plans
    predicted 6-12 % better (noise scaled into the times); measured, both plans run at 100 fps +- 4 %.
    Returns the switches made (reverts included)."""
    import random

    rng = random.Random(seed)
    layouts = (("A",), ("B",))
    current, switches, check = 0, 0, None
    for _ in range(windows):
        policy.tick()
        measured = 100.0 * (1 + rng.uniform(-0.04, 0.04))
        if check is not None and confirm:
            check[1].append(measured)
            if len(check[1]) == 2:
                verdict, _ = policy.judge(layouts[current], check[0], sorted(check[1])[1])
                check = None
                if verdict == "revert":
                    current, switches = 1 - current, switches + 1
                    policy.switched()
                continue
        gain = rng.uniform(0.06, 0.12)
        allowed, _ = policy.allow(100.0 * (1 + gain), measured, current_predicted_fps=100.0,
                                  layout=layouts[1 - current])
        if allowed:
            current, switches = 1 - current, switches + 1
            policy.switched()
            check = (measured, [])
    return switches


def test_near_equal_plans_on_a_noisy_host_do_not_flap():
    # The old hysteresis (fixed cooldown of 4, fixed 5 % margin, no confirmation) switches every 5 windows;
    # the back-off settles after a few switches, since each one that does not pay off raises the margin.
    assert _simulate(SwitchPolicy(cooldown=4, margin=0.05, max_cooldown=4), 200, confirm=False) >= 30
    assert _simulate(SwitchPolicy(cooldown=4, margin=0.05), 200) <= 4
    # A real change is still acted on at the raised margin: a plan twice as fast is allowed.
    policy = SwitchPolicy(cooldown=4, margin=0.05)
    _simulate(policy, 200)
    while policy.cooling:
        policy.tick()
    assert policy.allow(200.0, 100.0, current_predicted_fps=100.0, layout=("C",))[0]


def test_answered_fps_that_fell_reverts_even_when_service_times_look_better():
    """Service times can improve while frames answered drop (a stage now shares its core with the
    coordinator, say): the clients are the same before and after, so fewer answers is the verdict."""
    policy = SwitchPolicy(cooldown=0, margin=0.05)
    verdict, why = policy.judge(("B",), 77.0, 101.0, answered_before=100.0, answered_after=65.0)
    assert verdict == "revert" and "answered 65.0" in why and policy.banned(("B",))
    # answered fps that did not rise says nothing (light load: it is the clients' demand)
    assert policy.judge(("C",), 77.0, 101.0, answered_before=50.0, answered_after=50.0)[0] == "confirmed"


def test_scatter_on_both_sides_of_the_expectation_is_not_drift():
    """Measured on this host: a worker expected at 10 ms read 8.0, then 11.6 ms -- both over 15 % off,
    their median 0.98x. Opposite directions restart the streak; a real slowdown still fires."""
    detector = DriftDetector(threshold=0.15, sustain=2)
    for ms in (8.0, 11.6, 8.2, 12.0, 8.1, 11.9):
        assert not detector.observe(_replicated(10.0, ms)).replan
    assert detector.observe(_replicated(10.0, 13.0)).replan  # 11.9 then 13.0: two slow windows in a row


def test_a_ban_holds_for_the_same_evidence_only():
    """A plan reverted after a switch made on noise ("big is slower") may be the right answer to a real
    change seen later ("little is slower"): the ban is on the plan *and* the evidence it was chosen on."""
    from pipeit.daemon.replan import evidence_of

    policy = SwitchPolicy(cooldown=0, margin=0.05)
    noise = evidence_of({"big": 1.57})
    assert noise == (("big", "slower"),)
    assert policy.judge(("B",), 100.0, 80.0, evidence=noise)[0] == "revert"
    assert not policy.allow(500.0, 100.0, layout=("B",), evidence=noise)[0]
    assert policy.allow(500.0, 100.0, layout=("B",), evidence=evidence_of({"little": 2.0}))[0]
    assert policy.allow(500.0, 100.0, layout=("B",), evidence=evidence_of({"big": 0.6}))[0]


def test_the_factor_of_a_step_slowdown_leaves_out_the_window_that_straddles_it():
    """A cluster halves its speed mid-window: that window reads 1.5x, the next 2x. The new plan must
    be made for 2x (a plan made for the average drifts again at once: a second switch for one change)."""
    def window(little_ms: float) -> Window:
        workers = (WorkerReading(0, "little", little_ms, 10.0, 20),)
        return Window((StageReading(0, ("little",), little_ms, 10.0, 20, workers),))

    detector = DriftDetector(threshold=0.15, sustain=2)
    assert not detector.observe(window(15.0)).replan
    decision = detector.observe(window(20.0))
    assert decision.replan and dict(decision.factors) == {"little": pytest.approx(2.0)}
    three = DriftDetector(threshold=0.15, sustain=3)
    for ms in (15.0, 20.0):
        assert not three.observe(window(ms)).replan
    decision = three.observe(window(22.0))
    assert dict(decision.factors) == {"little": pytest.approx(2.1)}  # the median of the two after the first


def _pipeline(big_ms: float, little_ms: float, frames: int = 20) -> Window:
    """Two stages, little then big, one worker each, both expected at 10 ms."""
    little = WorkerReading(0, "little", little_ms, 10.0, frames)
    big = WorkerReading(0, "big", big_ms, 10.0, frames)
    return Window((StageReading(0, ("little",), little_ms, 10.0, frames, (little,)),
                   StageReading(1, ("big",), big_ms, 10.0, frames, (big,))), window_s=0.5)


class TestBlame:
    def test_the_cluster_that_drifted_most_is_the_cause_and_a_lesser_drift_is_a_side_effect(self):
        """The recorded case: the little quota halved, the little stage read 2.01x and the big stage
        1.64x (the clients and the frame feed crowd the big CPU). Scaling big too made a plan that
        measured worse and was reverted; only little is blamed, and big's expectation is not re-based."""
        detector = DriftDetector(threshold=0.15, sustain=2)
        assert not detector.observe(_pipeline(16.4, 20.1)).replan
        decision = detector.observe(_pipeline(16.4, 20.1))
        assert decision.replan and decision.trigger == "drift"
        assert dict(decision.factors) == {"little": pytest.approx(2.01)}
        assert decision.drifting == ((0, 0),)
        assert "not blamed" in decision.reason and "stage 1 worker 0 at 1.64x on big" in decision.reason

    def test_comparable_drifts_on_two_clusters_are_a_common_cause(self):
        """A board-wide throttle slows both clusters alike: both are blamed."""
        detector = DriftDetector(threshold=0.15, sustain=2)
        detector.observe(_pipeline(19.0, 20.0))
        decision = detector.observe(_pipeline(19.0, 20.0))
        assert dict(decision.factors) == {"big": pytest.approx(1.9), "little": pytest.approx(2.0)}
        assert set(decision.drifting) == {(0, 0), (1, 0)} and "not blamed" not in decision.reason

    def test_the_largest_drift_is_judged_in_log_ratio_so_faster_counts_like_slower(self):
        # big 2x faster (0.5) against little 1.5x slower: log 0.69 against 0.41 -> big is the cause.
        assert blame([("big", 0.5), ("little", 1.5)]) == ("big",)
        assert blame([("big", 1.0 / 1.9), ("little", 2.0)]) == ("big", "little")
        assert blame([]) == () and blame([("big", 1.3)]) == ("big",)
        assert blame([("big", 1.64), ("little", 2.01)], co_cause=0.5) == ("big", "little")

    def test_a_lesser_drift_that_is_real_is_seen_again_after_the_re_plan(self):
        """Blaming one cause at a time loses nothing: a re-plan re-bases the detector, and a second
        cluster that really slowed keeps drifting against the new plan's expectations."""
        detector = DriftDetector(threshold=0.15, sustain=2)
        detector.observe(_pipeline(14.0, 30.0))
        first = detector.observe(_pipeline(14.0, 30.0))
        assert dict(first.factors) == {"little": pytest.approx(3.0)}
        detector.rebase()  # what the daemon does after re-planning
        assert not detector.observe(_pipeline(14.0, 10.0)).replan
        second = detector.observe(_pipeline(14.0, 10.0))
        assert dict(second.factors) == {"big": pytest.approx(1.4)}


class TestEmulatedSpeed:
    """An emulated cluster's speed (its cgroup quota) is a platform reading, judged like a frequency cap."""

    def _window(self, little_speed, little_ms: float = 10.0) -> Window:
        return Window(_pipeline(10.0, little_ms).stages, speeds=(("big", None), ("little", little_speed)))

    def test_a_halved_speed_replans_at_once_with_the_exact_factor(self):
        detector = DriftDetector(threshold=0.15, sustain=2)
        assert not detector.observe(self._window(0.4)).replan  # the first reading is the baseline
        decision = detector.observe(self._window(0.2, little_ms=15.0))  # one window, no sustain needed
        assert decision.replan and decision.platform_changed and decision.trigger == "platform"
        assert dict(decision.factors) == {"little": pytest.approx(2.0)}
        assert "cluster little throttled 0.4 -> 0.2" in decision.reason
        assert not detector.observe(self._window(0.2)).replan  # the new speed is the new normal

    def test_small_moves_are_not_a_change_and_a_recovery_speeds_up(self):
        detector = DriftDetector(threshold=0.15, sustain=2)
        detector.rebase(speeds=(("little", 0.4),))
        assert not detector.observe(self._window(0.41)).replan  # within 5 %
        decision = detector.observe(self._window(0.8))
        assert dict(decision.factors) == {"little": pytest.approx(0.5)} and "sped up" in decision.reason

    def test_the_platform_change_wins_over_drift_in_the_same_window(self):
        """A drift streak on big and little's speed cut in the same window: the platform reading names
        the cause, with its exact factor; big is not scaled."""
        detector = DriftDetector(threshold=0.15, sustain=1)
        detector.rebase(speeds=(("little", 0.4),))
        decision = detector.observe(Window(_pipeline(16.0, 20.0).stages, speeds=(("little", 0.2),)))
        assert decision.platform_changed and dict(decision.factors) == {"little": pytest.approx(2.0)}

    def test_after_a_platform_change_the_measured_times_become_the_normal(self):
        """The recorded case: after the forced switch the little stage (now fewer layers under the quota)
        ran at 0.68x its scaled prediction, which read as drift and pulled the plan back. The first
        windows after the change are taken as the normal instead; a later real change still shows."""
        detector = DriftDetector(threshold=0.15, sustain=2, anchor_windows=2)
        detector.rebase(speeds=(("little", 0.4),))
        assert detector.observe(self._window(0.2)).platform_changed
        detector.rebase()  # the daemon re-plans and re-bases; the anchor collection goes on
        for _ in range(2):
            assert not detector.observe(self._window(0.2, little_ms=6.8)).replan  # the anchor windows
        for _ in range(3):
            assert not detector.observe(self._window(0.2, little_ms=6.8)).replan  # 0.68x is the normal now
        detector.observe(self._window(0.2, little_ms=10.2))  # 1.5x the anchored normal...
        decision = detector.observe(self._window(0.2, little_ms=10.2))
        assert decision.replan and dict(decision.factors) == {"little": pytest.approx(1.5)}
        detector.rebase()  # new expectations: the anchors go
        assert not detector.observe(self._window(0.2, little_ms=10.0)).replan
        assert not detector.observe(self._window(0.2, little_ms=10.0)).replan


class TestPlatformReplanVerified:
    """A platform re-plan is a guess from a nominal factor; its first window with evidence checks it."""

    def _window(self, little_ms: float, big_ms: float = 10.0, frames: int = 20) -> Window:
        return Window(_pipeline(big_ms, little_ms, frames).stages, speeds=(("big", None), ("little", 0.2)))

    def _after_change(self, **kwargs) -> DriftDetector:
        detector = DriftDetector(threshold=0.15, sustain=2, anchor_windows=2, **kwargs)
        detector.rebase(speeds=(("little", 0.4),))
        assert detector.observe(self._window(10.0)).platform_changed  # quota halved: factor 2, forced
        detector.rebase()  # the daemon switched and set the scaled expectations
        return detector

    def test_slower_than_the_factor_said_replans_at_once_from_the_measured_ratio(self):
        """The recorded case: after the forced switch the little stage ran at 1.27x its scaled time."""
        detector = self._after_change()
        decision = detector.observe(self._window(12.7))  # one window, no sustain, no anchors
        assert decision.replan and decision.follow_up and decision.trigger == "verify"
        assert not decision.platform_changed
        assert dict(decision.factors) == {"little": pytest.approx(1.27)}
        assert decision.drifting == ((0, 0),)
        assert "platform re-plan corrected by measurement" in decision.reason
        assert "stage 0 worker 0 at 1.27x" in decision.reason

    def test_at_most_one_follow_up_per_platform_change(self):
        detector = self._after_change()
        assert detector.observe(self._window(12.7)).follow_up
        detector.rebase()  # the corrected plan's expectations
        # Its own first windows are the normal (anchors restarted), and no second follow-up comes:
        assert not detector.observe(self._window(13.0)).replan
        assert not detector.observe(self._window(13.0)).replan
        for _ in range(3):
            assert not detector.observe(self._window(13.0)).replan  # 1.3x anchored: the normal now
        # a later real drift still shows, through the sustained drift path (no follow-up flag)
        detector.observe(self._window(19.5))
        decision = detector.observe(self._window(19.5))
        assert decision.replan and not decision.follow_up and decision.trigger == "drift"
        assert dict(decision.factors) == {"little": pytest.approx(1.5)}

    def test_a_new_platform_change_gets_its_own_verification(self):
        detector = self._after_change()
        assert detector.observe(self._window(12.7)).follow_up
        detector.rebase()
        decision = detector.observe(Window(_pipeline(10.0, 10.0).stages, speeds=(("little", 0.1),)))
        assert decision.platform_changed
        detector.rebase()
        decision = detector.observe(Window(_pipeline(10.0, 13.0).stages, speeds=(("little", 0.1),)))
        assert decision.follow_up and dict(decision.factors) == {"little": pytest.approx(1.3)}

    def test_faster_than_the_factor_said_is_left_to_the_anchors(self):
        """Fewer layers on a quota-limited cluster run faster than scaled (0.68x measured): not a reason
        to pull work back onto it; that window is an anchor window as before."""
        detector = self._after_change()
        decision = detector.observe(self._window(6.8))
        assert not decision.replan
        assert not detector.observe(self._window(6.8)).replan  # second anchor window
        assert not detector.observe(self._window(13.0)).replan  # verified already: no follow-up now...
        decision = detector.observe(self._window(13.0))  # ...but 1.9x the anchored normal, sustained
        assert decision.replan and decision.trigger == "drift" and not decision.follow_up

    def test_within_the_threshold_the_guess_stands(self):
        detector = self._after_change()
        verified = detector.observe(self._window(11.0))  # 1.1x: verified, said so for the log
        assert not verified.replan and verified.trigger == "verify" and not verified.follow_up
        assert "verified by measurement" in verified.reason and "stage 0 worker 0 at 1.10x" in verified.reason
        assert not detector.observe(self._window(14.0)).replan  # slower now, but an anchor window
        assert not detector.observe(self._window(12.5)).replan  # normal = median(1.1, 1.4) = 1.25

    def test_a_window_without_evidence_does_not_use_up_the_check(self):
        detector = self._after_change()
        assert not detector.observe(self._window(40.0, big_ms=40.0, frames=2)).replan  # 80 of 500 ms busy
        assert detector.observe(self._window(12.7)).follow_up

    def test_only_the_cluster_whose_factor_was_guessed_is_checked(self):
        """Recorded on a busy host: big (not throttled, given more layers) read 1.82x in the first window
        and a follow-up scaled it; one window of another cluster is a side effect or noise, left to the
        sustained drift path."""
        detector = self._after_change()
        decision = detector.observe(self._window(20.0, big_ms=18.2))  # little 2x and big 1.82x
        assert decision.follow_up and dict(decision.factors) == {"little": pytest.approx(2.0)}
        assert decision.drifting == ((0, 0),) and "big" not in decision.reason
        detector = self._after_change()
        assert not detector.observe(self._window(10.5, big_ms=18.2)).replan  # little as guessed: verified
        assert not detector.observe(self._window(22.0)).replan  # no follow-up any more: an anchor window

    def test_a_change_of_online_cpus_guesses_no_factor_and_is_not_verified(self):
        detector = DriftDetector(threshold=0.15, sustain=2, anchor_windows=2)
        detector.rebase(online=(0, 1))
        assert detector.observe(Window(_pipeline(10.0, 10.0).stages, online=(0,))).platform_changed
        detector.rebase()
        assert not detector.observe(Window(_pipeline(10.0, 13.0).stages, online=(0,))).replan

    def test_it_can_be_switched_off(self):
        detector = self._after_change(verify=False)
        assert not detector.observe(self._window(12.7)).replan

    def test_the_follow_up_bypasses_the_cooldown_but_not_the_margin_or_a_ban(self):
        policy = SwitchPolicy(cooldown=4, margin=0.05)
        policy.switched()  # the forced switch
        assert not policy.allow(186.6, 140.0, 161.8)[0]  # within the cooldown
        allowed, why = policy.allow(186.6, 140.0, 161.8, ignore_cooldown=True)
        assert allowed and "+15%" in why
        assert not policy.allow(165.0, 140.0, 161.8, ignore_cooldown=True)[0]  # under the 5 % margin
        policy.judge(("L",), 150.0, 100.0, evidence=(("little", "slower"),))  # a revert bans ("L",)
        assert not policy.allow(300.0, 100.0, layout=("L",), evidence=(("little", "slower"),),
                                ignore_cooldown=True)[0]

    def test_a_window_of_platform_readings_only_sees_a_change_and_consumes_nothing(self):
        """The daemon feeds settle windows (and a switch's verdict window) without times: a throttle then
        is acted on at once, and such windows neither verify a guess nor count as anchors."""
        detector = DriftDetector(threshold=0.15, sustain=2, anchor_windows=2)
        detector.rebase(speeds=(("little", 0.4),))
        assert not detector.observe(Window((), speeds=(("little", 0.4),))).replan
        decision = detector.observe(Window((), speeds=(("little", 0.2),)))
        assert decision.platform_changed and dict(decision.factors) == {"little": pytest.approx(2.0)}
        detector.rebase()
        assert not detector.observe(Window((), speeds=(("little", 0.2),))).replan  # a settle window
        assert detector.observe(self._window(12.7)).follow_up  # the first window with times verifies

    def test_a_plan_that_left_the_throttled_cluster_unused_has_nothing_to_verify(self):
        """The check is of the next window with evidence only: if the new plan runs nothing on the
        guessed cluster it ends there, and a later plan using that cluster is not 'corrected' out of
        context."""
        detector = self._after_change()
        big_only = Window((StageReading(0, ("big",), 10.0, 10.0, 20, (WorkerReading(0, "big", 10.0, 10.0, 20),)),),
                          speeds=(("big", None), ("little", 0.2)), window_s=0.5)
        decision = detector.observe(big_only)
        assert not decision.replan and not decision.reason
        assert not detector.observe(self._window(12.7)).replan  # an anchor window, no follow-up
