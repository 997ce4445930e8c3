"""Where the executor's efficiency goes: the bare baseline, the dispatch rule, the starved share, the fast input check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cores.model import Cluster, Platform
from pipeit.errors import ExecutorError, InputError
from pipeit.executor.pipeline import WORKER_DEPTH, expected_finish_ms

ROOT = Path(__file__).resolve().parents[1]
CPUS = tuple(sorted(os.sched_getaffinity(0)))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from tests.daemon_helpers import build_model

    return build_model(tmp_path_factory.mktemp("eff") / "m.tflite", layers=3, size=32, channels=16)


def _replicas_plan(model: Path, cpus):
    from pipeit.graph import load_graph
    from pipeit.plan import Plan, StageSpec, WorkerSpec, file_sha256

    n = len(load_graph(str(model)).layers)
    platform = Platform((Cluster("cpu", "host", tuple(cpus)),), source="test")
    spec = StageSpec((0, n), tuple(WorkerSpec("cpu", (c,), 1, 1.0) for c in cpus), 1.0)
    return Plan(model.name, file_sha256(model), platform, "test", (spec,), 1.0, 1.0)


class TestExpectedFinish:
    def test_a_free_worker_finishes_one_frame_from_now(self):
        assert expected_finish_ms(100.0, 0, 0.0, 7.0) == 107.0

    def test_the_worker_half_way_through_its_frame_gets_the_queued_one(self):
        # two equal workers, each serving one frame: A began 6 ms ago, B 1 ms ago (7 ms frames)
        a = expected_finish_ms(100.0, 1, 94.0, 7.0)
        b = expected_finish_ms(100.0, 1, 99.0, 7.0)
        assert a == 108.0 and b == 113.0 and a < b

    def test_a_worker_running_late_counts_as_finishing_now(self):
        assert expected_finish_ms(100.0, 1, 80.0, 7.0) == 107.0

    def test_a_fast_worker_may_take_a_second_frame_before_a_slow_one_its_first(self):
        fast = expected_finish_ms(0.0, 1, 0.0, 2.0)
        slow = expected_finish_ms(0.0, 0, 0.0, 5.0)
        assert fast < slow and WORKER_DEPTH >= 2


class TestBare:
    def test_one_process_per_cpu_runs_the_whole_model_at_once(self, small):
        from pipeit.executor.bare import run_bare

        run = run_bare(small, CPUS[:2], seconds=0.3, warmup=2)
        assert run.cpus == CPUS[:2]
        assert all(n > 0 for n in run.frames) and all(w > 0 for w in run.wall_s)
        assert run.fps == pytest.approx(sum(n / w for n, w in zip(run.frames, run.wall_s)))
        assert all(v > 0 for v in run.cpu_ms_per_frame)
        assert set(run.to_json()) == {"cpus", "fps", "frames", "wall_s", "cpu_ms_per_frame"}

    def test_bad_arguments_are_refused(self, small):
        from pipeit.executor.bare import run_bare

        with pytest.raises(ExecutorError, match="at least one CPU"):
            run_bare(small, [])
        with pytest.raises(ExecutorError, match="seconds"):
            run_bare(small, CPUS[:1], seconds=0)

    def test_a_model_the_runtime_cannot_load_names_the_cpu(self, tmp_path):
        from pipeit.executor.bare import run_bare

        bad = tmp_path / "bad.tflite"
        bad.write_bytes(b"not a model")
        with pytest.raises(ExecutorError, match=f"CPU {CPUS[0]} failed to start"):
            run_bare(bad, CPUS[:1], seconds=0.1)


class TestPipelineFeed:
    def test_a_worker_left_without_frames_shows_as_starved(self, small):
        """Frames 60 ms apart on a model that takes well under that: the worker mostly waits for the feed."""
        from pipeit.executor import Pipeline

        frame = np.random.default_rng(0).standard_normal((1, 32, 32, 16)).astype(np.float32)
        with Pipeline(_replicas_plan(small, CPUS[:1]), small) as pipe:
            pipe.run(frame)
            pipe.reset_stats()
            for _ in range(4):
                time.sleep(0.06)
                pipe.run(frame)
            sparse = pipe.stats().stages[0]
        assert sparse.frames == 4
        assert 0.3 < sparse.starved <= 1.0  # >= 180 ms of the >= 240 ms run had no frame to serve
        assert sparse.to_json()["starved"] == sparse.starved

    def test_the_fast_input_check_still_refuses_what_the_slow_one_did(self, small):
        from pipeit.executor import Pipeline

        good = np.random.default_rng(1).standard_normal((1, 32, 32, 16)).astype(np.float32)
        with Pipeline(_replicas_plan(small, CPUS[:1]), small) as pipe:
            name = pipe.inputs[0].name
            with pytest.raises(InputError, match="do not match"):
                pipe.submit({name: good, "extra": good})
            with pytest.raises(InputError, match="float32"):
                pipe.submit({name: good.astype(np.float64)})
            with pytest.raises(InputError, match="takes"):
                pipe.submit(good[:, :16])
            with pytest.raises(InputError, match="numpy array"):
                pipe.submit({name: good.tolist()})
            # a view that is not contiguous is still a valid frame: the copy into the ring handles it
            wide = np.repeat(good, 2, axis=3)[..., ::2]
            assert not wide.flags.c_contiguous
            got = pipe.run({name: wide})
            want = pipe.run(good)
        for key in want:
            assert np.array_equal(got[key], want[key])


def test_measure_load_splits_the_coordinator_and_reads_worker_waits(small):
    if len(CPUS) < 2:
        pytest.skip("needs two CPUs")
    from pipeit.executor import Pipeline
    from pipeit.executor.load import measure_load, summary

    frame = np.random.default_rng(0).standard_normal((1, 32, 32, 16)).astype(np.float32)
    with Pipeline(_replicas_plan(small, CPUS[:2]), small) as pipe:
        load = measure_load(pipe, [frame] * 100, window=3)
    assert load.dispatcher_ms_per_frame is not None
    assert 0 < load.dispatcher_ms_per_frame <= load.coordinator_ms_per_frame
    assert load.coordinator_switches_per_frame > 0
    if Path("/proc/self/schedstat").exists():
        assert {k for k, _ in load.worker_wait} == {(0, 0), (0, 1)}
        assert all(v >= 0 for _, v in load.worker_wait)
    assert "dispatcher" in summary(load)


def test_executor_load_tool_splits_the_loss_into_contention_and_executor(zoo_models):
    if len(CPUS) < 2:
        pytest.skip("needs two CPUs")
    model = Path(zoo_models("squeezenet"))
    result = subprocess.run(
        [sys.executable, "tools/executor_load.py", "--model", model.stem, "--shapes", "solo,bare,replicas",
         "--frames", "12", "--rounds", "1", "--seconds", "0.3", "--json"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc["shapes"]) == {"solo", "bare", "replicas"}
    assert doc["shapes"]["solo"]["fps_median"] > 0 and doc["shapes"]["bare"]["fps_median"] > 0
    assert len(doc["shapes"]["bare"]["cpu_ms_per_frame_median"]) == 2
    assert set(doc["ratios"]) == {
        "bare / solo (cost of every core busy at once)",
        "replicas / bare (cost of the executor)",
        "replicas / solo (efficiency against the ideal)",
    }
