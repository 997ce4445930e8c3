"""Every JSON file pipeit reads goes through one reader, and bad ones end in one line and exit 2.

The reader (:mod:`cores.jsonfile`) is tested on real files for each way a
file can fail to be a JSON document. Then every loader is driven through the
CLI command that reads its file, with a file nested 100 000 deep (a
``RecursionError`` traceback in most loaders before the reader) and with a
document that parses but is wrong in structure (most of them a traceback
before: an ``OverflowError`` from an integer no float holds, a
``TypeError``, a ``KeyError`` at the first prediction).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from cores.jsonfile import MAX_JSON_BYTES, MAX_JSON_DEPTH, JsonFileError, parse_json, read_json, read_text
from pipeit.cli import main
from tests.host_helpers import needs_opencl

REPO = Path(__file__).resolve().parents[1]
DEEP = "[" * 100_000
#: an integer no float can hold: ``float()`` of it raises OverflowError, which no loader caught
HUGE = 10 ** 30


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---- the reader ------------------------------------------------------------------------------


class TestReader:
    def test_a_valid_file_is_its_document(self, tmp_path):
        doc = {"a": [1, 2.5, None, True, "x"], "b": {"c": -3}}
        assert read_json(write(tmp_path / "ok.json", json.dumps(doc)), "test") == doc

    @pytest.mark.parametrize("name, text, reason, kind", [
        ("empty", "", "the file is empty", "syntax"),
        ("blank", " \n\t ", "the file is empty", "syntax"),
        ("bad-json", "{not json", "not JSON: Expecting property name", "syntax"),
        ("truncated", '{"a": [1, 2', "not JSON:", "syntax"),
        ("deep", DEEP, "JSON nested too deeply", "syntax"),
        # parsed by Python without complaint, but deeper than any pipeit file
        ("deep-parsable", "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "JSON nested too deeply", "syntax"),
        ("deep-in-object", '{"a": ' + '{"b": ' * 200 + "1" + "}" * 201, "JSON nested too deeply", "syntax"),
        ("digits", '{"n": ' + "9" * 5000 + "}", "of 5000 digits does not fit in 64 bits", "syntax"),
        ("int64", '{"n": 9223372036854775808}', "does not fit in 64 bits", "syntax"),
        ("nan", '{"x": NaN}', "NaN is not a JSON number", "syntax"),
        ("infinity", "[Infinity]", "Infinity is not a JSON number", "syntax"),
        ("minus-infinity", "[-Infinity]", "-Infinity is not a JSON number", "syntax"),
        ("overflow", '{"x": 1e999}', "too large for a float", "syntax"),
    ])
    def test_each_way_text_is_not_a_document(self, tmp_path, name, text, reason, kind):
        path = write(tmp_path / f"{name}.json", text)
        with pytest.raises(JsonFileError) as info:
            read_json(path, "test")
        err = info.value
        assert reason in err.reason and err.kind == kind and err.path == path
        assert str(err) == f"{path}: not a readable test file ({err.reason})" and "\n" not in str(err)

    def test_bad_utf8(self, tmp_path):
        path = tmp_path / "latin1.json"
        path.write_bytes(b'{"name": "caf\xe9"}')
        with pytest.raises(JsonFileError, match=r"not UTF-8 text: byte 0xe9 at offset 13"):
            read_json(path, "test")

    def test_a_byte_order_mark_is_not_data(self, tmp_path):
        path = tmp_path / "bom.json"
        path.write_bytes(b'\xef\xbb\xbf{"name": "caf\xc3\xa9"}\r\n')
        assert read_json(path, "test") == {"name": "caf\u00e9"}
        path.write_bytes(b'\xef\xbb\xbf{"name": "caf\xe9"}')
        with pytest.raises(JsonFileError, match=r"not UTF-8 text: byte 0xe9 at offset 16"):
            read_json(path, "test")

    def test_missing_file(self, tmp_path):
        with pytest.raises(JsonFileError, match="no such file") as info:
            read_json(tmp_path / "none.json", "test")
        assert info.value.missing and info.value.kind == "missing"

    def test_a_directory(self, tmp_path):
        with pytest.raises(JsonFileError, match="it is a directory") as info:
            read_json(tmp_path, "test")
        assert info.value.kind == "unreadable" and not info.value.missing

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its mode")
    def test_a_file_this_process_may_not_read(self, tmp_path):
        path = write(tmp_path / "secret.json", "{}")
        path.chmod(0)
        with pytest.raises(JsonFileError, match="permission denied"):
            read_json(path, "test")

    def test_over_the_size_bound(self, tmp_path):
        path = write(tmp_path / "big.json", json.dumps({"x": "y" * 200}))
        with pytest.raises(JsonFileError, match="larger than"):
            read_json(path, "test", max_bytes=100)
        assert read_json(path, "test", max_bytes=300) == {"x": "y" * 200}

    def test_the_default_bound_is_64_mb(self, tmp_path):
        """A file one byte over :data:`MAX_JSON_BYTES` (sparse: no disk used) is refused unparsed."""
        assert MAX_JSON_BYTES == 64 * 1024 * 1024
        path = tmp_path / "huge.json"
        with open(path, "wb") as handle:
            handle.truncate(MAX_JSON_BYTES + 1)
        with pytest.raises(JsonFileError, match="larger than the 64 MB") as info:
            read_json(path, "test")
        assert info.value.kind == "unreadable"

    def test_nonfinite_numbers_only_where_allowed(self, tmp_path):
        path = write(tmp_path / "inf.json", '{"fps": Infinity, "x": NaN, "y": 1e999}')
        doc = read_json(path, "test", allow_nonfinite=True)
        assert doc["fps"] == float("inf") and doc["y"] == float("inf") and doc["x"] != doc["x"]
        with pytest.raises(JsonFileError):
            read_json(path, "test")

    def test_the_largest_64_bit_integers_pass(self, tmp_path):
        path = write(tmp_path / "ints.json", "[9223372036854775807, -9223372036854775808, 0, -1]")
        assert read_json(path, "test") == [2 ** 63 - 1, -2 ** 63, 0, -1]

    def test_nesting_up_to_the_bound_passes(self, tmp_path):
        text = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
        assert read_json(write(tmp_path / "d.json", text), "test") is not None

    def test_read_text_and_parse_json_are_the_two_halves(self, tmp_path):
        path = write(tmp_path / "t.csv", "bytes,ms\n1,2\n")
        assert read_text(path, "table") == "bytes,ms\n1,2\n"
        with pytest.raises(JsonFileError, match="JSON nested too deeply"):
            parse_json(DEEP, path, "table")

    def test_the_error_is_a_value_error(self):
        assert issubclass(JsonFileError, ValueError)

    def test_cores_does_not_import_pipeit(self):
        """cores is the lowest package: its reader must load without pipeit or predictors."""
        code = ("import sys, cores.jsonfile; "
                "bad = [m for m in sys.modules if m.split('.')[0] in ('pipeit', 'predictors')]; "
                "assert not bad, bad")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == 0, result.stderr


class TestVersionFields:
    """``true == 1`` and ``1.0 == 1`` in Python; a version field must be the integer itself."""

    def test_is_version(self):
        from cores.jsonfile import is_version

        assert is_version(1, 1) and not is_version(True, 1) and not is_version(1.0, 1)
        assert not is_version("1", 1) and not is_version(None, 1) and not is_version(2, 1)

    @pytest.mark.parametrize("version", [True, 1.0, "1"])
    def test_a_tuning_file(self, version):
        from pipeit.gpu.tuner import TuningError, TuningFile

        doc = TuningFile().to_json()
        TuningFile.from_json(doc)
        with pytest.raises(TuningError, match="version"):
            TuningFile.from_json({**doc, "version": version})

    @pytest.mark.parametrize("version", [True, 1.0])
    def test_a_power_file(self, version):
        from cores.power import PowerError, parse_power_document

        doc = json.loads((REPO / "cores" / "power" / "rpi4.json").read_text())
        assert doc["version"] == 1
        parse_power_document(doc)
        with pytest.raises(PowerError, match="version"):
            parse_power_document({**doc, "version": version})


# ---- every loader, through the CLI command that reads its file -------------------------------


def one_error_line(capsys, argv: List[str], path: Path) -> str:
    """Run ``pipeit ARGV`` in this process: exit 2, one ``pipeit: error:`` line naming ``path``."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("INFO:")]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("pipeit: error:"), err
    assert str(path) in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def model(zoo_models) -> Path:
    return zoo_models("squeezenet")


@pytest.fixture(scope="module")
def layer_times(model) -> dict:
    """A layer-times document of ``model`` for this host's setups (made-up times)."""
    from cores.platform import load_platform
    from pipeit.graph import load_graph
    from pipeit.layer_times import LayerTimes

    graph = load_graph(model)
    platform = load_platform("auto")
    times = LayerTimes.from_graph(graph, platform.setups(), lambda i, s: 0.1 + i * 0.01)
    return times.to_json()


@pytest.fixture(scope="module")
def plan_doc(model, layer_times, tmp_path_factory) -> dict:
    """A plan of ``model`` made by ``pipeit plan --times``."""
    folder = tmp_path_factory.mktemp("plan")
    times = write(folder / "times.json", json.dumps(layer_times))
    out = folder / "plan.json"
    assert main(["plan", str(model), "--platform", "auto", "--times", str(times), "-o", str(out)]) == 0
    return json.loads(out.read_text())


class TestPlatformFile:
    """``--platform FILE`` (``pipeit topology``, ``plan``, ``bench`` ...): cores/platform.py ``_from_file``."""

    def test_deep(self, tmp_path, capsys, model):
        path = write(tmp_path / "p.json", DEEP)
        line = one_error_line(capsys, ["topology", "--platform", path], path)
        assert "not a JSON platform file (JSON nested too deeply)" in line

    def test_a_named_pipe_no_one_writes_to_is_refused_not_waited_on(self, tmp_path):
        """Opening a FIFO for reading blocks until a writer comes: the command hung."""
        path = tmp_path / "p.json"
        os.mkfifo(path)
        result = subprocess.run([sys.executable, "-m", "pipeit", "topology", "--platform", str(path)],
                                capture_output=True, text=True, timeout=60, cwd=REPO)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [f"pipeit: error: {path}: not a JSON platform file "
                                                      "(the file is empty)"]

    def test_an_unrepresentable_cpu(self, tmp_path, capsys):
        """Was an OverflowError traceback (``int(inf)``)."""
        path = write(tmp_path / "p.json", '{"clusters": [{"name": "big", "core_type": "A76", "cpus": [1e999]}]}')
        assert "too large for a float" in one_error_line(capsys, ["topology", "--platform", path], path)

    @pytest.mark.parametrize("cluster, message", [
        ({"cpus": [0, 1.5]}, "CPU 1.5 is not a CPU number"),  # was rounded down to CPU 1
        ({"cpus": ["0"]}, "CPU '0' is not a CPU number"),
        ({"cpus": []}, "'cpus' must be a non-empty list"),
        ({"cpus": [0, 0]}, "lists a CPU twice"),
        ({"cpus": [100000]}, "not a CPU number 0..65535"),
        ({"speed": -1}, "'speed' must be a number in [0.01, 1]"),  # was a platform with a negative speed
        ({"speed": "fast"}, "'speed' must be a number"),
        ({"kind": "tpu"}, "'kind' must be"),
        ({"name": "big+little"}, "without '+' or ':'"),
        ({"capacity": True}, "'capacity' must be null or an integer"),
        ({"max_freq_khz": -5}, "'max_freq_khz' must be null or an integer"),
    ])
    def test_wrong_types_in_the_right_keys(self, tmp_path, capsys, cluster, message):
        doc = {"source": "mine", "clusters": [{"name": "big", "core_type": "A76", "cpus": [0], **cluster}]}
        path = write(tmp_path / "p.json", json.dumps(doc))
        assert message in one_error_line(capsys, ["topology", "--platform", path], path)

    def test_a_platform_of_gpus_only_is_refused(self, tmp_path, capsys):
        doc = {"source": "mine", "clusters": [{"name": "g", "core_type": "GPU", "cpus": [0], "kind": "gpu"}]}
        path = write(tmp_path / "p.json", json.dumps(doc))
        assert "has no CPU cluster" in one_error_line(capsys, ["topology", "--platform", path], path)

    @pytest.mark.parametrize("text", ["[]", "{}", '"x"', '{"clusters": 5}', '{"clusters": [5]}',
                                      '{"clusters": [], "source": "x"}'])
    def test_not_a_platform(self, tmp_path, capsys, text):
        path = write(tmp_path / "p.json", text)
        one_error_line(capsys, ["topology", "--platform", path], path)

    def test_a_valid_file_still_loads(self, tmp_path, capsys):
        doc = {"source": "mine", "clusters": [
            {"name": "little", "core_type": "A55", "cpus": [0, 1], "max_freq_khz": 1800000, "capacity": 400},
            {"name": "big", "core_type": "A76", "cpus": [2, 3], "speed": 1}]}
        path = write(tmp_path / "p.json", json.dumps(doc))
        assert main(["topology", "--platform", str(path), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert [c["name"] for c in out["clusters"]] == ["little", "big"]


class TestBoardFile:
    """``--platform board:NAME``: cores/boards.py ``board_document`` (our own files, checked all the same)."""

    @pytest.fixture
    def boards(self, tmp_path, monkeypatch) -> Path:
        import cores.boards

        monkeypatch.setattr(cores.boards, "BOARD_DIR", tmp_path)
        return tmp_path

    def test_deep(self, boards, capsys):
        """Was a RecursionError traceback (only OSError and ValueError were caught)."""
        path = write(boards / "deep.json", DEEP)
        assert "JSON nested too deeply" in one_error_line(capsys, ["topology", "--platform", "board:deep"], path)

    def test_a_list(self, boards, capsys):
        path = write(boards / "listed.json", "[1, 2]")
        assert "a board file must be a JSON object" in one_error_line(
            capsys, ["topology", "--platform", "board:listed"], path)

    def test_a_negative_speed(self, boards, capsys):
        doc = {"soc": "x", "clusters": [{"name": "cpu", "core_type": "A53", "cpus": [0], "speed": -2}]}
        path = write(boards / "neg.json", json.dumps(doc))
        line = one_error_line(capsys, ["topology", "--platform", "board:neg"], path)
        assert "'speed' must be a number in [0.01, 1], got -2" in line

    def test_the_shipped_boards_all_load(self):
        from cores.boards import list_boards, load_board

        assert len(list_boards()) >= 5
        for name in list_boards():
            assert load_board(name).clusters


def predict(model: Path, predictor: Path) -> list:
    """``pipeit predict`` on a one-cluster platform named ``cpu`` (as the documents' setups), any fingerprint."""
    return ["predict", model, "--predictor", predictor, "--platform", "emulate:cpu=0@1.0", "--setup", "cpu:1",
            "--force"]


class TestPredictorFile:
    """``--predictor P.json`` (``pipeit plan``, ``predict``, ``bench``): predictors ``load_predictor``."""

    def test_deep(self, tmp_path, capsys, model):
        """Was a RecursionError traceback (the brief's first example)."""
        path = write(tmp_path / "p.json", DEEP)
        line = one_error_line(capsys, ["plan", model, "--platform", "auto", "--predictor", path,
                                       "-o", tmp_path / "x.json"], path)
        assert line.endswith(f"{path}: not a readable predictor file (JSON nested too deeply)")

    def test_a_list_for_the_kind(self, tmp_path, capsys, model):
        """Was a TypeError traceback (unhashable list looked up among the kinds)."""
        path = write(tmp_path / "p.json", '{"format": "pipeit-predictor", "version": 1, "kind": []}')
        assert "unknown predictor kind []" in one_error_line(capsys, predict(model, path), path)

    @pytest.mark.parametrize("state, message", [
        ({"coef": {}}, "no generic model"),                      # was a KeyError at the first prediction
        ({"coef": {"*|cpu:1": []}}, "non-empty list of finite numbers"),  # was numpy's shape error
        ({"coef": {"*|cpu:1": ["1", 2]}}, "non-empty list of finite numbers"),
        ({"coef": {"*|cpu:1": [1.0]}}, "the generic model of cpu:1 needs 2 coefficients, has 1"),  # numpy's error
        ({"coef": []}, "'coef' must be an object"),
        # a non-negative fit never makes one: every layer was predicted at the floor, a plan at 2222 fps
        ({"coef": {"*|cpu:1": [-1.0, -1.0]}}, "must be >= 0 (a non-negative fit makes them), got -1.0"),
        # the prediction overflowed: numpy's overflow warning, then an error line naming no file
        ({"coef": {"*|cpu:1": [1e308, 1e308]}}, "must be within +-1e+30 (no fit makes more), got 1e+308"),
    ])
    def test_a_malformed_state(self, tmp_path, capsys, model, state, message):
        doc = {"format": "pipeit-predictor", "version": 1, "kind": "flops", "params": {}, "fingerprint": "x",
               "setups": ["cpu:1"], "calibration": {}, "state": state}
        path = write(tmp_path / "p.json", json.dumps(doc))
        assert message in one_error_line(capsys, predict(model, path), path)

    @pytest.mark.parametrize("edit, message", [
        (lambda d: d["params"].update(llc_mb="x"), "llc_mb must be a positive size"),  # was a ValueError traceback
        (lambda d: d["state"]["tiles"].update(gemm={"mr": HUGE, "nr": 16, "ct": 16}), "does not fit in 64 bits"),
        (lambda d: d["state"]["tiles"].update(gemm={"mr": 10 ** 15, "nr": 16, "ct": 16}), "bad tile record"),
    ])
    def test_a_malformed_mech_file(self, tmp_path, capsys, model, edit, message):
        doc = {"format": "pipeit-predictor", "version": 1, "kind": "mech", "fingerprint": "x", "setups": ["cpu:1"],
               "params": {"mr_choices": [4], "nr_choices": [16], "ct_choices": [16], "sweep_weight": 0.1,
                          "llc_mb": 32.0},
               "calibration": {"cpu:1": [1.0, 0.0, 0.0]},
               "state": {"tiles": {}, "coef": {"*|cpu:1": [0.01, 0.001, 0.001]}, "derived": {}, "dram": {},
                         "stream": {}}}
        path = write(tmp_path / "p.json", json.dumps(doc))
        assert main([str(a) for a in predict(model, path)]) == 0  # the document before the edit is fine
        capsys.readouterr()
        edit(doc)
        path.write_text(json.dumps(doc))
        assert message in one_error_line(capsys, predict(model, path), path)


class TestLayerTimesFile:
    """``pipeit plan --times``: pipeit/layer_times.py ``LayerTimes.load``."""

    def test_deep(self, tmp_path, capsys, model):
        path = write(tmp_path / "t.json", DEEP)
        assert "unreadable layer-times file (JSON nested too deeply)" in one_error_line(
            capsys, ["plan", model, "--times", path, "-o", tmp_path / "x.json"], path)

    @pytest.mark.parametrize("edit, message", [
        # int(1e308) is a valid Python integer the cost model's float sums overflow on: was a traceback
        (lambda d: d["weight_bytes"].__setitem__(0, 1e308), "weight_bytes must hold integers"),
        (lambda d: d["cut_bytes"].__setitem__(0, 2 ** 62), "over the 1.13e+15 bytes"),
        (lambda d: d.update(num_layers="40"), "num_layers must hold integers"),
        (lambda d: d.update(num_layers=2.0), "num_layers must hold integers"),  # was accepted as 2
        (lambda d: d.update(times=[]), "malformed layer times"),
        (lambda d: d.update(times={"cpu:1": "fast"}), "malformed layer times"),
        (lambda d: d.update(calibration={"scale": -1}), "calibration scale must be in (0, 1e+06]"),
        # near the float limit: overflow warnings, then "no setup can run" (scale) or a 300-digit latency
        (lambda d: d.update(calibration={"scale": 1e308}), "calibration scale must be in (0, 1e+06]"),
        (lambda d: d.update(calibration={"stage_ms": 1e308}), "calibration stage_ms must be in [0, 1e+09] ms"),
        (lambda d: d.update(calibration={"scale": "2"}), "calibration scale must hold numbers"),
        (lambda d: d.update(calibration=[1.0]), "calibration must be an object"),
        (lambda d: d["times"].__setitem__(next(iter(d["times"])), ["1"] * d["num_layers"]),
         "times must hold numbers"),
        (lambda d: d.update(version=True), "layer-times version True is not 1"),  # true == 1 in Python
    ])
    def test_structurally_wrong(self, tmp_path, capsys, model, layer_times, edit, message):
        doc = json.loads(json.dumps(layer_times))
        edit(doc)
        path = write(tmp_path / "t.json", json.dumps(doc))
        line = one_error_line(capsys, ["plan", model, "--times", path, "-o", tmp_path / "x.json"], path)
        assert message in line and line.count(str(path)) == 1


class TestPlanFile:
    """``pipeit run PLAN`` (and ``serve``): pipeit/plan.py ``load_plan``."""

    def test_deep(self, tmp_path, capsys, model):
        path = write(tmp_path / "plan.json", DEEP)
        assert "not a readable plan JSON file (JSON nested too deeply)" in one_error_line(
            capsys, ["run", path, "--model", model, "--frames", "1"], path)

    @pytest.mark.parametrize("edit, message", [
        # was an OverflowError traceback from float()
        (lambda d: d["stages"][0]["workers"][0].update(predicted_ms=HUGE), "does not fit in 64 bits"),
        # were accepted, and the run went ahead with them
        (lambda d: d["limits"].update(latency_ms=-5), "limits latency_ms must be a number >= 0"),
        (lambda d: d["limits"].update(memory_mb=0), "limits memory_mb must be a finite number > 0"),
        (lambda d: d["stages"][0]["workers"][0].update(threads=10 ** 6), "threads (1..1024)"),
        (lambda d: d["platform"]["clusters"][0].update(cpus=[0, 0.5]), "is not a CPU number"),
        (lambda d: d.update(stages="x"), "malformed plan"),
        (lambda d: d.update(platform=[]), "a platform document needs a 'clusters' list"),
    ])
    def test_structurally_wrong(self, tmp_path, capsys, model, plan_doc, edit, message):
        doc = json.loads(json.dumps(plan_doc))
        edit(doc)
        path = write(tmp_path / "plan.json", json.dumps(doc))
        assert message in one_error_line(capsys, ["run", path, "--model", model, "--frames", "1"], path)

    def test_nan_is_refused_where_infinity_is_read(self, tmp_path, plan_doc):
        """A plan is read with non-finite numbers allowed (Plan.save may write Infinity); NaN still fails."""
        from pipeit.errors import PlanError
        from pipeit.plan import load_plan

        doc = json.loads(json.dumps(plan_doc))
        doc["predicted"]["fps"] = float("inf")
        text = json.dumps(doc)  # as Plan.save writes it
        assert '"fps": Infinity' in text
        assert load_plan(write(tmp_path / "inf.json", text)).predicted_fps == float("inf")
        doc["predicted"]["fps"] = float("nan")
        with pytest.raises(PlanError, match="predicted fps must be a number >= 0, got nan"):
            load_plan(write(tmp_path / "nan.json", json.dumps(doc)))


class TestTransferTable:
    """``pipeit plan --transfer``: pipeit/transfer.py ``load_hop_model``."""

    def run(self, capsys, model, layer_times, tmp_path, path) -> str:
        times = write(tmp_path / "times.json", json.dumps(layer_times))
        return one_error_line(capsys, ["plan", model, "--times", times, "--transfer", path,
                                       "-o", tmp_path / "x.json"], path)

    def test_deep(self, tmp_path, capsys, model, layer_times):
        """Was a RecursionError traceback (only JSONDecodeError was caught)."""
        path = write(tmp_path / "hops.json", DEEP)
        assert "JSON nested too deeply" in self.run(capsys, model, layer_times, tmp_path, path)

    @pytest.mark.parametrize("text, message", [
        ('{"fixed_ms": 1000000000000000000000000000000, "ms_per_byte": 0}', "does not fit in 64 bits"),
        ('{"fixed_ms": true, "ms_per_byte": 0}', "fixed_ms is True"),  # was read as 1 ms
        ('{"fixed_ms": "0.1", "ms_per_byte": 0}', "fixed_ms is '0.1'"),
        ('{"points": [[4096, 0.1, 7]]}', "points must be [bytes, ms] pairs"),
        ("[1, 2]", "expected a JSON object"),
    ])
    def test_structurally_wrong(self, tmp_path, capsys, model, layer_times, text, message):
        path = write(tmp_path / "hops.json", text)
        assert message in self.run(capsys, model, layer_times, tmp_path, path)

    def test_a_csv_table_goes_through_the_same_file_checks(self, tmp_path, capsys, model, layer_times):
        path = tmp_path / "hops.csv"
        path.write_bytes(b"bytes,ms\n4096,0.1\xff\n")
        assert "not UTF-8 text" in self.run(capsys, model, layer_times, tmp_path, path)

    def test_a_row_near_the_float_limit_is_refused_naming_the_file(self, tmp_path, capsys, model, layer_times):
        """The fit's sums of squares overflowed: "hop model: fixed_ms ... got nan", no file named."""
        path = tmp_path / "hops.csv"
        path.write_text("bytes,ms\n4096,1e300\n8192,2e300\n")
        assert "bad hop measurement (4096.0 bytes, 1e+300 ms)" in self.run(capsys, model, layer_times, tmp_path, path)


class TestPowerFile:
    """``pipeit bench --power``: cores/power.py ``load_power_file`` (read before anything is measured)."""

    def run(self, capsys, model, path) -> str:
        return one_error_line(capsys, ["bench", model, "--platform", "board:odroid-xu4", "--power", path,
                                       "--frames", "1", "--rounds", "1", "--quiet"], path)

    def test_deep(self, tmp_path, capsys, model):
        """Was a RecursionError traceback (only ValueError was caught)."""
        path = write(tmp_path / "power.json", DEEP)
        assert "cannot read power file (JSON nested too deeply)" in self.run(capsys, model, path)

    def test_a_power_too_large_for_a_float(self, tmp_path, capsys, model):
        """Was an OverflowError traceback from float()."""
        doc = json.loads((REPO / "cores" / "power" / "odroid-xu4.json").read_text())
        unit = next(iter(doc["cores"].values()))
        unit[next(iter(unit))] = HUGE
        path = write(tmp_path / "power.json", json.dumps(doc))
        assert "does not fit in 64 bits" in self.run(capsys, model, path)

    def test_a_list(self, tmp_path, capsys, model):
        path = write(tmp_path / "power.json", "[]")
        assert "JSON object" in self.run(capsys, model, path)


class TestGpuTuningFile:
    """``pipeit gpu tune -o FILE`` reads an existing FILE first: pipeit/gpu/tuner.py ``TuningFile.load``."""

    def test_deep(self, tmp_path, capsys, model):
        """Was a RecursionError traceback (only ValueError was caught)."""
        path = write(tmp_path / "tuning.json", DEEP)
        assert "not valid JSON (JSON nested too deeply)" in one_error_line(
            capsys, ["gpu", "tune", model, "-o", path, "--trials", "1"], path)

    def test_a_time_too_large_for_a_float(self, tmp_path, capsys, model):
        """Was an OverflowError traceback from ``float(entry["ms"])``."""
        entry = {"device": "d", "descriptor": "k", "precision": "fp32", "config": {}, "ms": HUGE,
                 "strategy": "model", "trials": 1}
        path = write(tmp_path / "tuning.json", json.dumps({"version": 1, "devices": {"d": {}}, "entries": [entry]}))
        assert "does not fit in 64 bits" in one_error_line(
            capsys, ["gpu", "tune", model, "-o", path, "--trials", "1"], path)

    def test_wrong_types(self, tmp_path, capsys, model):
        path = write(tmp_path / "tuning.json", '{"version": 1, "devices": [], "entries": {}}')
        assert "needs a 'devices' object" in one_error_line(
            capsys, ["gpu", "tune", model, "-o", path, "--trials", "1"], path)


@needs_opencl
class TestGpuTablesFile:
    """``pipeit run PLAN --gpu-tables``: pipeit/gpu/calibration.py ``load_tables`` (before any worker starts)."""

    @pytest.fixture
    def gpu_plan(self, model, tmp_path) -> Path:
        from cores.model import Cluster, Platform
        from pipeit.graph import load_graph
        from pipeit.plan import Plan, StageSpec, WorkerSpec, file_sha256

        cpus = tuple(sorted(os.sched_getaffinity(0)))
        platform = Platform((Cluster("big", "host", (cpus[0],)),
                             Cluster("gpu", "opencl", (cpus[-1],), kind="gpu", device="0")), source="test")
        n = len(load_graph(model).layers)
        stages = (StageSpec((0, n - 3), (WorkerSpec("big", (cpus[0],), 1, 1.0),), 100.0),
                  StageSpec((n - 3, n), (WorkerSpec("gpu", (cpus[-1],), 1, 1.0),), 100.0))
        path = tmp_path / "plan.json"
        Plan(model.name, file_sha256(model), platform, "test", stages, 100.0, 10.0).save(path)
        return path

    def test_deep(self, tmp_path, capsys, model, gpu_plan):
        """Was a RecursionError traceback (OSError and ValueError were caught)."""
        path = write(tmp_path / "tables.json", DEEP)
        assert "not a JSON GPU tables file (JSON nested too deeply)" in one_error_line(
            capsys, ["run", gpu_plan, "--model", model, "--gpu-tables", path, "--frames", "1"], path)

    def test_an_error_too_large_for_a_float(self, tmp_path, capsys, model, gpu_plan):
        """Was an OverflowError traceback from the check of a table's 'error'."""
        doc = {"version": 1, "kind": "pipeit-gpu-tables", "stages": [
            {"layers": [1, 2], "tables": [{"name": "half", "error": HUGE}]}]}
        path = write(tmp_path / "tables.json", json.dumps(doc))
        assert "does not fit in 64 bits" in one_error_line(
            capsys, ["run", gpu_plan, "--model", model, "--gpu-tables", path, "--frames", "1"], path)

    def test_wrong_types(self, tmp_path, capsys, model, gpu_plan):
        path = write(tmp_path / "tables.json", '{"version": 1, "kind": "pipeit-gpu-tables", "stages": {}}')
        assert "'stages' must be a list" in one_error_line(
            capsys, ["run", gpu_plan, "--model", model, "--gpu-tables", path, "--frames", "1"], path)


class TestEmulationCache:
    """cores/emulation.py ``_load_cache``: a cache, so anything unreadable is simply empty."""

    @pytest.mark.parametrize("text", [DEEP, "", "{", "[1]", '{"n": ' + "9" * 5000 + "}"])
    def test_unreadable_is_empty(self, tmp_path, text):
        from cores.emulation import _load_cache

        assert _load_cache(write(tmp_path / "emulation.json", text)) == {}

    def test_missing_is_empty_and_a_good_one_is_read(self, tmp_path):
        from cores.emulation import _load_cache

        assert _load_cache(tmp_path / "none.json") == {}
        good = {"0.5000@10000us@x@2cpu": {"quota_us": 5000, "achieved": 0.5}}
        assert _load_cache(write(tmp_path / "emulation.json", json.dumps(good))) == good

    def test_a_bad_entry_is_a_miss(self, tmp_path, monkeypatch):
        """An entry whose measured factor is not a number is calibrated afresh, not used."""
        import cores.emulation as emu

        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        factor, period = 0.5, emu.choose_period_us(0.5)
        key = emu._cache_key(factor, period)
        cache = tmp_path / "pipeit" / "emulation.json"
        cache.parent.mkdir(parents=True)
        cache.write_text(json.dumps({key: {"quota_us": int(factor * period), "achieved": 0.5}}))
        assert emu.calibrate(factor, 0, period).cached  # a good entry is a hit
        cache.write_text(json.dumps({key: {"quota_us": int(factor * period), "achieved": "half"}}))

        class Measured(Exception):
            pass

        def no_cgroups(*args, **kwargs):
            raise Measured

        monkeypatch.setattr(emu, "find_cgroup_root", no_cgroups)
        with pytest.raises(Measured):  # the bad entry was not used: calibration went on to measure
            emu.calibrate(factor, 0, period)
