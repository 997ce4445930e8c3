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

    def test_a_model_with_a_bool_input_runs(self, small, tmp_path):
        """Its random feed took np.iinfo of every dtype that is not a float: bench refused any model with
        a bool input ("Invalid integer data type 'b'") that profiles, plans and runs."""
        from ai_edge_litert import schema_py_generated as schema

        from pipeit.executor.bare import run_bare
        from pipeit.modelfile import read_model, serialize_model

        model = read_model(small.read_bytes())
        graph = model.subgraphs[0]
        flag = schema.TensorT()
        flag.name, flag.shape, flag.type, flag.buffer = b"flag", [1, 4], schema.TensorType.BOOL, 0
        graph.tensors.append(flag)
        graph.inputs = list(graph.inputs) + [len(graph.tensors) - 1]  # an input no layer reads
        path = tmp_path / "with_flag.tflite"
        path.write_bytes(serialize_model(model))
        run = run_bare(path, CPUS[:1], seconds=0.2, warmup=1)
        assert run.frames[0] > 0

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


class TestCoordinatorPath:
    """The cheaper coordinator (issue 6): stale estimates, caller-owned outputs, the slot queue."""

    def test_an_idle_worker_whose_estimate_went_stale_gets_frames_again(self, zoo_models):
        """One worker's estimate 10x the other's (as after slow frames on a busy host): it must not idle for good.

        With two frames in flight the other worker, holding one, always looks
        sooner done (2 estimates) than this one (10), so without the stale
        check this worker would never serve again and its estimate never heal.
        """
        from pipeit.executor import Pipeline

        if len(CPUS) < 2:
            pytest.skip("needs two CPUs")
        v2 = zoo_models("mobilenet_v2")
        frame = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
        with Pipeline(_replicas_plan(v2, (CPUS[0], CPUS[-1])), v2) as pipe:
            for _ in range(6):
                pipe.run(frame)
            lame, other = pipe._workers[0]  # noqa: SLF001 -- the dispatcher's view of each worker
            with pipe._dispatch_lock:  # noqa: SLF001
                lame.est_ms = 10.0 * max(other.est_ms, 1.0)
            pipe.reset_stats()
            futures = []
            for _ in range(80):
                if len(futures) >= 2:
                    futures.pop(0).result()
                futures.append(pipe.submit(frame))
            for future in futures:
                future.result()
            served = pipe.stats().stages[0].worker_frames
        assert sum(served) == 80
        assert served[0] >= 10, served  # ~40 once its estimate is measured again; 0 if it stays stale

    def test_outputs_land_in_the_callers_arrays_when_given(self, small):
        from pipeit.executor import Pipeline

        frame = np.random.default_rng(2).standard_normal((1, 32, 32, 16)).astype(np.float32)
        with Pipeline(_replicas_plan(small, CPUS[:1]), small) as pipe:
            want = pipe.run(frame)
            (name, value), = want.items()
            buf = np.full_like(value, np.nan)
            got = pipe.submit(frame, out=buf).result()
            assert got[name] is buf and np.array_equal(buf, value)
            again = {name: np.zeros_like(value)}
            assert pipe.submit(frame, out=again).result() is again
            assert np.array_equal(again[name], value)
            with pytest.raises(InputError, match="out="):
                pipe.submit(frame, out=np.zeros(value.shape, np.float64))
            with pytest.raises(InputError, match="out="):
                pipe.submit(frame, out={"nope": buf})
            readonly = np.zeros_like(value)
            readonly.flags.writeable = False
            with pytest.raises(InputError, match="writable"):
                pipe.submit(frame, out=readonly)
            assert np.array_equal(pipe.run(frame)[name], value)  # a refused out= took no slot

    def test_closing_the_slot_queue_wakes_every_blocked_taker(self):
        import threading

        from pipeit.executor.pipeline import _SlotQueue

        slots = _SlotQueue()
        slots.put(3)
        assert len(slots) == 1 and slots.get() == 3 and len(slots) == 0
        got: list = []
        takers = [threading.Thread(target=lambda: got.append(slots.get())) for _ in range(3)]
        for t in takers:
            t.start()
        time.sleep(0.05)
        assert got == []  # blocked: no slot
        slots.close()
        for t in takers:
            t.join(5.0)
        assert got == [-1, -1, -1] and len(slots) == 0


class TestDispatcherFedStream:
    """``Pipeline.stream``: the dispatcher feeds the frames itself (no caller wake-up per frame)."""

    def test_every_frame_runs_once_and_the_slots_all_come_back(self, small):
        from pipeit.executor import Pipeline

        rng = np.random.default_rng(3)
        frames = [rng.standard_normal((1, 32, 32, 16)).astype(np.float32) for _ in range(4)]
        with Pipeline(_replicas_plan(small, CPUS[:1]), small) as pipe:
            slots = len(pipe._free0)  # noqa: SLF001 -- edge 0's free slots: none may leak
            want = pipe.run(frames[0])
            pipe.reset_stats()
            fps, latencies = pipe.stream([frames[i % 4] for i in range(50)], window=3)
            assert fps > 0 and len(latencies) == 50 and all(v > 0 for v in latencies)
            stats = pipe.stats()
            assert stats.frames == 50 and sum(stats.stages[0].worker_frames) == 50
            assert len(pipe._free0) == slots  # noqa: SLF001
            with pytest.raises(InputError):  # every frame is checked before the first runs
                pipe.stream([frames[0], frames[0][:, :16]], window=2)
            with pytest.raises(ExecutorError, match="window"):
                pipe.stream(frames, window=0)
            assert pipe.stats().frames == 50
            got = pipe.run(frames[0])  # submit still works after a stream
        for name in want:
            assert np.array_equal(got[name], want[name])

    def test_a_worker_killed_mid_stream_is_restarted_and_no_frame_is_lost(self, zoo_models):
        import signal
        import threading

        from pipeit.executor import Pipeline

        if len(CPUS) < 2:
            pytest.skip("needs two CPUs")
        v2 = zoo_models("mobilenet_v2")
        frame = np.random.default_rng(4).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
        with Pipeline(_replicas_plan(v2, (CPUS[0], CPUS[-1])), v2) as pipe:
            pipe.run(frame)
            pid = pipe.worker_pids()[(0, 1)]
            killer = threading.Timer(0.15, os.kill, (pid, signal.SIGKILL))
            killer.start()
            try:
                _, latencies = pipe.stream([frame] * 150, window=3)
            finally:
                killer.cancel()
            stats = pipe.stats()
        assert len(latencies) == 150
        assert stats.stages[0].restarts == 1
