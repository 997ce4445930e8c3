"""Full-integer (int8) post-training quantisation of a built graph.

Why here and not in a converter: the zoo must give real int8 ``.tflite``
files without TensorFlow. The recipe is TFLite's own:

* activations: per-tensor asymmetric int8, ranges from a calibration run of
  the float model on a few seeded random inputs (uniform in [-1, 1], the
  range the zoo's models expect);
* conv / depthwise / FC weights: per-channel symmetric int8 (zero point 0,
  ``quantized_dimension`` = the output-channel axis: 0 for conv and FC,
  3 for depthwise);
* biases: int32 at scale ``input_scale * weight_scale[c]``;
* ops whose int8 kernels need equal input and output parameters (max and
  average pool, reshape, pad, concatenation) share one parameter set over
  the union of their tensors' ranges;
* softmax and logistic outputs use the fixed scale 1/256, zero point -128.

The calibration run uses the ordinary runtime (:func:`pipeit.runtime.make_interpreter`)
on a variant of the float model that lists every activation as an output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Iterator, List, Sequence, Tuple

import numpy as np

from pipeit.errors import ModelError
from pipeit.runtime import make_interpreter, native_stderr_silenced

if TYPE_CHECKING:  # pragma: no cover
    from pipeit.tflite_builder import ModelBuilder, QuantParams

__all__ = [
    "FIXED_OUTPUT_PARAMS",
    "SHARED_PARAM_OPS",
    "calibration_inputs",
    "activation_values",
    "tensor_ranges",
    "calibrate",
    "quantize_per_channel",
    "quantize_bias",
]

#: int8 kernels that require their output parameters to be these
FIXED_OUTPUT_PARAMS = {"SOFTMAX": (1.0 / 256.0, -128), "LOGISTIC": (1.0 / 256.0, -128)}
#: int8 kernels that require input and output parameters to be equal
SHARED_PARAM_OPS = ("MAX_POOL_2D", "AVERAGE_POOL_2D", "RESHAPE", "PAD", "CONCATENATION", "RESIZE_BILINEAR",
                    "RESIZE_NEAREST_NEIGHBOR", "DEPTH_TO_SPACE", "STRIDED_SLICE", "SLICE", "TRANSPOSE",
                    "SPACE_TO_DEPTH", "MIRROR_PAD")


def calibration_inputs(builder: "ModelBuilder", samples: int, seed: int) -> List[Dict[int, np.ndarray]]:
    """Seeded random float inputs, uniform in [-1, 1], one dict per sample."""
    if samples < 1:
        raise ModelError(f"calibration needs at least one sample, got {samples}")
    rng = np.random.default_rng(int(seed) + 0x5EED)
    return [
        {t.index: rng.uniform(-1.0, 1.0, size=t.shape).astype(np.float32) for t in builder.inputs}
        for _ in range(samples)
    ]


def activation_values(builder: "ModelBuilder", feeds: Sequence[Dict[int, np.ndarray]]) -> Iterator[Dict[int, np.ndarray]]:
    """Run the float model once per feed; yield every activation's value by builder index."""
    from pipeit.tflite_builder import pack_model

    data = pack_model(builder.to_model(all_outputs=True))
    with native_stderr_silenced():  # the runtime's "INFO: Created ... delegate" is not news in a calibration
        interpreter = make_interpreter(data)
    by_name = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    in_details = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    for feed in feeds:
        for i, value in feed.items():
            interpreter.set_tensor(in_details[builder.tensor_name(i)], value)
        interpreter.invoke()
        values = dict(feed)
        for i in builder.activation_indices():
            name = builder.tensor_name(i)
            if name in by_name and i not in feed:
                values[i] = interpreter.get_tensor(by_name[name])
        yield values


def tensor_ranges(builder: "ModelBuilder", samples: int = 4, seed: int = 0) -> Dict[int, Tuple[float, float]]:
    """``(min, max)`` of every activation tensor over a few float runs."""
    ranges: Dict[int, Tuple[float, float]] = {}
    for values in activation_values(builder, calibration_inputs(builder, samples, seed)):
        for i, value in values.items():
            lo, hi = float(np.min(value)), float(np.max(value))
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ModelError(f"calibration: tensor {builder.tensor_name(i)!r} is not finite")
            old = ranges.get(i)
            ranges[i] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return ranges


def _groups(builder: "ModelBuilder") -> Dict[int, int]:
    """Union-find root per activation index: tensors that must share parameters."""
    parent: Dict[int, int] = {i: i for i in builder.activation_indices()}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for name, ins, outs in builder.ops():
        if name in SHARED_PARAM_OPS:
            members = [i for i in ins if i in parent] if name == "CONCATENATION" else [ins[0]]
            for m in list(members) + list(outs):
                parent[find(m)] = find(outs[0])
    return {i: find(i) for i in parent}


def calibrate(builder: "ModelBuilder", samples: int = 4, seed: int = 0) -> Dict[int, "QuantParams"]:
    """int8 parameters for every activation tensor, honouring kernel constraints."""
    from pipeit.tflite_builder import QuantParams

    ranges = tensor_ranges(builder, samples, seed)
    root = _groups(builder)
    fixed: Dict[int, Tuple[float, int]] = {}
    for name, _, outs in builder.ops():
        if name in FIXED_OUTPUT_PARAMS:
            for o in outs:
                fixed[root[o]] = FIXED_OUTPUT_PARAMS[name]
    group_range: Dict[int, Tuple[float, float]] = {}
    for i, r in root.items():
        if i not in ranges:
            raise ModelError(f"calibration: tensor {builder.tensor_name(i)!r} was never computed")
        lo, hi = ranges[i]
        old = group_range.get(r)
        group_range[r] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    params: Dict[int, QuantParams] = {}
    for i, r in root.items():
        if r in fixed:
            params[i] = QuantParams(*fixed[r])
        else:
            params[i] = QuantParams.from_range(*group_range[r])
    return params


def quantize_per_channel(weights: np.ndarray, axis: int) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel: ``(int8 weights, float scales)``."""
    w = np.asarray(weights, dtype=np.float32)
    reduce_axes = tuple(a for a in range(w.ndim) if a != axis)
    amax = np.max(np.abs(w), axis=reduce_axes)
    scales = np.where(amax > 0, amax / 127.0, 1e-8).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scales.reshape(shape)), -127, 127).astype(np.int8)
    return q, scales


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scales: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """int32 biases at scale ``input_scale * weight_scale[c]``: ``(int32 bias, scales)``."""
    scales = (np.float64(input_scale) * weight_scales.astype(np.float64))
    q = np.clip(np.rint(np.asarray(bias, dtype=np.float64) / scales), -(2 ** 31), 2 ** 31 - 1).astype(np.int32)
    return q, scales.astype(np.float32)
