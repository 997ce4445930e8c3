"""Reading and validating model bytes: every bad file is one ModelError, never a crash."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ai_edge_litert import schema_py_generated as schema
from pipeit.errors import ModelError, PipeitError, UnsupportedModelError
from pipeit.graph import load_graph
from pipeit.modelfile import (
    CONTROL_FLOW_OPS,
    op_name,
    parse_model,
    read_model,
    read_model_bytes,
    serialize_model,
    tensor_name,
)
from pipeit.runtime import make_interpreter
from pipeit.split import split_model
from pipeit.tflite_builder import ModelBuilder


def small_builder() -> ModelBuilder:
    b = ModelBuilder(seed=0)
    x = b.input("x", (1, 8, 8, 3))
    y = b.conv2d(x, 4, 3, name="conv")
    z = b.depthwise_conv2d(y, name="dw")
    s = b.add(y, z, name="sum")
    b.output(b.softmax(b.fully_connected(b.mean(s), 5), name="probs"))
    return b


SMALL = small_builder().to_bytes()
SMALL_FP16 = small_builder().to_bytes(fp16_weights=True)


def model_with(edit) -> bytes:
    """SMALL parsed, edited in place by ``edit(model)``, re-serialised."""
    model = read_model(SMALL)
    edit(model)
    return serialize_model(model)


def add_opcode(model, code: int, custom: str = None) -> int:
    opcode = schema.OperatorCodeT()
    opcode.builtinCode = code
    opcode.deprecatedBuiltinCode = min(code, 127)
    if custom is not None:
        opcode.customCode = custom
    model.operatorCodes.append(opcode)
    return len(model.operatorCodes) - 1


class TestReadModel:
    def test_round_trip(self, tmp_path):
        path = tmp_path / "m.tflite"
        path.write_bytes(SMALL)
        assert read_model_bytes(path) == SMALL
        model = read_model(path)
        assert isinstance(model, schema.ModelT)
        assert len(model.subgraphs[0].operators) == 6
        # re-serialised bytes load and run in the runtime
        again = serialize_model(model)
        assert read_model(again).subgraphs[0].tensors[0].name == model.subgraphs[0].tensors[0].name
        make_interpreter(again).invoke()

    def test_serialised_weights_are_16_byte_aligned(self):
        data = serialize_model(read_model(SMALL))
        model = schema.Model.GetRootAsModel(data, 0)
        for i in range(model.BuffersLength()):
            buffer = model.Buffers(i)
            if buffer.DataLength():
                assert buffer.DataAsNumpy().ctypes.data % 16 == np.frombuffer(data, np.uint8).ctypes.data % 16

    def test_missing_file_and_directory(self, tmp_path):
        with pytest.raises(ModelError, match="no such model file"):
            read_model(tmp_path / "nope.tflite")
        with pytest.raises(ModelError, match="not a regular file"):
            read_model(tmp_path)

    def test_wrong_source_type(self):
        with pytest.raises(ModelError):
            read_model(42)  # type: ignore[arg-type]


class TestRefusedBytes:
    def test_empty(self):
        with pytest.raises(ModelError, match="empty"):
            parse_model(b"")

    @pytest.mark.parametrize("data", [
        b"\x89PNG\r\n\x1a\n" + bytes(100),
        b"hello, this is a text file\n",
        b"TFL3",
        b"\x00\x00\x00\x00TFL",
    ], ids=["png", "text", "short", "short-id"])
    def test_not_tflite(self, data):
        with pytest.raises(ModelError, match="not a TFLite model"):
            parse_model(data, where="x.tflite")

    @settings(max_examples=40, deadline=None)
    @given(length=st.integers(min_value=1, max_value=len(SMALL) - 1))
    def test_truncated(self, length):
        with pytest.raises(ModelError):
            parse_model(SMALL[:length])

    def test_random_bytes_with_identifier(self):
        rng = np.random.default_rng(0)
        for _ in range(20):
            data = bytearray(rng.integers(0, 256, size=int(rng.integers(8, 4000)), dtype=np.uint8).tobytes())
            data[4:8] = b"TFL3"
            with pytest.raises(ModelError):
                parse_model(bytes(data))

    @settings(max_examples=60, deadline=None)
    @given(flips=st.lists(st.tuples(st.integers(0, len(SMALL_FP16) - 1), st.integers(0, 255)),
                          min_size=1, max_size=4))
    def test_corrupted_bytes_never_crash(self, flips):
        data = bytearray(SMALL_FP16)
        for position, value in flips:
            data[position] = value
        try:
            graph = load_graph(bytes(data))
            if len(graph.layers) > 1:
                split_model(bytes(data), [1])
        except PipeitError:
            pass  # refused cleanly; anything else is a bug


class TestRefusedModels:
    def test_several_subgraphs(self):
        data = model_with(lambda m: m.subgraphs.append(copy.deepcopy(m.subgraphs[0])))
        with pytest.raises(UnsupportedModelError, match="2 subgraphs"):
            parse_model(data)

    @pytest.mark.parametrize("op", sorted(CONTROL_FLOW_OPS & {"WHILE", "IF", "CALL_ONCE"}))
    def test_control_flow(self, op):
        def edit(model):
            code = add_opcode(model, getattr(schema.BuiltinOperator, op))
            model.subgraphs[0].operators[-1].opcodeIndex = code
            model.subgraphs.append(copy.deepcopy(model.subgraphs[0]))

        with pytest.raises(UnsupportedModelError, match=op):
            parse_model(model_with(edit))

    def test_custom_op_is_named(self):
        def edit(model):
            code = add_opcode(model, schema.BuiltinOperator.CUSTOM, "MyFancyOp")
            model.subgraphs[0].operators[-1].opcodeIndex = code

        data = model_with(edit)
        with pytest.raises(UnsupportedModelError, match="'MyFancyOp'"):
            parse_model(data)
        # the runtime itself refuses it too: the check only says so earlier and clearer
        with pytest.raises(ModelError):
            make_interpreter(data)

    @pytest.mark.parametrize("edit, message", [
        (lambda m: setattr(m.subgraphs[0].operators[0], "inputs", [999, 1, 2]), "tensor 999"),
        (lambda m: setattr(m.subgraphs[0].operators[0], "outputs", [-1]), "tensor -1"),
        (lambda m: setattr(m.subgraphs[0], "inputs", [12345]), "model input"),
        (lambda m: setattr(m.subgraphs[0], "outputs", [777]), "model output"),
        (lambda m: setattr(m.subgraphs[0].tensors[1], "buffer", 500), "buffer 500"),
        (lambda m: setattr(m.subgraphs[0].operators[0], "opcodeIndex", 40), "opcode 40"),
        (lambda m: setattr(m.subgraphs[0].tensors[0], "type", 99), "unknown type"),
        (lambda m: setattr(m.subgraphs[0].tensors[0], "shape", [1, -3, 8, 3]), "shape"),
        (lambda m: m.subgraphs[0].operators.reverse(), "before any operator writes it"),
        (lambda m: setattr(m.subgraphs[0], "operators", []), "no operators"),
        (lambda m: setattr(m.subgraphs[0], "outputs", []), "no outputs"),
    ], ids=["op-input", "op-output", "model-input", "model-output", "buffer", "opcode", "dtype",
            "shape", "order", "no-ops", "no-outputs"])
    def test_corrupt_indices(self, edit, message):
        with pytest.raises(ModelError, match=message):
            parse_model(model_with(edit))

    def test_weight_buffer_of_wrong_size(self):
        def edit(model):
            conv = model.subgraphs[0].operators[0]
            weight = model.subgraphs[0].tensors[conv.inputs[1]]
            model.buffers[weight.buffer].data = model.buffers[weight.buffer].data[:-4]

        with pytest.raises(ModelError, match="holds .* bytes, its shape needs"):
            parse_model(model_with(edit))

    def test_no_subgraph(self):
        with pytest.raises(ModelError, match="no subgraph"):
            parse_model(model_with(lambda m: setattr(m, "subgraphs", [])))

    def test_builtin_code_the_schema_does_not_name(self):
        def edit(model):
            model.subgraphs[0].operators[1].opcodeIndex = add_opcode(model, 9999)

        data = model_with(edit)
        with pytest.raises(UnsupportedModelError, match="operator 1 uses builtin op code 9999"):
            parse_model(data, where="new.tflite")
        with pytest.raises(ModelError, match="9999"):  # the runtime refuses it too, later
            make_interpreter(data)

    def test_operator_reading_and_writing_one_tensor(self):
        def edit(model):  # "sum = ADD(conv, dw)" now writes into its own input "dw"
            sg = model.subgraphs[0]
            add = next(op for op in sg.operators if op_name(model.operatorCodes[op.opcodeIndex]) == "ADD")
            old, new = int(add.outputs[0]), int(add.inputs[1])
            add.outputs = [new]
            for op in sg.operators:
                if op is not add:
                    op.inputs = [new if int(t) == old else int(t) for t in op.inputs]

        data = model_with(edit)
        with pytest.raises(ModelError, match="operator 2 ADD both reads and writes tensor .* 'dw'"):
            parse_model(data)
        with pytest.raises(ModelError, match="both input"):  # what the runtime says when allocating
            make_interpreter(data)

    def test_constant_model_output(self):
        def edit(model):
            sg = model.subgraphs[0]
            bias = next(i for i, t in enumerate(sg.tensors) if t.name == b"conv/bias")
            sg.outputs = list(sg.outputs) + [bias]

        with pytest.raises(UnsupportedModelError,
                           match=r"^m\.tflite: model output 1 \(tensor \d+ 'conv/bias'\) is a constant"):
            parse_model(model_with(edit), where="m.tflite")


class TestTensorNames:
    def test_a_name_is_cut_at_nul_as_the_runtime_reports_it(self):
        def edit(model):
            for tensor in model.subgraphs[0].tensors:
                if tensor.name == b"sum":
                    tensor.name = b"sum\x00hidden"

        data = model_with(edit)
        model = parse_model(data)
        names = [tensor_name(t) for t in model.subgraphs[0].tensors]
        assert "sum" in names and not any("hidden" in n for n in names)
        runtime_names = {d["name"] for d in make_interpreter(data).get_tensor_details()}
        assert "sum" in runtime_names
        assert [t.name for t in load_graph(data).layers[2].descriptor.outputs] == ["sum"]

    def test_a_gpu_stage_names_its_tensors_as_the_runtime_does(self):
        """A GPU stage next to CPU stages hands tensors over by name: the runtime's (cut at NUL) name."""
        from tests.host_helpers import opencl_device_available

        if not opencl_device_available():
            pytest.skip("no OpenCL device (pocl) here")
        from pipeit.gpu.device import make_context
        from pipeit.gpu.stage import GpuStage

        def edit(model):
            for tensor in model.subgraphs[0].tensors:
                if tensor.name == b"sum":
                    tensor.name = b"sum\x00hidden"

        stage = GpuStage(read_model(model_with(edit)), 3, 4, ctx=make_context(None))  # the MEAN after "sum"
        assert [t.name for t in stage.inputs] == ["sum"]

    def test_unnamed_and_str_names(self):
        tensor = schema.TensorT()
        assert tensor_name(tensor) == ""
        tensor.name = "plain"
        assert tensor_name(tensor) == "plain"


class TestExternalBuffers:
    def test_buffers_after_the_flatbuffer_are_inlined(self):
        # large models keep weights after the flatbuffer (Buffer.offset/size)
        model = read_model(SMALL)
        payloads = {}
        for i, buffer in enumerate(model.buffers):
            if buffer.data is not None and len(buffer.data):
                payloads[i] = bytes(buffer.data)
                buffer.data = None
                buffer.offset, buffer.size = 2, len(payloads[i])  # placeholders, fixed below
        head = serialize_model(model)
        blob = bytearray(head + bytes(-len(head) % 16))
        for i, payload in payloads.items():
            model.buffers[i].offset = len(blob)
            blob += payload + bytes(-len(payload) % 16)
        head2 = serialize_model(model)
        assert len(head2) == len(head)  # same layout, only offsets changed
        data = head2 + bytes(blob[len(head2):])

        parsed = read_model(data)
        assert all(b.offset == 0 for b in parsed.buffers)
        for i, payload in payloads.items():
            assert bytes(parsed.buffers[i].data) == payload
        assert [op_name(parsed.operatorCodes[o.opcodeIndex]) for o in parsed.subgraphs[0].operators] \
            == [op_name(c) for c in (read_model(SMALL).operatorCodes[o.opcodeIndex]
                                     for o in read_model(SMALL).subgraphs[0].operators)]
        # and the split of such a model is self-contained and runs
        stages = split_model(data, [2])
        for stage in stages:
            make_interpreter(stage.model_bytes)

    def test_external_buffer_past_the_end(self):
        def edit(model):
            model.buffers[1].data = None
            model.buffers[1].offset, model.buffers[1].size = 10_000_000, 64

        with pytest.raises(ModelError, match="past the end"):
            parse_model(model_with(edit))
