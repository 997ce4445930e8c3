"""Pruned models whose weights are stored sparse behind DENSIFY: built, checked when read, densified as
the runtime densifies them, split and run through a pipeline and on the GPU stage, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from pipeit import zoo
from pipeit.errors import ModelError
from pipeit.graph import load_graph
from pipeit.modelfile import parse_model
from pipeit.sparsity import densify
from pipeit.tflite_builder import ModelBuilder, pack_model, single_layer_builder
from tests.host_helpers import needs_opencl
from tests.test_builder import run
from tests.test_executor import TWO, assert_identical, frames_for, make_plan, reference

OP = schema.BuiltinOperator
DENSE, CSR = schema.DimensionType.DENSE, schema.DimensionType.SPARSE_CSR

#: a 4 x 4 filter with an empty row, and the same values in three layouts the format allows
W = np.array([[1, 0, 2, 0], [0, 0, 0, 0], [0, 3, 0, 0], [4, 0, 0, 5]], dtype=np.float32)
LAYOUTS = {
    # rows dense, columns CSR
    "csr": dict(order=[0, 1], blocks=None, dims=[(DENSE, 4), (CSR, [0, 2, 2, 3, 5], [0, 2, 1, 0, 3])],
                values=[1, 2, 3, 4, 5]),
    # column-major: columns dense, rows CSR within each
    "csc": dict(order=[1, 0], blocks=None, dims=[(DENSE, 4), (CSR, [0, 2, 3, 4, 5], [0, 3, 2, 0, 3])],
                values=[1, 4, 3, 2, 5]),
    # 1 x 2 blocks along the columns: rows dense, blocks CSR, each block's 2 values dense
    "blocked": dict(order=[0, 1, 2], blocks=[1],
                    dims=[(DENSE, 4), (CSR, [0, 2, 2, 3, 5], [0, 1, 0, 0, 1]), (DENSE, 2)],
                    values=[1, 0, 2, 0, 0, 3, 4, 0, 0, 5]),
}


def sparsity_of(layout) -> "schema.SparsityParametersT":
    sp = schema.SparsityParametersT()
    sp.traversalOrder, sp.blockMap = list(layout["order"]), layout["blocks"]
    sp.dimMetadata = []
    for entry in layout["dims"]:
        meta = schema.DimensionMetadataT()
        meta.format = entry[0]
        if entry[0] == DENSE:
            meta.denseSize = entry[1]
        else:
            meta.arraySegmentsType = meta.arrayIndicesType = schema.SparseIndexVector.Int32Vector
            meta.arraySegments, meta.arrayIndices = schema.Int32VectorT(), schema.Int32VectorT()
            meta.arraySegments.values, meta.arrayIndices.values = list(entry[1]), list(entry[2])
        sp.dimMetadata.append(meta)
    return sp


def fc_model_with(sparsity, values) -> bytes:
    """A 4 -> 4 fully connected model (no bias) whose filter is the sparse constant given, behind DENSIFY."""
    b = ModelBuilder(0)
    b.output(b.fully_connected(b.input("x", (1, 4)), 4))
    model = b.to_model()
    sg = model.subgraphs[0]
    fc = sg.operators[0]
    weight = sg.tensors[fc.inputs[1]]
    sparse = schema.TensorT()
    sparse.name, sparse.shape, sparse.type, sparse.sparsity = "w/sparse", [4, 4], schema.TensorType.FLOAT32, sparsity
    buf = schema.BufferT()
    buf.data = np.asarray(values, dtype=np.float32).view(np.uint8)
    model.buffers.append(buf)
    sparse.buffer = len(model.buffers) - 1
    sg.tensors.append(sparse)
    model.buffers[weight.buffer].data = None
    weight.buffer = 0
    zero = np.zeros(4, np.float32)
    model.buffers[sg.tensors[fc.inputs[2]].buffer].data = zero.view(np.uint8)
    code = schema.OperatorCodeT(deprecatedBuiltinCode=OP.DENSIFY, version=1, builtinCode=OP.DENSIFY)
    model.operatorCodes.append(code)
    sg.operators.insert(0, schema.OperatorT(opcodeIndex=len(model.operatorCodes) - 1,
                                            inputs=[len(sg.tensors) - 1], outputs=[fc.inputs[1]]))
    return pack_model(model)


def densified_twin(data: bytes) -> bytes:
    """The same model with every DENSIFY replaced by its dense result (decoded by pipeit.sparsity)."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    sg = model.subgraphs[0]
    kept = []
    for op in sg.operators:
        if model.operatorCodes[op.opcodeIndex].builtinCode != OP.DENSIFY:
            kept.append(op)
            continue
        src = sg.tensors[op.inputs[0]]
        dtype = np.float16 if src.type == schema.TensorType.FLOAT16 else np.float32
        values = np.frombuffer(np.asarray(model.buffers[src.buffer].data, np.uint8).tobytes(), dtype)
        buf = schema.BufferT()
        buf.data = densify(src.shape, values, src.sparsity).reshape(-1).view(np.uint8)
        model.buffers.append(buf)
        sg.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
    sg.operators = kept
    return pack_model(model)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_densifies_as_the_runtime_does(name):
    layout = LAYOUTS[name]
    sparsity = sparsity_of(layout)
    assert np.array_equal(densify(W.shape, np.asarray(layout["values"], np.float32), sparsity), W)
    data = fc_model_with(sparsity, layout["values"])
    x = np.array([[1.0, -2.0, 0.5, 3.0]], dtype=np.float32)
    np.testing.assert_allclose(run(data, x), x @ W.T, rtol=1e-6)  # the runtime agrees: y = x W^T


class TestBuilder:
    def test_pruned_weights_stored_sparse_behind_densify(self):
        b = single_layer_builder("conv", (1, 8, 8, 4), out_channels=8, seed=5)
        dense, sparse = b.to_bytes(), b.to_bytes(sparse_weights=0.5)
        m = schema.ModelT.InitFromPackedBuf(bytearray(sparse), 0)
        sg = m.subgraphs[0]
        assert [m.operatorCodes[o.opcodeIndex].builtinCode for o in sg.operators] == [OP.DENSIFY, OP.CONV_2D]
        src = sg.tensors[sg.operators[0].inputs[0]]
        assert src.sparsity is not None and len(m.buffers[src.buffer].data) == 4 * (8 * 3 * 3 * 4) // 2
        x = np.random.default_rng(1).uniform(-1, 1, (1, 8, 8, 4)).astype(np.float32)
        got = run(sparse, x)
        assert np.array_equal(got, run(densified_twin(sparse), x))  # the runtime densified what we decode
        assert not np.allclose(got, run(dense, x), atol=1e-3)  # and half the weights really are gone

    def test_fp16_values_behind_densify_then_dequantize(self):
        b = single_layer_builder("conv", (1, 8, 8, 4), out_channels=8, seed=6)
        data = b.to_bytes(sparse_weights=0.5, fp16_weights=True)
        m = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
        sg = m.subgraphs[0]
        assert [m.operatorCodes[o.opcodeIndex].builtinCode for o in sg.operators] == \
            [OP.DENSIFY, OP.DEQUANTIZE, OP.CONV_2D]
        assert sg.tensors[sg.operators[0].inputs[0]].type == schema.TensorType.FLOAT16
        x = np.random.default_rng(2).uniform(-1, 1, (1, 8, 8, 4)).astype(np.float32)
        got = run(data, x)
        assert np.array_equal(got, run(densified_twin(data), x))
        np.testing.assert_allclose(got, run(b.to_bytes(sparse_weights=0.5), x), rtol=1e-2, atol=1e-2)

    def test_bad_fractions_and_mixed_modes_are_refused(self):
        b = single_layer_builder("conv", (1, 8, 8, 4), out_channels=8)
        from pipeit.errors import InputError

        for bad in (dict(sparse_weights=1.0), dict(sparse_weights=-0.1), dict(sparse_weights=0.5, int8=True)):
            with pytest.raises(InputError):
                b.to_bytes(**bad)


class TestCorruptMetadata:
    @pytest.mark.parametrize("damage, words", [
        (lambda sp: sp.dimMetadata[1].arrayIndices.values.__setitem__(0, 9), "index outside"),
        (lambda sp: sp.dimMetadata[1].arraySegments.values.__setitem__(4, 7), "segments"),
        (lambda sp: setattr(sp, "traversalOrder", [0, 0]), "traversal order"),
        (lambda sp: sp.dimMetadata[0].__setattr__("denseSize", 5), "dense with 5"),
    ])
    def test_refused_when_read_with_one_line(self, tmp_path, damage, words):
        sparsity = sparsity_of(LAYOUTS["csr"])
        damage(sparsity)
        data = fc_model_with(sparsity, LAYOUTS["csr"]["values"])
        with pytest.raises(ModelError, match=words):
            parse_model(data, "m.tflite")
        path = tmp_path / "m.tflite"
        path.write_bytes(data)
        result = subprocess.run([sys.executable, "-m", "pipeit", "inspect", str(path)], capture_output=True,
                                text=True, timeout=120)
        lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("INFO")]
        assert result.returncode == 2 and len(lines) == 1 and "sparse tensor" in lines[0], result.stderr

    def test_values_missing_from_the_buffer(self):
        with pytest.raises(ModelError, match="buffer holds 4"):
            parse_model(fc_model_with(sparsity_of(LAYOUTS["csr"]), [1, 2, 3, 4]), "m.tflite")


@pytest.fixture(scope="module")
def sparse_v2(tmp_path_factory):
    """mobilenet_v2 (residual branches) with 60 % of every filter pruned, written by `pipeit zoo`."""
    path = tmp_path_factory.mktemp("sparse") / "mobilenet_v2_sparse.tflite"
    result = subprocess.run([sys.executable, "-m", "pipeit", "zoo", "mobilenet_v2", "--sparse-weights", "0.6",
                             "-o", str(path), "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["variant"] == "float32, sparse-weights 0.6"
    return path


class TestSparseZooModel:
    def test_densify_ops_are_folded_into_their_layers(self, sparse_v2):
        graph = load_graph(sparse_v2)
        dense = load_graph(zoo.build("mobilenet_v2"))
        assert [layer.descriptor.op for layer in graph.layers] == [layer.descriptor.op for layer in dense.layers]
        assert "DENSIFY" not in {layer.descriptor.op for layer in graph.layers}
        weighted = [layer for layer in graph.layers
                    if layer.descriptor.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
        assert len(weighted) > 50 and all(len(layer.op_indices) == 2 for layer in weighted)  # its DENSIFY, itself
        assert graph.total_weight_bytes < 0.6 * dense.total_weight_bytes

    def test_a_worker_holds_the_kept_values_and_the_dense_filters(self, sparse_v2, tmp_path):
        graph = load_graph(sparse_v2)
        dense = load_graph(zoo.build("mobilenet_v2"))
        weighted = [i for i, layer in enumerate(dense.layers)
                    if layer.descriptor.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
        # the runtime densifies each filter to float32 at load and keeps the file mapped: held = stored + dense
        # filter (the dense model's weights less its float32 biases, one per output channel)
        for i in weighted:
            stored, held = graph.layers[i].descriptor.weight_bytes, graph.layers[i].descriptor.held_bytes
            d = dense.layers[i].descriptor
            assert held - stored == d.weight_bytes - 4 * d.out_channels
        assert all(layer.descriptor.held_bytes == layer.descriptor.weight_bytes
                   for layer in dense.layers)  # nothing folded: held is what is stored
        # a memory limit counts what is held: between the stored and the held size, nothing fits
        from cores.platform import load_platform
        from pipeit.dse import plan_pipeline
        from pipeit.errors import PlanError
        from pipeit.layer_times import LayerTimes
        from tests.daemon_helpers import write_times

        times = LayerTimes.load(write_times(sparse_v2, "auto", tmp_path / "t.json"))
        assert sum(times.weight_bytes) == graph.total_held_weight_bytes
        between = (graph.total_weight_bytes + graph.total_held_weight_bytes) / 2 / 2**20
        with pytest.raises(PlanError, match="weights alone need"):
            plan_pipeline(times, load_platform("auto"), memory_mb=between)
        plan = plan_pipeline(times, load_platform("auto"), memory_mb=1.01 * graph.total_held_weight_bytes / 2**20)
        assert sum(len(s.workers) for s in plan.stages) == 1

    def test_pipeit_run_check_passes(self, sparse_v2, tmp_path):
        n = len(load_graph(sparse_v2).layers)
        plan = make_plan(sparse_v2, [((0, n // 3), [("big", (TWO[0],))]), ((n // 3, n), [("little", (TWO[1],))])])
        plan_path = tmp_path / "plan.json"
        plan.save(plan_path)
        result = subprocess.run([sys.executable, "-m", "pipeit", "run", str(plan_path), "--model", str(sparse_v2),
                                 "--frames", "6", "--warmup", "1", "--check", "--json"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["outputs_match"] is True

    def test_three_stages_through_the_api_equal_the_whole_model(self, sparse_v2):
        from pipeit.executor import Pipeline

        n = len(load_graph(sparse_v2).layers)
        plan = make_plan(sparse_v2, [((0, n // 3), [("big", (TWO[0],))]),
                                     ((n // 3, 2 * n // 3), [("little", (TWO[1],))]),
                                     ((2 * n // 3, n), [("big", (TWO[0],))])])
        frames = frames_for(sparse_v2, 4)
        with Pipeline(plan, sparse_v2) as pipe:
            got = list(pipe.map(frames))
        assert_identical(got, reference(sparse_v2, frames))


@needs_opencl
def test_gpu_stage_lowers_sparse_filters(sparse_v2):
    from pipeit.gpu.check import reference_outputs
    from pipeit.gpu.device import make_context
    from pipeit.gpu.stage import GpuStage
    from pipeit.modelfile import read_model
    from pipeit.split import extract_layers

    model = read_model(sparse_v2)
    stage = GpuStage(model, 0, 3, ctx=make_context(None))
    frame = {t.name: np.random.default_rng(2).uniform(-1, 1, size=t.shape).astype(np.float32) for t in stage.inputs}
    want = reference_outputs(extract_layers(model, 0, 3).model_bytes, frame)
    got = stage.run(frame)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4)


@needs_opencl
def test_gpu_stage_lowers_fp16_sparse_filters(tmp_path):
    """DENSIFY of float16 values, then DEQUANTIZE: the GPU stage follows both to the filter."""
    from pipeit.gpu.device import make_context
    from pipeit.gpu.stage import GpuStage
    from pipeit.modelfile import read_model

    path = tmp_path / "conv.tflite"
    path.write_bytes(single_layer_builder("conv", (1, 16, 16, 8), out_channels=16, seed=7)
                     .to_bytes(sparse_weights=0.7, fp16_weights=True))
    stage = GpuStage(read_model(path), 0, 1, ctx=make_context(None))
    x = np.random.default_rng(3).uniform(-1, 1, (1, 16, 16, 8)).astype(np.float32)
    (got,) = stage.run({stage.inputs[0].name: x}).values()
    np.testing.assert_allclose(got, run(path.read_bytes(), x), rtol=1e-4, atol=1e-4)
