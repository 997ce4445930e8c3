"""Build real ``.tflite`` models in code, with seeded random weights.

Why: every test model, every zoo architecture and every single-layer model
the profiler times is generated here, so the repository never carries model
files. The builder records a small graph (symbolic tensors, float weights as
numpy arrays) and emits it through the generated TFLite schema object API
(``ModelT`` ... ``Pack`` ... ``Finish(b"TFL3")``), never by hand-written
flatbuffers. One recorded graph can be emitted four ways:

* float32 (the reference),
* float32 with float16 weights behind ``DEQUANTIZE`` ops (what TFLite's
  fp16 post-training quantisation produces),
* fully int8 (int8 activations in and out, per-channel weights), using
  activation ranges from a calibration run of the float model
  (:mod:`pipeit.quantize`),
* float32 with pruned weights stored sparse (CSR over the last axis) behind
  ``DENSIFY`` ops, as a pruning toolkit's converter writes them (with fp16
  weights too: float16 values behind ``DENSIFY`` then ``DEQUANTIZE``).

Weights use a He-style init (``std = gain * sqrt(2 / fan_in)`` before a
ReLU, ``gain * sqrt(1 / fan_in)`` before a linear output) so activations
keep roughly unit scale through 50+ layers: int8 calibration and the
"outputs are not degenerate" checks both depend on it. Residual branches
pass a smaller ``gain`` on their last layer so sums do not blow up.

Example
-------
>>> b = ModelBuilder(seed=0)
>>> x = b.input("input", (1, 32, 32, 3))
>>> y = b.conv2d(x, 8, kernel=3, stride=2, activation="RELU6")
>>> b.output(b.softmax(b.fully_connected(b.reshape(y, (1, -1)), 10)))
>>> data = b.to_bytes()
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from pipeit.errors import InputError, ModelError

__all__ = [
    "Tensor",
    "ModelBuilder",
    "QuantParams",
    "ACTIVATIONS",
    "PADDINGS",
    "SINGLE_LAYER_OPS",
    "single_layer_builder",
    "single_layer_model",
]

#: fused activation names -> schema enum
ACTIVATIONS = {
    "NONE": schema.ActivationFunctionType.NONE,
    "RELU": schema.ActivationFunctionType.RELU,
    "RELU_N1_TO_1": schema.ActivationFunctionType.RELU_N1_TO_1,
    "RELU6": schema.ActivationFunctionType.RELU6,
    "TANH": schema.ActivationFunctionType.TANH,
}
#: padding names -> schema enum
PADDINGS = {"SAME": schema.Padding.SAME, "VALID": schema.Padding.VALID}

_OP = schema.BuiltinOperator
_OPT = schema.BuiltinOptions
_TT = schema.TensorType

# Operator versions the converter writes for int8 kernels (float uses 1;
# fp16 DEQUANTIZE needs 3). The resolver accepts these for every op here.
_INT8_VERSIONS = {
    _OP.CONV_2D: 3,
    _OP.DEPTHWISE_CONV_2D: 3,
    _OP.FULLY_CONNECTED: 4,
    _OP.ADD: 2,
    _OP.MUL: 2,
    _OP.AVERAGE_POOL_2D: 2,
    _OP.MAX_POOL_2D: 2,
    _OP.CONCATENATION: 2,
    _OP.SOFTMAX: 2,
    _OP.MEAN: 2,
    _OP.PAD: 2,
    _OP.LOGISTIC: 2,
    _OP.RESHAPE: 1,
    _OP.HARD_SWISH: 1,
    _OP.RESIZE_BILINEAR: 2,
    _OP.RESIZE_NEAREST_NEIGHBOR: 2,
    _OP.DEPTH_TO_SPACE: 2,
    _OP.STRIDED_SLICE: 2,
    _OP.SLICE: 2,
    _OP.TRANSPOSE: 2,
    _OP.TRANSPOSE_CONV: 3,
    _OP.SPACE_TO_DEPTH: 2,
    _OP.MIRROR_PAD: 2,
}

# Tensor roles: what a tensor is decides how each emission mode stores it.
_ACT = "activation"
_WEIGHT = "weight"  # conv/depthwise/FC filters: fp16 or per-channel int8
_BIAS = "bias"  # float32, or int32 at scale in_scale * w_scale
_PARAM = "param"  # int32 shape/axis/padding operands, never quantised


@dataclass(frozen=True)
class Tensor:
    """A symbolic activation tensor of the graph being built."""

    index: int
    name: str
    shape: Tuple[int, ...]

    @property
    def channels(self) -> int:
        return int(self.shape[-1])


@dataclass(frozen=True)
class QuantParams:
    """Per-tensor asymmetric int8 parameters of one activation tensor."""

    scale: float
    zero_point: int

    @staticmethod
    def from_range(lo: float, hi: float) -> "QuantParams":
        """Asymmetric int8 parameters covering ``[lo, hi]`` (widened to include 0)."""
        lo, hi = min(0.0, float(lo)), max(0.0, float(hi))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ModelError(f"cannot quantise a tensor whose range is [{lo}, {hi}]")
        if hi - lo < 1e-6:
            hi = lo + 1e-6
        scale = (hi - lo) / 255.0
        zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
        return QuantParams(scale, zero_point)


@dataclass
class _TensorRec:
    name: str
    shape: Tuple[int, ...]
    role: str
    data: Optional[np.ndarray] = None
    # for weights: the axis of output channels (per-channel int8 scales)
    channel_axis: int = 0


@dataclass
class _OpRec:
    code: int
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    options_type: int = 0
    options: Any = None


def _same_or_valid(padding: str) -> int:
    try:
        return PADDINGS[padding.upper()]
    except (KeyError, AttributeError):
        raise InputError(f"padding must be SAME or VALID, got {padding!r}") from None


def _activation(name: Optional[str]) -> int:
    key = "NONE" if name is None else str(name).upper()
    if key not in ACTIVATIONS:
        raise InputError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[key]


def _out_size(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    if stride < 1 or kernel < 1 or dilation < 1:
        raise InputError(f"kernel, stride and dilation must be >= 1 (got {kernel}, {stride}, {dilation})")
    if padding.upper() == "SAME":
        return -(-size // stride)
    effective = (kernel - 1) * dilation + 1
    if size < effective:
        raise InputError(f"VALID window {effective} is larger than the input size {size}")
    return (size - effective) // stride + 1


def _pair(value: Any) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise InputError(f"expected an int or a pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


class ModelBuilder:
    """Records a CNN graph and emits it as a TFLite flatbuffer.

    Every layer method takes symbolic :class:`Tensor` inputs and returns the
    output :class:`Tensor`; ``name`` (optional) becomes the output tensor's
    name, which the split keeps across sub-models. Weights are drawn from one
    ``numpy.random.Generator`` seeded with ``seed``, in call order, so the
    same calls with the same seed give identical bytes.
    """

    def __init__(self, seed: int = 0, description: str = "pipeit generated model") -> None:
        self._rng = np.random.default_rng(int(seed))
        self._tensors: List[_TensorRec] = []
        self._ops: List[_OpRec] = []
        self._inputs: List[int] = []
        self._outputs: List[int] = []
        self._names: Dict[str, int] = {}
        self._counter: Dict[str, int] = {}
        self.description = description

    # ------------------------------------------------------------ bookkeeping
    def _unique(self, name: Optional[str], stem: str) -> str:
        if name is None:
            n = self._counter.get(stem, 0)
            self._counter[stem] = n + 1
            name = f"{stem}_{n}" if n else stem
        base, k = name, 1
        while name in self._names:
            name = f"{base}_{k}"
            k += 1
        return name

    def _add(self, name: str, shape: Sequence[int], role: str, data: Optional[np.ndarray] = None,
             channel_axis: int = 0) -> int:
        shape = tuple(int(s) for s in shape)
        if any(s < 1 for s in shape):
            raise InputError(f"tensor {name!r} would have an empty shape {shape}")
        self._tensors.append(_TensorRec(name, shape, role, data, channel_axis))
        index = len(self._tensors) - 1
        self._names[name] = index
        return index

    def _act(self, name: str, shape: Sequence[int]) -> Tensor:
        index = self._add(name, shape, _ACT)
        return Tensor(index, self._tensors[index].name, self._tensors[index].shape)

    def _check(self, x: Tensor, rank: Optional[int] = None) -> None:
        if not isinstance(x, Tensor) or x.index >= len(self._tensors) or \
                self._tensors[x.index].role != _ACT:
            raise InputError(f"{x!r} is not an activation tensor of this builder")
        if rank is not None and len(x.shape) != rank:
            raise InputError(f"{x.name}: expected a rank-{rank} tensor, got shape {x.shape}")

    def _const(self, name: str, data: np.ndarray, role: str, channel_axis: int = 0) -> int:
        return self._add(name, data.shape, role, data, channel_axis)

    def _weights(self, shape: Tuple[int, ...], fan_in: int, activation: str, gain: float) -> np.ndarray:
        relu = activation.upper() in ("RELU", "RELU6")
        std = gain * math.sqrt((2.0 if relu else 1.0) / max(1, fan_in))
        w = self._rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(std)
        return w

    def _bias(self, n: int) -> np.ndarray:
        return (self._rng.standard_normal(n, dtype=np.float32) * np.float32(0.01)).astype(np.float32)

    def _op(self, code: int, inputs: Sequence[int], outputs: Sequence[int], options_type: int = 0,
            options: Any = None) -> None:
        self._ops.append(_OpRec(code, tuple(inputs), tuple(outputs), options_type, options))

    # ------------------------------------------------------------ graph ends
    def input(self, name: str, shape: Sequence[int]) -> Tensor:
        """A model input (float32; int8 in the int8 emission)."""
        t = self._act(self._unique(name, "input"), shape)
        self._inputs.append(t.index)
        return t

    def output(self, x: Tensor) -> Tensor:
        """Mark ``x`` as a model output (in call order)."""
        self._check(x)
        if x.index not in self._outputs:
            self._outputs.append(x.index)
        return x

    @property
    def inputs(self) -> Tuple[Tensor, ...]:
        return tuple(self._handle(i) for i in self._inputs)

    @property
    def outputs(self) -> Tuple[Tensor, ...]:
        return tuple(self._handle(i) for i in self._outputs)

    def _handle(self, index: int) -> Tensor:
        rec = self._tensors[index]
        return Tensor(index, rec.name, rec.shape)

    # ------------------------------------------------------------ layers
    def conv2d(self, x: Tensor, out_channels: int, kernel: Any = 3, stride: Any = 1,
               padding: str = "SAME", activation: str = "RELU", dilation: Any = 1,
               groups: int = 1, gain: float = 1.0, name: Optional[str] = None) -> Tensor:
        """CONV_2D with bias and fused activation; ``groups`` > 1 is a grouped conv."""
        self._check(x, 4)
        kh, kw = _pair(kernel)
        sh, sw = _pair(stride)
        dh, dw = _pair(dilation)
        cin = x.channels
        if groups < 1 or cin % groups or out_channels % groups:
            raise InputError(f"groups={groups} must divide input ({cin}) and output ({out_channels}) channels")
        act = _activation(activation)
        pad = _same_or_valid(padding)
        oh = _out_size(x.shape[1], kh, sh, dh, padding)
        ow = _out_size(x.shape[2], kw, sw, dw, padding)
        name = self._unique(name, "conv")
        w = self._weights((out_channels, kh, kw, cin // groups), kh * kw * cin // groups, activation, gain)
        wi = self._const(f"{name}/weights", w, _WEIGHT, 0)
        bi = self._const(f"{name}/bias", self._bias(out_channels), _BIAS)
        y = self._act(name, (x.shape[0], oh, ow, out_channels))
        opts = schema.Conv2DOptionsT(padding=pad, strideW=sw, strideH=sh, fusedActivationFunction=act,
                                     dilationWFactor=dw, dilationHFactor=dh)
        self._op(_OP.CONV_2D, (x.index, wi, bi), (y.index,), _OPT.Conv2DOptions, opts)
        return y

    def transpose_conv(self, x: Tensor, out_channels: int, kernel: Any = 3, stride: Any = 2,
                       padding: str = "SAME", activation: str = "NONE", bias: bool = True, gain: float = 1.0,
                       name: Optional[str] = None) -> Tensor:
        """TRANSPOSE_CONV (an upsampling conv): output ``H * stride`` (SAME) or ``(H - 1) * stride + kernel``
        (VALID) high, weights ``[out, kh, kw, in]``, an optional bias and fused activation."""
        self._check(x, 4)
        kh, kw = _pair(kernel)
        sh, sw = _pair(stride)
        n, h, w, cin = x.shape
        same = _same_or_valid(padding) == PADDINGS["SAME"]
        oh, ow = (h * sh, w * sw) if same else ((h - 1) * sh + kh, (w - 1) * sw + kw)
        name = self._unique(name, "transpose_conv")
        si = self._const(f"{name}/output_shape", np.asarray([n, oh, ow, out_channels], dtype=np.int32), _PARAM)
        wi = self._const(f"{name}/weights", self._weights((out_channels, kh, kw, cin), kh * kw * cin, activation, gain),
                         _WEIGHT, 0)
        operands = [si, wi, x.index]
        if bias:
            operands.append(self._const(f"{name}/bias", self._bias(out_channels), _BIAS))
        y = self._act(name, (n, oh, ow, out_channels))
        opts = schema.TransposeConvOptionsT(padding=_same_or_valid(padding), strideW=sw, strideH=sh,
                                            fusedActivationFunction=_activation(activation))
        self._op(_OP.TRANSPOSE_CONV, operands, (y.index,), _OPT.TransposeConvOptions, opts)
        return y

    def depthwise_conv2d(self, x: Tensor, kernel: Any = 3, stride: Any = 1, padding: str = "SAME",
                         activation: str = "RELU", depth_multiplier: int = 1, dilation: Any = 1,
                         gain: float = 1.0, name: Optional[str] = None) -> Tensor:
        """DEPTHWISE_CONV_2D (filter ``[1, kh, kw, C*m]``) with bias and fused activation."""
        self._check(x, 4)
        kh, kw = _pair(kernel)
        sh, sw = _pair(stride)
        dh, dw = _pair(dilation)
        if depth_multiplier < 1:
            raise InputError(f"depth_multiplier must be >= 1, got {depth_multiplier}")
        cout = x.channels * depth_multiplier
        act = _activation(activation)
        pad = _same_or_valid(padding)
        oh = _out_size(x.shape[1], kh, sh, dh, padding)
        ow = _out_size(x.shape[2], kw, sw, dw, padding)
        name = self._unique(name, "dwconv")
        w = self._weights((1, kh, kw, cout), kh * kw, activation, gain)
        wi = self._const(f"{name}/weights", w, _WEIGHT, 3)
        bi = self._const(f"{name}/bias", self._bias(cout), _BIAS)
        y = self._act(name, (x.shape[0], oh, ow, cout))
        opts = schema.DepthwiseConv2DOptionsT(padding=pad, strideW=sw, strideH=sh,
                                              depthMultiplier=depth_multiplier,
                                              fusedActivationFunction=act,
                                              dilationWFactor=dw, dilationHFactor=dh)
        self._op(_OP.DEPTHWISE_CONV_2D, (x.index, wi, bi), (y.index,), _OPT.DepthwiseConv2DOptions, opts)
        return y

    def fully_connected(self, x: Tensor, units: int, activation: str = "NONE", gain: float = 1.0,
                        name: Optional[str] = None) -> Tensor:
        """FULLY_CONNECTED over the last axis; output ``[rows, units]``."""
        self._check(x)
        act = _activation(activation)
        cin = x.shape[-1]
        rows = int(np.prod(x.shape)) // cin
        name = self._unique(name, "fc")
        w = self._weights((units, cin), cin, activation, gain)
        wi = self._const(f"{name}/weights", w, _WEIGHT, 0)
        bi = self._const(f"{name}/bias", self._bias(units), _BIAS)
        y = self._act(name, (rows, units))
        opts = schema.FullyConnectedOptionsT(fusedActivationFunction=act)
        self._op(_OP.FULLY_CONNECTED, (x.index, wi, bi), (y.index,), _OPT.FullyConnectedOptions, opts)
        return y

    def _pool(self, code: int, stem: str, x: Tensor, pool: Any, stride: Any, padding: str,
              name: Optional[str]) -> Tensor:
        self._check(x, 4)
        ph, pw = _pair(pool)
        sh, sw = _pair(stride if stride is not None else pool)
        pad = _same_or_valid(padding)
        oh = _out_size(x.shape[1], ph, sh, 1, padding)
        ow = _out_size(x.shape[2], pw, sw, 1, padding)
        y = self._act(self._unique(name, stem), (x.shape[0], oh, ow, x.channels))
        opts = schema.Pool2DOptionsT(padding=pad, strideW=sw, strideH=sh, filterWidth=pw, filterHeight=ph)
        self._op(code, (x.index,), (y.index,), _OPT.Pool2DOptions, opts)
        return y

    def max_pool(self, x: Tensor, pool: Any = 2, stride: Any = None, padding: str = "VALID",
                 name: Optional[str] = None) -> Tensor:
        """MAX_POOL_2D (stride defaults to the pool size)."""
        return self._pool(_OP.MAX_POOL_2D, "maxpool", x, pool, stride, padding, name)

    def avg_pool(self, x: Tensor, pool: Any = 2, stride: Any = None, padding: str = "VALID",
                 name: Optional[str] = None) -> Tensor:
        """AVERAGE_POOL_2D (stride defaults to the pool size)."""
        return self._pool(_OP.AVERAGE_POOL_2D, "avgpool", x, pool, stride, padding, name)

    def _binary(self, code: int, stem: str, opt_type: int, opt_cls: Any, a: Tensor, b: Tensor,
                activation: str, name: Optional[str]) -> Tensor:
        self._check(a)
        self._check(b)
        if a.shape != b.shape:
            raise InputError(f"{stem}: shapes differ: {a.shape} vs {b.shape}")
        act = _activation(activation)
        y = self._act(self._unique(name, stem), a.shape)
        self._op(code, (a.index, b.index), (y.index,), opt_type, opt_cls(fusedActivationFunction=act))
        return y

    def add(self, a: Tensor, b: Tensor, activation: str = "NONE", name: Optional[str] = None) -> Tensor:
        """Element-wise ADD of two equal-shape tensors (residual joins)."""
        return self._binary(_OP.ADD, "add", _OPT.AddOptions, schema.AddOptionsT, a, b, activation, name)

    def mul(self, a: Tensor, b: Tensor, activation: str = "NONE", name: Optional[str] = None) -> Tensor:
        """Element-wise MUL of two equal-shape tensors."""
        return self._binary(_OP.MUL, "mul", _OPT.MulOptions, schema.MulOptionsT, a, b, activation, name)

    def concatenation(self, xs: Sequence[Tensor], axis: int = -1, name: Optional[str] = None) -> Tensor:
        """CONCATENATION along ``axis`` (channels by default: inception/fire joins)."""
        if len(xs) < 1:
            raise InputError("concatenation needs at least one input")
        for x in xs:
            self._check(x)
        rank = len(xs[0].shape)
        ax = axis % rank
        for x in xs:
            if len(x.shape) != rank or any(x.shape[i] != xs[0].shape[i] for i in range(rank) if i != ax):
                raise InputError(f"concatenation: shapes {[x.shape for x in xs]} differ off axis {axis}")
        shape = list(xs[0].shape)
        shape[ax] = sum(x.shape[ax] for x in xs)
        y = self._act(self._unique(name, "concat"), shape)
        opts = schema.ConcatenationOptionsT(axis=ax, fusedActivationFunction=0)
        self._op(_OP.CONCATENATION, tuple(x.index for x in xs), (y.index,), _OPT.ConcatenationOptions, opts)
        return y

    def reshape(self, x: Tensor, shape: Sequence[int], name: Optional[str] = None) -> Tensor:
        """RESHAPE; one ``-1`` is inferred."""
        self._check(x)
        shape = [int(s) for s in shape]
        total = int(np.prod(x.shape))
        if shape.count(-1) > 1:
            raise InputError(f"reshape: at most one -1 in {shape}")
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1]))
            if known <= 0 or total % known:
                raise InputError(f"reshape: cannot reshape {x.shape} to {shape}")
            shape[shape.index(-1)] = total // known
        if int(np.prod(shape)) != total:
            raise InputError(f"reshape: cannot reshape {x.shape} to {shape}")
        name = self._unique(name, "reshape")
        si = self._const(f"{name}/shape", np.asarray(shape, dtype=np.int32), _PARAM)
        y = self._act(name, shape)
        self._op(_OP.RESHAPE, (x.index, si), (y.index,), _OPT.ReshapeOptions,
                 schema.ReshapeOptionsT(newShape=list(shape)))
        return y

    def softmax(self, x: Tensor, beta: float = 1.0, name: Optional[str] = None) -> Tensor:
        """SOFTMAX over the last axis."""
        self._check(x)
        y = self._act(self._unique(name, "softmax"), x.shape)
        self._op(_OP.SOFTMAX, (x.index,), (y.index,), _OPT.SoftmaxOptions, schema.SoftmaxOptionsT(beta=beta))
        return y

    def mean(self, x: Tensor, axes: Sequence[int] = (1, 2), keep_dims: bool = False,
             name: Optional[str] = None) -> Tensor:
        """MEAN over ``axes`` (global average pooling when axes are H and W)."""
        self._check(x)
        rank = len(x.shape)
        ax = sorted({int(a) % rank for a in axes})
        shape = [1 if i in ax else s for i, s in enumerate(x.shape)] if keep_dims else \
            [s for i, s in enumerate(x.shape) if i not in ax]
        name = self._unique(name, "mean")
        ai = self._const(f"{name}/axes", np.asarray(ax, dtype=np.int32), _PARAM)
        y = self._act(name, shape)
        self._op(_OP.MEAN, (x.index, ai), (y.index,), _OPT.ReducerOptions,
                 schema.ReducerOptionsT(keepDims=bool(keep_dims)))
        return y

    def pad(self, x: Tensor, paddings: Sequence[Sequence[int]], name: Optional[str] = None) -> Tensor:
        """PAD with zeros; ``paddings`` is ``[[before, after], ...]`` per axis."""
        self._check(x)
        pads = np.asarray(paddings, dtype=np.int32)
        if pads.shape != (len(x.shape), 2) or (pads < 0).any():
            raise InputError(f"pad: paddings must be {len(x.shape)} non-negative [before, after] pairs")
        shape = [s + int(p[0]) + int(p[1]) for s, p in zip(x.shape, pads)]
        name = self._unique(name, "pad")
        pi = self._const(f"{name}/paddings", pads, _PARAM)
        y = self._act(name, shape)
        self._op(_OP.PAD, (x.index, pi), (y.index,), _OPT.PadOptions, schema.PadOptionsT())
        return y

    def resize(self, x: Tensor, size: Sequence[int], mode: str = "bilinear", align_corners: bool = False,
               half_pixel_centers: bool = False, name: Optional[str] = None) -> Tensor:
        """RESIZE_BILINEAR or RESIZE_NEAREST_NEIGHBOR of an NHWC tensor to ``size`` = (height, width)."""
        self._check(x, 4)
        if mode not in ("bilinear", "nearest"):
            raise InputError(f"resize: mode must be bilinear or nearest, got {mode!r}")
        if align_corners and half_pixel_centers:
            raise InputError("resize: align_corners and half_pixel_centers exclude each other")
        height, width = (int(v) for v in size)
        name = self._unique(name, f"resize_{mode}")
        si = self._const(f"{name}/size", np.asarray([height, width], dtype=np.int32), _PARAM)
        y = self._act(name, (x.shape[0], height, width, x.shape[3]))
        if mode == "bilinear":
            code, opt_type, opts = _OP.RESIZE_BILINEAR, _OPT.ResizeBilinearOptions, schema.ResizeBilinearOptionsT()
        else:
            code, opt_type = _OP.RESIZE_NEAREST_NEIGHBOR, _OPT.ResizeNearestNeighborOptions
            opts = schema.ResizeNearestNeighborOptionsT()
        opts.alignCorners, opts.halfPixelCenters = bool(align_corners), bool(half_pixel_centers)
        self._op(code, (x.index, si), (y.index,), opt_type, opts)
        return y

    def depth_to_space(self, x: Tensor, block: int, name: Optional[str] = None) -> Tensor:
        """DEPTH_TO_SPACE: channels in groups of ``block``² become ``block`` x ``block`` pixels (NHWC)."""
        self._check(x, 4)
        n, h, w, c = x.shape
        if block < 2 or c % (block * block):
            raise InputError(f"depth_to_space: {c} channels do not split into {block} x {block} blocks")
        y = self._act(self._unique(name, "depth_to_space"), (n, h * block, w * block, c // (block * block)))
        self._op(_OP.DEPTH_TO_SPACE, (x.index,), (y.index,), _OPT.DepthToSpaceOptions,
                 schema.DepthToSpaceOptionsT(blockSize=int(block)))
        return y

    def space_to_depth(self, x: Tensor, block: int, name: Optional[str] = None) -> Tensor:
        """SPACE_TO_DEPTH: each ``block`` x ``block`` patch of pixels becomes one pixel of ``block``² x the channels."""
        self._check(x, 4)
        n, h, w, c = x.shape
        if block < 2 or h % block or w % block:
            raise InputError(f"space_to_depth: {h} x {w} does not split into {block} x {block} blocks")
        y = self._act(self._unique(name, "space_to_depth"), (n, h // block, w // block, c * block * block))
        self._op(_OP.SPACE_TO_DEPTH, (x.index,), (y.index,), _OPT.SpaceToDepthOptions,
                 schema.SpaceToDepthOptionsT(blockSize=int(block)))
        return y

    def mirror_pad(self, x: Tensor, paddings: Sequence[Sequence[int]], mode: str = "REFLECT",
                   name: Optional[str] = None) -> Tensor:
        """MIRROR_PAD: ``REFLECT`` (the edge not repeated) or ``SYMMETRIC`` (repeated), as numpy's pad."""
        self._check(x)
        pads = np.asarray(paddings, dtype=np.int32)
        modes = {"REFLECT": schema.MirrorPadMode.REFLECT, "SYMMETRIC": schema.MirrorPadMode.SYMMETRIC}
        if mode not in modes:
            raise InputError(f"mirror_pad: mode must be REFLECT or SYMMETRIC, got {mode!r}")
        edge = 1 if mode == "REFLECT" else 0
        if pads.shape != (len(x.shape), 2) or (pads < 0).any() or \
                any(int(p.max()) > size - edge for p, size in zip(pads, x.shape)):
            raise InputError(f"mirror_pad: paddings must be {len(x.shape)} [before, after] pairs each at most "
                             f"the axis size{' - 1' if edge else ''}")
        name = self._unique(name, "mirror_pad")
        pi = self._const(f"{name}/paddings", pads, _PARAM)
        y = self._act(name, [s + int(p[0]) + int(p[1]) for s, p in zip(x.shape, pads)])
        self._op(_OP.MIRROR_PAD, (x.index, pi), (y.index,), _OPT.MirrorPadOptions,
                 schema.MirrorPadOptionsT(mode=modes[mode]))
        return y

    def strided_slice(self, x: Tensor, begin: Sequence[int], end: Sequence[int], strides: Sequence[int],
                      begin_mask: int = 0, end_mask: int = 0, shrink_axis_mask: int = 0,
                      name: Optional[str] = None) -> Tensor:
        """STRIDED_SLICE with numpy's slicing rules (a mask bit leaves that axis' begin or end open;
        a shrink bit takes the element at ``begin`` and drops the axis)."""
        self._check(x)
        rank = len(x.shape)
        if not len(begin) == len(end) == len(strides) == rank or 0 in strides:
            raise InputError(f"strided_slice: begin, end and strides need {rank} entries, strides non-zero")
        parts: List[Any] = []
        for axis in range(rank):
            if shrink_axis_mask >> axis & 1:
                parts.append(int(begin[axis]))
            else:
                parts.append(slice(None if begin_mask >> axis & 1 else int(begin[axis]),
                                   None if end_mask >> axis & 1 else int(end[axis]), int(strides[axis])))
        try:
            shape = np.empty(x.shape, dtype=np.uint8)[tuple(parts)].shape
        except IndexError as err:
            raise InputError(f"strided_slice: {err}") from None
        if not shape:
            raise InputError("strided_slice: every axis shrunk (a scalar output)")
        name = self._unique(name, "strided_slice")
        operands = [x.index] + [self._const(f"{name}/{what}", np.asarray(v, dtype=np.int32), _PARAM)
                                for what, v in (("begin", begin), ("end", end), ("strides", strides))]
        y = self._act(name, shape)
        opts = schema.StridedSliceOptionsT()
        opts.beginMask, opts.endMask, opts.shrinkAxisMask = int(begin_mask), int(end_mask), int(shrink_axis_mask)
        self._op(_OP.STRIDED_SLICE, operands, (y.index,), _OPT.StridedSliceOptions, opts)
        return y

    def slice(self, x: Tensor, begin: Sequence[int], size: Sequence[int], name: Optional[str] = None) -> Tensor:
        """SLICE: ``size[i]`` elements from ``begin[i]`` on each axis (-1: to the end)."""
        self._check(x)
        if not len(begin) == len(size) == len(x.shape):
            raise InputError(f"slice: begin and size need {len(x.shape)} entries")
        shape = [d - int(b) if int(n) == -1 else int(n) for d, b, n in zip(x.shape, begin, size)]
        if any(int(b) < 0 or int(b) + n > d for d, b, n in zip(x.shape, begin, shape)):
            raise InputError(f"slice: begin {list(begin)} size {list(size)} is outside {x.shape}")
        name = self._unique(name, "slice")
        bi = self._const(f"{name}/begin", np.asarray(begin, dtype=np.int32), _PARAM)
        si = self._const(f"{name}/size", np.asarray(size, dtype=np.int32), _PARAM)
        y = self._act(name, shape)
        self._op(_OP.SLICE, (x.index, bi, si), (y.index,), _OPT.SliceOptions, schema.SliceOptionsT())
        return y

    def transpose(self, x: Tensor, perm: Sequence[int], name: Optional[str] = None) -> Tensor:
        """TRANSPOSE: output axis ``i`` is input axis ``perm[i]``."""
        self._check(x)
        if sorted(int(p) for p in perm) != list(range(len(x.shape))):
            raise InputError(f"transpose: {list(perm)} is not a permutation of {len(x.shape)} axes")
        name = self._unique(name, "transpose")
        pi = self._const(f"{name}/perm", np.asarray(perm, dtype=np.int32), _PARAM)
        y = self._act(name, [x.shape[int(p)] for p in perm])
        self._op(_OP.TRANSPOSE, (x.index, pi), (y.index,), _OPT.TransposeOptions, schema.TransposeOptionsT())
        return y

    def hard_swish(self, x: Tensor, name: Optional[str] = None) -> Tensor:
        """HARD_SWISH (MobileNetV3's activation)."""
        self._check(x)
        y = self._act(self._unique(name, "hard_swish"), x.shape)
        self._op(_OP.HARD_SWISH, (x.index,), (y.index,), _OPT.HardSwishOptions, schema.HardSwishOptionsT())
        return y

    def logistic(self, x: Tensor, name: Optional[str] = None) -> Tensor:
        """LOGISTIC (sigmoid)."""
        self._check(x)
        y = self._act(self._unique(name, "logistic"), x.shape)
        self._op(_OP.LOGISTIC, (x.index,), (y.index,))
        return y

    # ------------------------------------------------------------ introspection for quantize
    def activation_indices(self) -> Tuple[int, ...]:
        """Indices of every activation tensor (inputs included), in creation order."""
        return tuple(i for i, t in enumerate(self._tensors) if t.role == _ACT)

    def tensor_name(self, index: int) -> str:
        return self._tensors[index].name

    def ops(self) -> Tuple[Tuple[str, Tuple[int, ...], Tuple[int, ...]], ...]:
        """``(op name, input indices, output indices)`` per recorded op, in order."""
        names = {v: k for k, v in vars(_OP).items() if not k.startswith("_")}
        return tuple((names[o.code], o.inputs, o.outputs) for o in self._ops)

    def scale_layer(self, output: Tensor, factor: float) -> None:
        """Multiply the weights and bias of the layer that produces ``output``.

        Why: through a ReLU network, scaling the last layer scales the
        logits exactly; the zoo uses it to give softmax a useful spread.
        """
        for op in self._ops:
            if output.index in op.outputs and op.code in (_OP.CONV_2D, _OP.DEPTHWISE_CONV_2D,
                                                          _OP.FULLY_CONNECTED):
                for i in op.inputs[1:3]:
                    rec = self._tensors[i]
                    rec.data = (rec.data * np.float32(factor)).astype(np.float32)
                return
        raise InputError(f"{output.name} is not the output of a conv/depthwise/FC layer")

    # ------------------------------------------------------------ emission
    def to_model(self, quant: Optional[Mapping[int, QuantParams]] = None, fp16_weights: bool = False,
                 all_outputs: bool = False, sparse_weights: float = 0.0) -> Any:
        """The schema ``ModelT``: float (``quant=None``) or int8 (``quant`` per activation).

        ``all_outputs`` lists every activation tensor as a model output, so one
        run exposes every intermediate value (calibration). ``sparse_weights``
        (float only): the fraction of each conv/depthwise/FC filter's
        smallest-magnitude elements set to zero; the rest are stored in CSR
        form behind a ``DENSIFY`` op (the model then differs from the dense
        one by that pruning); with ``fp16_weights`` too, as float16 behind
        ``DENSIFY`` then ``DEQUANTIZE``.
        """
        if not self._inputs or not self._outputs:
            raise ModelError("a model needs at least one input and one output")
        if quant is not None and fp16_weights:
            raise InputError("fp16 weights and int8 quantisation are exclusive")
        if not 0.0 <= sparse_weights < 1.0:
            raise InputError(f"sparse_weights is the fraction of weights pruned, in [0, 1): got {sparse_weights}")
        if sparse_weights and quant is not None:
            raise InputError("sparse weights are emitted for float models only (float32 or fp16 weights)")
        emitter = _Emitter(self, quant, fp16_weights, sparse_weights)
        outputs = list(self.activation_indices()) if all_outputs else list(self._outputs)
        return emitter.model(outputs)

    def to_bytes(self, int8: bool = False, fp16_weights: bool = False, calibration_samples: int = 4,
                 calibration_seed: int = 0, sparse_weights: float = 0.0) -> bytes:
        """Serialise to ``.tflite`` bytes; ``int8`` first calibrates the float model."""
        quant = None
        if int8 and sparse_weights:
            raise InputError("sparse weights are emitted for float models only (float32 or fp16 weights)")
        if int8:
            from pipeit.quantize import calibrate  # lazy: it runs the interpreter

            quant = calibrate(self, samples=calibration_samples, seed=calibration_seed)
        return pack_model(self.to_model(quant=quant, fp16_weights=fp16_weights, sparse_weights=sparse_weights))


def pack_model(model: Any) -> bytes:
    """Pack a schema ``ModelT`` into ``.tflite`` bytes (file identifier ``TFL3``)."""
    # Size the builder up front: growing it by doubling copies every weight many times.
    payload = sum(len(b.data) for b in (model.buffers or []) if b.data is not None)
    builder = flatbuffers.Builder(payload + (1 << 20))
    root = model.Pack(builder)
    builder.Finish(root, file_identifier=b"TFL3")
    return bytes(builder.Output())


@dataclass
class _Emitter:
    """Turns one recorded graph into a ``ModelT`` for one emission mode."""

    src: ModelBuilder
    quant: Optional[Mapping[int, QuantParams]]
    fp16: bool
    pruned: float = 0.0  # fraction of each filter pruned, the rest stored sparse (0: dense)
    opcodes: Dict[Tuple[int, int], int] = field(default_factory=dict)
    codes: List[Any] = field(default_factory=list)
    buffers: List[Any] = field(default_factory=list)
    tensors: List[Any] = field(default_factory=list)
    operators: List[Any] = field(default_factory=list)

    def opcode(self, code: int, version: int) -> int:
        key = (code, version)
        if key not in self.opcodes:
            oc = schema.OperatorCodeT(deprecatedBuiltinCode=min(code, 127), version=version, builtinCode=code)
            self.codes.append(oc)
            self.opcodes[key] = len(self.codes) - 1
        return self.opcodes[key]

    def buffer(self, data: Optional[np.ndarray]) -> int:
        if data is None:
            return 0
        buf = schema.BufferT()
        buf.data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        self.buffers.append(buf)
        return len(self.buffers) - 1

    def tensor(self, name: str, shape: Sequence[int], ttype: int, data: Optional[np.ndarray] = None,
               q: Any = None, sparsity: Any = None) -> int:
        t = schema.TensorT()
        t.name = name
        t.shape = [int(s) for s in shape]
        t.type = ttype
        t.buffer = self.buffer(data)
        t.quantization = q
        t.sparsity = sparsity
        self.tensors.append(t)
        return len(self.tensors) - 1

    def sparse_tensor(self, name: str, dense: np.ndarray, half: bool = False) -> int:
        """A constant holding ``dense`` pruned by :attr:`pruned`, in CSR form over its last axis
        (float16 values if ``half``, else float32).

        TFLite's sparsity format: every axis but the last is DENSE, the last
        is SPARSE_CSR (per row of the others, ``segments`` are the offsets
        into ``indices``, the column of each kept value); the buffer holds
        the kept values only, row by row.
        """
        values = np.asarray(dense, dtype=np.float32)
        keep = np.abs(values) >= np.quantile(np.abs(values), self.pruned) if values.size else np.ones(0, bool)
        rows = keep.reshape(-1, values.shape[-1])
        segments = np.concatenate([[0], np.cumsum(rows.sum(axis=1))]).astype(np.int32)
        indices = np.nonzero(rows)[1].astype(np.int32)
        dims = []
        for size in values.shape[:-1]:
            dims.append(schema.DimensionMetadataT())
            dims[-1].format, dims[-1].denseSize = schema.DimensionType.DENSE, int(size)
        csr = schema.DimensionMetadataT()
        csr.format = schema.DimensionType.SPARSE_CSR
        csr.arraySegmentsType = csr.arrayIndicesType = schema.SparseIndexVector.Int32Vector
        csr.arraySegments, csr.arrayIndices = schema.Int32VectorT(), schema.Int32VectorT()
        csr.arraySegments.values, csr.arrayIndices.values = segments.tolist(), indices.tolist()
        dims.append(csr)
        sparsity = schema.SparsityParametersT()
        sparsity.traversalOrder = list(range(values.ndim))
        sparsity.dimMetadata = dims
        kept = values[keep].astype(np.float16 if half else np.float32)
        return self.tensor(f"{name}/sparse", values.shape, _TT.FLOAT16 if half else _TT.FLOAT32, kept,
                           sparsity=sparsity)

    def model(self, outputs: Sequence[int]) -> Any:
        from pipeit import quantize as qz

        self.buffers.append(schema.BufferT())  # buffer 0: the empty sentinel
        src = self.src
        int8 = self.quant is not None
        # activation tensors keep their builder index order; constants follow as met
        mapping: Dict[int, int] = {}
        for i, rec in enumerate(src._tensors):
            if rec.role == _ACT:
                if int8:
                    p = self.quant[i]
                    qp = schema.QuantizationParametersT(scale=[float(p.scale)], zeroPoint=[int(p.zero_point)])
                    mapping[i] = self.tensor(rec.name, rec.shape, _TT.INT8, q=qp)
                else:
                    mapping[i] = self.tensor(rec.name, rec.shape, _TT.FLOAT32)
        for op in src._ops:
            ins: List[int] = []
            pre: List[Any] = []
            # the first activation operand sets the bias scale (TRANSPOSE_CONV's comes after its output shape)
            first = next((i for i in op.inputs if src._tensors[i].role == _ACT), op.inputs[0])
            in_scale = self.quant[first].scale if int8 else 1.0
            w_scales: Optional[np.ndarray] = None
            for i in op.inputs:
                if i in mapping:
                    ins.append(mapping[i])
                    continue
                rec = src._tensors[i]
                if rec.role == _PARAM:
                    idx = self.tensor(rec.name, rec.shape, _TT.INT32, rec.data)
                elif rec.role == _WEIGHT and int8:
                    qw, w_scales = qz.quantize_per_channel(rec.data, rec.channel_axis)
                    qp = schema.QuantizationParametersT(scale=[float(s) for s in w_scales],
                                                        zeroPoint=[0] * len(w_scales),
                                                        quantizedDimension=rec.channel_axis)
                    idx = self.tensor(rec.name, rec.shape, _TT.INT8, qw, qp)
                elif rec.role == _BIAS and int8:
                    assert w_scales is not None  # weights precede bias in every op
                    qb, b_scales = qz.quantize_bias(rec.data, in_scale, w_scales)
                    qp = schema.QuantizationParametersT(scale=[float(s) for s in b_scales],
                                                        zeroPoint=[0] * len(b_scales), quantizedDimension=0)
                    idx = self.tensor(rec.name, rec.shape, _TT.INT32, qb, qp)
                elif rec.role == _WEIGHT and (self.pruned or self.fp16):
                    # the stored form (sparse behind DENSIFY, float16, or both), then DEQUANTIZE of float16
                    if self.pruned:
                        sparse = self.sparse_tensor(rec.name, rec.data, half=self.fp16)
                        idx = self.tensor(f"{rec.name}/dense" if self.fp16 else rec.name, rec.shape,
                                          _TT.FLOAT16 if self.fp16 else _TT.FLOAT32)
                        pre.append(schema.OperatorT(opcodeIndex=self.opcode(_OP.DENSIFY, 1),
                                                    inputs=[sparse], outputs=[idx]))
                    else:
                        idx = self.tensor(f"{rec.name}/fp16", rec.shape, _TT.FLOAT16, rec.data.astype(np.float16))
                    if self.fp16:
                        half, idx = idx, self.tensor(rec.name, rec.shape, _TT.FLOAT32)
                        pre.append(schema.OperatorT(opcodeIndex=self.opcode(_OP.DEQUANTIZE, 3),
                                                    inputs=[half], outputs=[idx]))
                else:
                    idx = self.tensor(rec.name, rec.shape, _TT.FLOAT32, rec.data.astype(np.float32))
                mapping[i] = idx
                ins.append(idx)
            version = _INT8_VERSIONS.get(op.code, 1) if int8 else 1
            self.operators.extend(pre)
            self.operators.append(schema.OperatorT(
                opcodeIndex=self.opcode(op.code, version), inputs=ins,
                outputs=[mapping[o] for o in op.outputs],
                builtinOptionsType=op.options_type, builtinOptions=op.options))
        sub = schema.SubGraphT()
        sub.tensors = self.tensors
        sub.inputs = [mapping[i] for i in src._inputs]
        sub.outputs = [mapping[i] for i in outputs]
        sub.operators = self.operators
        sub.name = "main"
        model = schema.ModelT()
        model.version = 3
        model.operatorCodes = self.codes
        model.subgraphs = [sub]
        model.buffers = self.buffers
        model.description = src.description
        return model


# ---------------------------------------------------------------- single layers
#: op kinds :func:`single_layer_builder` knows
SINGLE_LAYER_OPS = ("conv", "depthwise", "fc", "max_pool", "avg_pool", "add", "mul", "concat",
                    "mean", "pad", "softmax", "reshape", "hard_swish", "logistic", "resize_bilinear",
                    "resize_nearest", "depth_to_space", "transpose_conv")


def single_layer_builder(op: str, input_shape: Sequence[int], out_channels: Optional[int] = None,
                         kernel: Any = 3, stride: Any = 1, padding: str = "SAME", groups: int = 1,
                         dilation: Any = 1, depth_multiplier: int = 1, activation: str = "NONE",
                         seed: int = 0) -> ModelBuilder:
    """A builder holding one layer: what the profiler times on each core setup.

    ``op`` is one of :data:`SINGLE_LAYER_OPS`. For ``conv``, ``groups`` equal
    to the input channels (and ``out_channels`` a multiple of it) builds a
    depthwise conv, as TFLite represents it. ``add``/``mul``/``concat`` take
    two inputs of ``input_shape``. ``fc`` takes ``input_shape`` as
    ``[rows, in]`` (or any shape; its last axis is the input width).
    ``resize_bilinear``/``resize_nearest`` scale height and width by
    ``stride`` on the grid ``padding`` names (``SAME``: half-pixel centres,
    ``VALID``: aligned corners, anything else: neither); ``depth_to_space``
    takes ``stride`` as its block size; ``transpose_conv`` upsamples by
    ``stride``.
    """
    shape = tuple(int(s) for s in input_shape)
    if op not in SINGLE_LAYER_OPS:
        raise InputError(f"unknown single-layer op {op!r}; choose one of {', '.join(SINGLE_LAYER_OPS)}")
    b = ModelBuilder(seed, description=f"pipeit single layer: {op}")
    x = b.input("input", shape)
    if op == "conv":
        cout = out_channels if out_channels is not None else shape[-1]
        if groups > 1 and groups == shape[-1] and cout % groups == 0:
            y = b.depthwise_conv2d(x, kernel, stride, padding, activation, cout // groups, dilation)
        else:
            y = b.conv2d(x, cout, kernel, stride, padding, activation, dilation, groups)
    elif op == "depthwise":
        y = b.depthwise_conv2d(x, kernel, stride, padding, activation, depth_multiplier, dilation)
    elif op == "fc":
        y = b.fully_connected(x, out_channels or shape[-1], activation)
    elif op in ("max_pool", "avg_pool"):
        pool = b.max_pool if op == "max_pool" else b.avg_pool
        y = pool(x, kernel, stride, padding)
    elif op in ("add", "mul"):
        x2 = b.input("input_b", shape)
        y = (b.add if op == "add" else b.mul)(x, x2, activation)
    elif op == "concat":
        x2 = b.input("input_b", shape)
        y = b.concatenation([x, x2])
    elif op == "mean":
        y = b.mean(x, (1, 2))
    elif op == "pad":
        k = _pair(kernel)
        y = b.pad(x, [[0, 0], [k[0] // 2, k[0] // 2], [k[1] // 2, k[1] // 2], [0, 0]])
    elif op == "softmax":
        y = b.softmax(x)
    elif op == "reshape":
        y = b.reshape(x, (shape[0], -1))
    elif op == "hard_swish":
        y = b.hard_swish(x)
    elif op in ("resize_bilinear", "resize_nearest"):
        # ``stride`` is the scale: 2 doubles height and width (``padding`` picks the sampling grid:
        # SAME the half-pixel centres, VALID the corners aligned, anything else neither)
        scale = _pair(stride)
        grid = str(padding).upper()
        y = b.resize(x, (shape[1] * scale[0], shape[2] * scale[1]), op.split("_")[1],
                     align_corners=grid == "VALID", half_pixel_centers=grid == "SAME")
    elif op == "depth_to_space":
        y = b.depth_to_space(x, _pair(stride)[0])
    elif op == "transpose_conv":
        y = b.transpose_conv(x, out_channels or shape[-1], kernel, stride, padding, activation)
    else:
        y = b.logistic(x)
    b.output(y)
    return b


def single_layer_model(op: str, input_shape: Sequence[int], out_channels: Optional[int] = None,
                       kernel: Any = 3, stride: Any = 1, padding: str = "SAME", groups: int = 1,
                       dilation: Any = 1, depth_multiplier: int = 1, activation: str = "NONE",
                       int8: bool = False, fp16_weights: bool = False, seed: int = 0) -> bytes:
    """``.tflite`` bytes of a one-layer model (see :func:`single_layer_builder`)."""
    b = single_layer_builder(op, input_shape, out_channels, kernel, stride, padding, groups, dilation,
                             depth_multiplier, activation, seed)
    return b.to_bytes(int8=int8, fp16_weights=fp16_weights)
