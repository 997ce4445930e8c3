"""The executor's hop timed where the profile is, and carried into every plan made from that profile.

Real processes and real shared memory: :func:`time_hops` spawns a pinned receiver
and passes real ring slots. The plumbing tests build their tables by hand, because
what they check is which hop a plan charges, not what this host measures.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import pytest

from cores.model import Cluster, CoreSetup, Platform
from cores.platform import load_platform
from pipeit.dse import StagePlan, best_candidate, charged_hop, cost_model_for, plan_pipeline
from pipeit.errors import ExecutorError, PlanError, ProfileError
from pipeit.executor.hop_timing import HOP_SIZES, hop_cpus, time_hops
from pipeit.layer_times import LayerTimes
from pipeit.profile_table import COLUMNS, HOP_MODEL, ProfileRow, ProfileTable, parse_profile_text
from pipeit.profiler import profile_hops
from pipeit.transfer import DEFAULT_HOP, HopModel

TWO = "emulate:big=0@1.0,little=1@1.0"  # two equal one-core clusters: no cgroups, a two-stage plan possible
BIG, LITTLE = CoreSetup("big", 1), CoreSetup("little", 1)


def _shm_names() -> set:
    return {name for name in os.listdir("/dev/shm") if name.startswith("pipeit_")}


def _hop_row(nbytes: int, ms: float, setup: CoreSetup = BIG, fingerprint: str = "fp0",
             status: str = "ok") -> ProfileRow:
    return ProfileRow("hop", HOP_MODEL, 0, 0, setup, str(nbytes), ms, 0.05, 200, fingerprint, status,
                      hop_cpus=(0, 1))


def _times(hop=None) -> LayerTimes:
    """Four equal layers on two one-core clusters; a 4 MB tensor crosses every cut."""
    return LayerTimes(4, {BIG: (1.0,) * 4, LITTLE: (1.0,) * 4}, (4 << 20,) * 5, (1000,) * 4, hop=hop)


class TestTiming:
    def test_every_size_is_timed_between_two_cpus_and_nothing_is_left(self):
        platform = load_platform("auto")
        before = _shm_names()
        affinity = os.sched_getaffinity(0)
        timed = time_hops(hop_cpus(platform), sizes=(4096, 1 << 20), repeats=30, warmup=2)
        assert [t.nbytes for t in timed] == [4096, 1 << 20]
        assert all(t.repeats == 30 and 0 < t.median_ms < 100 and t.spread >= 0 for t in timed)
        assert os.sched_getaffinity(0) == affinity  # the sender's pinning is undone
        assert _shm_names() == before

    @pytest.mark.parametrize("sizes, repeats, message", [
        ((0,), 10, "sizes of at least one byte"),
        ((), 10, "sizes of at least one byte"),
        ((4096,), 0, "repeats >= 1"),
    ])
    def test_bad_requests_are_refused_before_any_process(self, sizes, repeats, message):
        with pytest.raises(ExecutorError, match=message):
            time_hops((0, 0), sizes=sizes, repeats=repeats)

    def test_a_receiver_that_cannot_pin_is_one_line_and_leaves_nothing(self, capfd):
        before = _shm_names()
        affinity = os.sched_getaffinity(0)
        with pytest.raises(ExecutorError, match="cannot pin the receiver to CPU 4000"):
            time_hops((0, 4000), repeats=5)
        with pytest.raises(ExecutorError, match="cannot pin the sender to CPU 4000"):
            time_hops((4000, 0), repeats=5)
        assert "Traceback" not in capfd.readouterr().err
        assert os.sched_getaffinity(0) == affinity and _shm_names() == before

    def test_the_receiver_sits_on_another_cluster_when_there_is_one(self):
        assert hop_cpus(load_platform(TWO)) == (0, 1)
        one = Platform(clusters=(Cluster("solo", "x", (3,)),), source="one core")
        assert hop_cpus(one) == (3, 3)  # a one-core board's stages, and hops, share its core
        slow_first = Platform(clusters=(Cluster("little", "a55", (0, 1), speed=0.5),
                                        Cluster("big", "a76", (4, 5))), source="two clusters")
        assert hop_cpus(slow_first) == (4, 0)

    def test_a_hop_that_cannot_be_timed_gives_failed_rows_and_the_default_line(self, capfd):
        """profile goes on: the plans charge the default hop, as before profiles held hops."""
        ghost = Platform(clusters=(Cluster("big", "x", (0,)), Cluster("gone", "x", (4000,))), source="ghost")
        rows = profile_hops(ghost, None, "fp0", progress=True)
        assert len(rows) == len(HOP_SIZES) and all(r.status.startswith("failed: hop timing: cannot pin") for r in rows)
        assert "hops not timed" in capfd.readouterr().err
        table = ProfileTable(rows, "fp0")
        assert table.hop_model() is None
        assert charged_hop(_times(table.hop_model())) is DEFAULT_HOP


class TestProfileRows:
    def test_hop_rows_round_trip_through_csv_and_fit_one_line(self):
        rows = [_hop_row(4096, 0.05), _hop_row(4 << 20, 1.05), _hop_row(1 << 20, 0.3, fingerprint="other")]
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(row.to_csv())
        again = parse_profile_text(text.getvalue())
        assert [r.to_csv() for r in again] == [r.to_csv() for r in rows]
        assert again[0].hop_bytes == 4096 and again[0].hop_cpus == (0, 1)
        line = ProfileTable(again, "fp0").hop_model()  # this platform's rows only
        assert line.hop_ms(4096) == pytest.approx(0.05) and line.hop_ms(4 << 20) == pytest.approx(1.05)
        assert ProfileTable(again, "fp0").setups() == []  # a hop's sender was not profiled

    @pytest.mark.parametrize("cell, value, message", [
        (5, "4097", "its key the same number"),
        (12, json.dumps({"bytes": 0, "cpus": [0, 1]}), "a whole number in 1.."),
        (12, json.dumps({"bytes": 4096.0, "cpus": [0, 1]}), "a whole number in 1.."),
        (12, json.dumps({"bytes": 4096, "cpus": [0]}), "two CPU numbers"),
        (12, json.dumps({"bytes": 4096, "cpus": [0, True]}), "two CPU numbers"),
        (12, json.dumps({"bytes": 4096, "cpus": [0, 1], "x": 1}), "a hop row needs"),
        (12, json.dumps([0, 1]), "a hop row needs"),
        (1, "m", "model 'executor' and range 0,0"),
        (3, "1", "model 'executor' and range 0,0"),
        (4, "big:x", "setup"),
        (7, "-1", "not a time in ms"),
    ])
    def test_malformed_hop_rows_name_their_line(self, cell, value, message):
        cells = _hop_row(4096, 0.05).to_csv()
        cells[cell] = value
        text = io.StringIO()
        csv.writer(text).writerows([COLUMNS, cells])
        with pytest.raises(ProfileError, match=rf"<profile>:2: .*{message}"):
            parse_profile_text(text.getvalue())


class TestPlans:
    def test_the_hop_measured_with_the_times_is_charged_and_a_given_one_wins(self):
        dear = HopModel(2.0, 1e-6, "a slow board")
        assert cost_model_for(_times(dear), load_platform(TWO)).hop is dear
        assert cost_model_for(_times(), load_platform(TWO)).hop is DEFAULT_HOP
        given = HopModel(0.0, 0.0, "given")
        assert cost_model_for(_times(dear), load_platform(TWO), given).hop is given

    def test_a_dear_hop_makes_the_split_dearer_and_the_plan_says_which_hop(self):
        """The same two-stage split is predicted slower with a board's dearer hop, and the plan names it."""
        platform = load_platform(TWO)
        split = (StagePlan(0, 2, (BIG,)), StagePlan(2, 4, (LITTLE,)))
        cheap = cost_model_for(_times(), platform, overhead=None).evaluate(split)
        dear = cost_model_for(_times(HopModel(2.0, 1e-6, "a slow board")), platform, overhead=None).evaluate(split)
        assert dear.fps < cheap.fps and dear.latency_ms > cheap.latency_ms + 2.0
        plan = plan_pipeline(_times(HopModel(2.0, 1e-6, "a slow board")), platform, "pipe-it")
        assert any(n.startswith("hop between stages: 2.000 ms") and "a slow board" in n for n in plan.notes)
        assert best_candidate(_times(), platform, "pipe-it").fps > plan.predicted_fps

    def test_layer_times_keep_their_hop_through_json_and_refuse_a_bad_one(self, tmp_path):
        path = tmp_path / "times.json"
        _times(HopModel(0.1, 2e-7, "board")).save(path)
        assert LayerTimes.load(path).hop == HopModel(0.1, 2e-7, "board")
        doc = json.loads(path.read_text())
        doc["hop"] = {"fixed_ms": -1, "ms_per_byte": 0}
        path.write_text(json.dumps(doc))
        with pytest.raises(PlanError, match="hop"):
            LayerTimes.load(path)
        doc["hop"] = None  # a file from before hops were measured: the default
        path.write_text(json.dumps(doc))
        assert LayerTimes.load(path).hop is None

    def test_a_re_plan_scaling_the_times_keeps_their_hop(self):
        from pipeit.daemon.replan import fit_times, scaled_times

        times = _times(HopModel(0.1, 2e-7, "board"))
        assert scaled_times(times, {"big": 2.0}).hop == times.hop
        assert scaled_times(times, {"big": 2.0}).times[BIG] == (2.0,) * 4
        assert fit_times(times, load_platform(TWO)).hop == times.hop


def test_a_predictor_carries_its_profile_s_hop_into_the_plans_made_from_it(tmp_path):
    """profile-board.sh hands the daemon a predictor, not the profile: the board's hop must travel with it."""
    from pipeit.graph import load_graph
    from pipeit.layer_times import layer_times_for
    from pipeit.tflite_builder import ModelBuilder
    from predictors import load_predictor, make_predictor

    b = ModelBuilder(seed=0)
    x = b.input("input", (1, 16, 16, 8))
    b.output(b.conv2d(x, 8, kernel=1))
    graph = load_graph(b.to_bytes())
    layer = graph.layers[0].descriptor
    rows = [ProfileRow("layer", "m", 0, 1, BIG, layer.key_string(), 0.2, 0.01, 10, "fp0", descriptor=layer),
            _hop_row(4096, 0.05), _hop_row(4 << 20, 1.05)]
    fitted = make_predictor("flops").fit(rows)
    path = tmp_path / "p.json"
    fitted.save(path)
    loaded = load_predictor(path)
    assert loaded.hop_ == fitted.hop_ == ProfileTable(rows, "fp0").hop_model()
    times = layer_times_for(graph, load_platform("emulate:big=0@1.0"), predictor=loaded)
    assert times.hop == loaded.hop_ and math.isclose(times.hop.hop_ms(4 << 20), 1.05)
    doc = json.loads(path.read_text())
    doc["hop"] = {"fixed_ms": "fast"}
    path.write_text(json.dumps(doc))
    with pytest.raises(Exception, match="hop"):
        load_predictor(path)
    assert not list(Path(tmp_path).glob("*.tmp*"))
