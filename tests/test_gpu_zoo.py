"""GPU kernels on the zoo's real layers, and whole GPU stages end to end, against TFLite.

By default one layer per kernel class (op, kernel, stride, padding,
activation, chosen algorithm) of mobilenet_v1, mobilenet_v2 and squeezenet
is checked -- every distinct kernel path those models use, in modest time
(pocl compiles each kernel on the host's CPU). ``PIPEIT_GPU_FULL=1`` checks
every distinct layer; ``tools/gpu_check.py`` covers the whole zoo.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("pyopencl")

from pipeit import zoo  # noqa: E402
from pipeit.gpu.check import check_layer, distinct_layers, random_inputs, reference_outputs, relative_error  # noqa: E402,E501
from pipeit.gpu.device import make_context  # noqa: E402
from pipeit.gpu.lowering import Unsupported, support_table  # noqa: E402
from pipeit.gpu.space import heuristic_config  # noqa: E402
from pipeit.gpu.stage import GpuStage  # noqa: E402
from pipeit.graph import graph_from_model  # noqa: E402
from pipeit.modelfile import read_model  # noqa: E402
from pipeit.split import extract_layers  # noqa: E402

TOL = 1e-4
FULL = os.environ.get("PIPEIT_GPU_FULL") == "1"


@pytest.fixture(scope="module")
def ctx():
    return make_context()


@pytest.fixture(scope="module")
def models():
    return {name: read_model(zoo.build(name)) for name in ("mobilenet_v1", "mobilenet_v2", "squeezenet")}


def _kernel_classes(model):
    """First layer of each kernel class (the full distinct set with PIPEIT_GPU_FULL=1)."""
    graph = graph_from_model(model, sha256="")
    from pipeit.gpu.lowering import lower_layer

    chosen, seen = [], set()
    for i in distinct_layers(model):
        d = graph.layers[i].descriptor
        spec = lower_layer(model, graph.layers[i])
        algo = heuristic_config(spec).get("algo")
        key = (d.op, d.kernel, d.stride, d.padding, d.activation, algo)
        if FULL or key not in seen:
            seen.add(key)
            chosen.append(i)
    return chosen


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "squeezenet"])
def test_zoo_layers_match_tflite(ctx, models, name):
    model = models[name]
    layers = _kernel_classes(model)
    assert len(layers) >= 5
    for i in layers:
        result = check_layer(model, i, ctx)
        assert result.error is not None, result.reason
        assert result.error <= TOL, result


def test_every_float_zoo_layer_is_supported(models):
    for name, model in models.items():
        assert support_table(model, graph_from_model(model, sha256="")) == [None] * len(
            graph_from_model(model, sha256="").layers), name


def test_int8_zoo_model_is_unsupported_layer_by_layer():
    model = read_model(zoo.build("mobilenet_v1", int8=True))
    reasons = support_table(model, graph_from_model(model, sha256=""))
    assert reasons and all(r is not None for r in reasons)


def test_fp16_weight_zoo_layers_are_folded_and_match(ctx):
    """fp16 weights behind DEQUANTIZE become float32 constants of the GPU layer."""
    model = read_model(zoo.build("mobilenet_v1", fp16_weights=True))
    for i in (0, 1, 2):
        result = check_layer(model, i, ctx)
        assert result.error is not None and result.error <= TOL, result


def test_gpu_stage_in_a_cpu_chain_matches_the_whole_model(ctx, models):
    """CPU [0, 3) -> GPU [3, 14) (residual ADDs inside) -> CPU [14, n): the model's output."""
    model = models["mobilenet_v2"]
    n = len(graph_from_model(model, sha256="").layers)
    first, last = extract_layers(model, 0, 3), extract_layers(model, 14, n)
    whole = extract_layers(model, 0, n)
    x = random_inputs(whole.inputs, seed=3)
    want = reference_outputs(whole.model_bytes, x)
    stage = GpuStage(model, 3, 14, ctx=ctx)
    assert {t.name for t in stage.inputs} == {t.name for t in extract_layers(model, 3, 14).inputs}
    assert {t.name for t in stage.outputs} == {t.name for t in extract_layers(model, 3, 14).outputs}
    tensors = dict(x)
    tensors.update(reference_outputs(first.model_bytes, x))
    tensors.update(stage.run({t.name: tensors[t.name] for t in stage.inputs}))
    got = reference_outputs(last.model_bytes, {t.name: tensors[t.name] for t in last.inputs})
    for name, value in want.items():
        assert relative_error(got[name], value) <= TOL
        assert np.argmax(got[name]) == np.argmax(value)


def test_stage_timing_and_unsupported_range(ctx, models):
    model = models["mobilenet_v1"]
    stage = GpuStage(model, 27, 31, ctx=ctx)  # avg pool, reshape, fc, softmax: the head
    x = random_inputs(stage.inputs)
    out, timing = stage.run_timed(x)
    assert len(timing.layer_ms) == 4 and timing.total_ms > 0
    probs = next(iter(out.values()))
    assert probs.shape == (1, 1000) and abs(float(probs.sum()) - 1.0) < 1e-4
    int8 = read_model(zoo.build("mobilenet_v1", int8=True))
    with pytest.raises(Unsupported, match="layer 0"):
        GpuStage(int8, 0, 2, ctx=ctx)


def test_gpu_layer_times_for_the_dse(ctx):
    """Supported layers get a finite measured time, int8 (CPU-only) layers infinity."""
    import math

    from pipeit.gpu.autotune import gpu_layer_times
    from pipeit.tflite_builder import ModelBuilder

    b = ModelBuilder(seed=0)
    x = b.input("input", (1, 8, 8, 4))
    b.output(b.softmax(b.reshape(b.conv2d(x, 8, kernel=1, activation="RELU"), (1, -1))))
    float_times = gpu_layer_times(read_model(b.to_bytes()), ctx, repeats=1)
    assert len(float_times) == 3
    assert 0 < float_times[0] < math.inf and 0 < float_times[2] < math.inf
    assert float_times[1] == 0.0  # RESHAPE aliases its input buffer: no kernel runs
    int8_times = gpu_layer_times(read_model(b.to_bytes(int8=True)), ctx, repeats=1)
    assert all(t == math.inf for t in int8_times)


def test_an_upsampling_head_runs_whole_on_the_gpu_stage(ctx):
    """Conv, DEPTH_TO_SPACE, RESIZE_BILINEAR (half-pixel), a skip ADD, STRIDED_SLICE with a shrunk axis,
    TRANSPOSE and SLICE, as a detection or segmentation head chains them: one GPU stage, the model's outputs."""
    from pipeit.tflite_builder import ModelBuilder

    b = ModelBuilder(seed=9)
    x = b.input("image", (1, 12, 10, 3))
    low = b.conv2d(x, 16, kernel=3, stride=2)  # 6 x 5 x 16
    up = b.depth_to_space(low, 2)  # 12 x 10 x 4
    wide = b.resize(b.conv2d(low, 4, kernel=1), (12, 10), "bilinear", half_pixel_centers=True)
    mixed = b.add(up, wide)
    b.output(b.transpose(b.strided_slice(mixed, [0, 1, 0, 0], [1, 12, 10, 3], [1, 2, 1, 1], shrink_axis_mask=0b0001),
                         [2, 0, 1]))  # 3 x 6 x 10
    b.output(b.slice(b.resize(mixed, (5, 4), "nearest", align_corners=True), [0, 1, 0, 1], [1, -1, 4, 2]))
    model = read_model(b.to_bytes())
    n = len(graph_from_model(model, sha256="").layers)
    x_in = random_inputs(extract_layers(model, 0, n).inputs, seed=2)
    want = reference_outputs(b.to_bytes(), x_in)
    got = GpuStage(model, 0, n, ctx=ctx).run(x_in)
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].shape == value.shape and relative_error(got[name], value) <= TOL
