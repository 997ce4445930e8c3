"""The executor's own cost inside the cost model the search optimises (on by default)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cores.model import Cluster, CoreSetup, Platform
from pipeit.dse import best_candidate, cost_model_for, plan_pipeline
from pipeit.dse.cost import CostModel, StagePlan, coordinator_placement
from pipeit.dse.tables import StageTables
from pipeit.layer_times import LayerTimes
from pipeit.transfer import DEFAULT_OVERHEAD, ExecutorOverhead, HopModel, coordinator_rate, coordinator_stage

FREE = HopModel(0.0, 0.0)
HOST = Platform((Cluster("cpu", "host", (0, 1)),), source="test")
BOARD = Platform((Cluster("big", "host", (0,)), Cluster("little", "host", (1,), speed=0.4)), source="emulate:t")


def _times(platform: Platform, ms=(2.0, 3.0, 1.0)) -> LayerTimes:
    setups = {CoreSetup(c.name, k): tuple(v / k for v in ms) for c in platform.clusters for k in range(1, c.size + 1)}
    return LayerTimes(len(ms), setups, (1000,) * (len(ms) + 1), (0,) * len(ms))


class TestPerStageFixedPoint:
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.floats(0, 500), st.floats(0, 500)), min_size=1, max_size=4),
           st.floats(0.01, 20.0), st.integers(1, 4), st.floats(0, 2.0))
    def test_min_over_stages_is_the_plans_fixed_point(self, stages, c, cores, spare):
        """The plan's rate (global fixed point) is the least of the stages' own caps: max-min holds."""
        stages = [(a, b) for a, b in stages if a + b > 0] or [(1.0, 1.0)]
        spare = min(spare, float(cores))  # idle time is a part of the coordinator's CPUs
        rate, slow = coordinator_rate(stages, c, cores, spare)
        caps = [float(coordinator_stage(a, b, c, cores, spare)[0]) for a, b in stages]
        assert min(caps) == pytest.approx(rate, rel=1e-9, abs=1e-9)
        # and it is a fixed point: every stage keeps up at R with what the coordinator leaves
        assert all(rate <= a + slow * b + 1e-6 for a, b in stages)
        at_fixed_point = any(rate >= a + slow * b - 1e-6 * max(1.0, a + b) for a, b in stages)
        assert at_fixed_point or rate == pytest.approx(1000.0 / c)  # else the coordinator itself limits
        assert rate <= 1000.0 / c * (1 + 1e-12) and 0 <= slow <= 1

    def test_vectorised_equals_scalar(self):
        rng = np.random.default_rng(1)
        a, b = rng.uniform(0, 300, 50), rng.uniform(0, 300, 50)
        rate, slow = coordinator_stage(a, b, 0.8, 2, 0.3)
        for i in range(50):
            r, s = coordinator_stage(float(a[i]), float(b[i]), 0.8, 2, 0.3)
            assert float(r) == pytest.approx(rate[i]) and float(s) == pytest.approx(slow[i])
        assert np.all(rate <= a + b + 1e-9) and np.all((slow > 0) & (slow <= 1))

    def test_nothing_taken_without_a_coordinator_or_within_the_idle_time(self):
        assert float(coordinator_stage(100.0, 50.0, 0.0, 1)[0]) == 150.0
        rate, slow = coordinator_stage(100.0, 50.0, 0.4, 1, spare=0.6)  # 150 fps * 0.4 ms = 0.06 core < 0.6
        assert float(rate) == 150.0 and float(slow) == 1.0


class TestCostModel:
    def test_stage_tables_hold_what_evaluate_gives(self):
        """The search's matrices and the cost model agree on every stage of every group."""
        times = _times(HOST, (2.0, 3.0, 1.0, 4.0))
        cost = cost_model_for(times, HOST, HopModel(0.05, 1e-7), overhead=ExecutorOverhead(0.2, 3.0))
        tables = StageTables(cost)
        one, two = CoreSetup("cpu", 1), CoreSetup("cpu", 2)
        for group in (((one, 1),), ((one, 2),), ((two, 1),)):
            g = tables.group(group)
            workers = tuple(s for s, k in group for _ in range(k))
            for a in range(4):
                for b in range(a + 1, 5):
                    rate, ms = cost.stage_rate(workers, [cost.worker_ms(w, a, b) for w in workers])
                    assert g.rate[a, b] == pytest.approx(rate, rel=1e-12)
                    assert g.tmax[a, b] == pytest.approx(max(ms), rel=1e-12)

    def test_equal_cores_replicas_lose_the_coordinators_share(self):
        times = _times(HOST)
        stages = (StagePlan(0, 3, (CoreSetup("cpu", 1), CoreSetup("cpu", 1))),)
        over = ExecutorOverhead(dispatch_ms=0.2, coordinator_ms=0.5)
        got = cost_model_for(times, HOST, overhead=over)
        plain = CostModel(times).evaluate(stages)
        found = got.evaluate(stages)
        r0 = 2000.0 / (plain.worker_ms[0][0] + 0.2)
        assert found.fps == pytest.approx(r0 / (1 + r0 * 0.5 / 1000 / 2))
        slow = 1 - found.fps * 0.5 / 1000 / 2
        assert found.worker_ms[0][0] == pytest.approx((plain.worker_ms[0][0] + 0.2) / slow)
        assert found.latency_ms > plain.latency_ms

    def test_a_throttled_littles_idle_time_pays_first(self):
        times = _times(BOARD)
        stages = (StagePlan(0, 2, (CoreSetup("big", 1),)), StagePlan(2, 3, (CoreSetup("little", 1),)))
        assert coordinator_placement(BOARD) == (("little",), 1, pytest.approx(0.6))
        got = cost_model_for(times, BOARD, FREE, overhead=ExecutorOverhead(0.0, 0.4)).evaluate(stages)
        assert got.fps == pytest.approx(CostModel(times, FREE).evaluate(stages).fps)

    def test_a_dear_coordinator_moves_work_off_its_cpus(self):
        """With the coordinator on the LITTLE CPU eating most of it, the best plan shifts work to big."""
        board = Platform((Cluster("big", "host", (0,)), Cluster("little", "host", (1,), speed=0.5)), source="t")
        times = LayerTimes(6, {CoreSetup("big", 1): (1.0,) * 6, CoreSetup("little", 1): (2.0,) * 6},
                           (0,) * 7, (0,) * 6)
        light = best_candidate(times, board, hop=FREE, overhead=None)
        heavy = best_candidate(times, board, hop=FREE, overhead=ExecutorOverhead(0.0, 12.0))
        def little_layers(c):
            return sum(s.end - s.start for s in c.stages if any(w.cluster == "little" for w in s.workers))
        assert heavy.fps < light.fps
        assert little_layers(heavy) < little_layers(light) or len(heavy.stages) == 1

    def test_plans_carry_the_overhead_by_default(self):
        times = _times(HOST)
        with_it = plan_pipeline(times, HOST, model="m.tflite", model_sha256="ab")
        without = plan_pipeline(times, HOST, model="m.tflite", model_sha256="ab", overhead=None)
        assert with_it.predicted_fps < without.predicted_fps
        expected = best_candidate(times, HOST, overhead=DEFAULT_OVERHEAD)
        assert with_it.predicted_fps == pytest.approx(expected.fps)
        assert math.isfinite(with_it.predicted_latency_ms)


class TestOverheadFollowsTheModel:
    """The executor's cost is taken at the model's frame time: a 0.05 ms model is not charged a zoo model's."""

    def test_zoo_sized_models_keep_the_zoo_figures_and_tiny_ones_pay_less(self):
        zoo = cost_model_for(_times(HOST, (4.0, 6.0, 3.0)), HOST).overhead  # 13 ms a frame, like the zoo
        tiny = cost_model_for(_times(HOST, (0.02, 0.03, 0.01)), HOST).overhead
        assert (zoo.dispatch_ms, zoo.coordinator_ms) == (0.25, 0.45)
        assert tiny.dispatch_ms == pytest.approx(0.03, abs=0.01)
        assert tiny.coordinator_ms == pytest.approx(0.05, abs=0.01)

    def test_a_tiny_model_is_no_longer_capped_by_the_zoos_coordinator(self):
        """One flat 0.45 ms held every plan under 1000 / 0.45 = 2222 fps; the executor passed 6000-25000."""
        tiny = _times(HOST, (0.02, 0.03, 0.01))
        found = best_candidate(tiny, HOST)
        flat = best_candidate(tiny, HOST, overhead=ExecutorOverhead(0.25, 0.45))
        assert flat.fps <= 1000.0 / 0.45 + 1e-6
        assert found.fps > 3 * flat.fps

    def test_interpolates_between_the_measured_models_and_holds_outside(self):
        over = ExecutorOverhead(9.0, 9.0, by_frame_ms=((1.0, 0.1, 0.2), (3.0, 0.3, 0.6)))
        assert over.for_frame(2.0).dispatch_ms == pytest.approx(0.2)
        assert over.for_frame(2.0).coordinator_ms == pytest.approx(0.4)
        assert over.for_frame(0.0).coordinator_ms == pytest.approx(0.2)
        assert over.for_frame(50.0).coordinator_ms == pytest.approx(0.6)
        assert ExecutorOverhead(0.1, 0.2).for_frame(5.0) == ExecutorOverhead(0.1, 0.2)  # no table: flat
        assert over.for_frame(math.inf) is over  # no finite frame time (no one-core row): the flat figures
        assert ExecutorOverhead.from_json(over.to_json()) == over

    def test_bad_tables_are_refused(self):
        from pipeit.errors import PlanError

        with pytest.raises(PlanError, match="increase"):
            ExecutorOverhead(0.1, 0.1, by_frame_ms=((2.0, 0.1, 0.1), (1.0, 0.1, 0.1)))
        with pytest.raises(PlanError, match="finite"):
            ExecutorOverhead(0.1, 0.1, by_frame_ms=((1.0, -0.1, 0.1),))
        with pytest.raises(PlanError, match="by_frame_ms"):
            ExecutorOverhead.from_json({"dispatch_ms": 0.1, "coordinator_ms": 0.1, "by_frame_ms": [[1.0]]})

    def test_the_frame_time_is_the_fastest_one_core_setup(self):
        from pipeit.transfer import frame_ms_of

        rows = {CoreSetup("big", 1): (2.0, 3.0), CoreSetup("big", 2): (0.5, 0.5),
                CoreSetup("little", 1): (1.0, 1.5), CoreSetup("gpu", 1): (0.1, math.inf)}
        assert frame_ms_of(rows) == pytest.approx(2.5)  # not the two-core row, not the row with a gap
        assert frame_ms_of({CoreSetup("big", 2): (1.0,)}) == math.inf

    def test_a_gpu_faster_than_every_core_does_not_set_the_frame_time(self):
        """The overhead is the CPU executor's, scaled by a CPU core's frame time: a GPU cluster's one
        "core" (its whole device) timed the frame at a fraction of that and took the tiny model's figures."""
        gpu = Platform((Cluster("cpu", "host", (0,)), Cluster("gpu", "gpu", (), kind="gpu", device="0:0")),
                       source="test")
        times = LayerTimes(2, {CoreSetup("cpu", 1): (3.0, 4.0), CoreSetup("gpu", 1): (0.1, 0.1)}, (1000,) * 3, (0, 0))
        cost = cost_model_for(times, gpu)
        assert cost.overhead == DEFAULT_OVERHEAD.for_frame(7.0)
        assert cost.overhead.coordinator_ms == pytest.approx(0.45)
