"""The reference zoo: every model builds, runs in the real runtime, and has the papers' MACs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from pipeit import zoo
from pipeit.cli import main
from pipeit.errors import InputError
from pipeit.runtime import make_interpreter

OP = schema.BuiltinOperator
NAMES = ("alexnet", "googlenet", "mobilenet_v1", "mobilenet_v2", "resnet50", "squeezenet")
#: reference MACs (multiply-accumulates of conv/depthwise/FC) from the papers / common tables
REFERENCE_MACS = {
    "alexnet": 0.72e9, "googlenet": 1.5e9, "mobilenet_v1": 0.57e9, "mobilenet_v2": 0.30e9,
    "resnet50": 4.0e9, "squeezenet": 0.84e9,
}


def parse(path: Path):
    return schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)


def count_macs(model) -> int:
    """MACs of conv, depthwise and FC layers, from the tensors' shapes (our own count)."""
    sg = model.subgraphs[0]
    total = 0
    for op in sg.operators:
        code = model.operatorCodes[op.opcodeIndex].builtinCode
        if code not in (OP.CONV_2D, OP.DEPTHWISE_CONV_2D, OP.FULLY_CONNECTED):
            continue
        w = [int(s) for s in sg.tensors[op.inputs[1]].shape]
        out = int(np.prod([int(s) for s in sg.tensors[op.outputs[0]].shape]))
        if code == OP.CONV_2D:
            total += out * w[1] * w[2] * w[3]  # [out, kh, kw, in/groups]
        elif code == OP.DEPTHWISE_CONV_2D:
            total += out * w[1] * w[2]  # one kh*kw window per output element
        else:
            total += out * w[1]
    return total


def op_codes(model) -> set:
    return {model.operatorCodes[o.opcodeIndex].builtinCode for o in model.subgraphs[0].operators}


def run_probs(path_or_bytes, xs):
    """Run each float input (quantised for int8 models) through one interpreter; float probabilities."""
    it = make_interpreter(path_or_bytes)
    d_in, d_out = it.get_input_details()[0], it.get_output_details()[0]
    probs = []
    for x in xs:
        if d_in["dtype"] == np.int8:
            s, z = d_in["quantization"]
            x = np.clip(np.rint(x / s + z), -128, 127).astype(np.int8)
        it.set_tensor(d_in["index"], x)
        it.invoke()
        y = it.get_tensor(d_out["index"])
        assert y.shape == (1, 1000)
        if d_out["dtype"] == np.int8:
            s, z = d_out["quantization"]
            y = (y.astype(np.float32) - z) * s
        probs.append(y.ravel().copy())
    return probs


def frames(n: int = 2):
    rng = np.random.default_rng(2024)
    return [rng.uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def float_probs(zoo_models):
    """Float model outputs on :func:`frames`, computed once per model."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = run_probs(zoo_models(name), frames())
        return cache[name]

    return get


def test_list_models():
    assert set(NAMES) <= set(zoo.list_models())
    assert zoo.list_models() == sorted(zoo.list_models())
    for name in zoo.list_models():
        assert zoo.describe(name)


def test_unknown_model_refused():
    with pytest.raises(InputError, match="unknown zoo model"):
        zoo.build("vgg16")


@pytest.mark.parametrize("name", NAMES)
def test_float_model_runs(zoo_models, float_probs, name):
    m = parse(zoo_models(name))
    sg = m.subgraphs[0]
    assert [int(s) for s in sg.tensors[sg.inputs[0]].shape] == [1, 224, 224, 3]
    outs = float_probs(name)
    for p in outs:
        assert np.isfinite(p).all()
        assert p.std() > 0
        assert p.sum() == pytest.approx(1.0, abs=1e-3)
        assert p.max() > 0.02  # a clear top class, not a flat softmax
    assert not np.array_equal(outs[0], outs[1])  # the output depends on the input


@pytest.mark.parametrize("name", NAMES)
def test_int8_model_runs_and_tracks_float(zoo_models, float_probs, name):
    path = zoo_models(name, int8=True)
    m = parse(path)
    sg = m.subgraphs[0]
    assert sg.tensors[sg.inputs[0]].type == schema.TensorType.INT8
    assert sg.tensors[sg.outputs[0]].type == schema.TensorType.INT8
    types = {t.type for t in sg.tensors}
    assert schema.TensorType.FLOAT32 not in types
    agree = 0
    for q, f in zip(run_probs(path, frames()), float_probs(name)):
        assert np.isfinite(q).all() and q.std() > 0
        assert np.corrcoef(q, f)[0, 1] > 0.9
        agree += int(q.argmax() == f.argmax())
    assert agree >= 1


@pytest.mark.parametrize("name", NAMES)
def test_macs_match_papers(zoo_models, name):
    macs = count_macs(parse(zoo_models(name)))
    assert abs(macs - REFERENCE_MACS[name]) / REFERENCE_MACS[name] < 0.10, f"{name}: {macs / 1e9:.3f} G"
    assert count_macs(parse(zoo_models(name, int8=True))) == macs


@pytest.mark.parametrize("name,op", [("resnet50", OP.ADD), ("mobilenet_v2", OP.ADD),
                                     ("googlenet", OP.CONCATENATION), ("squeezenet", OP.CONCATENATION),
                                     ("alexnet", OP.FULLY_CONNECTED), ("mobilenet_v1", OP.DEPTHWISE_CONV_2D)])
def test_branches_present(zoo_models, name, op):
    assert op in op_codes(parse(zoo_models(name)))


def test_alexnet_grouped_convs(zoo_models):
    m = parse(zoo_models("alexnet"))
    sg = m.subgraphs[0]
    grouped = [op for op in sg.operators
               if m.operatorCodes[op.opcodeIndex].builtinCode == OP.CONV_2D
               and int(sg.tensors[op.inputs[1]].shape[3]) != int(sg.tensors[op.inputs[0]].shape[3])]
    assert len(grouped) == 3  # conv2, conv4, conv5 of the two-tower original


def test_seed_determinism():
    a = zoo.build("mobilenet_v2", seed=0)
    assert a == zoo.build("mobilenet_v2", seed=0)
    b = zoo.build("mobilenet_v2", seed=1)
    ma = schema.ModelT.InitFromPackedBuf(bytearray(a), 0)
    mb = schema.ModelT.InitFromPackedBuf(bytearray(b), 0)
    wa = [np.asarray(buf.data) for buf in ma.buffers if buf.data is not None and len(buf.data) > 1000]
    wb = [np.asarray(buf.data) for buf in mb.buffers if buf.data is not None and len(buf.data) > 1000]
    assert len(wa) == len(wb) > 50
    assert all(x.shape == y.shape and not np.array_equal(x, y) for x, y in zip(wa, wb))


def test_fp16_weights_variant():
    data = zoo.build("squeezenet", fp16_weights=True)
    m = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    assert OP.DEQUANTIZE in op_codes(m)
    (f,) = run_probs(zoo.build("squeezenet"), frames(1))
    (h,) = run_probs(data, frames(1))
    np.testing.assert_allclose(h, f, atol=5e-3)
    with pytest.raises(InputError):
        zoo.build("squeezenet", int8=True, fp16_weights=True)


class TestCli:
    def test_list_table_and_json(self, capsys):
        assert main(["zoo", "--list"]) == 0
        out = capsys.readouterr().out
        assert all(name in out for name in NAMES)
        assert main(["zoo", "--list", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert {m["name"] for m in doc["models"]} >= set(NAMES)

    def test_writes_a_runnable_int8_model(self, tmp_path, capsys):
        out = tmp_path / "sub" / "sq.tflite"
        assert main(["zoo", "squeezenet", "-o", str(out), "--int8", "--seed", "3", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["bytes"] == out.stat().st_size and doc["variant"] == "int8"
        assert out.read_bytes() == zoo.build("squeezenet", int8=True, seed=3)
        assert run_probs(out, frames(1))[0].std() > 0

    def test_an_int8_build_prints_nothing_on_stderr(self, tmp_path):
        # a fresh process: the runtime prints its "INFO: Created ... delegate" line once per process, here at
        # the calibration run, and that is no news to someone making a model file
        out = tmp_path / "sq.tflite"
        result = subprocess.run([sys.executable, "-m", "pipeit", "zoo", "squeezenet", "--int8", "-o", str(out)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert result.stdout.startswith(f"wrote {out}")

    @pytest.mark.parametrize("args", [["zoo", "vgg16", "-o", "x.tflite"], ["zoo", "squeezenet"], ["zoo"],
                                      ["zoo", "squeezenet", "-o", "x.tflite", "--int8", "--fp16-weights"]])
    def test_bad_use_exits_2_with_one_line(self, tmp_path, args):
        result = subprocess.run([sys.executable, "-m", "pipeit", *args], capture_output=True, text=True,
                                cwd=tmp_path, timeout=120)
        assert result.returncode == 2
        lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("INFO")]
        assert len(lines) == 1 and lines[0].startswith("pipeit: error:")
        assert not (tmp_path / "x.tflite").exists()
