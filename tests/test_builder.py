"""The model builder: real .tflite bytes, run by the real runtime, checked against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from pipeit.errors import InputError, PipeitError
from pipeit.runtime import make_interpreter
from pipeit.tflite_builder import (
    SINGLE_LAYER_OPS,
    ModelBuilder,
    QuantParams,
    single_layer_builder,
    single_layer_model,
)

OP = schema.BuiltinOperator


def parse(data: bytes):
    return schema.ModelT.InitFromPackedBuf(bytearray(data), 0)


def const(model, name: str) -> np.ndarray:
    """The stored value of the constant tensor called ``name``."""
    sg = model.subgraphs[0]
    for t in sg.tensors:
        name_t = t.name.decode() if isinstance(t.name, bytes) else t.name
        if name_t == name:
            raw = np.asarray(model.buffers[t.buffer].data, dtype=np.uint8).tobytes()
            dtype = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16,
                     schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32}[t.type]
            return np.frombuffer(raw, dtype=dtype).reshape([int(s) for s in t.shape])
    raise KeyError(name)


def run(data: bytes, *xs: np.ndarray) -> np.ndarray:
    it = make_interpreter(data)
    for d, x in zip(it.get_input_details(), xs):
        it.set_tensor(d["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def rand(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def np_conv(x, w, bias, stride, padding, groups=1):
    """Reference NHWC conv: w is [out, kh, kw, in/groups]."""
    n, h, wd, c = x.shape
    co, kh, kw, cg = w.shape
    if padding == "SAME":
        oh, ow = -(-h // stride), -(-wd // stride)
        ph = max((oh - 1) * stride + kh - h, 0)
        pw = max((ow - 1) * stride + kw - wd, 0)
        x = np.pad(x, [(0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)])
    else:
        oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, oh, ow, co), np.float64)
    per = co // groups
    for g in range(groups):
        xs = x[..., g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
                out[..., g * per:(g + 1) * per] += patch @ w[g * per:(g + 1) * per, i, j, :].T
    return out + bias


class TestFlatbufferLayout:
    def test_header_buffers_opcodes(self):
        data = single_layer_model("conv", (1, 8, 8, 4), out_channels=8)
        assert data[4:8] == b"TFL3"
        m = parse(data)
        assert m.version == 3
        assert m.buffers[0].data is None or len(m.buffers[0].data) == 0
        for oc in m.operatorCodes:
            assert oc.builtinCode == OP.CONV_2D
            assert oc.deprecatedBuiltinCode == min(oc.builtinCode, 127)
        sg = m.subgraphs[0]
        assert sg.tensors[sg.inputs[0]].name in (b"input", "input")

    def test_same_seed_same_bytes_other_seed_other_weights(self):
        a = single_layer_model("conv", (1, 8, 8, 4), out_channels=8, seed=3)
        b = single_layer_model("conv", (1, 8, 8, 4), out_channels=8, seed=3)
        c = single_layer_model("conv", (1, 8, 8, 4), out_channels=8, seed=4)
        assert a == b
        wa, wc = const(parse(a), "conv/weights"), const(parse(c), "conv/weights")
        assert wa.shape == wc.shape and not np.array_equal(wa, wc)


class TestAgainstNumpy:
    @pytest.mark.parametrize("stride,padding,groups", [(1, "SAME", 1), (2, "SAME", 1), (2, "VALID", 1),
                                                       (1, "SAME", 2)])
    def test_conv(self, stride, padding, groups):
        b = ModelBuilder(1)
        x = b.input("input", (1, 9, 9, 4))
        b.output(b.conv2d(x, 6, 3, stride, padding, "NONE", groups=groups))
        data = b.to_bytes()
        m = parse(data)
        xin = rand((1, 9, 9, 4))
        want = np_conv(xin, const(m, "conv/weights"), const(m, "conv/bias"), stride, padding, groups)
        np.testing.assert_allclose(run(data, xin), want, rtol=1e-4, atol=1e-4)

    def test_depthwise_relu6(self):
        b = ModelBuilder(2)
        x = b.input("input", (1, 8, 8, 5))
        b.output(b.depthwise_conv2d(x, 3, 1, "SAME", "RELU6", gain=20.0))
        data = b.to_bytes()
        m = parse(data)
        w = const(m, "dwconv/weights")  # [1, 3, 3, 5]
        xin = rand((1, 8, 8, 5))
        want = np.stack([np_conv(xin[..., c:c + 1], w[..., c].reshape(1, 3, 3, 1),
                                 const(m, "dwconv/bias")[c:c + 1], 1, "SAME")[..., 0] for c in range(5)], -1)
        got = run(data, xin)
        np.testing.assert_allclose(got, np.clip(want, 0, 6), rtol=1e-4, atol=1e-4)
        assert got.max() == pytest.approx(6.0)  # the clamp is really there

    def test_fc_softmax(self):
        b = ModelBuilder(0)
        x = b.input("input", (1, 12))
        b.output(b.softmax(b.fully_connected(x, 7)))
        data = b.to_bytes()
        m = parse(data)
        xin = rand((1, 12))
        logits = xin @ const(m, "fc/weights").T + const(m, "fc/bias")
        want = np.exp(logits - logits.max())
        np.testing.assert_allclose(run(data, xin), want / want.sum(), rtol=1e-5)

    def test_pool_concat_pad_mean_reshape_add_mul(self):
        b = ModelBuilder(0)
        x = b.input("input", (1, 6, 6, 2))
        mp = b.max_pool(x, 2)
        ap = b.avg_pool(x, 2)
        c = b.concatenation([mp, ap])
        p = b.pad(c, [[0, 0], [1, 0], [0, 1], [0, 0]])
        s = b.add(p, b.mul(p, p))
        b.output(b.reshape(b.mean(s, (1, 2), keep_dims=True), (1, -1)))
        xin = rand((1, 6, 6, 2))
        blocks = xin.reshape(1, 3, 2, 3, 2, 2)
        want_c = np.concatenate([blocks.max(axis=(2, 4)), blocks.mean(axis=(2, 4))], -1)
        want_p = np.pad(want_c, [(0, 0), (1, 0), (0, 1), (0, 0)])
        want = (want_p + want_p * want_p).mean(axis=(1, 2))
        np.testing.assert_allclose(run(b.to_bytes(), xin), want, rtol=1e-5, atol=1e-6)

    def test_hard_swish_logistic(self):
        b = ModelBuilder(0)
        x = b.input("input", (1, 4, 4, 3))
        b.output(b.logistic(b.hard_swish(x)))
        xin = rand((1, 4, 4, 3)) * 4
        hs = xin * np.clip(xin + 3, 0, 6) / 6
        np.testing.assert_allclose(run(b.to_bytes(), xin), 1 / (1 + np.exp(-hs)), rtol=1e-4)


class TestFp16Weights:
    def test_weights_stored_half_behind_dequantize(self):
        b = single_layer_builder("conv", (1, 8, 8, 4), out_channels=8, seed=5)
        data16, data32 = b.to_bytes(fp16_weights=True), b.to_bytes()
        m = parse(data16)
        sg = m.subgraphs[0]
        codes = [m.operatorCodes[o.opcodeIndex].builtinCode for o in sg.operators]
        assert codes == [OP.DEQUANTIZE, OP.CONV_2D]
        deq = sg.operators[0]
        assert sg.tensors[deq.inputs[0]].type == schema.TensorType.FLOAT16
        assert sg.operators[1].inputs[1] == deq.outputs[0]
        assert len(data16) < len(data32)
        xin = rand((1, 8, 8, 4))
        a, h = run(data32, xin), run(data16, xin)
        assert not np.array_equal(a, h)  # the weights really were rounded
        np.testing.assert_allclose(h, a, rtol=1e-2, atol=1e-2)


class TestInt8:
    def build(self):
        b = ModelBuilder(7)
        x = b.input("input", (1, 16, 16, 3))
        y = b.conv2d(x, 16, 3, 2, activation="RELU6", name="c1")
        d = b.depthwise_conv2d(y, 3, activation="RELU6", name="dw")
        z = b.conv2d(d, 16, 1, activation="NONE", gain=0.5, name="proj")
        a = b.add(y, z, name="res")
        mp = b.max_pool(a, 3, 1, "SAME", name="mp")
        c = b.concatenation([mp, b.conv2d(a, 8, 1, name="side")], name="cat")
        p = b.pad(c, [[0, 0], [1, 1], [1, 1], [0, 0]], name="padded")
        r = b.reshape(b.avg_pool(p, 10, name="gap"), (1, -1), name="flat")
        b.output(b.softmax(b.fully_connected(r, 10, name="fc"), name="prob"))
        return b

    def tensors(self, data):
        m = parse(data)
        sg = m.subgraphs[0]
        return m, sg, {(t.name.decode() if isinstance(t.name, bytes) else t.name): t for t in sg.tensors}

    def test_quantisation_layout(self):
        data = self.build().to_bytes(int8=True)
        m, sg, t = self.tensors(data)
        assert t["input"].type == schema.TensorType.INT8 and t["prob"].type == schema.TensorType.INT8
        assert t["c1/weights"].quantization.quantizedDimension == 0
        assert t["dw/weights"].quantization.quantizedDimension == 3
        assert t["fc/weights"].quantization.quantizedDimension == 0
        assert len(t["c1/weights"].quantization.scale) == 16
        for layer, src in (("c1", "input"), ("dw", "c1"), ("fc", "flat")):
            bias = t[f"{layer}/bias"]
            assert bias.type == schema.TensorType.INT32
            want = np.float32(t[src].quantization.scale[0]) * np.asarray(t[f"{layer}/weights"].quantization.scale)
            np.testing.assert_allclose(bias.quantization.scale, want, rtol=1e-6)
        # kernels that need equal input/output params got them: concat group, pool, pad, reshape
        def qp(name):
            q = t[name].quantization
            return (round(float(q.scale[0]), 9), int(q.zeroPoint[0]))
        assert qp("res") == qp("mp") == qp("side") == qp("cat") == qp("padded") \
            == qp("gap") == qp("flat")
        assert qp("prob") == (round(1 / 256, 9), -128)

    def test_int8_tracks_float(self):
        b = self.build()
        f, q = b.to_bytes(), b.to_bytes(int8=True)
        it = make_interpreter(q)
        (si, zi) = it.get_input_details()[0]["quantization"]
        (so, zo) = it.get_output_details()[0]["quantization"]
        for seed in range(3):
            x = rand((1, 16, 16, 3), seed + 100)
            xq = np.clip(np.rint(x / si + zi), -128, 127).astype(np.int8)
            want = run(f, x).ravel()
            got = (run(q, xq).astype(np.float32).ravel() - zo) * so
            assert np.abs(got - want).max() < 0.03
            assert np.corrcoef(got, want)[0, 1] > 0.95

    def test_quant_params_from_range(self):
        p = QuantParams.from_range(-1.0, 3.0)
        assert p.scale == pytest.approx(4 / 255)
        assert -128 + (0 - (-1.0)) / p.scale == pytest.approx(p.zero_point, abs=0.5)
        assert QuantParams.from_range(0.0, 6.0).zero_point == -128


class TestSingleLayer:
    @pytest.mark.parametrize("op", SINGLE_LAYER_OPS)
    @pytest.mark.parametrize("int8", [False, True])
    def test_every_op_runs(self, op, int8):
        data = single_layer_model(op, (1, 10, 10, 8), out_channels=16, kernel=3, stride=2, int8=int8)
        it = make_interpreter(data)
        for d in it.get_input_details():
            it.set_tensor(d["index"], np.ones(d["shape"], d["dtype"]))
        it.invoke()
        out = it.get_tensor(it.get_output_details()[0]["index"])
        assert out.size > 0
        assert out.dtype == (np.int8 if int8 else np.float32)

    def test_depthwise_from_groups(self):
        m = parse(single_layer_model("conv", (1, 8, 8, 8), out_channels=16, groups=8))
        codes = [m.operatorCodes[o.opcodeIndex].builtinCode for o in m.subgraphs[0].operators]
        assert codes == [OP.DEPTHWISE_CONV_2D]

    def test_grouped_conv_filter_shape(self):
        m = parse(single_layer_model("conv", (1, 8, 8, 8), out_channels=16, groups=2))
        assert list(const(m, "conv/weights").shape) == [16, 3, 3, 4]


class TestRefusals:
    @pytest.mark.parametrize("call", [
        lambda b, x: b.conv2d(x, 8, padding="FULL"),
        lambda b, x: b.conv2d(x, 8, activation="GELU"),
        lambda b, x: b.conv2d(x, 8, groups=3),
        lambda b, x: b.conv2d(x, 8, kernel=9, padding="VALID"),
        lambda b, x: b.add(x, b.conv2d(x, 5)),
        lambda b, x: b.reshape(x, (1, 7, -1)),
        lambda b, x: b.concatenation([x, b.max_pool(x, 2)]),
        lambda b, x: b.pad(x, [[0, 0], [1, 1]]),
        lambda b, x: b.depthwise_conv2d(x, depth_multiplier=0),
    ])
    def test_bad_layer_raises_input_error(self, call):
        b = ModelBuilder(0)
        x = b.input("input", (1, 8, 8, 4))
        with pytest.raises(InputError):
            call(b, x)

    def test_unknown_single_layer_op(self):
        with pytest.raises(InputError, match="unknown single-layer op"):
            single_layer_model("lstm", (1, 4, 4, 4))

    def test_model_without_output(self):
        b = ModelBuilder(0)
        b.input("input", (1, 4))
        with pytest.raises(PipeitError):
            b.to_bytes()

    def test_foreign_tensor_refused(self):
        other = ModelBuilder(0)
        y = other.conv2d(other.input("input", (1, 8, 8, 4)), 4)
        b = ModelBuilder(0)
        b.input("input", (1, 8, 8, 4))
        with pytest.raises(InputError):
            b.conv2d(y, 4)

    def test_names_unique(self):
        b = ModelBuilder(0)
        x = b.input("input", (1, 4, 4, 2))
        a = b.conv2d(x, 2, name="same")
        c = b.conv2d(a, 2, name="same")
        assert a.name != c.name


#: (method, arguments, the numpy expression the runtime must agree with) on a 1x7x5x4 input
DATA_MOVEMENT = [
    ("strided_slice", dict(begin=[0, 1, 0, 1], end=[1, 6, 5, 4], strides=[1, 2, 1, 1]),
     lambda x: x[0:1, 1:6:2, 0:5, 1:4]),
    ("strided_slice", dict(begin=[0, -1, 4, 0], end=[1, 0, 0, 3], strides=[1, -1, -2, 1], begin_mask=0b0001,
                           end_mask=0b0010), lambda x: x[:1, -1::-1, 4:0:-2, 0:3]),
    ("strided_slice", dict(begin=[0, 2, 0, 0], end=[1, 3, 5, 4], strides=[1, 1, 1, 2], shrink_axis_mask=0b0010),
     lambda x: x[0:1, 2, 0:5, 0:4:2]),
    ("slice", dict(begin=[0, 1, 1, 0], size=[1, -1, 3, 2]), lambda x: x[0:1, 1:, 1:4, 0:2]),
    ("transpose", dict(perm=[0, 3, 1, 2]), lambda x: x.transpose(0, 3, 1, 2)),
    ("mirror_pad", dict(paddings=[[0, 0], [2, 1], [0, 3], [0, 0]], mode="REFLECT"),
     lambda x: np.pad(x, [(0, 0), (2, 1), (0, 3), (0, 0)], mode="reflect")),
    ("mirror_pad", dict(paddings=[[0, 0], [3, 1], [5, 0], [1, 2]], mode="SYMMETRIC"),
     lambda x: np.pad(x, [(0, 0), (3, 1), (5, 0), (1, 2)], mode="symmetric")),
]


@pytest.mark.parametrize("method, kwargs, expect", DATA_MOVEMENT, ids=lambda v: v if isinstance(v, str) else "")
def test_slices_and_transpose_follow_numpys_rules_and_quantise(method, kwargs, expect):
    b = ModelBuilder(seed=1)
    b.output(getattr(b, method)(b.input("x", (1, 7, 5, 4)), **kwargs))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 7, 5, 4)).astype(np.float32)
    want = expect(x)
    got = run(b.to_bytes(), x)
    assert got.shape == want.shape and np.array_equal(got, want)
    # int8: input and output share their parameters, so the int8 op copies the same elements
    it = make_interpreter(b.to_bytes(int8=True))
    detail = it.get_input_details()[0]
    xq = np.random.default_rng(1).integers(-128, 128, size=detail["shape"]).astype(np.int8)
    it.set_tensor(detail["index"], xq)
    it.invoke()
    assert np.array_equal(it.get_tensor(it.get_output_details()[0]["index"]), expect(xq))


@pytest.mark.parametrize("method, kwargs", [
    ("strided_slice", dict(begin=[0, 0], end=[1, 1], strides=[1, 1])),
    ("strided_slice", dict(begin=[0, 0, 0, 0], end=[1, 1, 1, 1], strides=[1, 0, 1, 1])),
    ("strided_slice", dict(begin=[0, 0, 0, 0], end=[1, 1, 1, 1], strides=[1, 1, 1, 1], shrink_axis_mask=0b1111)),
    ("slice", dict(begin=[0, 5, 0, 0], size=[1, 3, 1, 1])),
    ("transpose", dict(perm=[0, 1, 1, 2])),
    ("resize", dict(size=(4, 4), align_corners=True, half_pixel_centers=True)),
    ("depth_to_space", dict(block=3)),
    ("space_to_depth", dict(block=2)),
    ("mirror_pad", dict(paddings=[[0, 0], [7, 0], [0, 0], [0, 0]], mode="REFLECT")),
    ("mirror_pad", dict(paddings=[[0, 0], [1, 0], [0, 0], [0, 0]], mode="EDGE")),
])
def test_data_movement_refuses_what_the_runtime_cannot_run(method, kwargs):
    b = ModelBuilder()
    with pytest.raises(InputError):
        getattr(b, method)(b.input("x", (1, 7, 5, 4)), **kwargs)


@pytest.mark.parametrize("padding, shape", [("SAME", (1, 10, 12, 6)), ("VALID", (1, 11, 13, 6))])
def test_transpose_conv_upsamples_and_keeps_its_weights_in_every_form(padding, shape):
    b = ModelBuilder(seed=3)
    b.output(b.transpose_conv(b.input("x", (1, 5, 6, 4)), 6, kernel=3, stride=2, padding=padding))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 5, 6, 4)).astype(np.float32)
    want = run(b.to_bytes(), x)
    assert want.shape == shape
    # fp16 weights behind DEQUANTIZE: the same layer within fp16's rounding
    np.testing.assert_allclose(run(b.to_bytes(fp16_weights=True), x), want, rtol=1e-2, atol=1e-2)
    # int8 (bias scaled by the input's scale, not the output shape operand's): close to the float layer
    it = make_interpreter(b.to_bytes(int8=True))
    d_in, d_out = it.get_input_details()[0], it.get_output_details()[0]
    si, zi = d_in["quantization"]
    so, zo = d_out["quantization"]
    it.set_tensor(d_in["index"], np.clip(np.rint(x / si + zi), -128, 127).astype(np.int8))
    it.invoke()
    got = (it.get_tensor(d_out["index"]).astype(np.float32) - zo) * so
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98


def test_space_to_depth_is_numpys_block_reshape_and_quantises():
    b = ModelBuilder(seed=1)
    b.output(b.space_to_depth(b.input("x", (2, 6, 4, 3)), 2))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 6, 4, 3)).astype(np.float32)
    want = x.reshape(2, 3, 2, 2, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 3, 2, 12)
    assert np.array_equal(run(b.to_bytes(), x), want)
    assert run(b.to_bytes(int8=True), np.zeros((2, 6, 4, 3), np.int8)).shape == (2, 3, 2, 12)
