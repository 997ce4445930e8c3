"""The layer graph: layer lists, descriptors, folded constant ops, cut points."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from ai_edge_litert import schema_py_generated as schema
from pipeit import zoo
from pipeit.descriptor import LayerDescriptor
from pipeit.errors import ModelError
from pipeit.graph import (
    CutPoint, Layer, LayerGraph, constant_ops, dead_ops, graph_from_model, load_graph,
)
from pipeit.modelfile import op_name, read_model, serialize_model
from pipeit.tflite_builder import ModelBuilder
from tests.model_helpers import dead_branch_builder

# architecture facts (the papers' layer tables), not properties of this code
ZOO_FACTS = {
    # name: (CONV_2D, DEPTHWISE_CONV_2D, ADD, CONCATENATION, published G-MACs)
    "alexnet": (5, 0, 0, 0, 0.72),
    "googlenet": (57, 0, 0, 9, 1.58),
    "mobilenet_v1": (14, 13, 0, 0, 0.569),
    "mobilenet_v2": (35, 17, 10, 0, 0.300),
    "resnet50": (53, 0, 16, 0, 4.09),
    "squeezenet": (26, 0, 0, 8, 0.84),
}


def ops_of(graph: LayerGraph, op: str):
    return [layer for layer in graph.layers if layer.descriptor.op == op]


class TestZooGraphs:
    @pytest.mark.parametrize("name", sorted(ZOO_FACTS))
    def test_layer_counts_and_macs(self, zoo_models, name):
        graph = load_graph(zoo_models(name))
        conv, dw, add, concat, gmacs = ZOO_FACTS[name]
        assert len(ops_of(graph, "CONV_2D")) == conv
        assert len(ops_of(graph, "DEPTHWISE_CONV_2D")) == dw
        assert len(ops_of(graph, "ADD")) == add
        assert len(ops_of(graph, "CONCATENATION")) == concat
        assert graph.total_macs == pytest.approx(gmacs * 1e9, rel=0.06)
        assert [layer.index for layer in graph.layers] == list(range(len(graph.layers)))
        assert len(graph.cuts) == len(graph.layers) - 1
        assert graph.inputs[0].shape == (1, 224, 224, 3)
        assert graph.outputs[0].shape[-1] == graph.layers[-1].descriptor.out_channels

    @pytest.mark.parametrize("name", sorted(ZOO_FACTS))
    def test_nx_graph_is_the_layer_dag(self, zoo_models, name):
        graph = load_graph(zoo_models(name))
        g = graph.nx
        assert set(g.nodes) == set(range(len(graph.layers)))
        assert nx.is_directed_acyclic_graph(g)
        assert all(u < v for u, v in g.edges)  # operator order is a topological order
        for u, v, data in g.edges(data=True):
            produced = {t.name for t in graph.layers[u].descriptor.outputs}
            consumed = {t.name for t in graph.layers[v].descriptor.inputs}
            assert data["tensors"] and set(data["tensors"]) <= produced & consumed
        # every layer but the first reads something a layer produced
        assert all(g.in_degree(i) >= 1 for i in range(1, len(graph.layers)))

    def test_int8_graph_has_same_layers_as_float(self, zoo_models):
        flt = load_graph(zoo_models("mobilenet_v2"))
        q = load_graph(zoo_models("mobilenet_v2", int8=True))
        assert [l.descriptor.op for l in q.layers] == [l.descriptor.op for l in flt.layers]
        assert [l.descriptor.macs for l in q.layers] == [l.descriptor.macs for l in flt.layers]
        assert {l.descriptor.dtype for l in q.layers} == {"int8"}
        conv_f, conv_q = flt.layers[0].descriptor, q.layers[0].descriptor
        # int8 weights (1 byte) + int32 bias (4 bytes) vs float32 weights and bias
        assert conv_q.weight_bytes == conv_f.weight_bytes // 4 * 1 + conv_f.out_channels * 3

    def test_sha256_is_of_the_file(self, zoo_models):
        import hashlib

        path = Path(zoo_models("squeezenet"))
        graph = load_graph(path)
        assert graph.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert load_graph(path.read_bytes()).sha256 == graph.sha256

    def test_descriptors_round_trip_and_deduplicate(self, zoo_models):
        graph = load_graph(zoo_models("resnet50"))
        for layer in graph.layers:
            doc = layer.descriptor.to_json()
            assert LayerDescriptor.from_json(doc) == layer.descriptor
        keys = {layer.descriptor.key() for layer in graph.layers}
        assert len(keys) < len(graph.layers)  # repeated bottleneck blocks share keys


class TestFoldedConstants:
    def test_fp16_dequantize_is_folded_into_its_consumer(self):
        data = zoo.build("mobilenet_v1", fp16_weights=True)
        model = read_model(data)
        names = [op_name(model.operatorCodes[op.opcodeIndex]) for op in model.subgraphs[0].operators]
        deq = {k for k, name in enumerate(names) if name == "DEQUANTIZE"}
        assert deq and constant_ops(model) == deq
        graph = load_graph(data)
        float_graph = load_graph(zoo.build("mobilenet_v1"))
        assert [l.descriptor.op for l in graph.layers] == [l.descriptor.op for l in float_graph.layers]
        assert "DEQUANTIZE" not in {l.descriptor.op for l in graph.layers}
        assert sorted(k for l in graph.layers for k in l.folded_op_indices) == sorted(deq)
        for layer, ref in zip(graph.layers, float_graph.layers):
            assert all(names[k] == "DEQUANTIZE" for k in layer.folded_op_indices)
            assert names[layer.op_index] == layer.descriptor.op
            assert layer.op_indices == tuple(sorted(layer.op_indices))
            d, r = layer.descriptor, ref.descriptor
            if d.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                assert len(layer.op_indices) == 2
                # the weight tensor is stored as fp16 (2 bytes), the bias stays fp32
                weights = (r.weight_bytes - 4 * r.out_channels) // 4
                assert d.weight_bytes == 2 * weights + 4 * r.out_channels
                # a worker holds the fp16 weights (the file) and the float32 ones DEQUANTIZE makes at load
                assert d.held_bytes == d.weight_bytes + 4 * weights
                assert ("weight_dtype", "float16+float32") in d.extra
                assert d.inputs == r.inputs  # weights are not activation inputs
            else:
                assert d.weight_bytes == r.weight_bytes == d.held_bytes
        assert graph.to_json()["total_held_weight_bytes"] == sum(l.descriptor.held_bytes for l in graph.layers)

    def test_cut_tensors_never_include_weights(self):
        graph = load_graph(zoo.build("mobilenet_v1", fp16_weights=True))
        activations = {t.name for l in graph.layers for t in l.descriptor.outputs}
        activations |= {t.name for t in graph.inputs}
        for cut in graph.cuts:
            assert {t.name for t in cut.tensors} <= activations


class TestCuts:
    def test_residuals_cross_every_cut_they_span(self, zoo_models):
        graph = load_graph(zoo_models("resnet50"))
        producer = {t.name: l.index for l in graph.layers for t in l.descriptor.outputs}
        spans = 0
        for add in ops_of(graph, "ADD"):
            for tensor in add.descriptor.inputs:
                start = producer[tensor.name]
                for before in range(start + 1, add.index + 1):
                    assert tensor in graph.cut(before).tensors
                if add.index - start > 1:
                    spans += 1
                # and it is gone once consumed (unless something later still reads it)
                later_readers = [l for l in graph.layers[add.index + 1:]
                                 if tensor in l.descriptor.inputs]
                if add.index + 1 < len(graph.layers) and not later_readers:
                    assert tensor not in graph.cut(add.index + 1).tensors
        assert spans == 16  # every bottleneck's shortcut skips its 3 (or 4) convs

    def test_cut_bytes_and_chain_models(self, zoo_models):
        graph = load_graph(zoo_models("mobilenet_v1"))
        for cut, layer in zip(graph.cuts, graph.layers):
            assert isinstance(cut, CutPoint) and cut.before == layer.index + 1
            # a plain chain: exactly the previous layer's output crosses
            assert cut.tensors == layer.descriptor.outputs
            assert cut.bytes == sum(t.nbytes for t in cut.tensors)
        with pytest.raises(IndexError):
            graph.cut(0)
        with pytest.raises(IndexError):
            graph.cut(len(graph.layers))

    def test_multi_input_multi_output(self):
        b = ModelBuilder(seed=1)
        x = b.input("left", (1, 8, 8, 3))
        y = b.input("right", (1, 8, 8, 4))
        a = b.conv2d(x, 4, 3, name="a")          # layer 0
        s = b.add(a, y, name="s")                # layer 1, also a model output
        b.output(s)
        c = b.conv2d(s, 4, 1, name="c")          # layer 2
        m = b.mean(c, name="m")                  # layer 3
        b.output(b.mul(a, y, name="prod"))       # layer 4
        b.output(m)
        graph = load_graph(b.to_bytes())
        assert [t.name for t in graph.inputs] == ["left", "right"]
        assert [t.name for t in graph.outputs] == ["s", "prod", "m"]
        assert [l.descriptor.op for l in graph.layers] == ["CONV_2D", "ADD", "CONV_2D", "MEAN", "MUL"]
        names = [[t.name for t in cut.tensors] for cut in graph.cuts]
        assert names == [
            ["right", "a"],            # before 1
            ["right", "a", "s"],       # before 2: s is a model output, so it stays
            ["right", "a", "s", "c"],  # before 3
            ["right", "a", "s", "m"],  # before 4
        ]
        assert sorted(graph.nx.edges) == [(0, 1), (0, 4), (1, 2), (2, 3)]


class TestDescriptors:
    def single(self, build, layers: int = 1) -> Layer:
        b = ModelBuilder(seed=0)
        x = b.input("x", (1, 32, 32, 8))
        b.output(build(b, x))
        graph = load_graph(b.to_bytes())
        assert len(graph.layers) == layers
        return graph.layers[-1]

    def test_conv(self):
        d = self.single(lambda b, x: b.conv2d(x, 16, kernel=3, stride=2, activation="RELU6")).descriptor
        assert d.op == "CONV_2D"
        assert (d.kernel, d.stride, d.dilation, d.padding) == ((3, 3), (2, 2), (1, 1), "SAME")
        assert d.groups == 1 and d.activation == "RELU6"
        assert d.macs == 16 * 16 * 16 * 3 * 3 * 8
        assert d.weight_bytes == (16 * 3 * 3 * 8 + 16) * 4
        assert d.activation_bytes == (32 * 32 * 8 + 16 * 16 * 16) * 4
        assert d.in_channels == 8 and d.out_channels == 16

    def test_grouped_and_dilated_conv(self):
        d = self.single(lambda b, x: b.conv2d(x, 12, kernel=3, groups=4, dilation=2,
                                              padding="VALID", activation="NONE")).descriptor
        assert d.groups == 4 and d.dilation == (2, 2) and d.padding == "VALID"
        assert d.activation == "NONE"
        assert d.output_shape == (1, 28, 28, 12)
        assert d.macs == 28 * 28 * 12 * 3 * 3 * (8 // 4)

    def test_depthwise(self):
        d = self.single(lambda b, x: b.depthwise_conv2d(x, kernel=5, stride=1,
                                                        depth_multiplier=2)).descriptor
        assert d.op == "DEPTHWISE_CONV_2D"
        assert d.groups == 8 and d.depth_multiplier == 2 and d.kernel == (5, 5)
        assert d.macs == 32 * 32 * 16 * 5 * 5

    def test_fully_connected(self):
        d = self.single(lambda b, x: b.fully_connected(b.reshape(x, (1, -1)), 10),
                        layers=2).descriptor
        assert d.op == "FULLY_CONNECTED"
        assert d.macs == 10 * 32 * 32 * 8
        assert d.weight_bytes == (10 * 32 * 32 * 8 + 10) * 4

    def test_pool_mean_add(self):
        b = ModelBuilder(seed=0)
        x = b.input("x", (1, 32, 32, 8))
        p = b.max_pool(x, pool=3, stride=2, padding="SAME")
        q = b.avg_pool(x, pool=2)
        s = b.add(p, q, activation="RELU")
        b.output(b.mean(s))
        graph = load_graph(b.to_bytes())
        mp, ap, add, mean = (l.descriptor for l in graph.layers)
        assert (mp.op, mp.kernel, mp.stride, mp.padding) == ("MAX_POOL_2D", (3, 3), (2, 2), "SAME")
        assert mp.macs == 16 * 16 * 8 * 9
        assert (ap.op, ap.macs) == ("AVERAGE_POOL_2D", 16 * 16 * 8 * 4)
        assert (add.op, add.activation, add.macs, len(add.inputs)) == ("ADD", "RELU", 16 * 16 * 8, 2)
        assert (mean.op, mean.macs) == ("MEAN", 16 * 16 * 8)  # one per input element

    def test_other_ops_get_a_generic_descriptor(self):
        b = ModelBuilder(seed=0)
        x = b.input("x", (1, 8, 8, 4))
        y = b.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        z = b.hard_swish(y)
        w = b.concatenation([z, b.logistic(z)], axis=3)
        b.output(b.reshape(w, (1, -1)))
        graph = load_graph(b.to_bytes())
        ops = [l.descriptor for l in graph.layers]
        assert [d.op for d in ops] == ["PAD", "HARD_SWISH", "LOGISTIC", "CONCATENATION", "RESHAPE"]
        pad, hswish, logistic, concat, reshape = ops
        assert pad.macs == 0 and pad.output_shape == (1, 10, 10, 4)
        assert hswish.macs == 10 * 10 * 4
        assert concat.macs == 0 and ("axis", "3") in concat.extra and len(concat.inputs) == 2
        assert reshape.output_shape == (1, 800)
        assert all(d.kernel is None and d.stride is None for d in ops)


# ---- dead operators ----------------------------------------------------------------------------



def with_unused_dequantize(data: bytes) -> bytes:
    """An fp16 model with one more DEQUANTIZE of a weight, first, whose output nobody reads."""
    model = read_model(data)
    sg = model.subgraphs[0]
    deq = next(op for op in sg.operators if op_name(model.operatorCodes[op.opcodeIndex]) == "DEQUANTIZE")
    unused = schema.TensorT()
    unused.name = "unused_weight"
    unused.shape = list(sg.tensors[deq.outputs[0]].shape)
    unused.type = schema.TensorType.FLOAT32
    sg.tensors.append(unused)
    op = schema.OperatorT()
    op.opcodeIndex = deq.opcodeIndex
    op.inputs = list(deq.inputs)
    op.outputs = [len(sg.tensors) - 1]
    sg.operators.insert(0, op)
    return serialize_model(model)


class TestDeadOps:
    def test_a_dead_branch_is_in_no_layer_and_no_cut(self):
        graph = load_graph(dead_branch_builder().to_bytes())
        assert [l.descriptor.op for l in graph.layers] == [
            "CONV_2D", "CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"]
        assert [l.descriptor.outputs[0].name for l in graph.layers][:2] == ["stem", "c2"]
        assert graph.pruned_ops == (1,)
        assert all(1 not in l.op_indices for l in graph.layers)
        assert all(t.name != "dead" for cut in graph.cuts for t in cut.tensors)
        assert set(graph.nx.nodes) == set(range(5))
        assert graph.to_json()["pruned_ops"] == [1]
        # the same layers (and descriptors) as the model without the dead conv
        clean = ModelBuilder(seed=20)
        x = clean.input("input", (1, 12, 12, 3))
        a = clean.conv2d(x, 8, 3, stride=2, name="stem")
        c = clean.conv2d(a, 8, 3, name="c2")
        clean.output(clean.fully_connected(clean.mean(clean.add(a, c, name="res")), 5, name="fc"))
        assert [l.descriptor.op for l in load_graph(clean.to_bytes()).layers] == \
            [l.descriptor.op for l in graph.layers]

    def test_an_unused_dequantize_of_a_weight_is_pruned(self):
        data = zoo.build("mobilenet_v1", fp16_weights=True)
        graph = load_graph(with_unused_dequantize(data))
        reference = load_graph(data)
        assert graph.pruned_ops == (0,)
        assert [l.descriptor for l in graph.layers] == [l.descriptor for l in reference.layers]
        assert all(0 not in l.op_indices for l in graph.layers)

    def test_a_dead_op_at_the_end(self):
        b = ModelBuilder(seed=21)
        x = b.input("input", (1, 12, 12, 3))
        out = b.output(b.fully_connected(b.mean(b.conv2d(x, 8, 3, stride=2)), 5))
        b.softmax(out, name="dead_tail")
        graph = load_graph(b.to_bytes())
        assert [l.descriptor.op for l in graph.layers] == ["CONV_2D", "MEAN", "FULLY_CONNECTED"]
        assert graph.pruned_ops == (3,)

    def test_a_model_whose_outputs_no_operator_computes_is_refused(self):
        model = read_model(dead_branch_builder().to_bytes())
        sg = model.subgraphs[0]
        sg.outputs = list(sg.inputs)  # the model only passes its input through
        assert dead_ops(model) == frozenset(range(len(sg.operators)))
        with pytest.raises(ModelError, match="^m.tflite: no operator computes a model output"):
            graph_from_model(model, sha256="", where="m.tflite")
