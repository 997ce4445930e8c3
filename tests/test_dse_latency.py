"""The latency model: throttle jitter of emulated clusters and the queue of frames in flight."""

from __future__ import annotations

import pytest

from cores.model import Cluster, CoreSetup, Platform
from pipeit.dse import CostModel, StagePlan, best_candidate, throttle_jitter_ms
from pipeit.layer_times import LayerTimes
from pipeit.transfer import HopModel

FREE = HopModel(0.0, 0.0)


def test_jitter_is_the_quota_gap_of_a_slowed_cluster():
    platform = Platform((Cluster("big", "a", (0,)), Cluster("little", "b", (1,), speed=0.4),
                         Cluster("tiny", "c", (2,), speed=0.05)))
    jitter = throttle_jitter_ms(platform)
    assert jitter["big"] == 0.0
    # (1 - f) x (the 5 ms period + a 4 ms tick's overrun repaid at f): 3 + 6 ms
    assert jitter["little"] == pytest.approx(0.6 * (5.0 + 4.0 / 0.4))
    assert jitter["tiny"] == pytest.approx(0.95 * (20.001 + 4.0 / 0.05))  # 1 ms quota floor stretches the period
    assert throttle_jitter_ms(platform, tick_ms=0.0)["little"] == pytest.approx(3.0)  # the ideal quota


def test_unbalanced_pipeline_latency_is_frames_in_flight_over_throughput():
    one = CoreSetup("c", 1)
    cost = CostModel(LayerTimes(2, {one: (10.0, 20.0)}, (0, 0, 0), (0, 0)), FREE)
    found = cost.evaluate((StagePlan(0, 1, (one,)), StagePlan(1, 2, (one,))))
    assert found.fps == pytest.approx(50.0)
    assert found.latency_ms == pytest.approx(40.0)  # 2 frames in flight / 50 fps, not 10 + 20


def test_only_an_interpreter_spanning_a_slowed_cluster_pays_its_stall():
    """A worker wholly on the slowed cluster pads its jobs (steady, no jitter); the all-cores
    interpreter's thread on it runs under the quota and can stall."""
    platform = Platform((Cluster("big", "a", (0,)), Cluster("little", "b", (1,), speed=0.4)))
    big, little, both = CoreSetup("big", 1), CoreSetup("little", 1), CoreSetup("big+little", 2)
    table = LayerTimes(2, {big: (10.0, 10.0), little: (25.0, 25.0), both: (20.0, 20.0)}, (0, 0, 0), (0, 0))
    cost = CostModel(table, FREE, jitter=throttle_jitter_ms(platform))
    assert cost.jitter_ms(little) == 0.0 and cost.jitter_ms(big) == 0.0
    assert cost.jitter_ms(both) == pytest.approx(9.0)
    pipe = cost.evaluate((StagePlan(0, 1, (big,)), StagePlan(1, 2, (little,))))
    assert pipe.latency_ms == pytest.approx(max(10.0 + 25.0, 2 * 25.0))
    spanning = cost.evaluate((StagePlan(0, 2, (both,)),))
    assert spanning.latency_ms == pytest.approx(40.0 + 9.0)


def test_planned_latency_respects_the_limit_with_the_model():
    platform = Platform((Cluster("big", "A72", (0,)), Cluster("little", "A53", (1,), speed=0.4)),
                        source="emulate:big=0@1.0,little=1@0.4")
    ms = [3.0, 5.0, 2.0, 6.0, 4.0, 1.0, 5.0, 2.0, 1.5, 0.5]
    table = LayerTimes(len(ms), {CoreSetup("big", 1): tuple(ms), CoreSetup("little", 1): tuple(t / 0.4 for t in ms)},
                       (0,) * (len(ms) + 1), (0,) * len(ms))
    for limit in (35.0, 45.0, 60.0, 80.0):
        found = best_candidate(table, platform, "pipeit", latency_ms=limit, hop=FREE)
        assert found.latency_ms <= limit
        path = sum(max(ts) for ts in found.worker_ms)
        assert found.latency_ms >= path - 1e-9  # at least the path of its slowest workers
