"""What the daemon reads from the executor through public API: per-stage queue depths, per-worker
service times, and throttles shared with (not owned by) a pipeline. Real processes, real models."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from cores.model import Cluster, Platform
from pipeit.executor import Pipeline
from pipeit.graph import load_graph
from pipeit.plan import Plan, StageSpec, WorkerSpec, file_sha256
from tests.daemon_helpers import build_model, reference
from tests.host_helpers import needs_cgroups

CPUS = tuple(sorted(os.sched_getaffinity(0)))
pytestmark = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")
BIG, LITTLE = CPUS[0], CPUS[-1]


def _plan(model, platform: Platform, stages) -> Plan:
    specs = tuple(StageSpec(layers, tuple(WorkerSpec(c, (cpu,), 1, 1.0) for c, cpu in workers), 100.0)
                  for layers, workers in stages)
    return Plan(model.name, file_sha256(model), platform, "test", specs, 100.0, 10.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("exec") / "m.tflite", layers=4, size=32, channels=16)


def test_queue_depths_count_frames_waiting_for_each_stage(model):
    n = len(load_graph(str(model)).layers)
    platform = Platform((Cluster("big", "host", (BIG,)), Cluster("little", "host", (LITTLE,))), source="test")
    plan = _plan(model, platform, [((0, 2), [("big", BIG)]), ((2, n), [("little", LITTLE)])])
    frame = np.random.default_rng(3).standard_normal((1, 32, 32, 16)).astype(np.float32)
    with Pipeline(plan, model, slots=6) as pipe:
        assert pipe.queue_depths() == (0, 0)
        pid = pipe.worker_pids()[(0, 0)]
        os.kill(pid, signal.SIGSTOP)  # stage 0 holds its first frame; the rest wait in its queue
        try:
            futures = [pipe.submit(frame) for _ in range(4)]
            deadline = time.monotonic() + 10
            while pipe.queue_depths() != (3, 0) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert pipe.queue_depths() == (3, 0)
        finally:
            os.kill(pid, signal.SIGCONT)
        want = reference(model, frame)
        for f in futures:
            np.testing.assert_array_equal(f.result(30)["fc"], want)
        assert pipe.queue_depths() == (0, 0)


def test_submit_into_fills_the_slot_in_place_and_gives_it_back_when_the_fill_fails(model):
    """The daemon's path: the caller writes a frame straight into edge 0's slot (no array of its own)."""
    n = len(load_graph(str(model)).layers)
    platform = Platform((Cluster("big", "host", (BIG,)), Cluster("little", "host", (LITTLE,))), source="test")
    plan = _plan(model, platform, [((0, 2), [("big", BIG)]), ((2, n), [("little", LITTLE)])])
    frames = [np.random.default_rng(k).standard_normal((1, 32, 32, 16)).astype(np.float32) for k in range(3)]
    with Pipeline(plan, model, slots=4) as pipe:
        slots = len(pipe._free0)  # noqa: SLF001 -- edge 0's free slots: none may leak
        seen = []

        def fill_with(frame):
            def fill(views):
                assert list(views) == ["image"] and views["image"].shape == (1, 32, 32, 16)
                seen.append(views["image"].__array_interface__["data"][0])
                views["image"][...] = frame
            return fill

        def broken(views):
            views["image"][...] = 0.0
            raise ConnectionError("the client went away mid-frame")

        for _ in range(slots + 2):  # more failures than slots: each one gave its slot back
            with pytest.raises(ConnectionError):
                pipe.submit_into(broken)
        futures = [pipe.submit_into(fill_with(f)) for f in frames]
        for frame, future in zip(frames, futures):
            np.testing.assert_array_equal(future.result(30)["fc"], reference(model, frame))
        assert len(set(seen)) == len(frames)  # each frame had a slot of its own, written in place
        deadline = time.monotonic() + 10
        while len(pipe._free0) != slots and time.monotonic() < deadline:  # noqa: SLF001
            time.sleep(0.01)
        assert len(pipe._free0) == slots  # noqa: SLF001


@needs_cgroups
def test_worker_ms_shows_the_slow_replica_and_shared_throttles_survive_the_pipeline(tmp_path):
    from cores.emulation import Throttles, read_bandwidth

    # ~6 ms a frame on the big core, 4x that on the quarter-speed replica
    model = build_model(tmp_path / "big.tflite", layers=6, size=64, channels=32)
    n = len(load_graph(str(model)).layers)
    platform = Platform((Cluster("big", "host", (BIG,)), Cluster("little", "host", (LITTLE,), speed=0.25)),
                        source="test")
    plan = _plan(model, platform, [((0, n), [("big", BIG), ("little", LITTLE)])])
    frame = np.random.default_rng(4).standard_normal((1, 64, 64, 32)).astype(np.float32)
    with Throttles(platform) as throttles:
        folder = throttles.cgroup_path("little")
        with Pipeline(plan, model, throttle=False, throttles=throttles) as pipe:
            little_pid = pipe.worker_pids()[(0, 1)]
            procs = os.path.join(folder, "cgroup.procs")
            with open(procs) as f:
                assert str(little_pid) not in f.read().split()  # it pads its invokes, outside the quota
            list(pipe.map(frame for _ in range(6)))
            pipe.reset_stats()
            outs = list(pipe.map(frame for _ in range(40)))
            stats = pipe.stats().stages[0]
            # ... reading its speed from the shared cgroup: a quota halved from outside ("the board
            # heats up") halves the speed of the padded worker too
            quota, period = read_bandwidth(folder)  # the same quota over twice the period (>= 1 ms quota)
            if os.path.exists(os.path.join(folder, "cpu.max")):
                Path(folder, "cpu.max").write_text(f"{quota} {2 * period}")
            else:
                Path(folder, "cpu.cfs_period_us").write_text(str(2 * period))
            time.sleep(0.3)  # the worker re-reads the speed every 0.1 s
            list(pipe.map(frame for _ in range(6)))
            pipe.reset_stats()
            outs += list(pipe.map(frame for _ in range(20)))
            halved = pipe.stats().stages[0]
        assert os.path.isdir(folder)  # a shared cgroup outlives the pipeline: its owner removes it
    assert not os.path.isdir(folder)
    want = reference(model, frame)
    for out in outs:
        np.testing.assert_array_equal(out["fc"], want)
    big_ms, little_ms = stats.worker_ms
    assert len(stats.worker_ms) == 2 and stats.worker_frames[0] > 0 and stats.worker_frames[1] > 0
    # a quarter-speed replica: its own median shows it, whatever the stage-wide median says
    assert little_ms > 1.5 * big_ms, stats
    assert min(stats.worker_ms) <= stats.measured_ms <= max(stats.worker_ms)
    assert stats.to_json()["worker_ms"] == [big_ms, little_ms]
    # against the big replica of the same rounds, not the noisy first measurement (a clean-clone run had the
    # first little median at 5.5x big, from host noise, and the halved one at 7.2x: half of 1.6x that):
    # nominally 4x at speed 0.25, 8x at 0.125
    assert halved.worker_ms[1] > 5.5 * halved.worker_ms[0], (stats.worker_ms, halved.worker_ms)
    assert halved.worker_ms[0] < 1.3 * big_ms  # the big replica is not slowed
