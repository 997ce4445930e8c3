"""The GPU as a cluster the planner places: platform specs, gpu:1 profile rows, plans with a GPU stage.

Real parts throughout: pocl is this host's OpenCL device (a CPU device, so
``auto`` adds no GPU and ``emulate:...,gpu=0`` is how the planner is
exercised), GPU layer times are measured with the real kernels in a pinned
process, and plans come from the real DSE. Only "no pyopencl" is staged, by
blocking the import in a child interpreter.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cores.errors import PlatformError
from cores.model import CoreSetup, Platform
from cores.platform import load_platform, split_gpu_request
from pipeit.dse import best_candidate, plan_pipeline
from pipeit.dse.cost import DEFAULT_DEVICE_COPY, CostModel, device_copies
from pipeit.errors import PlanError
from pipeit.layer_times import LayerTimes
from pipeit.transfer import DEFAULT_OVERHEAD, HopModel
from tests.dse_brute import best_of, brute_force

pytest.importorskip("pyopencl")

SPEC = "emulate:big=0@1.0,little=1@0.4,gpu=0"
FREE = HopModel(0.0, 0.0, "free")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sysfs"


def run_cli(*args, block_opencl: bool = False, timeout: float = 300):
    """``python -m pipeit ARGS``; with ``block_opencl`` the child cannot import pyopencl."""
    if block_opencl:
        code = ("import sys; sys.modules['pyopencl'] = None; from pipeit.cli import main; "
                "sys.exit(main(sys.argv[1:]))")
        cmd = [sys.executable, "-c", code, *args]
    else:
        cmd = [sys.executable, "-m", "pipeit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def small_model(path: Path) -> Path:
    """Five float layers; layer 1 (MEAN over channels) has no GPU kernel."""
    from pipeit.tflite_builder import ModelBuilder

    b = ModelBuilder(seed=0)
    x = b.input("image", (1, 16, 16, 8))
    x = b.conv2d(x, 8, kernel=3, activation="RELU")
    x = b.mean(x, axes=(3,), keep_dims=True)
    x = b.conv2d(x, 8, kernel=1, activation="RELU")
    x = b.mean(x)
    b.output(b.fully_connected(x, 10))
    path.write_bytes(b.to_bytes())
    return path


UNSUPPORTED = 1


@pytest.fixture(scope="module")
def gpu_profile(tmp_path_factory):
    """(model path, profile CSV with gpu:1 rows only) -- measured once with the real kernels."""
    folder = tmp_path_factory.mktemp("gpu_plan")
    model = small_model(folder / "small.tflite")
    out = folder / "gpu.csv"
    done = run_cli("profile", str(model), "--platform", SPEC, "--setup", "gpu:1", "-o", str(out),
                   "--no-progress", "--json")
    assert done.returncode == 0, done.stderr
    return model, out, json.loads(done.stdout)


def _rows(path: Path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _with_cpu_rows(gpu_csv: Path, out: Path, cpu_ms: float, gpu_scale: float = 1.0) -> Path:
    """A profile: the measured gpu:1 rows (times scaled) plus big:1/little:1 rows of ``cpu_ms`` per layer."""
    rows = _rows(gpu_csv)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            for setup, ms in (("big:1", cpu_ms), ("little:1", cpu_ms / 0.4)):
                writer.writerow({**row, "setup": setup, "median_ms": f"{ms:.6g}", "status": "ok",
                                 "spread": "0.01", "repeats": "9"})
            if row["status"] == "ok":
                row = {**row, "median_ms": f"{float(row['median_ms']) * gpu_scale:.6g}"}
            writer.writerow(row)
    return out


class TestPlatformSpec:
    def test_emulate_adds_the_gpu_cluster(self):
        platform = load_platform(SPEC)
        gpu = platform.cluster("gpu")
        assert gpu.kind == "gpu" and gpu.device == "0"
        assert gpu.cpus == (1,)  # the slowest CPU cluster's first CPU drives it
        assert "pthread" in gpu.core_type  # the OpenCL device's name
        assert platform.fastest.name == "big"
        assert platform.cpus == (0, 1)  # the GPU adds no CPU
        assert [s for s in platform.setups() if s.cluster == "gpu"] == [CoreSetup("gpu", 1)]
        with pytest.raises(PlatformError, match="only 1 core"):
            platform.check_setup(CoreSetup("gpu", 2))

    def test_name_selector_and_host_cpu(self):
        gpu = load_platform("emulate:big=0@1.0,little=1@0.4,gpu=pthread@cpu0").cluster("gpu")
        assert gpu.device == "pthread" and gpu.cpus == (0,)

    def test_gpu_piece_anywhere_and_cpu_lists_intact(self):
        assert split_gpu_request("gpu=0,big=0,1@1.0") == ("big=0,1@1.0", split_gpu_request("gpu=0")[1])
        text, request = split_gpu_request("big=0-1@1.0;gpu=Mali@cpu3")
        assert text == "big=0-1@1.0" and request.selector == "Mali" and request.host_cpu == 3

    @pytest.mark.parametrize("spec, words", [
        ("emulate:big=0,gpu=7", "OpenCL device 7 does not exist"),
        ("emulate:big=0,gpu=nosuchdevice", "no OpenCL device matches"),
        ("emulate:big=0,gpu=", "needs an OpenCL device"),
        ("emulate:big=0,gpu=0,1", "one device"),
        ("emulate:big=0,gpu=0,gpu=0", "appears twice"),
        ("emulate:big=0,gpu=0@cpux", "not a CPU number"),
        ("emulate:big=0,gpu=0@cpu99", "not online"),
        ("emulate:big=0,gpu=0@1", r"name the host CPU as @cpuN \(gpu=0@cpu1\)"),  # was "no device matches '0@1'"
    ])
    def test_bad_gpu_specs(self, spec, words):
        with pytest.raises(PlatformError, match=words):
            load_platform(spec)

    def test_json_round_trip(self, tmp_path):
        platform = load_platform(SPEC)
        assert Platform.from_json(json.loads(json.dumps(platform.to_json()))).clusters == platform.clusters
        path = tmp_path / "p.json"
        path.write_text(json.dumps(platform.to_json()))
        again = load_platform(str(path))
        assert again.clusters == platform.clusters and again.cluster("gpu").device == "0"

    def test_auto_skips_a_cpu_opencl_device_and_says_why(self):
        platform = load_platform("auto")
        assert all(c.kind == "cpu" for c in platform.clusters)  # pocl is a CPU device
        assert "type GPU" in dict(platform.extra)["gpu"]

    def test_auto_on_a_fixture_tree_does_not_probe_opencl(self):
        platform = load_platform("auto", sysfs_root=FIXTURES / "rk3399")
        assert "gpu" not in dict(platform.extra) and all(c.kind == "cpu" for c in platform.clusters)

    def test_topology_shows_the_gpu(self):
        done = run_cli("topology", "--platform", SPEC, "--json")
        assert done.returncode == 0, done.stderr
        gpu = [c for c in json.loads(done.stdout)["clusters"] if c["kind"] == "gpu"]
        assert len(gpu) == 1 and gpu[0]["device"] == "0" and gpu[0]["cpus"] == [1]
        text = run_cli("topology", "--platform", SPEC).stdout
        assert "opencl 0" in text and "1 (host)" in text


class TestWithoutOpenCl:
    def test_auto_goes_on_and_topology_says_so(self):
        done = run_cli("topology", block_opencl=True)
        assert done.returncode == 0, done.stderr
        assert "no GPU cluster: pyopencl is not installed" in done.stdout

    def test_explicit_gpu_is_one_line_exit_2(self, tmp_path):
        model = small_model(tmp_path / "m.tflite")
        for args in (("topology", "--platform", SPEC),
                     ("plan", str(model), "--platform", SPEC, "--times", "x.json", "-o", str(tmp_path / "p.json"))):
            done = run_cli(*args, block_opencl=True)
            assert done.returncode == 2
            assert done.stderr.count("\n") == 1 and "pyopencl is not installed" in done.stderr
            assert "Traceback" not in done.stderr


def _table(gpu_row, n=6, cpu_ms=10.0, cut=4096, copy=None):
    big = tuple([cpu_ms] * n)
    times = {CoreSetup("big", 1): big, CoreSetup("little", 1): tuple(v / 0.4 for v in big),
             CoreSetup("gpu", 1): tuple(gpu_row)}
    return LayerTimes(n, times, tuple([cut] * (n + 1)), tuple([1000] * n),
                      device_copy={} if copy is None else {"gpu": copy})


class TestPlanner:
    """Recorded tables (simulation mode): the DSE's treatment of the gpu:1 setup."""

    def test_an_attractive_gpu_gets_one_stage_and_one_worker(self):
        platform = load_platform(SPEC)
        table = _table([0.5] * 6)  # the GPU would be worth many workers: it still gets one
        found = best_candidate(table, platform, "pipeit", hop=FREE)
        gpu_workers = [w for s in found.stages for w in s.workers if w.cluster == "gpu"]
        assert gpu_workers == [CoreSetup("gpu", 1)]
        plan = plan_pipeline(table, platform, model="m.tflite", model_sha256="ab", hop=FREE)
        worker = [w for s in plan.stages for w in s.workers if w.cluster == "gpu"][0]
        assert worker.cpus == (1,) and worker.threads == 1

    def test_a_plan_file_giving_the_gpu_to_two_workers_or_joining_it_to_a_cpu_cluster_is_refused(self):
        """Both ran: two workers shared one device, and "gpu+big" silently ran TFLite on the CPU."""
        from pipeit.plan import Plan

        platform = load_platform(SPEC)
        plan = plan_pipeline(_table([0.5] * 6), platform, model="m.tflite", model_sha256="ab", hop=FREE)
        doc = plan.to_json()
        stage = next(s for s in doc["stages"] if any(w["cluster"] == "gpu" for w in s["workers"]))
        gpu_worker = next(w for w in stage["workers"] if w["cluster"] == "gpu")
        stage["workers"].append(dict(gpu_worker))
        with pytest.raises(PlanError, match="GPU cluster 'gpu' is given to two workers"):
            Plan.from_json(doc)
        stage["workers"].pop()
        gpu_worker["cluster"] = "gpu+big"
        with pytest.raises(PlanError, match="joins a GPU cluster to others"):
            Plan.from_json(doc)

    def test_run_says_when_no_table_of_its_tables_file_is_for_a_gpu_stage(self):
        """A stage takes only the tables of exactly its layers: others were ignored without a word."""
        from pipeit.cli.cmd_run import _warn_unused_tables
        from pipeit.executor.gpu_worker import gpu_stages

        plan = plan_pipeline(_table([0.5] * 6), load_platform(SPEC), model="m.tflite", model_sha256="ab", hop=FREE)
        (stage,) = gpu_stages(plan)
        own = tuple(plan.stages[stage].layers)
        with pytest.warns(UserWarning, match=r"tables for layers \[5, 9\), which no GPU stage"):
            _warn_unused_tables("t.json", {(5, 9): (), own: ()}, plan)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _warn_unused_tables("t.json", {own: ()}, plan)  # every table used: nothing to say

    def test_unsupported_layers_never_run_on_the_gpu(self):
        platform = load_platform(SPEC)
        row = [0.1] * 6
        row[2] = math.inf
        found = best_candidate(_table(row), platform, "pipeit", hop=FREE)
        for stage in found.stages:
            if any(w.cluster == "gpu" for w in stage.workers):
                assert not stage.start <= 2 < stage.end
        assert any(w.cluster == "gpu" for s in found.stages for w in s.workers)

    def test_copy_cost_is_charged(self):
        platform = load_platform(SPEC)
        cheap = _table([1.0] * 6, cut=1 << 20, copy=HopModel(0.0, 0.0))
        dear = _table([1.0] * 6, cut=1 << 20, copy=HopModel(50.0, 0.0))
        fast = best_candidate(cheap, platform, hop=FREE, overhead=None)  # layers and copies only
        slow = best_candidate(dear, platform, hop=FREE, overhead=None)
        assert fast.fps > slow.fps
        for found, extra in ((fast, 0.0), (slow, 100.0)):
            for stage, times in zip(found.stages, found.worker_ms):
                for w, ms in zip(stage.workers, times):
                    if w.cluster == "gpu":  # both ends' copies on top of the layers
                        assert ms == pytest.approx(stage.end - stage.start + extra)
        # a latency limit below the copies keeps the GPU out altogether
        limited = best_candidate(dear, platform, "pipeit", latency_ms=99.0, hop=FREE)
        assert not any(w.cluster == "gpu" for s in limited.stages for w in s.workers)
        cost = CostModel(dear, FREE, devices=device_copies(platform, dear))
        assert cost.worker_ms(CoreSetup("gpu", 1), 0, 6) == pytest.approx(6.0 + 100.0)
        assert cost.worker_ms(CoreSetup("big", 1), 0, 6) == pytest.approx(60.0)

    def test_default_copy_model_when_none_was_measured(self):
        platform = load_platform(SPEC)
        assert device_copies(platform, _table([1.0] * 6)) == {"gpu": DEFAULT_DEVICE_COPY}

    @pytest.mark.parametrize("seed", range(4))
    def test_exact_search_matches_brute_force_with_a_gpu(self, seed):
        import random

        rng = random.Random(seed)
        platform = load_platform("emulate:big=0@1.0,gpu=0")
        n = 5
        big = tuple(rng.uniform(1, 10) for _ in range(n))
        gpu = [rng.uniform(0.2, 6) for _ in range(n)]
        gpu[rng.randrange(n)] = math.inf
        copy = HopModel(rng.uniform(0, 2), rng.uniform(0, 1e-5))
        hop = HopModel(0.05, 1e-6)
        table = LayerTimes(n, {CoreSetup("big", 1): big, CoreSetup("gpu", 1): tuple(gpu)},
                           tuple(rng.randrange(1, 200_000) for _ in range(n + 1)), tuple([10] * n),
                           device_copy={"gpu": copy})
        found = best_candidate(table, platform, "pipeit", hop=hop)
        truth = best_of(brute_force(table, platform, hop, device_copy=copy, overhead=DEFAULT_OVERHEAD))
        assert found.fps == pytest.approx(truth[0], rel=1e-9)
        assert found.latency_ms == pytest.approx(truth[1], rel=1e-9)

    @pytest.mark.parametrize("seed", range(3))
    def test_a_gpu_with_a_cpu_cluster_s_times_is_not_its_mirror(self, seed):
        """Equal rows, but only the GPU pays copies: the symmetry breaking must not merge the two.

        (Seed 2's optimum is ``[0,2) gpu:1 | [2,4) big:1``, which a search
        treating the two clusters as mirrors never visits: 87.8 fps, not 100.6.)
        """
        import random

        rng = random.Random(100 + seed)
        platform = load_platform("emulate:big=0@1.0,gpu=0")
        n = 4
        row = tuple(rng.uniform(1, 10) for _ in range(n))
        cuts = (10, 10, 10, 10, 5_000_000)  # a GPU last pays a large download: GPU first can win
        copy = HopModel(0.0, 2e-6)
        table = LayerTimes(n, {CoreSetup("big", 1): row, CoreSetup("gpu", 1): row}, cuts, (1,) * n,
                           device_copy={"gpu": copy})
        found = best_candidate(table, platform, "pipeit", hop=FREE)
        truth = best_of(brute_force(table, platform, FREE, device_copy=copy, overhead=DEFAULT_OVERHEAD))
        assert found.fps == pytest.approx(truth[0], rel=1e-9)
        assert found.latency_ms == pytest.approx(truth[1], rel=1e-9)

    def test_layer_times_json_keeps_inf_and_the_copy_model(self, tmp_path):
        row = [0.5] * 6
        row[1] = math.inf
        table = _table(row, copy=HopModel(0.1, 1e-7, "measured"))
        table.save(tmp_path / "t.json")
        again = LayerTimes.load(tmp_path / "t.json")
        assert again.times[CoreSetup("gpu", 1)][1] == math.inf
        assert again.device_copy["gpu"].fixed_ms == 0.1 and again.device_copy["gpu"].ms_per_byte == 1e-7


class TestProfileAndPlan:
    """The real path: pipeit profile writes gpu:1 rows; pipeit plan reads them or measures."""

    def test_profile_writes_gpu_rows(self, gpu_profile):
        model, out, summary = gpu_profile
        rows = _rows(out)
        assert summary["setups"] == ["gpu:1"] and summary["no_gpu_kernel"] == 1 and summary["failed"] == 0
        assert {r["setup"] for r in rows} == {"gpu:1"} and {r["kind"] for r in rows} == {"layer"}
        assert len(rows) == 5  # every layer is distinct here
        bad = [r for r in rows if r["status"] != "ok"]
        assert [int(r["start"]) for r in bad] == [UNSUPPORTED] and "no GPU kernel" in bad[0]["status"]
        assert all(float(r["median_ms"]) > 0 for r in rows if r["status"] == "ok")
        again = run_cli("profile", str(model), "--platform", SPEC, "--setup", "gpu:1", "-o", str(out),
                        "--no-progress", "--json")  # resumes: nothing left to measure
        assert again.returncode == 0 and json.loads(again.stdout)["measured"] == 0

    def test_gpu_rows_and_the_same_boards_cpu_rows_share_one_profile(self, gpu_profile, tmp_path):
        """GPU.md adds gpu:1 rows, measured on `...,gpu=0`, to the board's CPU profile: the GPU cluster was in
        the fingerprint, so that profile was "another platform" (refused without --force, warned in plan)."""
        import shutil

        model, out, _ = gpu_profile
        both = tmp_path / "both.csv"
        shutil.copy(out, both)
        cpus_only = SPEC.replace(",gpu=0", "")
        done = run_cli("profile", str(model), "--platform", cpus_only, "--setup", "big:1", "--stages", "0",
                       "--repeats", "3", "-o", str(both), "--no-progress")
        assert done.returncode == 0, done.stderr
        assert {r["setup"] for r in _rows(both)} == {"gpu:1", "big:1"}
        done = run_cli("plan", str(model), "--platform", SPEC, "--profile", str(both), "-o", str(tmp_path / "p.json"))
        assert done.returncode == 0 and "another platform" not in done.stderr, done.stderr
        # the daemon's cache holds a whole platform's plan: there the GPU still counts
        from pipeit.daemon.state import cache_folder

        assert cache_folder(load_platform(SPEC), "ab" * 32) != cache_folder(load_platform(cpus_only), "ab" * 32)

    def test_plan_places_a_gpu_stage_but_not_the_unsupported_layer(self, gpu_profile, tmp_path):
        model, out, _ = gpu_profile
        profile = _with_cpu_rows(out, tmp_path / "all.csv", cpu_ms=20.0, gpu_scale=0.01)
        done = run_cli("plan", str(model), "--platform", SPEC, "--profile", str(profile),
                       "-o", str(tmp_path / "plan.json"), "--save-times", str(tmp_path / "t.json"), "--json")
        assert done.returncode == 0, done.stderr
        plan = json.loads(done.stdout)
        gpu_stages = [s for s in plan["stages"] if any(w["cluster"] == "gpu" for w in s["workers"])]
        assert len(gpu_stages) == 1
        start, end = gpu_stages[0]["layers"]
        assert not start <= UNSUPPORTED < end
        assert gpu_stages[0]["workers"][0]["cpus"] == [1] and gpu_stages[0]["workers"][0]["threads"] == 1
        times = LayerTimes.load(tmp_path / "t.json")
        assert math.isinf(times.times[CoreSetup("gpu", 1)][UNSUPPORTED])
        assert "gpu:1:profile" in times.source

    def test_plan_measures_the_gpu_on_the_fly_when_the_profile_lacks_it(self, gpu_profile, tmp_path):
        model, out, _ = gpu_profile
        both = _with_cpu_rows(out, tmp_path / "both.csv", cpu_ms=0.01)
        cpu_only = tmp_path / "cpu.csv"
        rows = [r for r in _rows(both) if r["setup"] != "gpu:1"]
        with open(cpu_only, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        done = run_cli("plan", str(model), "--platform", SPEC, "--profile", str(cpu_only),
                       "-o", str(tmp_path / "plan.json"), "--save-times", str(tmp_path / "t.json"), "--json")
        assert done.returncode == 0, done.stderr
        times = LayerTimes.load(tmp_path / "t.json")
        row = times.times[CoreSetup("gpu", 1)]
        assert math.isinf(row[UNSUPPORTED]) and sum(math.isfinite(v) for v in row) == 4
        assert "gpu:1:measured" in times.source and "measured on" in times.device_copy["gpu"].source
        for stage in json.loads(done.stdout)["stages"]:
            if any(w["cluster"] == "gpu" for w in stage["workers"]):
                assert not stage["layers"][0] <= UNSUPPORTED < stage["layers"][1]

    def test_an_int8_model_stays_on_the_cpus(self, gpu_profile, tmp_path):
        from pipeit.graph import load_graph
        from pipeit.layer_times import layer_times_for
        from pipeit.tflite_builder import ModelBuilder

        b = ModelBuilder(seed=0)
        x = b.input("image", (1, 8, 8, 4))
        x = b.conv2d(x, 4, kernel=3, activation="RELU")
        b.output(b.conv2d(x, 4, kernel=1))
        model = tmp_path / "q.tflite"
        model.write_bytes(b.to_bytes(int8=True))
        graph = load_graph(str(model))
        platform = load_platform(SPEC)
        cpu = {CoreSetup("big", 1): 0.5, CoreSetup("little", 1): 1.25}
        from pipeit.profile_table import ProfileRow, ProfileTable

        rows = [ProfileRow(kind="layer", model="q", start=l.index, end=l.index + 1, setup=s,
                           key=l.descriptor.key_string(), median_ms=ms, spread=0.0, repeats=9,
                           fingerprint="x", status="ok", descriptor=l.descriptor)
                for l in graph.layers for s, ms in cpu.items()]
        times = layer_times_for(graph, platform, profile=ProfileTable(rows), model=str(model))
        assert all(math.isinf(v) for v in times.times[CoreSetup("gpu", 1)])
        found = best_candidate(times, platform, "pipeit")
        assert not any(w.cluster == "gpu" for s in found.stages for w in s.workers)

    def test_without_a_model_file_the_gpu_times_are_asked_for(self, gpu_profile):
        from pipeit.graph import load_graph
        from pipeit.layer_times import layer_times_for
        from pipeit.profile_table import ProfileTable

        model, _, _ = gpu_profile
        graph = load_graph(str(model))
        rows = []
        from pipeit.profile_table import ProfileRow

        for l in graph.layers:
            rows.append(ProfileRow(kind="layer", model="m", start=l.index, end=l.index + 1,
                                   setup=CoreSetup("big", 1), key=l.descriptor.key_string(), median_ms=1.0,
                                   spread=0.0, repeats=9, fingerprint="x", status="ok", descriptor=l.descriptor))
        with pytest.raises(PlanError, match="no gpu:1 rows"):
            layer_times_for(graph, load_platform(SPEC), profile=ProfileTable(rows))


class TestLaunchOverhead:
    """A GPU stage of many small layers costs its launches, not only its kernels' device time."""

    def test_supported_runs_longest_first(self):
        from pipeit.gpu.measure import _supported_runs

        inf = math.inf
        assert _supported_runs([1, inf, 1, 1, 1, inf, 1]) == [(2, 5), (0, 1), (6, 7)]
        assert _supported_runs([inf, inf]) == [] and _supported_runs([2.0]) == [(0, 1)]

    def test_every_layer_is_charged_its_own_launches(self):
        """Launch counts come from the stages the GPU worker would build: a concat of three inputs is
        three launches, a RESHAPE none (it aliases its input), a layer without a kernel none, and every
        charged time is the kernel time plus its launches at the one measured overhead."""
        from pipeit.gpu.autotune import gpu_layer_times
        from pipeit.gpu.device import make_context
        from pipeit.gpu.measure import measure_copy, measure_launch_overhead
        from pipeit.modelfile import read_model
        from pipeit.tflite_builder import ModelBuilder

        b = ModelBuilder(seed=1)
        x = b.input("image", (1, 8, 8, 8))
        a = b.conv2d(x, 8, kernel=1)                                   # 0: one launch
        c = b.concatenation([a, b.conv2d(x, 8, kernel=1), x], axis=3)   # 1: conv, 2: concat of three
        m = b.mean(c, axes=(3,), keep_dims=True)                        # 3: no GPU kernel
        r = b.reshape(b.conv2d(m, 4, kernel=1), (1, 256))               # 4: conv, 5: reshape
        b.output(b.fully_connected(r, 5))                               # 6: one launch
        model = read_model(b.to_bytes())
        ctx = make_context(None)
        times = gpu_layer_times(model, ctx, repeats=1)
        assert math.isinf(times[3]) and sum(math.isfinite(t) for t in times) == 6
        launch_ms, launches = measure_launch_overhead(model, ctx, None, times, measure_copy(ctx))
        assert launches == (1, 1, 3, 0, 1, 0, 1)
        assert 0 <= launch_ms < 10  # ms per launch: measured, finite; pocl's own figure swings too much to pin
