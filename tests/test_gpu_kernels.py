"""Every GPU kernel template, each algorithm and precision, against TFLite on one-layer models.

Real .tflite models (built in code) run by the real runtime are the
reference; the GPU side runs on the OpenCL device pyopencl finds (pocl's CPU
device in CI).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyopencl")

from pipeit.gpu.check import check_layer, reference_outputs, relative_error  # noqa: E402
from pipeit.gpu.device import make_context  # noqa: E402
from pipeit.gpu.stage import GpuStage  # noqa: E402
from pipeit.modelfile import read_model  # noqa: E402
from pipeit.tflite_builder import single_layer_model  # noqa: E402

TOL = 1e-4
TILES = {"TM": 16, "TN": 16, "TK": 8, "WM": 2, "WN": 4}


@pytest.fixture(scope="module")
def ctx():
    return make_context()


def _check(ctx, config=None, precision="fp32", **layer):
    model = read_model(single_layer_model(**layer))
    return check_layer(model, 0, ctx, config, precision)


CONV_CASES = [
    # (layer kwargs, configs to try)
    (dict(op="conv", input_shape=(1, 9, 8, 8), out_channels=12, activation="RELU6"),
     [{"algo": "direct", "CO": 1, "VEC": 1, "WG": 0}, {"algo": "direct", "CO": 4, "VEC": 4, "WG": 32},
      {"algo": "im2col", **TILES, "LOCAL": 1}, {"algo": "im2col", **TILES, "LOCAL": 0},
      {"algo": "winograd", **TILES, "LOCAL": 1}]),
    (dict(op="conv", input_shape=(1, 9, 7, 4), out_channels=6, padding="VALID"),
     [{"algo": "winograd", **TILES, "LOCAL": 0}, {"algo": "direct", "CO": 2, "VEC": 4, "WG": 0}]),
    (dict(op="conv", input_shape=(1, 7, 7, 6), out_channels=10, kernel=1, activation="RELU"),
     [{"algo": "gemm", **TILES, "LOCAL": 1}, {"algo": "gemm", "TM": 8, "TN": 8, "TK": 4, "WM": 8,
                                               "WN": 2, "LOCAL": 0}]),
    (dict(op="conv", input_shape=(1, 11, 11, 3), out_channels=8, kernel=5, stride=2),
     [{"algo": "direct", "CO": 8, "VEC": 1, "WG": 64}, {"algo": "im2col", **TILES, "LOCAL": 1}]),
    (dict(op="conv", input_shape=(1, 8, 8, 8), out_channels=8, kernel=3, groups=2),
     [{"algo": "direct", "CO": 2, "VEC": 4, "WG": 0}]),
    (dict(op="conv", input_shape=(1, 10, 10, 4), out_channels=4, kernel=3, dilation=2),
     [{"algo": "direct", "CO": 4, "VEC": 4, "WG": 0}, {"algo": "im2col", **TILES, "LOCAL": 1}]),
]


@pytest.mark.parametrize("layer,configs", CONV_CASES)
def test_conv_algorithms_match_tflite(ctx, layer, configs):
    for config in configs:
        result = check_layer(read_model(single_layer_model(**layer)), 0, ctx, config)
        assert result.error is not None and result.error <= TOL, (config, result)
        assert dict(result.config) == config


OTHER_CASES = [
    dict(op="depthwise", input_shape=(1, 10, 10, 8), stride=2, activation="RELU"),
    dict(op="depthwise", input_shape=(1, 9, 9, 3), depth_multiplier=2, padding="VALID"),
    dict(op="fc", input_shape=(3, 20), out_channels=7, activation="RELU6"),
    dict(op="max_pool", input_shape=(1, 9, 9, 5), kernel=3, stride=2, padding="SAME"),
    dict(op="avg_pool", input_shape=(1, 9, 9, 5), kernel=3, stride=2, padding="SAME"),
    dict(op="avg_pool", input_shape=(1, 8, 8, 4), kernel=2, stride=2, padding="VALID"),
    dict(op="add", input_shape=(1, 6, 5, 4), activation="RELU"),
    dict(op="mul", input_shape=(1, 6, 5, 4)),
    dict(op="concat", input_shape=(1, 6, 5, 4)),
    dict(op="mean", input_shape=(1, 6, 5, 4)),
    dict(op="pad", input_shape=(1, 6, 5, 4), kernel=3),
    dict(op="softmax", input_shape=(2, 10)),
    dict(op="reshape", input_shape=(1, 3, 3, 4)),
    dict(op="hard_swish", input_shape=(1, 6, 5, 4)),
    dict(op="logistic", input_shape=(1, 6, 5, 4)),
    # resize: stride is the scale, padding the sampling grid (SAME half-pixel centres, VALID aligned corners)
    dict(op="resize_bilinear", input_shape=(1, 5, 7, 3), stride=2, padding="SAME"),
    dict(op="resize_bilinear", input_shape=(2, 6, 4, 5), stride=3, padding="VALID"),
    dict(op="resize_bilinear", input_shape=(1, 9, 9, 4), stride=(1, 2), padding="none"),
    dict(op="resize_nearest", input_shape=(1, 5, 7, 3), stride=2, padding="SAME"),
    dict(op="resize_nearest", input_shape=(2, 6, 4, 5), stride=3, padding="VALID"),
    dict(op="resize_nearest", input_shape=(1, 9, 9, 4), stride=(1, 2), padding="none"),
    dict(op="transpose_conv", input_shape=(1, 5, 6, 4), out_channels=6, kernel=3, stride=2, padding="SAME"),
    dict(op="transpose_conv", input_shape=(2, 4, 3, 5), out_channels=3, kernel=4, stride=2, padding="SAME",
         activation="RELU"),
    dict(op="transpose_conv", input_shape=(1, 3, 3, 4), out_channels=7, kernel=2, stride=(3, 1), padding="VALID"),
    dict(op="depth_to_space", input_shape=(1, 5, 6, 8), stride=2),
    dict(op="depth_to_space", input_shape=(2, 3, 4, 18), stride=3),
]


@pytest.mark.parametrize("layer", OTHER_CASES, ids=lambda d: "-".join(str(d.get(k, "")) for k in ("op", "padding")))
def test_other_kernels_match_tflite(ctx, layer):
    result = _check(ctx, **layer)
    assert result.error is not None and result.error <= TOL, result


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
def test_softmax_keeps_its_beta(ctx, beta):
    """A beta of 0 (a uniform distribution in the runtime) was read as 1: a plain softmax, error 0.99."""
    from pipeit.tflite_builder import ModelBuilder

    b = ModelBuilder(seed=5)
    b.output(b.softmax(b.input("x", (2, 6)), beta=beta))
    result = check_layer(read_model(b.to_bytes()), 0, ctx, None, "fp32")
    assert result.error is not None and result.error <= TOL, result


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("grid", [dict(), dict(align_corners=True), dict(half_pixel_centers=True)])
def test_resize_to_sizes_that_are_not_multiples(ctx, mode, grid):
    """Down in one axis, up by 5/3 in the other: positions between pixels at every fraction."""
    from pipeit.tflite_builder import ModelBuilder

    b = ModelBuilder(seed=4)
    b.output(b.resize(b.input("x", (1, 9, 6, 3)), (4, 10), mode, **grid))
    result = check_layer(read_model(b.to_bytes()), 0, ctx, None, "fp32")
    assert result.error is not None and result.error <= TOL, result


@pytest.mark.parametrize("index", range(8))
def test_slices_transpose_and_mirror_pads_gather_what_tflite_copies(ctx, index):
    """STRIDED_SLICE (masks, negative strides, a shrunk axis), SLICE, TRANSPOSE, MIRROR_PAD both ways and
    SPACE_TO_DEPTH: bit for bit."""
    from pipeit.tflite_builder import ModelBuilder
    from tests.test_builder import DATA_MOVEMENT

    b = ModelBuilder(seed=1)
    if index < len(DATA_MOVEMENT):
        method, kwargs, _expect = DATA_MOVEMENT[index]
        b.output(getattr(b, method)(b.input("x", (1, 7, 5, 4)), **kwargs))
    else:
        b.output(b.space_to_depth(b.input("x", (2, 6, 4, 3)), 2))
    result = check_layer(read_model(b.to_bytes()), 0, ctx, None, "fp32")
    assert result.error == 0.0, result


def test_a_strided_slice_with_a_new_axis_stays_on_the_cpu(ctx):
    from pipeit.gpu.lowering import Unsupported, lower_layer
    from pipeit.graph import graph_from_model
    from pipeit.tflite_builder import ModelBuilder

    b = ModelBuilder(seed=1)
    b.output(b.strided_slice(b.input("x", (1, 7, 5, 4)), [0, 0, 0, 0], [1, 7, 5, 4], [1, 1, 1, 1]))
    model = read_model(b.to_bytes())
    model.subgraphs[0].operators[0].builtinOptions.newAxisMask = 0b0100
    with pytest.raises(Unsupported, match="new axis"):
        lower_layer(model, graph_from_model(model, sha256="").layers[0])


def test_depthwise_vector_variant(ctx):
    result = _check(ctx, {"VEC": 4, "WG": 64}, op="depthwise", input_shape=(1, 10, 10, 8))
    assert result.error <= TOL


NAN_CASES = [
    (dict(op="conv", input_shape=(1, 6, 6, 4), out_channels=8, activation="RELU"),
     {"algo": "direct", "CO": 4, "VEC": 4, "WG": 0}),
    (dict(op="conv", input_shape=(1, 6, 6, 4), out_channels=8, activation="RELU6"),
     {"algo": "im2col", **TILES, "LOCAL": 1}),
    (dict(op="conv", input_shape=(1, 6, 6, 4), out_channels=8, activation="RELU6"),
     {"algo": "winograd", **TILES, "LOCAL": 0}),
    (dict(op="conv", input_shape=(1, 6, 6, 4), out_channels=8, kernel=1, activation="RELU"),
     {"algo": "gemm", **TILES, "LOCAL": 1}),
    (dict(op="depthwise", input_shape=(1, 6, 6, 8), activation="RELU6"), {"VEC": 4, "WG": 64}),
    (dict(op="depthwise", input_shape=(1, 6, 6, 3), activation="RELU"), None),
    (dict(op="fc", input_shape=(2, 12), out_channels=5, activation="RELU"), None),
]


@pytest.mark.parametrize("layer,config", NAN_CASES)
def test_fused_relus_pass_a_nan_through_as_tflite_does(ctx, layer, config):
    """A NaN in the input stays NaN through a fused RELU/RELU6, where fmax would turn it into 0."""
    data = single_layer_model(**layer)
    x = np.ones(layer["input_shape"], np.float32)
    x.flat[5] = np.nan
    want = reference_outputs(data, {"input": x})
    stage = GpuStage(read_model(data), 0, 1, ctx=ctx, configs=None if config is None else {0: config})
    got = stage.run({"input": x})
    for name, value in want.items():
        assert np.isnan(value).any()
        np.testing.assert_array_equal(np.isnan(got[name]), np.isnan(value))


def test_fp16_storage_is_close_but_not_exact(ctx):
    """Half storage rounds activations and weights: near fp32, measurably not equal to it."""
    layer = dict(op="conv", input_shape=(1, 8, 8, 8), out_channels=8)
    half = _check(ctx, {"algo": "direct", "CO": 2, "VEC": 4, "WG": 0}, "fp16-storage", **layer)
    assert half.error is not None and 1e-6 < half.error < 5e-3


def test_half_arithmetic_refused_without_cl_khr_fp16(ctx):
    from pipeit.gpu.device import GpuError

    if ctx.info.fp16:
        result = _check(ctx, None, "fp16", op="conv", input_shape=(1, 8, 8, 8), out_channels=8)
        assert result.error < 5e-2
    else:
        with pytest.raises(GpuError, match="cl_khr_fp16"):
            _check(ctx, None, "fp16", op="conv", input_shape=(1, 8, 8, 8), out_channels=8)


def test_int8_layer_is_unsupported(ctx):
    result = _check(ctx, op="conv", input_shape=(1, 8, 8, 8), out_channels=8, int8=True)
    assert result.error is None and "int8" in result.reason


def test_relative_error_definition():
    want = np.array([0.0, 2.0, -4.0])
    assert relative_error(want + np.array([0, 0, 0.004]), want) == pytest.approx(1e-3)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
