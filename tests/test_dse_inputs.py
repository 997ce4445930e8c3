"""The planner's inputs: layer-time tables (JSON, validation, from a real model graph) and hop costs."""

from __future__ import annotations

import math

import pytest

from cores.model import CoreSetup
from pipeit.errors import PlanError
from pipeit.layer_times import Calibration, LayerTimes, cut_bytes_of
from pipeit.transfer import DEFAULT_HOP, DEFAULT_POINTS, HopModel, fit_hop_model, load_hop_model

BIG = CoreSetup("big", 1)


class TestLayerTimes:
    def test_json_round_trip_keeps_inf(self, tmp_path):
        table = LayerTimes(2, {BIG: (1.0, math.inf)}, (10, 20, 30), (5, 6), Calibration(1.05, 0.2), "t")
        path = tmp_path / "times.json"
        table.save(path)
        assert '"big:1": [\n   1.0,\n   null' in path.read_text()
        again = LayerTimes.load(path)
        assert again == table and math.isinf(again.times[BIG][1])

    @pytest.mark.parametrize("kwargs, message", [
        ({"times": {BIG: (1.0,)}}, "1 times for 2 layers"),
        ({"times": {BIG: (1.0, -2.0)}}, "need >= 0 or inf"),
        ({"times": {BIG: (1.0, math.nan)}}, "need >= 0 or inf"),
        ({"times": {BIG: (1.0, 1e308)}}, r"1e\+308 ms, over the 1e\+09 ms a layer may take"),
        ({"cut_bytes": (1, 2)}, "need 3 cut sizes"),
        ({"weight_bytes": (1,)}, "need 2 weight sizes"),
        ({"times": {}}, "no core setups"),
    ])
    def test_bad_tables_are_refused(self, kwargs, message):
        args = {"num_layers": 2, "times": {BIG: (1.0, 2.0)}, "cut_bytes": (1, 2, 3), "weight_bytes": (1, 1)}
        args.update(kwargs)
        with pytest.raises(PlanError, match=message):
            LayerTimes(**args)

    def test_malformed_file_is_one_plan_error(self, tmp_path):
        path = tmp_path / "bad.json"
        path.write_text('{"version": 1, "num_layers": "x"}')
        with pytest.raises(PlanError, match="malformed layer times"):
            LayerTimes.load(path)
        path.write_text("not json")
        with pytest.raises(PlanError, match="unreadable"):
            LayerTimes.load(path)

    @pytest.mark.parametrize("text, message", [
        ("[" * 100_000, "nested too deeply"),
        ('{"version": 1, "num_layers": ' + "9" * 5000 + "}", "unreadable layer-times file"),
    ])
    def test_json_python_cannot_hold_is_one_plan_error(self, tmp_path, text, message):
        path = tmp_path / "times.json"
        path.write_text(text)
        with pytest.raises(PlanError, match=message):
            LayerTimes.load(path)

    def test_from_a_real_model_graph(self, zoo_models):
        from pipeit.graph import load_graph

        graph = load_graph(zoo_models("mobilenet_v1"))
        setups = [CoreSetup("big", 1), CoreSetup("big", 2)]
        table = LayerTimes.from_graph(
            graph, setups, lambda i, s: graph.layers[i].descriptor.macs / (1e6 * s.cores) + 0.01
        )
        n = len(graph.layers)
        assert table.num_layers == n
        assert table.cut_bytes[0] == 224 * 224 * 3 * 4
        assert table.cut_bytes[1:n] == tuple(graph.cut(i).bytes for i in range(1, n))
        assert table.cut_bytes[n] == sum(t.nbytes for t in graph.outputs)
        assert sum(table.weight_bytes) == graph.total_weight_bytes
        assert cut_bytes_of(graph) == table.cut_bytes


class TestHopModel:
    def test_defaults_follow_the_measured_hops(self):
        for nbytes, ms in DEFAULT_POINTS:
            assert DEFAULT_HOP.hop_ms(nbytes) == pytest.approx(ms, rel=0.05)

    def test_fit_and_clip(self):
        model = fit_hop_model([(0, 0.1), (1000, 0.2)])
        assert model.fixed_ms == pytest.approx(0.1) and model.ms_per_byte == pytest.approx(1e-4)
        clipped = fit_hop_model([(1000, 0.0), (2000, 0.3)])  # intercept would be negative
        assert clipped.fixed_ms == 0.0 and clipped.ms_per_byte > 0

    def test_load_csv_and_json(self, tmp_path):
        csv_path = tmp_path / "hops.csv"
        csv_path.write_text("bytes,ms\n4096,0.05\n1048576,0.25\n")
        model = load_hop_model(csv_path)
        assert model.hop_ms(4096) == pytest.approx(0.05, rel=1e-3)
        json_path = tmp_path / "hops.json"
        json_path.write_text('{"fixed_ms": 0.02, "ms_per_byte": 1e-7}')
        assert load_hop_model(json_path) .hop_ms(1_000_000) == pytest.approx(0.12)

    @pytest.mark.parametrize("text", ["bytes,ms\n4096,-1\n", "size,time\n1,2\n", '{"fixed_ms": "x"}'])
    def test_bad_tables_are_refused(self, tmp_path, text):
        path = tmp_path / ("t.json" if text.startswith("{") else "t.csv")
        path.write_text(text)
        with pytest.raises(PlanError):
            load_hop_model(path)

    def test_negative_terms_refused(self):
        with pytest.raises(PlanError, match="fixed_ms"):
            HopModel(-1.0, 0.0)
