"""Strategies on recorded-style tables: the big.LITTLE story, their ordering, errors, plan files."""

from __future__ import annotations

import json
import math

import pytest

from cores.model import Cluster, CoreSetup, Platform
from pipeit.dse import STRATEGIES, CostModel, best_candidate, plan_pipeline
from pipeit.dse.all_cores import all_cores_times
from pipeit.dse.pipe_it import balance, configurations
from pipeit.dse.synthetic import synthetic_platform, synthetic_times
from pipeit.errors import PlanError
from pipeit.layer_times import LayerTimes
from pipeit.plan import Plan

BIG_MS = [3.0, 5.0, 2.0, 6.0, 4.0, 1.0, 5.0, 2.0, 1.5, 0.5]  # 30 ms on the big core


def emulated_big_little() -> tuple:
    """One big core at 1.0 and one LITTLE core at 0.4, as on the project's emulated platform."""
    platform = Platform((Cluster("big", "A72", (0,), speed=1.0), Cluster("little", "A53", (1,), speed=0.4)),
                        source="emulate:big=0@1.0,little=1@0.4")
    n = len(BIG_MS)
    times = {CoreSetup("big", 1): tuple(BIG_MS), CoreSetup("little", 1): tuple(t / 0.4 for t in BIG_MS)}
    cuts = tuple([150_528 * 4] + [200_000] * (n - 1) + [4_004])
    table = LayerTimes(n, times, cuts, tuple([100_000] * n))
    return table, platform


class TestBigLittleStory:
    def test_one_interpreter_over_both_is_no_faster_than_big_alone(self):
        table, platform = emulated_big_little()
        both = best_candidate(table, platform, "all-cores")
        big = best_candidate(table, platform, "fastest-cluster")
        assert both.fps <= big.fps

    def test_unconstrained_takes_the_most_frames(self):
        table, platform = emulated_big_little()
        best = best_candidate(table, platform, "pipeit")
        replicas = best_candidate(table, platform, "replicas")
        for name in STRATEGIES:
            assert best.fps >= best_candidate(table, platform, name).fps * (1 - 1e-9)
        assert best.fps >= replicas.fps * (1 - 1e-9)
        # replicas' price: a frame on the LITTLE core takes 2.5x the big core's time (a worker wholly
        # on the slowed cluster pads its jobs: no quota stall on top)
        assert replicas.latency_ms == pytest.approx(max(max(w) for w in replicas.worker_ms))
        assert replicas.latency_ms > 2.4 * sum(BIG_MS)

    def test_latency_limit_twice_big_gives_a_pipeline(self):
        table, platform = emulated_big_little()
        big = best_candidate(table, platform, "fastest-cluster")
        replicas = best_candidate(table, platform, "replicas")
        limited = best_candidate(table, platform, "pipeit", latency_ms=2 * big.latency_ms)
        assert len(limited.stages) == 2
        assert [len(s.workers) for s in limited.stages] == [1, 1]
        assert limited.latency_ms <= 2 * big.latency_ms
        assert limited.fps > big.fps  # beats the big core alone ...
        assert limited.fps <= replicas.fps  # ... a little under replicas ...
        assert limited.latency_ms < 0.65 * replicas.latency_ms  # ... at about half their latency

    def test_impossible_limit_names_best_latency(self):
        table, platform = emulated_big_little()
        big = best_candidate(table, platform, "fastest-cluster")
        with pytest.raises(PlanError, match="lowest latency achievable is") as err:
            best_candidate(table, platform, "pipeit", latency_ms=big.latency_ms / 2)
        achievable = float(str(err.value).rsplit(" is ", 1)[1].split()[0])
        assert achievable == pytest.approx(big.latency_ms, rel=1e-3)


class TestStrategyOrdering:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    @pytest.mark.parametrize("sizes", [
        {"big": (4, 1.0), "little": (4, 0.4)},
        {"a76": (4, 1.0), "a55": (4, 0.35)},
    ])
    def test_pipeit_beats_pipe_it_beats_all_cores(self, sizes, seed):
        platform = synthetic_platform(sizes)
        table = synthetic_times(platform, 40, seed=seed, affinity_spread=0.1)
        fps = {name: best_candidate(table, platform, name).fps for name in STRATEGIES}
        assert fps["pipeit"] >= fps["pipe-it"] * (1 - 1e-9)
        assert fps["pipe-it"] >= fps["all-cores"]
        assert fps["pipeit"] >= max(fps.values()) * (1 - 1e-9)

    def test_latency_limit_is_respected_by_every_limited_answer(self):
        platform = synthetic_platform({"big": (2, 1.0), "little": (2, 0.4)})
        table = synthetic_times(platform, 30, seed=3)
        free = best_candidate(table, platform, "pipeit")
        limit = free.latency_ms * 0.6
        limited = best_candidate(table, platform, "pipeit", latency_ms=limit)
        assert limited.latency_ms <= limit
        assert limited.fps <= free.fps


class TestFixedStrategies:
    def test_all_cores_model(self):
        platform = synthetic_platform({"big": (2, 1.0), "little": (2, 0.5)})
        table = LayerTimes(1, {CoreSetup("big", 2): (10.0,), CoreSetup("little", 2): (20.0,),
                               CoreSetup("big", 1): (18.0,), CoreSetup("little", 1): (36.0,)},
                           (0, 0), (0,))
        # each of 4 threads gets 1/4 of the work; LITTLE's pace with 2 threads: 20 ms * 2/4, +10 %
        assert all_cores_times(CostModel(table), platform) == pytest.approx((11.0,))

    def test_all_cores_plan_spans_every_cpu(self):
        platform = synthetic_platform({"big": (2, 1.0), "little": (2, 0.5)})
        table = synthetic_times(platform, 6, seed=1)
        plan = plan_pipeline(table, platform, "all-cores", model="m.tflite", model_sha256="ab")
        (stage,) = plan.stages
        (worker,) = stage.workers
        assert worker.cluster == "big+little" and worker.cpus == (0, 1, 2, 3) and worker.threads == 4
        assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan

    def test_fastest_cluster_and_replicas(self):
        platform = synthetic_platform({"big": (2, 1.0), "little": (2, 0.5)})
        table = synthetic_times(platform, 6, seed=1)
        fastest = best_candidate(table, platform, "fastest-cluster")
        assert fastest.stages[0].workers == (CoreSetup("big", 2),)
        replicas = best_candidate(table, platform, "replicas")
        # Amdahl scaling is sublinear, so one worker per core wins
        assert sorted(map(str, replicas.stages[0].workers)) == ["big:1", "big:1", "little:1", "little:1"]

    def test_fixed_strategy_over_the_limit_says_by_how_much(self):
        table, platform = emulated_big_little()
        with pytest.raises(PlanError, match=r"strategy 'all-cores' predicts .* ms per frame, over the 1 ms"):
            best_candidate(table, platform, "all-cores", latency_ms=1.0)

    def test_unknown_strategy_lists_valid_ones(self):
        table, platform = emulated_big_little()
        with pytest.raises(PlanError, match="pipeit, pipe-it, all-cores, fastest-cluster, replicas"):
            best_candidate(table, platform, "fastest")

    @pytest.mark.parametrize("bad", [0, -3.0, math.nan, math.inf])
    def test_bad_limits_are_refused(self, bad):
        table, platform = emulated_big_little()
        with pytest.raises(PlanError, match="must be a positive number"):
            best_candidate(table, platform, "pipeit", latency_ms=bad)

    def test_table_for_another_platform_is_refused(self):
        table, _ = emulated_big_little()
        other = Platform((Cluster("big", "A72", (0,)),))
        with pytest.raises(PlanError, match="do not fit platform"):
            best_candidate(table, other, "pipeit")


class TestPipeIt:
    def test_configurations_split_clusters_evenly(self):
        platform = synthetic_platform({"big": (4, 1.0), "little": (2, 0.4)})
        table = synthetic_times(platform, 20, seed=0)
        configs = {tuple(map(str, c)) for c in configurations(CostModel(table), platform)}
        assert ("big:4", "little:2") in configs and ("little:2", "big:4") in configs
        assert ("big:2", "big:2", "little:1", "little:1") in configs
        assert ("big:4",) in configs
        assert not any("big:3" in c for c in configs)

    def test_balance_equalises_proportional_stages(self):
        n = 30
        table = LayerTimes(n, {CoreSetup("big", 1): (1.0,) * n, CoreSetup("little", 1): (2.0,) * n},
                           (0,) * (n + 1), (0,) * n)
        cuts = balance(CostModel(table), (CoreSetup("big", 1), CoreSetup("little", 1)))
        assert cuts == (0, 20, 30)  # 20 ms on big, 20 ms on LITTLE


def with_inf(table: LayerTimes, blocked: dict) -> LayerTimes:
    """``table`` with ``inf`` (cannot run) at ``blocked[setup]``'s layers."""
    times = {setup: tuple(math.inf if i in blocked.get(setup, ()) else v for i, v in enumerate(row))
             for setup, row in table.times.items()}
    return LayerTimes(table.num_layers, times, table.cut_bytes, table.weight_bytes)


class TestUnrunnableLayers:
    BIG, LITTLE = CoreSetup("big", 1), CoreSetup("little", 1)

    def test_balance_keeps_a_layer_off_the_setup_that_cannot_run_it(self):
        table, _ = emulated_big_little()
        cuts = balance(CostModel(with_inf(table, {self.BIG: (7,)})), (self.BIG, self.LITTLE))
        assert cuts[0] == 0 and cuts[-1] == 10 and cuts[1] <= 7  # big's stage ends before layer 7

    def test_balance_survives_setups_that_cannot_run_the_whole_model(self):
        table, _ = emulated_big_little()
        cost = CostModel(with_inf(table, {self.BIG: (7,), self.LITTLE: (2,)}))
        cuts = balance(cost, (self.BIG, self.LITTLE))
        assert list(cuts) == sorted(cuts) and cuts[0] == 0 and cuts[-1] == 10

    @pytest.mark.parametrize("strategy", ["pipeit", "pipe-it"])
    def test_pipelines_skip_configurations_a_setup_cannot_run(self, strategy):
        table, platform = emulated_big_little()
        found = best_candidate(with_inf(table, {self.BIG: (7,)}), platform, strategy)
        assert found.fps > 0 and math.isfinite(found.latency_ms)
        for stage in found.stages:
            assert not (self.BIG in stage.workers and stage.start <= 7 < stage.end)

    @pytest.mark.parametrize("strategy", ["pipe-it", "all-cores", "fastest-cluster", "replicas"])
    def test_a_layer_no_setup_can_run_is_a_plan_error_naming_it(self, strategy):
        table, platform = emulated_big_little()
        blocked = with_inf(table, {self.BIG: (3,), self.LITTLE: (3,)})
        with pytest.raises(PlanError, match="no core setup can run layer 3"):
            best_candidate(blocked, platform, strategy)

    def test_pipeit_refuses_a_layer_no_setup_can_run(self):
        table, platform = emulated_big_little()
        with pytest.raises(PlanError, match="no setup"):
            best_candidate(with_inf(table, {self.BIG: (3,), self.LITTLE: (3,)}), platform, "pipeit")

    def test_a_fixed_strategy_whose_only_setup_cannot_run_a_layer_names_it(self):
        table, platform = emulated_big_little()
        with pytest.raises(PlanError, match=r"strategy 'fastest-cluster': .*big:1 cannot run layer 5"):
            best_candidate(with_inf(table, {self.BIG: (5,)}), platform, "fastest-cluster")


class TestPlanFile:
    def test_pipeit_plan_is_valid_and_round_trips(self, tmp_path):
        platform = synthetic_platform({"big": (4, 1.0), "little": (4, 0.4)})
        table = synthetic_times(platform, 25, seed=4)
        plan = plan_pipeline(table, platform, "pipeit", latency_ms=80.0, model="net.tflite", model_sha256="cafe")
        path = tmp_path / "plan.json"
        plan.save(path)
        again = Plan.from_json(json.loads(path.read_text()))
        assert again == plan
        used = [cpu for s in plan.stages for w in s.workers for cpu in w.cpus]
        assert len(used) == len(set(used))
        assert plan.latency_limit_ms == 80.0 and plan.predicted_latency_ms <= 80.0
        assert plan.stages[-1].layers[1] == 25
        for stage in plan.stages:
            for w in stage.workers:
                assert len(w.cpus) == w.threads
                assert set(w.cpus) <= set(platform.cluster(w.cluster).cpus)
