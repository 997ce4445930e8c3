"""pipeit.satisfaction: tasks, the score's properties, energy per frame, and `pipeit bench --task`."""

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cores.boards import load_board
from cores.model import Cluster, Platform
from cores.platform import load_platform
from cores.power import power_for_platform
from pipeit.executor.stats import PipelineStats, StageStats
from pipeit.plan import Plan, StageSpec, WorkerSpec
from pipeit.satisfaction import (
    DEFAULT_TASK,
    EXACT,
    GPU_FP32_ERROR,
    TASKS,
    Accuracy,
    Task,
    TaskError,
    accuracy_term,
    combine,
    energy_per_frame_mj,
    energy_term,
    latency_term,
    make_task,
    parse_tolerance,
    plan_accuracy,
    score_runs,
)

ms = st.floats(min_value=0.0, max_value=1e5, allow_nan=False)
pos = st.floats(min_value=1e-3, max_value=1e5, allow_nan=False)
share = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
err = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
tasks = st.builds(
    Task, name=st.just("t"), deadline_ms=pos, tolerance=st.floats(min_value=1e-6, max_value=1.0),
    min_top1=share, energy_weight=share, softness=st.floats(min_value=0.05, max_value=10.0),
)


def score(task, p99, error, top1, energy_mj, ref_mj):
    return combine(latency_term(p99, task), accuracy_term(error, top1, task), energy_term(energy_mj, ref_mj),
                   task.energy_weight)


class TestTasks:
    def test_defaults_are_ordered_as_documented(self):
        rt, ia, bg = TASKS["realtime"], TASKS["interactive"], TASKS["background"]
        assert rt.deadline_ms < ia.deadline_ms < bg.deadline_ms
        assert rt.tolerance < ia.tolerance < bg.tolerance and rt.min_top1 > ia.min_top1 > bg.min_top1
        assert rt.energy_weight < ia.energy_weight < bg.energy_weight == 1.0
        assert rt.deadline_ms == pytest.approx(1000 / 30, rel=0.01)  # one camera frame at 30 fps
        assert DEFAULT_TASK == "interactive" and make_task() == ia

    def test_overrides_keep_the_rest(self):
        task = make_task("realtime", deadline_ms=50, tolerance=1e-2, min_top1=0.9, energy_weight=0.5)
        assert (task.name, task.deadline_ms, task.tolerance, task.min_top1, task.energy_weight) == (
            "realtime", 50.0, 1e-2, 0.9, 0.5)
        assert task.softness == TASKS["realtime"].softness
        assert make_task("background", deadline_ms=10).tolerance == TASKS["background"].tolerance

    @pytest.mark.parametrize("kwargs, message", [
        (dict(name="batch"), "unknown task 'batch'"),
        (dict(deadline_ms=0), "deadline"),
        (dict(deadline_ms=float("nan")), "deadline"),
        (dict(tolerance=-1), "tolerance"),
        (dict(min_top1=1.5), "top-1"),
        (dict(energy_weight=2), "energy weight"),
        (dict(energy_weight=float("nan")), "energy weight"),
    ])
    def test_bad_values_are_one_line(self, kwargs, message):
        with pytest.raises(TaskError, match=message) as info:
            make_task(**kwargs)
        assert "\n" not in str(info.value)

    def test_parse_tolerance(self):
        assert parse_tolerance("1e-3") == (1e-3, None)
        assert parse_tolerance("1e-3,0.99") == (1e-3, 0.99)
        for bad in ("", "x", "1,2,3", "1e-3,"):
            with pytest.raises(TaskError):
                parse_tolerance(bad)


class TestTerms:
    def test_latency(self):
        task = TASKS["interactive"]
        assert latency_term(0.0, task) == latency_term(task.deadline_ms, task) == 1.0
        assert latency_term(2 * task.deadline_ms, task) == pytest.approx(math.exp(-1 / task.softness))
        assert latency_term(float("nan"), task) == 0.0 and latency_term(float("inf"), task) == 0.0

    def test_accuracy(self):
        task = make_task(tolerance=1e-3, min_top1=0.99)
        assert accuracy_term(0.0, 1.0, task) == accuracy_term(1e-3, 0.99, task) == 1.0
        assert accuracy_term(1e-2, 1.0, task) == pytest.approx(0.1)
        assert accuracy_term(0.0, 0.94, task) == pytest.approx(math.exp(-1))
        assert accuracy_term(float("inf"), 1.0, task) == 0.0

    def test_energy(self):
        assert energy_term(2.0, 1.0) == 0.5 and energy_term(1.0, 1.0) == 1.0 and energy_term(0.5, 1.0) == 1.0
        assert energy_term(float("inf"), 1.0) == 0.0

    def test_weight_zero_ignores_energy_and_one_counts_it_fully(self):
        assert combine(1.0, 1.0, 0.01, 0.0) == 1.0
        assert combine(1.0, 1.0, 0.5, 1.0) == 0.5
        assert combine(0.5, 0.5, 1.0, 0.7) == 0.25


class TestScoreProperties:
    """The score stays in [0, 1] and moves the right way with every input."""

    @settings(max_examples=300, deadline=None)
    @given(tasks, ms, err, share, pos, pos)
    def test_in_unit_interval(self, task, p99, error, top1, energy, ref):
        assert 0.0 <= score(task, p99, error, top1, energy, ref) <= 1.0

    @settings(max_examples=300, deadline=None)
    @given(tasks, ms, ms, err, share, pos, pos)
    def test_non_increasing_in_latency(self, task, a, b, error, top1, energy, ref):
        lo, hi = sorted((a, b))
        assert score(task, lo, error, top1, energy, ref) >= score(task, hi, error, top1, energy, ref)

    @settings(max_examples=300, deadline=None)
    @given(tasks, ms, err, err, share, pos, pos)
    def test_non_increasing_in_error(self, task, p99, a, b, top1, energy, ref):
        lo, hi = sorted((a, b))
        assert score(task, p99, lo, top1, energy, ref) >= score(task, p99, hi, top1, energy, ref)

    @settings(max_examples=300, deadline=None)
    @given(tasks, ms, err, share, share, pos, pos)
    def test_non_decreasing_in_top1(self, task, p99, error, a, b, energy, ref):
        lo, hi = sorted((a, b))
        assert score(task, p99, error, lo, energy, ref) <= score(task, p99, error, hi, energy, ref)

    @settings(max_examples=300, deadline=None)
    @given(tasks, ms, err, share, pos, pos, pos)
    def test_non_increasing_in_energy(self, task, p99, error, top1, a, b, ref):
        lo, hi = sorted((a, b))
        assert score(task, p99, error, top1, lo, ref) >= score(task, p99, error, top1, hi, ref)

    @settings(max_examples=300, deadline=None)
    @given(tasks, pos, pos, ms, err, share, pos, pos)
    def test_a_looser_deadline_never_scores_lower(self, task, d1, d2, p99, error, top1, energy, ref):
        lo, hi = sorted((d1, d2))
        tight = Task("t", lo, task.tolerance, task.min_top1, task.energy_weight, task.softness)
        loose = Task("t", hi, task.tolerance, task.min_top1, task.energy_weight, task.softness)
        assert score(tight, p99, error, top1, energy, ref) <= score(loose, p99, error, top1, energy, ref)

    @settings(max_examples=300, deadline=None)
    @given(tasks, st.floats(min_value=1e-6, max_value=1.0), st.floats(min_value=1e-6, max_value=1.0),
           ms, err, share, pos, pos)
    def test_a_looser_tolerance_never_scores_lower(self, task, t1, t2, p99, error, top1, energy, ref):
        lo, hi = sorted((t1, t2))
        tight = Task("t", task.deadline_ms, lo, task.min_top1, task.energy_weight, task.softness)
        loose = Task("t", task.deadline_ms, hi, task.min_top1, task.energy_weight, task.softness)
        assert score(tight, p99, error, top1, energy, ref) <= score(loose, p99, error, top1, energy, ref)

    @settings(max_examples=200, deadline=None)
    @given(tasks, pos, err, share, pos)
    def test_within_every_requirement_the_most_frugal_plan_scores_one(self, task, p99, error, top1, energy):
        inside = Task("t", max(task.deadline_ms, p99), max(task.tolerance, error, 1e-9), min(task.min_top1, top1),
                      task.energy_weight, task.softness)
        assert score(inside, p99, error, top1, energy, energy) == 1.0


def two_worker_plan(platform, gpu=False):
    big, little = platform.cpu_clusters[-1], platform.cpu_clusters[0]
    first = WorkerSpec("gpu" if gpu else little.name, (little.cpus[0],), 1, 4.0)
    second = WorkerSpec(big.name, tuple(big.cpus[:2]), 2, 2.0)
    return Plan(model="m.tflite", model_sha256="0" * 64, platform=platform, strategy="pipe-it",
                stages=(StageSpec((0, 3), (first,), 250.0), StageSpec((3, 8), (second,), 500.0)),
                predicted_fps=250.0, predicted_latency_ms=6.0)


def stats_for(frames, worker_ms):
    stages = tuple(
        StageStats(index=k, layers=(0, 1), workers=1, frames=frames, measured_ms=m, predicted_ms=m, busy=0.0,
                   restarts=0, worker_frames=(frames,), worker_ms=(m,))
        for k, m in enumerate(worker_ms))
    return PipelineStats(frames=frames, wall_s=1.0, fps=float(frames), latency_p50_ms=1.0, latency_p95_ms=1.0,
                         latency_p99_ms=1.0, stages=stages)


class TestEnergyPerFrame:
    def test_by_hand_on_the_odroid(self):
        platform = load_board("odroid-xu4")
        power = power_for_platform(platform)
        plan = two_worker_plan(platform)
        # 100 frames in 1 s: the little worker busy 100 x 4 ms = 0.4 s, the big one (2 cores) 100 x 2 ms = 0.2 s
        mj, watts = energy_per_frame_mj(plan, power, stats_for(100, (4.0, 2.0)), wall_s=1.0, frames=100)
        big, little = power.of("big"), power.of("little")
        want = (4 * big.idle_w + 4 * little.idle_w + 0.4 * (little.active_w - little.idle_w)
                + 2 * 0.2 * (big.active_w - big.idle_w))
        assert watts == pytest.approx(want)
        assert mj == pytest.approx(want * 1000 / 100)

    def test_a_gpu_worker_draws_the_gpu_and_its_host_core(self):
        xu4 = load_board("odroid-xu4")
        platform = Platform(clusters=xu4.clusters + (Cluster("gpu", "Mali", (0,), kind="gpu"),), source="board:odroid-xu4")
        power = power_for_platform(platform)
        cpu_plan = two_worker_plan(platform)
        gpu_plan = two_worker_plan(platform, gpu=True)
        run = stats_for(100, (4.0, 2.0))
        _, cpu_w = energy_per_frame_mj(cpu_plan, power, run, wall_s=1.0, frames=100)
        _, gpu_w = energy_per_frame_mj(gpu_plan, power, run, wall_s=1.0, frames=100)
        gpu = power.of("gpu")
        assert gpu_w - cpu_w == pytest.approx(0.4 * (gpu.active_w - gpu.idle_w))

    def test_no_frames_is_refused(self):
        platform = load_board("odroid-xu4")
        with pytest.raises(Exception, match="at least one frame"):
            energy_per_frame_mj(two_worker_plan(platform), power_for_platform(platform), stats_for(0, (1.0, 1.0)),
                                wall_s=0.0, frames=0)


class TestAccuracyOfAPlan:
    def test_cpu_plans_are_exact_and_gpu_plans_take_the_table_or_the_fp32_bound(self):
        xu4 = load_board("odroid-xu4")
        platform = Platform(clusters=xu4.clusters + (Cluster("gpu", "Mali", (0,), kind="gpu"),), source="board:odroid-xu4")
        assert plan_accuracy(two_worker_plan(platform)) == EXACT
        assumed = plan_accuracy(two_worker_plan(platform, gpu=True))
        assert assumed.error == GPU_FP32_ERROR and assumed.top1 == 1.0 and "assumed" in assumed.source
        table = Accuracy(3e-3, 0.97, "gpu accuracy table")
        assert plan_accuracy(two_worker_plan(platform, gpu=True), table) == table
        from pipeit.gpu.accuracy import AccuracyPlan

        chosen = Accuracy.of_gpu_plan(AccuracyPlan("fp32", (2, 5), ms=3.0, error=2e-5, top1=1.0))
        assert (chosen.error, chosen.top1) == (2e-5, 1.0) and "fast layers [2, 5]" in chosen.source

    def test_score_runs_normalises_energy_against_the_most_frugal_run(self):
        task = make_task("background")
        scores = score_runs(task, {"a": (10.0, 2.0, 1.0, EXACT), "b": (10.0, 4.0, 2.0, EXACT),
                                   "c": (10.0, 2.0, 1.0, Accuracy(0.5, 1.0, "x"))})
        assert scores["a"].score == 1.0 and scores["a"].energy == 1.0
        assert scores["b"].energy == pytest.approx(0.5) and scores["b"].score == pytest.approx(0.5)
        assert scores["c"].accuracy == pytest.approx(task.tolerance / 0.5)
        assert scores["c"].score < scores["a"].score


# ---- the real thing: a short `pipeit bench` run -------------------------------------------------------------


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pipeit", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(bench_model):
    return bench_model


def test_bench_scores_every_strategy_for_the_task(tiny, bench_cache):
    result = run_cli("bench", str(tiny), "--platform", "emulate:big=0@1.0,little=1@0.5", "--frames", "16",
                     "--rounds", "1", "--strategies", "fastest-cluster,replicas,pipe-it", "--task", "background",
                     "--energy-weight", "0.8", "--cache-dir", str(bench_cache), "--no-trial", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["task"]["name"] == "background" and doc["task"]["default"] is False
    assert doc["task"]["energy_weight"] == 0.8 and doc["task"]["deadline_ms"] == TASKS["background"].deadline_ms
    assert doc["power"]["placeholder"] is True and doc["power"]["board"] is None
    assert "trial" not in doc  # --no-trial: the DSE's pick is streamed untried
    # one CPU per emulated cluster: the platform draws between all-idle and all-busy power
    idle = sum(c["idle_w"] for c in doc["power"]["clusters"].values())
    busy = sum(c["active_w"] for c in doc["power"]["clusters"].values())
    assert doc["power"]["clusters"]["little"]["active_w"] < doc["power"]["clusters"]["big"]["active_w"]
    energies = []
    for s in doc["strategies"]:
        # the keys bench reported before are all still there
        assert {"name", "fps", "fps_rounds", "latency_ms", "meets_limit", "rss_bytes", "efficiency",
                "predicted_fps", "stages"} <= set(s)
        sat = s["satisfaction"]
        assert sat["task"] == "background"
        assert 0.0 <= sat["score"] <= 1.0
        assert sat["error"] == 0.0 and sat["top1"] == 1.0 and sat["accuracy"] == 1.0  # CPU plans run the exact model
        assert sat["latency_p99_ms"] == pytest.approx(s["latency_ms"]["p99"])
        over = max(0.0, sat["latency_p99_ms"] - 1000.0)
        assert sat["latency"] == pytest.approx(math.exp(-over / (TASKS["background"].softness * 1000.0)))
        assert idle <= sat["power_w"] <= busy + 1e-9
        assert sat["energy_mj"] == pytest.approx(sat["power_w"] * 1000.0 / s["fps"], rel=1e-6)
        assert 0.0 < sat["energy"] <= 1.0
        assert sat["score"] == pytest.approx(sat["latency"] * sat["accuracy"] * sat["energy"] ** 0.8)
        energies.append(sat["energy_mj"])
    best = min(energies)
    for s in doc["strategies"]:
        assert s["satisfaction"]["energy"] == pytest.approx(best / s["satisfaction"]["energy_mj"])


def test_bench_without_a_task_states_the_default(tiny, bench_cache):
    result = run_cli("bench", str(tiny), "--platform", "auto", "--frames", "8", "--rounds", "1",
                     "--strategies", "fastest-cluster", "--cache-dir", str(bench_cache), "--no-trial")
    assert result.returncode == 0, result.stderr
    assert "satisfaction for task interactive" in result.stdout and "the default task" in result.stdout
    assert "mJ/frame" in result.stdout and "satisf" in result.stdout
    assert "placeholder" in result.stdout


def test_bench_with_a_measured_power_file_says_so(tiny, bench_cache, tmp_path):
    host = load_platform("auto").cpu_clusters[0].core_type
    measured = {"version": 1, "board": "my-board", "description": "measured with a USB meter",
                "cores": {host: {"active_w": 2.0, "idle_w": 0.3, "source": "USB meter", "estimate": False}}}
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(measured))
    result = run_cli("bench", str(tiny), "--platform", "auto", "--frames", "8", "--rounds", "1",
                     "--strategies", "fastest-cluster", "--cache-dir", str(bench_cache), "--no-trial",
                     "--power", str(path))
    assert result.returncode == 0, result.stderr
    assert "energy: board power file my-board; measured figures" in result.stdout, result.stdout


@pytest.mark.parametrize("args, message", [
    (["--energy-weight", "2"], "energy weight"),
    (["--deadline-ms", "-1"], "deadline"),
    (["--tolerance", "abc"], "--tolerance"),
    (["--tolerance", "1e-3,1.5"], "top-1"),
    (["--power", "BADPOWER"], "version"),
    (["--power", "MISSING"], "cannot read"),
])
def test_bad_task_or_power_input_is_one_line_and_exit_2(tiny, tmp_path, args, message, pipeit_in_process):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 9, "board": "x", "cores": {}}))
    args = [str(bad) if a == "BADPOWER" else str(tmp_path / "none.json") if a == "MISSING" else a for a in args]
    result = pipeit_in_process("bench", tiny, *args, "--cache-dir", tmp_path)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith("INFO:")]
    assert len(lines) == 1 and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_task_name_is_refused_by_the_parser(tiny, tmp_path, pipeit_in_process):
    result = pipeit_in_process("bench", tiny, "--task", "batch", "--cache-dir", tmp_path)
    assert result.returncode == 2 and "invalid choice: 'batch'" in result.stderr
    assert "Traceback" not in result.stderr
