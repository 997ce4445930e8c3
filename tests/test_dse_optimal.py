"""The exact search equals a brute force over every stage partition and worker assignment."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cores.model import Cluster, CoreSetup, Platform
from pipeit.dse import CostModel, Limits, cost_model_for, optimal_plan, pareto_front
from pipeit.dse.optimal import cluster_budgets, interchangeable_clusters
from pipeit.errors import PlanError
from pipeit.layer_times import Calibration, LayerTimes
from pipeit.transfer import ExecutorOverhead, HopModel
from tests.dse_brute import best_of, brute_force, pareto


@st.composite
def problems(draw, mirrored: bool = False):
    """A random layer table and platform; ``mirrored``: clusters that no plan can tell apart
    (same size, speed and times, as RK3588's two A76 pairs) next to one other cluster."""
    n = draw(st.integers(1, 7))
    if mirrored:
        twin = draw(st.integers(1, 2))
        count = draw(st.integers(2, 3)) if twin == 1 else 2
        sizes = [twin] * count + draw(st.lists(st.integers(1, 2), max_size=1 if count == 2 else 0))
    else:
        sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
        if sum(sizes) > 5:  # keep the brute force fast: 3+3 has 1154 orderings of groups
            sizes = [sizes[0], 2]
    clusters = []
    cpu = 0
    twin_speed = draw(st.sampled_from([1.0, 1.0, 0.4, 0.05]))  # < 1: emulated, throttle jitter
    for i, size in enumerate(sizes):
        twin = mirrored and size == sizes[0] and i < sizes.count(sizes[0])
        speed = twin_speed if twin else draw(st.sampled_from([1.0, 1.0, 0.4, 0.05]))
        clusters.append(Cluster(f"c{i}", "cortex", tuple(range(cpu, cpu + size)), speed=speed))
        cpu += size
    platform = Platform(tuple(clusters), source="hypothesis")
    integer = draw(st.booleans())  # small integers provoke exact ties
    value = st.integers(1, 6).map(float) if integer else st.floats(0.05, 40.0)
    times = {}
    for setup in platform.setups():
        if mirrored and setup.cluster != "c0" and clusters[int(setup.cluster[1:])].speed == twin_speed \
                and CoreSetup("c0", setup.cores) in times and clusters[int(setup.cluster[1:])].size == sizes[0]:
            times[setup] = times[CoreSetup("c0", setup.cores)]  # a twin of c0: the same times
            continue
        if draw(st.integers(0, 9)) == 0 and setup.cores > 1:
            continue  # a setup the table lacks
        row = [draw(value) for _ in range(n)]
        if draw(st.integers(0, 14)) == 0:
            row[draw(st.integers(0, n - 1))] = math.inf  # a layer this setup cannot run
        times[setup] = tuple(row)
    if not times:
        times[platform.setups()[0]] = tuple(draw(value) for _ in range(n))
    cuts = tuple(draw(st.integers(0, 2_000_000)) for _ in range(n + 1))
    weights = tuple(draw(st.integers(0, 3_000_000)) for _ in range(n))
    calibration = Calibration(draw(st.sampled_from([1.0, 1.07])), draw(st.sampled_from([0.0, 0.3])))
    table = LayerTimes(n, times, cuts, weights, calibration)
    hop = HopModel(draw(st.sampled_from([0.0, 0.035, 0.4])), draw(st.sampled_from([0.0, 9.45e-8, 1e-6])))
    latency = draw(st.one_of(st.none(), st.floats(0.5, 120.0)))
    memory = draw(st.one_of(st.none(), st.floats(0.5, 20.0)))
    # the executor's own cost: none, the default, or a coordinator dear enough to slow its CPUs a lot
    overhead = draw(st.sampled_from([None, ExecutorOverhead(0.25, 0.42), ExecutorOverhead(0.1, 5.0),
                                     ExecutorOverhead(0.0, 30.0)]))
    return table, platform, hop, latency, memory, overhead


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-7, abs_tol=1e-9)


class TestOptimalEqualsBruteForce:
    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(problems())
    def test_same_throughput_and_latency(self, problem):
        _check_against_brute_force(problem)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(problems())
    def test_gated_admission_same_throughput_and_latency(self, problem):
        """With gated admission (no queue term) the search still equals the brute force."""
        _check_against_brute_force(problem, gated=True)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(problems(mirrored=True))
    def test_interchangeable_clusters_are_searched_once_without_loss(self, problem):
        table, platform, hop, _, _, overhead = problem
        cost = cost_model_for(table, platform, hop, overhead=overhead)
        budgets = cluster_budgets(cost, platform)
        # the strategy makes c0's twins share its times wherever c0 has them; the coordinator's
        # CPU share sets c0 apart from c1 when it runs on one of them only (the first slowest)
        same_side = cost.on_coordinator(CoreSetup("c0", 1)) == cost.on_coordinator(CoreSetup("c1", 1))
        if same_side and all(CoreSetup("c0", k) in table.times for k in range(1, platform.clusters[0].size + 1)):
            assert interchangeable_clusters(cost, budgets), budgets
        _check_against_brute_force(problem)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(problems())
    def test_pareto_front_matches(self, problem):
        table, platform, hop, _, memory, overhead = problem
        plans = brute_force(table, platform, hop, None, memory, overhead=overhead)
        expected = pareto(plans)
        front = pareto_front(table, platform, memory_mb=memory, hop=hop, overhead=overhead)
        got = [(c.fps, c.latency_ms) for c in front]
        assert len(got) == len(expected), (got, expected)
        for (f1, l1), (f2, l2) in zip(got, expected):
            assert _close(f1, f2) and _close(l1, l2), (got, expected)


def _check_against_brute_force(problem, gated: bool = False) -> None:
    """The exact search finds the brute force's best throughput and, among equals, its latency."""
    table, platform, hop, latency, memory, overhead = problem
    expected = best_of(brute_force(table, platform, hop, latency, memory, overhead=overhead, gated=gated))
    cost = cost_model_for(table, platform, hop, overhead=overhead, admission="gated" if gated else "window")
    if expected is None:
        with pytest.raises(PlanError):
            optimal_plan(cost, platform, Limits(latency, memory))
        return
    found = optimal_plan(cost, platform, Limits(latency, memory))
    assert _close(found.fps, expected[0]), (found.describe(), expected)
    assert _close(found.latency_ms, expected[1]), (found.describe(), expected)
    if latency is not None:
        assert found.latency_ms <= latency * (1 + 1e-9)
    if memory is not None:
        assert found.memory_bytes <= memory * 1024 * 1024


class TestSearchDetails:
    def test_impossible_latency_names_the_best_achievable(self):
        platform = Platform((Cluster("big", "a", (0,)), Cluster("little", "b", (1,))))
        table = LayerTimes(2, {CoreSetup("big", 1): (4.0, 6.0), CoreSetup("little", 1): (10.0, 15.0)},
                           (0, 0, 0), (0, 0))
        cost = CostModel(table, HopModel(0.0, 0.0))
        with pytest.raises(PlanError, match=r"lowest latency achievable is 10\.000 ms"):
            optimal_plan(cost, platform, Limits(latency_ms=9.0))

    def test_memory_below_weights_is_refused(self):
        platform = Platform((Cluster("big", "a", (0, 1)),))
        table = LayerTimes(1, {CoreSetup("big", 1): (1.0,), CoreSetup("big", 2): (0.6,)}, (0, 0), (3 * 1024 * 1024,))
        with pytest.raises(PlanError, match="weights alone need 3.00 MiB"):
            optimal_plan(CostModel(table), platform, Limits(memory_mb=2.0))

    def test_memory_limit_trades_replicas_for_a_pipeline(self):
        # two equal cores: replicas give 200 fps but hold the weights twice; a pipeline holds them once
        platform = Platform((Cluster("big", "a", (0, 1)),))
        one = CoreSetup("big", 1)
        table = LayerTimes(2, {one: (6.0, 4.0)}, (0, 0, 0), (1024 * 1024, 1024 * 1024))
        cost = CostModel(table, HopModel(0.0, 0.0))
        free = optimal_plan(cost, platform, Limits())
        assert len(free.stages) == 1 and free.fps == pytest.approx(200.0)
        assert free.memory_bytes == 4 * 1024 * 1024
        tight = optimal_plan(cost, platform, Limits(memory_mb=2.5))
        assert [(s.start, s.end) for s in tight.stages] == [(0, 1), (1, 2)]
        assert tight.fps == pytest.approx(1000.0 / 6.0)
        assert tight.memory_bytes == 2 * 1024 * 1024


class TestBigPlatforms:
    """A server's core count must not turn planning into minutes and gigabytes (partitions of 64 cores,
    every order of 8 clusters): big clusters are planned in units, too many clusters fall back."""

    @staticmethod
    def _problem(sizes, n=12):
        clusters, cpu = [], 0
        for i, size in enumerate(sizes):
            clusters.append(Cluster(f"c{i}", "cortex", tuple(range(cpu, cpu + size))))
            cpu += size
        platform = Platform(tuple(clusters), source="big")
        times = {CoreSetup(c.name, k): tuple((1.0 + j % 3) / k ** 0.8 for j in range(n))
                 for c in clusters for k in range(1, c.size + 1)}
        table = LayerTimes(num_layers=n, times=times, cut_bytes=(1000,) * (n + 1), weight_bytes=(0,) * n)
        return platform, cost_model_for(table, platform)

    def test_a_64_core_cluster_is_planned_in_units_of_4(self):
        from pipeit.dse.optimal import unit_cores

        platform, cost = self._problem([64])
        ((name, top, ks),) = cluster_budgets(cost, platform)
        assert unit_cores(64) == 4 and top == 64 and ks == tuple(range(4, 65, 4))
        found = optimal_plan(cost, platform)  # seconds at most, not the partitions of 64
        assert found.fps > 0
        assert sum(w.cores for s in found.stages for w in s.workers) <= 64

    def test_clusters_up_to_16_cores_keep_every_worker_size(self):
        platform, cost = self._problem([16, 4])
        assert [ks for _, _, ks in cluster_budgets(cost, platform)] == [tuple(range(1, 17)), (1, 2, 3, 4)]

    def test_too_many_clusters_is_refused_by_the_search_and_pipeit_falls_back(self):
        from pipeit.dse import best_candidate
        from pipeit.dse.optimal import SearchTooLarge
        from pipeit.dse.pipeit import SearchFallbackWarning

        platform, cost = self._problem([4] * 8)
        with pytest.raises(SearchTooLarge, match="8 clusters"):
            optimal_plan(cost, platform)
        with pytest.warns(SearchFallbackWarning, match="best of the replicas"):
            found = best_candidate(cost.times, platform, "pipeit")
        # the fallback is the best of the simple strategies: here a worker per core
        assert found.fps == pytest.approx(best_candidate(cost.times, platform, "replicas").fps)
        assert pareto_front(cost.times, platform) == []

    def test_pipe_it_on_many_clusters_tries_speed_orders_only(self):
        from pipeit.dse.pipe_it import MAX_ORDERED_CLUSTERS, configurations

        platform, cost = self._problem([4] * 8)
        configs = configurations(cost, platform)
        assert len(platform.cpu_clusters) > MAX_ORDERED_CLUSTERS
        assert 0 < len(configs) <= 2 * 8 * 3  # r fastest clusters x split d in (1, 2, 4) x two orders
        assert all(len({s.cores for s in c}) == 1 for c in configs)  # one split for all clusters used
