"""Bad files and bad cut lists through the real CLI: exit 2, one line on stderr, no traceback.

Also the happy paths of ``pipeit inspect`` and ``pipeit split`` (JSON documents).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest

from ai_edge_litert import schema_py_generated as schema
from pipeit.graph import load_graph
from pipeit.modelfile import read_model, serialize_model
from pipeit.tflite_builder import ModelBuilder


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeit", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def assert_clean_refusal(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("pipeit: error: ")
    for word in words:
        assert word in lines[0]
    assert result.stdout == ""


def good_model() -> bytes:
    b = ModelBuilder(seed=2)
    x = b.input("input", (1, 16, 16, 3))
    a = b.conv2d(x, 8, 3, stride=2, name="stem")
    c = b.conv2d(b.depthwise_conv2d(a, name="dw"), 8, 1, activation="NONE", name="project")
    s = b.add(a, c, name="residual")
    b.output(b.softmax(b.fully_connected(b.mean(s), 4), name="probs"))
    return b.to_bytes()


def edited(edit) -> bytes:
    model = read_model(good_model())
    edit(model)
    return serialize_model(model)


def with_custom_op(model) -> None:
    opcode = schema.OperatorCodeT()
    opcode.builtinCode = opcode.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    opcode.customCode = "SecretSauce"
    model.operatorCodes.append(opcode)
    model.subgraphs[0].operators[2].opcodeIndex = len(model.operatorCodes) - 1


def with_while(model) -> None:
    opcode = schema.OperatorCodeT()
    opcode.builtinCode = opcode.deprecatedBuiltinCode = schema.BuiltinOperator.WHILE
    model.operatorCodes.append(opcode)
    model.subgraphs[0].operators[1].opcodeIndex = len(model.operatorCodes) - 1
    model.subgraphs.append(copy.deepcopy(model.subgraphs[0]))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "small.tflite"
    path.write_bytes(good_model())
    return path


BAD_FILES = {
    "empty": (lambda: b"", ["empty"]),
    "truncated": (lambda: good_model()[:700], ["truncated"]),
    "random": (lambda: np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
               ["not a TFLite model"]),
    "random-with-id": (lambda: b"\x10\x00\x00\x00TFL3" + np.random.default_rng(1).integers(
        0, 256, 3000, dtype=np.uint8).tobytes(), ["corrupt"]),
    "png": (lambda: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(60), ["not a TFLite model"]),
    "text": (lambda: b"def main():\n    return 0\n", ["not a TFLite model"]),
    "subgraphs": (lambda: edited(lambda m: m.subgraphs.append(copy.deepcopy(m.subgraphs[0]))),
                  ["2 subgraphs"]),
    "while": (lambda: edited(with_while), ["control-flow", "WHILE"]),
    "custom": (lambda: edited(with_custom_op), ["'SecretSauce'"]),
    "bad-tensor": (lambda: edited(lambda m: setattr(m.subgraphs[0].operators[1], "inputs",
                                                    [4242, 1, 2])), ["tensor 4242"]),
}


class TestBadFiles:
    @pytest.mark.parametrize("case, command", [(case, "inspect") for case in sorted(BAD_FILES)]
                             + [(case, "split") for case in ("empty", "custom", "subgraphs")])
    def test_refused(self, tmp_path, case, command):
        make, words = BAD_FILES[case]
        path = tmp_path / f"{case}.tflite"
        path.write_bytes(make())
        args = [command, path] + (["--at", "1", "-o", tmp_path / "out"] if command == "split" else [])
        assert_clean_refusal(cli(*args), str(path), *words)
        assert not (tmp_path / "out").exists()

    def test_missing_file(self, tmp_path):
        assert_clean_refusal(cli("inspect", tmp_path / "nope.tflite"), "no such model file")

    def test_directory(self, tmp_path):
        assert_clean_refusal(cli("inspect", "--json", tmp_path), "not a regular file")


class TestBadCuts:
    @pytest.mark.parametrize("at, words", [
        ("0", ["out of range", "1..6"]),
        ("7", ["out of range"]),
        ("3,2", ["strictly increasing"]),
        ("1.5", ["'1.5'", "not an integer"]),
        ("two", ["'two'", "not an integer"]),
        ("1,,3", ["not an integer"]),
    ])
    def test_refused(self, model_path, tmp_path, at, words):
        assert len(load_graph(model_path).layers) == 7
        assert_clean_refusal(cli("split", model_path, "--at", at, "-o", tmp_path / "out"), *words)
        assert not (tmp_path / "out").exists()


class TestInspectAndSplit:
    def test_inspect_table(self, model_path):
        result = cli("inspect", model_path)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split()[:3] == ["layer", "op", "output"]
        assert "CONV_2D" in lines[2] and "8x8x8" in lines[2]
        graph = load_graph(model_path)
        assert f"total MACs: {graph.total_macs:,}" in result.stdout

    def test_inspect_json(self, model_path):
        result = cli("inspect", model_path, "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        graph = load_graph(model_path)
        assert doc["total_macs"] == graph.total_macs
        assert [l["op"] for l in doc["layers"]] == [l.descriptor.op for l in graph.layers]
        first = doc["layers"][0]
        assert set(first) >= {"index", "op", "macs", "weight_bytes", "inputs", "outputs", "descriptor"}
        assert first["inputs"] == [{"name": "input", "shape": [1, 16, 16, 3], "dtype": "float32"}]
        assert first["descriptor"]["kernel"] == [3, 3]
        assert [c["before"] for c in doc["cuts"]] == list(range(1, len(graph.layers)))
        # the residual "stem" crosses the cuts before dw, project and the add
        assert [[t["name"] for t in c["tensors"]] for c in doc["cuts"][:3]] == \
            [["stem"], ["stem", "dw"], ["stem", "project"]]

    def test_split_writes_stages_and_manifest(self, model_path, tmp_path):
        out = tmp_path / "stages"
        result = cli("split", model_path, "--at", "2,4", "-o", out)
        assert result.returncode == 0, result.stderr
        assert str(out / "manifest.json") in result.stdout
        assert sorted(p.name for p in out.iterdir()) == [
            "manifest.json", "stage_0.tflite", "stage_1.tflite", "stage_2.tflite"]
        doc = json.loads((out / "manifest.json").read_text())
        assert [s["layers"] for s in doc["stages"]] == [[0, 2], [2, 4], [4, 7]]
        assert [t["name"] for t in doc["stages"][1]["inputs"]] == ["stem", "dw"]

    def test_split_json_is_the_manifest(self, model_path, tmp_path):
        out = tmp_path / "s"
        result = cli("split", model_path, "--at", "3", "-o", out, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == json.loads((out / "manifest.json").read_text())
