"""Bad files and bad cut lists through the real CLI: exit 2, one line on stderr, no traceback.

Also the happy paths of ``pipeit inspect`` and ``pipeit split`` (JSON documents).
"""

from __future__ import annotations

import copy
import json
import resource
import subprocess
import sys

import numpy as np
import pytest

from ai_edge_litert import schema_py_generated as schema
from pipeit.graph import load_graph
from pipeit.modelfile import op_name, read_model, serialize_model
from pipeit.tflite_builder import ModelBuilder
from tests.model_helpers import dead_branch_builder


@pytest.fixture
def cli(pipeit_in_process):
    """This file makes some 60 CLI calls: in process (conftest's ``pipeit_in_process``)."""
    return pipeit_in_process


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


def ops_named(model, name: str):
    return [op for op in model.subgraphs[0].operators
            if op_name(model.operatorCodes[op.opcodeIndex]) == name]


def with_opcode(model, code: int, version: int = 1, op: int = 2) -> None:
    opcode = schema.OperatorCodeT()
    opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, min(code, 127), version
    model.operatorCodes.append(opcode)
    model.subgraphs[0].operators[op].opcodeIndex = len(model.operatorCodes) - 1


def with_stride_0(model) -> None:
    options = ops_named(model, "CONV_2D")[0].builtinOptions
    options.strideH = options.strideW = 0


def with_in_place_add(model) -> None:
    """"residual = ADD(stem, project)" rewritten to write into "project", which it reads."""
    sg = model.subgraphs[0]
    add = ops_named(model, "ADD")[0]
    old, new = int(add.outputs[0]), int(add.inputs[1])
    add.outputs = [new]
    for op in sg.operators:
        if op is not add:
            op.inputs = [new if int(t) == old else int(t) for t in op.inputs]


def with_constant_output(model) -> None:
    sg = model.subgraphs[0]
    sg.outputs = list(sg.outputs) + [
        next(i for i, t in enumerate(sg.tensors) if t.name == b"stem/bias")]


def empty_reshape() -> bytes:
    """A 0-element input reshaped into 32 elements: only the RESHAPE kernel notices."""
    b = ModelBuilder(seed=5)
    x = b.input("input", (1, 4, 4, 2))
    b.output(b.fully_connected(b.reshape(b.logistic(x), (1, 32)), 3))
    model = read_model(b.to_bytes())
    sg = model.subgraphs[0]
    for t in sg.tensors:
        if list(t.shape) == [1, 4, 4, 2]:
            t.shape = [1, 4, 0, 2]
    return serialize_model(model)


def with_constant_input(model) -> None:
    sg = model.subgraphs[0]
    sg.inputs = list(sg.inputs) + [next(i for i, t in enumerate(sg.tensors) if t.name == b"stem/bias")]


def tensor_edited(which: bytes, **fields):
    """The good model with the fields of the tensor named ``which`` replaced."""
    def edit(model) -> None:
        tensor = next(t for t in model.subgraphs[0].tensors if t.name == which)
        for key, value in fields.items():
            setattr(tensor, key, value)
    return lambda: edited(edit)


def unpacked_weight(kind: str) -> bytes:
    """fp16 weights behind DEQUANTIZE (or sparse behind DENSIFY) whose unpacked copy is declared
    bigger than the weight: the runtime filled it reading past the file (SIGBUS) or failed to allocate."""
    b = ModelBuilder(seed=1)
    x = b.input("input", (1, 12, 12, 8))
    b.output(b.conv2d(b.conv2d(x, 8, 1, name="c1"), 8, 1, name="c2"))
    data = b.to_bytes(fp16_weights=True) if kind == "fp16" else b.to_bytes(sparse_weights=0.5)
    model = read_model(data)
    for t in model.subgraphs[0].tensors:
        if t.name == b"c2/weights":
            t.shape = [8, 30209, 1, 8] if kind == "fp16" else [8, 2147483647, 1, 1]
    return serialize_model(model)


def weight_only_output() -> bytes:
    """An fp16 weight's DEQUANTIZE output listed as a model output: a layer with no input."""
    b = ModelBuilder(seed=1)
    x = b.input("input", (1, 12, 12, 3))
    b.output(b.conv2d(x, 8, 3, name="c1"))
    model = read_model(b.to_bytes(fp16_weights=True))
    sg = model.subgraphs[0]
    sg.outputs = list(sg.outputs) + [int(ops_named(model, "DEQUANTIZE")[0].outputs[0])]
    return serialize_model(model)


def with_written_constant(model) -> None:
    """Activation "dw", which an operator writes, given constant data: the runtime crashed on it (SIGSEGV),
    and inspect read a graph with a layer folded into its neighbour as a "constant op"."""
    tensor = next(t for t in model.subgraphs[0].tensors if t.name == b"dw")
    buffer = schema.BufferT()
    buffer.data = np.zeros(int(np.prod(tensor.shape)) * 4, np.uint8)
    model.buffers.append(buffer)
    tensor.buffer = len(model.buffers) - 1


def bfloat16_io() -> bytes:
    b = ModelBuilder(seed=7)
    x = b.input("ix", (1, 4, 4, 2))
    b.output(b.reshape(b.reshape(x, (1, 32), name="r1"), (1, 4, 8), name="r2"))
    model = read_model(b.to_bytes())
    for t in model.subgraphs[0].tensors:
        if t.name in (b"ix", b"r1", b"r2"):
            t.type = schema.TensorType.BFLOAT16
    return serialize_model(model)


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
    "unknown-op": (lambda: edited(lambda m: with_opcode(m, 9999)), ["builtin op code 9999"]),
    "in-place": (lambda: edited(with_in_place_add), ["both reads and writes", "'project'"]),
    "constant-output": (lambda: edited(with_constant_output), ["model output 1", "'stem/bias'"]),
    "constant-input": (lambda: edited(with_constant_input), ["model input 1", "'stem/bias'", "constant"]),
    "variable-activation": (tensor_edited(b"dw", isVariable=True), ["'dw'", "variable"]),
    "written-constant": (lambda: edited(with_written_constant), ["writes tensor", "'dw'", "constant data"]),
    "fp16-unpacked-shape": (lambda: unpacked_weight("fp16"), ["DEQUANTIZE", "'c2/weights'", "30209"]),
    "sparse-unpacked-shape": (lambda: unpacked_weight("sparse"), ["DENSIFY", "'c2/weights'"]),
    "weights-only-output": (weight_only_output, ["model output 1", "weights alone"]),
    "non-utf8-input": (tensor_edited(b"input", name=b"in\xffput"), ["model input 0", "UTF-8"]),
    "bfloat16-io": (bfloat16_io, ["model input 0", "bfloat16"]),
    # a stored shape the runtime recomputes: the whole model runs, its stages would not load
    "stale-shape": (tensor_edited(b"dw", shape=[1, 8, 8, 9]), ["'dw'", "[1, 8, 8, 9]", "[1, 8, 8, 8]"]),
    "no-shape": (tensor_edited(b"dw", shape=None, hasRank=False), ["'dw'", "stored with shape []"]),
    # only the runtime knows these: the commands build the model once in it
    "op-version": (lambda: edited(lambda m: with_opcode(
        m, schema.BuiltinOperator.CONV_2D, version=99, op=0)),
        ["the runtime cannot load this model", "'CONV_2D' version '99'"]),
    "stride-0": (lambda: edited(with_stride_0), ["the runtime cannot load this model", "stride"]),
    "empty-reshape": (empty_reshape, ["the runtime cannot load this model", "RESHAPE"]),
}
RUNTIME_REFUSED = ("op-version", "stride-0", "empty-reshape", "stale-shape")


class TestBadFiles:
    @pytest.mark.parametrize("case, command", [(case, "inspect") for case in sorted(BAD_FILES)]
                             + [(case, "split") for case in ("empty", "custom", "subgraphs",
                                                             "unknown-op", "constant-output", "no-shape",
                                                             "variable-activation", "weights-only-output",
                                                             "written-constant")]
                             + [(case, "plan") for case in ("constant-input", "non-utf8-input", "bfloat16-io")]
                             + [(case, c) for case in RUNTIME_REFUSED for c in ("split", "profile")]
                             + [("op-version", c) for c in ("plan", "predict", "bench")])
    def test_refused(self, cli, tmp_path, case, command):
        make, words = BAD_FILES[case]
        path = tmp_path / f"{case}.tflite"
        path.write_bytes(make())
        # plan, predict and bench refuse before they read their times (the files named need not exist)
        extra = {"split": ["--at", "1", "-o", tmp_path / "out"],
                 "profile": ["-o", tmp_path / "out", "--no-progress"],
                 "plan": ["--platform", "auto", "--profile", tmp_path / "none.csv", "-o", tmp_path / "out"],
                 "predict": ["--platform", "auto", "--predictor", tmp_path / "none.json", "--setup", "cpu:1"],
                 "bench": ["--platform", "auto", "--frames", "1", "--rounds", "1",
                           "--cache-dir", tmp_path / "out"]}.get(command, [])
        assert_clean_refusal(cli(command, path, *extra), str(path), *words)
        assert not (tmp_path / "out").exists()

    def test_a_stale_shape_of_gigabytes_is_refused_before_anything_allocates_it(self, tmp_path):
        """XNNPACK allocated the stored 2 GiB before the shape check ran: 2 GB of memory (a minute and
        16 GB for a 16 GiB shape) for the same one line. Under a 1.5 GiB address-space limit that build
        failed with another message; the check now comes first, and holds within the limit."""
        path = tmp_path / "stale.tflite"
        path.write_bytes(tensor_edited(b"dw", shape=[1, 8, 1 << 23, 8])())  # 2 GiB of float32
        limit = 3 << 29

        def limited() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        result = subprocess.run([sys.executable, "-m", "pipeit", "inspect", str(path)], capture_output=True,
                                text=True, timeout=120, preexec_fn=limited)
        assert_clean_refusal(result, "'dw' is stored with shape [1, 8, 8388608, 8]", "computes [1, 8, 8, 8]")

    def test_missing_file(self, cli, tmp_path):
        assert_clean_refusal(cli("inspect", tmp_path / "nope.tflite"), "no such model file")

    def test_directory(self, cli, tmp_path):
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
    def test_refused(self, cli, model_path, tmp_path, at, words):
        assert len(load_graph(model_path).layers) == 7
        assert_clean_refusal(cli("split", model_path, "--at", at, "-o", tmp_path / "out"), *words)
        assert not (tmp_path / "out").exists()


class TestUnusualModels:
    def test_a_one_layer_model_cannot_be_split(self, cli, tmp_path):
        b = ModelBuilder(seed=6)
        b.output(b.conv2d(b.input("x", (1, 8, 8, 3)), 4, 3))
        path = tmp_path / "one.tflite"
        path.write_bytes(b.to_bytes())
        assert_clean_refusal(cli("split", path, "--at", "1", "-o", tmp_path / "out"),
                             str(path), "one layer and cannot be split")

    def test_inspect_escapes_names_that_would_break_lines(self, cli, tmp_path):
        def rename(model):
            for tensor in model.subgraphs[0].tensors:
                tensor.name = {b"input": b"in\nput", b"probs": b"pro\tbs"}.get(tensor.name, tensor.name)

        path = tmp_path / "names.tflite"
        path.write_bytes(edited(rename))
        result = cli("inspect", path)
        assert result.returncode == 0, result.stderr
        assert "inputs: 'in\\nput' 1x16x16x3 float32" in result.stdout.splitlines()
        assert "outputs: 'pro\\tbs' 1x4 float32" in result.stdout.splitlines()
        assert "\t" not in result.stdout

    def test_dead_ops_are_left_out_and_the_split_runs(self, cli, tmp_path):
        path = tmp_path / "dead.tflite"
        path.write_bytes(dead_branch_builder().to_bytes())
        result = cli("inspect", path)
        assert result.returncode == 0, result.stderr
        assert "dead ops left out (their outputs reach no model output): operator(s) 1" in result.stdout
        result = cli("split", path, "--at", "1,2,3,4", "-o", tmp_path / "out")
        assert result.returncode == 0, result.stderr
        assert "wrote 5 stage(s)" in result.stdout


class TestInspectAndSplit:
    def test_inspect_table(self, cli, model_path):
        result = cli("inspect", model_path)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split()[:3] == ["layer", "op", "output"]
        assert "CONV_2D" in lines[2] and "8x8x8" in lines[2]
        graph = load_graph(model_path)
        assert f"total MACs: {graph.total_macs:,}" in result.stdout

    def test_inspect_json(self, cli, model_path):
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

    def test_split_writes_stages_and_manifest(self, cli, model_path, tmp_path):
        out = tmp_path / "stages"
        result = cli("split", model_path, "--at", "2,4", "-o", out)
        assert result.returncode == 0, result.stderr
        assert str(out / "manifest.json") in result.stdout
        assert sorted(p.name for p in out.iterdir()) == [
            "manifest.json", "stage_0.tflite", "stage_1.tflite", "stage_2.tflite"]
        doc = json.loads((out / "manifest.json").read_text())
        assert [s["layers"] for s in doc["stages"]] == [[0, 2], [2, 4], [4, 7]]
        assert [t["name"] for t in doc["stages"][1]["inputs"]] == ["stem", "dw"]

    def test_split_json_is_the_manifest(self, cli, model_path, tmp_path):
        out = tmp_path / "s"
        result = cli("split", model_path, "--at", "3", "-o", out, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == json.loads((out / "manifest.json").read_text())
