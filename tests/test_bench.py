"""`pipeit bench`: every strategy planned from a fresh profile and streamed, in one run."""

import json
import os
import subprocess
import sys

import pytest



def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pipeit", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(bench_model):
    return bench_model


def test_bench_reports_every_strategy_against_the_ideal(tiny, bench_cache):
    result = run_cli("bench", str(tiny), "--platform", "auto", "--frames", "24", "--rounds", "2",
                     "--cache-dir", str(bench_cache), "--trial-seconds", "0.25", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"] == "tiny.tflite"
    assert "[bench] round 2/2" in result.stderr  # --json keeps stdout for the document, not progress off
    assert "INFO:" not in result.stderr  # the runtime's delegate line, once per bare run of the ideal
    assert doc["ideal_fps"] > 0 and doc["ideal_interleaved_fps"] > 0
    names = [s["name"] for s in doc["strategies"]]
    assert names == ["all-cores", "fastest-cluster", "replicas", "pipe-it", "pipeit"]
    for s in doc["strategies"]:
        assert s["fps"] > 0 and len(s["fps_rounds"]) == 2
        assert 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p99"]
        assert s["rss_bytes"] > 10 * 2**20  # the workers' interpreters, at least
        assert s["efficiency"] == pytest.approx(s["fps"] / doc["ideal_fps"])
        # the ideal measured again in every round, the way the strategies are, gives a second efficiency
        assert s["efficiency_interleaved"] == pytest.approx(s["fps"] / doc["ideal_interleaved_fps"])
        assert s["predicted_fps"] > 0
        assert s["meets_limit"] is None
        # each stage carries its median round's figures: service time against the plan's, load
        for stage in s["stages"]:
            assert stage["measured_ms"] > 0 and stage["predicted_ms"] > 0
            assert 0 < stage["busy"] <= 1.0 + 1e-6 and stage["restarts"] == 0
    # a strategy whose plan is another's pipeline is measured once and reported for both
    by_name = {s["name"]: s for s in doc["strategies"]}
    for s in doc["strategies"]:
        twin = s["same_plan_as"]
        if twin is not None:
            assert by_name[twin]["same_plan_as"] is None
            assert s["fps_rounds"] == by_name[twin]["fps_rounds"]
            assert s["stages"] == by_name[twin]["stages"]
    # on one cluster, all-cores and fastest-cluster are the same pipeline (all cores of it)
    assert by_name["fastest-cluster"]["same_plan_as"] == "all-cores"
    # the profile was cached where asked, so a second run would not profile again
    assert list(bench_cache.glob("profiles/*.csv"))
    # the plans were made with the layer times re-anchored to the whole-model time measured in this run
    assert set(doc["time_scale"]) == {"cpu"} and 0.2 < doc["time_scale"]["cpu"] < 5.0


def test_bench_with_a_latency_limit_judges_each_strategy(tiny, bench_cache):
    result = run_cli("bench", str(tiny), "--platform", "auto", "--frames", "16", "--rounds", "1",
                     "--cache-dir", str(bench_cache), "--latency-x", "3", "--strategies", "fastest-cluster,pipeit",
                     "--as-profiled", "--trial-seconds", "0.25", "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["latency_limit_ms"] > 0
    assert "[bench]" not in result.stderr  # --quiet
    assert doc["time_scale"] == {}  # --as-profiled: planned with the profile's own times
    for s in doc["strategies"]:
        assert s["meets_limit"] == (s["latency_ms"]["p99"] <= doc["latency_limit_ms"])


@pytest.mark.parametrize("args, message", [
    (["missing.tflite"], "no such model file"),
    (["MODEL", "--strategies", "fastest,pipeit"], "unknown strategy"),
    (["MODEL", "--strategies", ""], "unknown strategy ''"),  # was every strategy, exit 0
    (["MODEL", "--frames", "0"], "must be >= 1"),
    (["MODEL", "--platform", "emulate:big=0@1.0,little=0@0.4"], "CPU"),
    (["FOLDER"], "is a folder, not a model file"),
    (["MODEL", "--latency-x", "-1"], "--latency-x must be > 0"),
    (["MODEL", "--latency-x", "0"], "--latency-x must be > 0"),
    # without the pipeit strategy these went unchecked: "latency limit -1.0 ms", exit 0
    (["MODEL", "--latency-ms", "-1", "--strategies", "replicas"], "--latency-ms must be a positive number"),
    (["MODEL", "--latency-ms", "nan", "--strategies", "replicas"], "--latency-ms must be a positive number"),
    (["MODEL", "--memory-mb", "0", "--strategies", "replicas"], "--memory-mb must be a positive number"),
    (["MODEL", "--trial-seconds", "0"], "--trial-seconds must be > 0"),
    (["MODEL", "--trial-seconds", "nan"], "--trial-seconds must be > 0"),
    (["MODEL", "--trial-seconds", "1e9"], "at most 60"),
    # before any profiling: a board's description on a host without its CPUs (was a profiling line first)
    (["MODEL", "--platform", "board:rk3588"], "that this process cannot run on"),
])
def test_bad_input_is_one_line_and_exit_2(tiny, tmp_path, args, message, pipeit_in_process):
    args = [str(tiny) if a == "MODEL" else str(tmp_path) if a == "FOLDER" else a for a in args]
    if "board:rk3588" in args and set(range(8)) <= os.sched_getaffinity(0):
        pytest.skip("this machine has the board's eight CPUs")
    result = pipeit_in_process("bench", *args, "--cache-dir", tmp_path)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith("INFO:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["/proc/pipeit-nope", "/proc/self/pipeit-nope/cache"])
def test_a_cache_folder_that_cannot_be_made_is_one_line(tiny, where, pipeit_in_process):
    """Its parent exists and is a folder, but nothing can be made there: a FileNotFoundError traceback
    after the measuring started."""
    result = pipeit_in_process("bench", tiny, "--cache-dir", where, "--frames", "1", "--rounds", "1")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pipeit: error: --cache-dir {where}: cannot create {where}: "), lines[0]


class TestCoordinatorPlacement:
    """The process that feeds frames and dispatches them goes to the slowest cluster."""

    def test_big_little_board_uses_the_little_cluster(self):
        from cores.platform import load_platform
        from pipeit.executor.pipeline import coordinator_cpus

        platform = load_platform("board:odroid-xu4")
        little = min(platform.cpu_clusters, key=lambda c: c.capacity)
        assert coordinator_cpus(platform) == tuple(little.cpus)

    def test_emulated_board_uses_the_slowed_cluster(self):
        from cores.model import Cluster, Platform
        from pipeit.executor.pipeline import coordinator_cpus

        platform = Platform((Cluster("big", "x", (0,)), Cluster("little", "x", (1,), speed=0.4)), source="emulate:t")
        assert coordinator_cpus(platform) == (1,)

    def test_equal_cores_are_left_alone(self):
        from cores.platform import load_platform
        from pipeit.executor.pipeline import coordinator_cpus

        assert coordinator_cpus(load_platform("auto")) == ()
        assert coordinator_cpus(load_platform("board:rpi4")) == ()


class TestAnchorToMeasured:
    """The profile says how time splits between layers; the run's own whole-model timing says how fast."""

    @staticmethod
    def _times():
        from cores.model import CoreSetup
        from pipeit.layer_times import LayerTimes

        return LayerTimes(
            num_layers=3,
            times={CoreSetup("big", 1): (1.0, 2.0, 1.0), CoreSetup("big", 2): (0.6, 1.1, 0.6),
                   CoreSetup("little", 1): (3.0, 6.0, 3.0)},
            cut_bytes=(100, 50, 50, 10), weight_bytes=(0, 0, 0), source="profile",
        )

    def test_each_cluster_is_scaled_to_its_measured_whole_model_time(self):
        from cores.model import CoreSetup
        from pipeit.bench import anchor_to_measured

        anchored, factors = anchor_to_measured(self._times(), {"big": 5.0, "little": 12.0})
        assert factors == pytest.approx({"big": 1.25, "little": 1.0})
        assert sum(anchored.times[CoreSetup("big", 1)]) == pytest.approx(5.0)
        # the cluster's other setups follow its factor; the split between layers is the profile's
        assert anchored.times[CoreSetup("big", 2)] == pytest.approx((0.75, 1.375, 0.75))
        assert anchored.times[CoreSetup("little", 1)] == pytest.approx((3.0, 6.0, 3.0))
        assert "big 1.250" in anchored.source

    def test_a_cluster_not_measured_keeps_its_times(self):
        from cores.model import CoreSetup
        from pipeit.bench import anchor_to_measured

        times = self._times()
        anchored, factors = anchor_to_measured(times, {"big": 2.0, "gpu": 3.0})
        assert set(factors) == {"big"} and factors["big"] == pytest.approx(0.5)
        assert anchored.times[CoreSetup("little", 1)] == times.times[CoreSetup("little", 1)]
        unchanged, none = anchor_to_measured(times, {})
        assert unchanged is times and none == {}

    def test_a_bad_factor_is_refused(self):
        from pipeit.errors import PlanError

        with pytest.raises(PlanError, match="finite number > 0"):
            self._times().rescaled({"big": float("nan")})


def test_a_profile_from_another_platform_is_used_but_said(tiny, tmp_path):
    """As `plan` does; bench took it without a word (predict and fit refuse it without --force)."""
    from cores.platform import load_platform
    from pipeit.graph import load_graph
    from pipeit.profile_table import ProfileRow, ProfileWriter

    graph = load_graph(tiny)
    path = tmp_path / "elsewhere.csv"
    writer = ProfileWriter(path)
    seen = set()
    for layer in graph.layers:
        for setup in load_platform("auto").setups():
            key = layer.descriptor.key_string()
            if (key, setup) not in seen:
                seen.add((key, setup))
                writer.write(ProfileRow("layer", tiny.stem, layer.index, layer.index + 1, setup, key, 1.0, 0.01, 5,
                                        "0" * 16, descriptor=layer.descriptor))
    result = run_cli("bench", str(tiny), "--platform", "auto", "--profile", str(path), "--frames", "8",
                     "--rounds", "1", "--strategies", "pipeit", "--no-trial", "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    warning, = [line for line in result.stderr.splitlines() if line.startswith("pipeit: warning:")]
    assert "measured on another platform" in warning and str(path) in warning
    assert json.loads(result.stdout)["strategies"][0]["fps"] > 0
