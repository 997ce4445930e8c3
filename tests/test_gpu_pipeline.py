"""GPU stages inside real pipelines: spawned, pinned workers running OpenCL kernels on pocl.

A plan's worker on a cluster of kind "gpu" runs its layer range as a
GpuStage instead of a TFLite interpreter, from the same rings with the same
protocol. Outputs are compared with the whole model run by one interpreter:
not bit for bit (the kernels sum in another order) but within the fp32
kernels' relative error bound, 1e-4. Layer ranges are kept small: pocl
compiles every kernel when a worker starts.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import psutil
import pytest

from cores.model import Cluster, Platform
from pipeit.errors import ExecutorError
from pipeit.executor import Pipeline
from pipeit.executor.gpu_worker import GpuOptions
from pipeit.gpu.calibration import CalibrationPolicy, Table, max_relative_error
from pipeit.graph import load_graph
from pipeit.plan import Plan, StageSpec, WorkerSpec, file_sha256
from pipeit.runtime import invoke_frames, make_interpreter
from tests.host_helpers import needs_opencl

CPUS = tuple(sorted(os.sched_getaffinity(0)))
HOST, GPU_HOST = CPUS[0], CPUS[-1]
TOLERANCE = 1e-4


pytestmark = needs_opencl

PLATFORM = Platform(
    (Cluster("big", "host", (HOST,)), Cluster("gpu", "opencl", (GPU_HOST,), kind="gpu", device="0")),
    source="test",
)


def make_plan(model: Path, stages: Sequence[Tuple[Tuple[int, int], str]], platform: Platform = PLATFORM) -> Plan:
    specs = []
    for layers, cluster in stages:
        cpus = platform.cluster(cluster).cpus
        specs.append(StageSpec(tuple(layers), (WorkerSpec(cluster, tuple(cpus), 1, 1.0),), 100.0))
    return Plan(model.name, file_sha256(model), platform, "test", tuple(specs), 100.0, 10.0)


def frames_for(model: Path, count: int, seed: int = 0) -> List[Dict[str, np.ndarray]]:
    detail = make_interpreter(model).get_input_details()[0]
    rng = np.random.default_rng(seed)
    return [{detail["name"]: rng.uniform(-1, 1, size=detail["shape"]).astype(np.float32)} for _ in range(count)]


def reference(model: Path, frames: List[Dict[str, np.ndarray]]) -> List[Dict[str, np.ndarray]]:
    return invoke_frames(make_interpreter(model), frames)


def errors(got: List[Dict[str, np.ndarray]], want: List[Dict[str, np.ndarray]]) -> List[float]:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == set(w)
    return [max_relative_error(g, w) for g, w in zip(got, want)]


def residual_cut(model: Path) -> Tuple[int, int]:
    """A one-layer range [c1, c2) that a residual made before c1 and read after c2 must cross."""
    graph = load_graph(model)
    cuts = {c.before: {t.name for t in c.tensors} for c in graph.cuts}
    for c1 in sorted(cuts):
        if c1 + 1 in cuts and cuts[c1] & cuts[c1 + 1]:
            return c1, c1 + 1
    raise AssertionError("no residual crosses a one-layer range")


def my_segments() -> List[str]:
    return glob.glob(f"/dev/shm/pipeit_{os.getpid()}_*")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def v2(zoo_models) -> Path:
    return zoo_models("mobilenet_v2")


@pytest.fixture(scope="module")
def v2_frames(v2):
    frames = frames_for(v2, 4)
    return frames, reference(v2, frames)


class TestGpuStageInPipelines:
    def test_middle_gpu_stage_forwards_a_residual_keeps_order_and_stops_clean(self, v2, v2_frames):
        from cores.pinning import thread_affinities

        frames, want = v2_frames
        n = len(load_graph(v2).layers)
        c1, c2 = residual_cut(v2)
        plan = make_plan(v2, [((0, c1), "big"), ((c1, c2), "gpu"), ((c2, n), "big")])
        order = [i % len(frames) for i in range(10)]
        with Pipeline(plan, v2) as pipe:
            assert pipe.routes[1].forwards, "the GPU stage should forward the residual"
            got = list(pipe.map(frames[i] for i in order))
            assert all(not heavy for heavy in pipe.heavy_before_pin().values())
            gpu_pid = pipe.worker_pids()[(1, 0)]
            # the GPU worker and every thread its OpenCL driver started sit on the host CPU
            affinities = thread_affinities(gpu_pid)
            assert len(affinities) > 1 and set(affinities.values()) == {(GPU_HOST,)}
            pids = list(pipe.worker_pids().values())
            assert my_segments()
            stats = pipe.stats()
        errs = errors(got, [want[i] for i in order])
        assert max(errs) <= TOLERANCE
        assert max(errs) > 0  # the GPU really ran: TFLite would have been bit-identical
        # frames kept their order: frame k's output is closest to its own reference
        for k, out in enumerate(got):
            mine = max_relative_error(out, want[order[k]])
            assert all(mine < max_relative_error(out, want[j]) for j in range(len(frames)) if j != order[k])
        assert [s.frames for s in stats.stages] == [10, 10, 10]
        assert stats.stages[1].switches == ()  # fp32 kernels meet the tolerance: calibration stays put
        assert my_segments() == []
        assert not any(alive(pid) for pid in pids)

    def test_last_stage_on_the_gpu_gives_the_model_outputs(self, zoo_models):
        v1 = zoo_models("mobilenet_v1")
        n = len(load_graph(v1).layers)
        frames = frames_for(v1, 3, seed=2)
        want = reference(v1, frames)
        plan = make_plan(v1, [((0, n - 4), "big"), ((n - 4, n), "gpu")])  # avgpool, reshape, FC, softmax
        policy = CalibrationPolicy(tolerance=TOLERANCE, every=1, check_every=2, baseline=2)
        with Pipeline(plan, v1, gpu=GpuOptions(policy=policy)) as pipe:
            got = list(pipe.map(frames * 3))
            stats = pipe.stats()
        assert max(errors(got, want * 3)) <= TOLERANCE
        for g, w in zip(got, want * 3):
            name = next(iter(w))
            assert np.argmax(g[name]) == np.argmax(w[name])
        # every frame sampled, entropy watched on the softmax, CPU-checked every other sample: no switch
        assert stats.stages[1].switches == ()


class TestCalibrationInPipelines:
    def test_a_too_loose_table_is_left_for_fp32_and_a_killed_worker_restarts_on_fp32(self, v2, v2_frames):
        frames, want = v2_frames
        c1, c2 = residual_cut(v2)
        n = len(load_graph(v2).layers)
        plan = make_plan(v2, [((0, c1), "big"), ((c1, c2), "gpu"), ((c2, n), "big")])
        # half-precision storage: ~1e-3 relative error, far outside a 1e-5 task tolerance
        loose = GpuOptions(tolerance=1e-5, tables={(c1, c2): (Table("half", "fp16-storage"),)},
                           policy=CalibrationPolicy(tolerance=1e-5, every=2, check_every=2, baseline=2))
        order = [i % len(frames) for i in range(16)]
        with Pipeline(plan, v2, gpu=loose) as pipe:
            got, first = _stream_killing_once(pipe, frames, order, (1, 0), warm=6, kill_after=10)
            pids = list(pipe.worker_pids().values())
            stats = pipe.stats()
        assert len(first) == 1
        switch = first[0]
        assert (switch["from_table"], switch["to_table"], switch["reason"]) == ("half", "fp32", "cpu-error")
        assert switch["value"] > 1e-5 and switch["stage"] == 1 and switch["pipeline_frame"] == 0
        assert stats.stages[1].switches == first  # the restarted worker started on fp32: no new switch
        assert stats.stages[1].restarts == 1 and stats.stages[1].redispatched >= 1  # up to two queued jobs
        errs = errors(got, [want[i] for i in order])  # all 16, in order
        assert errs[0] == 0.0  # the failing sampled frame was answered with the CPU's result
        assert max(errs) <= TOLERANCE  # and every frame after it ran on fp32
        assert my_segments() == [] and not any(alive(pid) for pid in pids)

    def test_a_worker_that_fell_back_to_the_cpu_restarts_on_the_cpu(self, tmp_path):
        """Tolerance 0 on the only table (fp32): the first checked frame fails and the worker falls back
        to TFLite. Killed, its successor starts there: its outputs are the runtime's, bit for bit, and
        it records no second fallback (it once went back to the GPU and failed its first check again)."""
        from pipeit.tflite_builder import ModelBuilder

        m = ModelBuilder(seed=3)
        x = m.conv2d(m.input("x", (1, 8, 8, 16)), 16, kernel=3, activation="NONE")
        m.output(m.conv2d(x, 8, kernel=1))
        model = tmp_path / "two_convs.tflite"
        model.write_bytes(m.to_bytes())
        plan = make_plan(model, [((0, 1), "gpu"), ((1, 2), "big")])
        exact = GpuOptions(tolerance=0.0, policy=CalibrationPolicy(tolerance=0.0, every=1, check_every=1))
        frames = frames_for(model, 4, seed=7)
        want = reference(model, frames)
        order = [i % len(frames) for i in range(12)]
        with Pipeline(plan, model, gpu=exact) as pipe:
            got, fallbacks = _stream_killing_once(pipe, frames, order, (0, 0), warm=4, kill_after=8)
            stats = pipe.stats()
        assert [note.get("fallback") for note in fallbacks] == ["cpu"]
        assert stats.stages[0].restarts == 1
        assert stats.stages[0].switches == fallbacks  # the new worker did not fall back a second time
        assert errors(got, [want[i] for i in order]) == [0.0] * len(order)

    def test_no_opencl_device_is_one_clear_error_before_any_worker(self, v2):
        platform = Platform((Cluster("big", "host", (HOST,)),
                             Cluster("gpu", "opencl", (GPU_HOST,), kind="gpu", device="no-such-device")),
                            source="test")
        n = len(load_graph(v2).layers)
        plan = make_plan(v2, [((0, 6), "big"), ((6, n), "gpu")], platform)
        with pytest.raises(ExecutorError, match="stage 1 runs on GPU cluster 'gpu', but no OpenCL device matches"):
            Pipeline(plan, v2).start()
        assert my_segments() == []


class TestRunCommand:
    @pytest.fixture
    def gpu_plan(self, zoo_models, tmp_path) -> Path:
        """mobilenet_v1 with its classifier head (avgpool, reshape, FC, softmax) on the GPU worker."""
        model = tmp_path / "mobilenet_v1.tflite"
        model.write_bytes(zoo_models("mobilenet_v1").read_bytes())
        n = len(load_graph(model).layers)
        path = tmp_path / "plan.json"
        make_plan(model, [((0, n - 4), "big"), ((n - 4, n), "gpu")]).save(path)
        return path

    def run(self, *args: str, env: Dict[str, str] = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeit", "run", *args], capture_output=True, text=True,
                              timeout=300, env={**os.environ, **(env or {})})

    def test_check_is_within_the_tolerance_and_reports_the_error(self, gpu_plan):
        result = self.run(str(gpu_plan), "--frames", "6", "--warmup", "1", "--check", "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["outputs_match"] is True and doc["gpu_stages"] == [1] and doc["stages"][1]["switches"] == []
        assert doc["check_tolerance"] == TOLERANCE and 0 < doc["max_relative_error"] <= TOLERANCE
        # a tolerance the GPU cannot meet fails the check (exit 1) and says by how much
        result = self.run(str(gpu_plan), "--frames", "2", "--warmup", "0", "--check", "--tolerance", "0",
                          "--no-calibrate")
        assert result.returncode == 1 and "DIFFER" in result.stdout and "allowed 0" in result.stdout

    def test_no_opencl_platform_is_one_line_and_exit_2(self, gpu_plan):
        result = self.run(str(gpu_plan), "--frames", "2", env={"OCL_ICD_VENDORS": "/nonexistent"})
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "no OpenCL platform" in lines[0] and "Traceback" not in result.stderr

    def test_corrupt_tables_and_tuning_files_are_refused_whole(self, gpu_plan, tmp_path):
        bad = tmp_path / "tables.json"
        bad.write_text(json.dumps({"version": 1, "kind": "pipeit-gpu-tables", "stages": [
            {"layers": [27, 31], "tables": [{"name": "half", "storage": "fp16-storage", "precisions": {"6": "fp8"}}]}]}))
        result = self.run(str(gpu_plan), "--frames", "2", "--gpu-tables", str(bad))
        assert result.returncode == 2 and "fp8" in result.stderr and "Traceback" not in result.stderr
        tuning = tmp_path / "tuning.json"
        tuning.write_text('{"version": 1, "devices": "nonsense"}')
        result = self.run(str(gpu_plan), "--frames", "2", "--gpu-tuning", str(tuning))
        assert result.returncode == 2 and str(tuning) in result.stderr and "Traceback" not in result.stderr

    def test_a_tuning_file_from_another_device_is_used_with_a_warning(self, gpu_plan, tmp_path):
        """Its GPU stage runs with the heuristic configs, which the user hears of (it was silent)."""
        tuning = tmp_path / "tuning.json"
        tuning.write_text(json.dumps({"version": 1, "devices": {"0123456789abcdef": {"name": "Mali-G52"}},
                                      "entries": []}))
        for option in ("--gpu-tuning", "--tuning"):  # --tuning: the name profile, plan and gpu check give it
            result = self.run(str(gpu_plan), "--frames", "2", "--warmup", "0", option, str(tuning))
            assert result.returncode == 0, result.stderr
            assert f"{tuning} has no configs for" in result.stderr and "Mali-G52" in result.stderr
        assert "Traceback" not in result.stderr

    def test_accuracy_tuning_writes_the_tables_run_uses(self, gpu_plan, tmp_path):
        """`pipeit gpu accuracy` judges the head's variants on real activations; `run --gpu-tables` runs them."""
        from pipeit.gpu.calibration import load_tables

        model = gpu_plan.parent / "mobilenet_v1.tflite"
        n = len(load_graph(model).layers)
        tables = tmp_path / "tables.json"
        result = subprocess.run(
            [sys.executable, "-m", "pipeit", "gpu", "accuracy", str(model), "--range", f"{n - 4}:{n}",
             "--tolerances", "1e-6,1e-2", "--frames", "2", "-o", str(tables), "--json"],
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "INFO: Created" not in result.stderr  # the runtime's delegate line, once per process: no news here
        doc = json.loads(result.stdout)
        assert [level["tolerance"] for level in doc["levels"]] == [1e-6, 1e-2]
        for level in doc["levels"]:  # each level's choice meets it, or says it fell back to fp32
            assert level["error"] <= level["tolerance"] or level["storage"] == "fp32", level
        stages = load_tables(tables, file_sha256(model))
        assert list(stages) == [(n - 4, n)] and stages[(n - 4, n)]
        result = self.run(str(gpu_plan), "--frames", "4", "--warmup", "1", "--check", "--tolerance", "1e-2",
                          "--gpu-tables", str(tables), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["outputs_match"] is True
        # a range outside the model is one line and exit 2
        bad = subprocess.run([sys.executable, "-m", "pipeit", "gpu", "accuracy", str(model), "--range", f"0:{n + 5}",
                              "-o", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and "--range" in bad.stderr and "Traceback" not in bad.stderr


def _stream_killing_once(pipe: Pipeline, frames: List[Dict[str, np.ndarray]], order: Sequence[int],
                         key: Tuple[int, int], warm: int, kill_after: int) -> Tuple[list, Tuple[dict, ...]]:
    """Stream ``frames[i] for i in order``: the first ``warm`` through ``map`` (the GPU switches so far are
    taken then), then SIGKILL worker ``key`` while it holds one of the frames up to ``kill_after``, which
    must not be lost. Returns every output in order, and those switches."""
    got = list(pipe.map(frames[i] for i in order[:warm]))
    switches = pipe.gpu_switches()
    victim = pipe.worker_pids()[key]
    futures = [pipe.submit(frames[i]) for i in order[warm:kill_after]]
    _kill_while_busy(pipe, key)
    futures += [pipe.submit(frames[i]) for i in order[kill_after:]]
    got += [f.result(120) for f in futures]
    assert pipe.worker_pids()[key] != victim
    return got, switches


def _kill_while_busy(pipe: Pipeline, key: Tuple[int, int]) -> None:
    """SIGKILL a worker that certainly holds a frame: stop it, let pending replies land, check, kill."""
    pid = pipe.worker_pids()[key]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.1)
        if pipe.worker_states()[key] == "busy":
            os.kill(pid, signal.SIGKILL)
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("the worker never held a frame")

