"""The executor's own cost: the wire records, the CPU accounting, and the cost model's overhead terms."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cores.model import Cluster, CoreSetup, Platform
from pipeit.dse.cost import CostModel, StagePlan, coordinator_placement
from pipeit.executor.wire import DONE, ERROR, JOB, NOTE, REPLY, JobParser, ReplyParser, reply_bytes
from pipeit.layer_times import LayerTimes
from pipeit.transfer import ExecutorOverhead, coordinator_rate

CPUS = tuple(sorted(os.sched_getaffinity(0)))


class TestWire:
    def test_replies_split_anywhere_come_out_whole_and_in_order(self):
        stream = (reply_bytes(3, DONE, 1.5) + reply_bytes(4, NOTE, payload=b"\x80\x04)." * 3)
                  + reply_bytes(5, ERROR, payload="boom ü".encode()) + reply_bytes(6, DONE, 2.0))
        for cut in range(1, len(stream)):
            parser = ReplyParser()
            got = parser.feed(stream[:cut]) + parser.feed(stream[cut:])
            assert [(f, c) for f, c, _, _ in got] == [(3, DONE), (4, NOTE), (5, ERROR), (6, DONE)]
            assert got[0][2] == 1.5 and got[2][3].decode() == "boom ü" and got[1][3] == b"\x80\x04)." * 3

    def test_jobs_split_anywhere_come_out_whole(self):
        stream = JOB.pack(1, -1, 2, 3) + JOB.pack(2, 7, 0, 1) + JOB.pack(-1, -1, 0, 0)
        for cut in range(len(stream) + 1):
            parser = JobParser()
            assert parser.feed(stream[:cut]) + parser.feed(stream[cut:]) == [(1, -1, 2, 3), (2, 7, 0, 1),
                                                                              (-1, -1, 0, 0)]
        assert REPLY.size == 24 and JOB.size == 20


class TestCoordinatorRate:
    def test_closed_form_is_the_fixed_point(self):
        stages = [(40.0, 100.0), (150.0, 0.0), (0.0, 130.0)]
        rate, slow = coordinator_rate(stages, 0.5, 2)
        assert rate == pytest.approx(min(a + slow * b for a, b in stages))
        assert slow == pytest.approx(1 - rate * 0.5 / 1000 / 2)
        assert rate < min(a + b for a, b in stages)

    def test_idle_time_on_its_cpus_absorbs_it(self):
        assert coordinator_rate([(100.0, 50.0)], 0.4, 1, spare=0.6) == (150.0, 1.0)
        assert coordinator_rate([(100.0, 50.0)], 0.0, 1) == (150.0, 1.0)


def _times(platform: Platform, ms=(2.0, 3.0, 1.0)) -> LayerTimes:
    setups = {CoreSetup(c.name, 1): tuple(ms) for c in platform.clusters}
    return LayerTimes(len(ms), setups, (1000,) * (len(ms) + 1), (0,) * len(ms))


class TestCostModelOverhead:
    def test_replicas_on_equal_cores_lose_the_coordinators_share_and_pay_the_dispatch(self):
        host = Platform((Cluster("cpu", "host", (0, 1)),), source="test")
        times = _times(host)
        stages = (StagePlan(0, 3, (CoreSetup("cpu", 1), CoreSetup("cpu", 1))),)
        plain = CostModel(times).evaluate(stages)
        over = ExecutorOverhead(dispatch_ms=0.2, coordinator_ms=0.5)
        placement = coordinator_placement(host)
        assert placement == (("cpu",), 2, 0.0)
        got = CostModel(times, overhead=over, coordinator=placement).evaluate(stages)
        t = plain.worker_ms[0][0] + 0.2
        r0 = 2000.0 / t
        assert got.fps == pytest.approx(r0 / (1 + r0 * 0.5 / 1000 / 2))
        assert got.fps < plain.fps and got.latency_ms > plain.latency_ms

    def test_on_an_emulated_board_the_little_cores_idle_time_pays_first(self):
        board = Platform((Cluster("big", "host", (0,)), Cluster("little", "host", (1,), speed=0.4)), source="emulate:t")
        assert coordinator_placement(board) == (("little",), 1, pytest.approx(0.6))
        times = _times(board)
        stages = (StagePlan(0, 2, (CoreSetup("big", 1),)), StagePlan(2, 3, (CoreSetup("little", 1),)))
        over = ExecutorOverhead(0.0, 0.4)
        got = CostModel(times, overhead=over, coordinator=coordinator_placement(board)).evaluate(stages)
        assert got.fps == pytest.approx(CostModel(times).evaluate(stages).fps)


def test_measure_load_accounts_the_coordinator_and_every_worker(tmp_path):
    """Real processes: a one-stage plan with two workers, a small model, CPU time per frame."""
    if len(CPUS) < 2:
        pytest.skip("needs two CPUs")
    from tests.daemon_helpers import build_model

    from pipeit.executor import Pipeline
    from pipeit.executor.load import measure_load
    from pipeit.graph import load_graph
    from pipeit.plan import Plan, StageSpec, WorkerSpec, file_sha256

    model = build_model(tmp_path / "m.tflite", layers=4, size=32, channels=16)
    n = len(load_graph(str(model)).layers)
    platform = Platform((Cluster("cpu", "host", (CPUS[0], CPUS[-1])),), source="test")
    spec = StageSpec((0, n), (WorkerSpec("cpu", (CPUS[0],), 1, 1.0), WorkerSpec("cpu", (CPUS[-1],), 1, 1.0)), 1.0)
    plan = Plan(model.name, file_sha256(model), platform, "test", (spec,), 1.0, 1.0)
    frame = np.random.default_rng(0).standard_normal((1, 32, 32, 16)).astype(np.float32)
    with Pipeline(plan, model) as pipe:
        load = measure_load(pipe, [frame] * 200, window=4)
        stats = pipe.stats()
    assert load.frames == 200 and load.wall_s > 0
    assert 0 < load.coordinator_ms_per_frame < 50
    assert {k for k, _ in load.worker_busy} == {(0, 0), (0, 1)}
    assert all(0 <= v <= 1.5 for _, v in load.worker_busy)
    assert sum(stats.stages[0].worker_frames) >= 200
    assert load.to_json()["worker_busy"].keys() == {"0.0", "0.1"}
