"""From a TFLite layer to what a GPU kernel needs: kind, geometry, constants -- or why not.

:func:`lower_layer` reads one :class:`pipeit.graph.Layer` of a parsed model
and returns a :class:`LayerSpec`: the kernel family (``conv``, ``gemm`` for
FULLY_CONNECTED, ``depthwise``, ``pool``, ...), its shape constants, the
fused activation, and its constant operands as float32 arrays (weights
stored as float16 behind a folded ``DEQUANTIZE`` are converted here). A
layer the GPU path does not run raises :class:`Unsupported` with the reason;
:func:`support_table` gives every layer's verdict, so the DSE can give such
layers an infinite GPU time and keep them on a CPU cluster.

Unsupported on purpose: anything not float32 (int8/uint8 activations or
weights: quantised kernels are a CPU job here), ops without a template,
MEAN over axes other than H and W, non-zero PADV2 constants, slices with
run-time bounds or STRIDED_SLICE's ellipsis and new-axis masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ai_edge_litert import schema_py_generated as schema
from pipeit.errors import PipeitError
from pipeit.graph import Layer, LayerGraph
from pipeit.modelfile import dtype_name, ints, op_name
from pipeit.sparsity import densify

__all__ = [
    "Unsupported",
    "LayerSpec",
    "lower_layer",
    "support_table",
    "SUPPORTED_OPS",
    "same_padding",
    "GEOMETRY_KEYS",
    "PADDING_KEYS",
]

_BINARY = ("ADD", "MUL", "SUB", "MAXIMUM", "MINIMUM", "PRELU")
_UNARY = ("RELU", "RELU6", "RELU_N1_TO_1", "TANH", "LOGISTIC", "HARD_SWISH")
#: data movement run as a gather through an index table made on the host (:func:`_gather_table`): numpy
#: applies the op to the flat indices (TFLite follows numpy for these)
_GATHERED = ("STRIDED_SLICE", "SLICE", "TRANSPOSE", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE", "MIRROR_PAD")
SUPPORTED_OPS = frozenset(
    ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "MAX_POOL_2D",
     "MEAN", "CONCATENATION", "PAD", "RESHAPE", "SQUEEZE", "SOFTMAX", "RESIZE_BILINEAR",
     "RESIZE_NEAREST_NEIGHBOR") + _GATHERED + _BINARY + _UNARY
)
_ACTS = {v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")}
_NUMPY = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64,
          "int8": np.int8, "uint8": np.uint8}


_CONV_KEYS = ("N", "H", "W", "CIN", "OH", "OW", "COUT", "KH", "KW", "SH", "SW", "DH", "DW", "PT", "PL", "GROUPS")
#: the shape constants each kind's :attr:`LayerSpec.geometry` holds (kinds not named hold none): what a
#: tuning file's history must give for the cost model to read a layer it has not lowered itself
GEOMETRY_KEYS: Dict[str, Tuple[str, ...]] = {
    "conv": _CONV_KEYS,
    "depthwise": _CONV_KEYS + ("DM",),
    "transpose_conv": ("N", "H", "W", "CIN", "OH", "OW", "COUT", "KH", "KW", "SH", "SW", "PT", "PL"),
    "gemm": ("M", "N", "K"),
    "pool": ("N", "H", "W", "C", "OH", "OW", "KH", "KW", "SH", "SW", "PT", "PL"),
    "mean": ("N", "H", "W", "C"),
    **{kind: () for kind in ("binary", "unary", "concat", "pad", "reshape", "resize", "gather", "softmax")},
}
#: geometry entries that may be 0 (padding before); every other one is a size, stride or count >= 1
PADDING_KEYS = frozenset(("PT", "PL"))


class Unsupported(PipeitError):
    """This layer has no GPU kernel here (it runs on a CPU cluster)."""


@dataclass(frozen=True, eq=False)
class LayerSpec:
    """One layer, ready for a kernel template.

    ``inputs``/``outputs`` are model tensor indices of activations (a
    constant operand of a binary op is in ``consts`` instead, under
    ``"b"``); ``geometry`` holds the template's shape constants;
    ``in_shapes``/``out_shape`` are the activation shapes.
    """

    layer: int
    op: str
    kind: str
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    in_shapes: Tuple[Tuple[int, ...], ...]
    out_shape: Tuple[int, ...]
    activation: str = "NONE"
    geometry: Dict[str, int] = field(default_factory=dict)
    attrs: Dict[str, object] = field(default_factory=dict)
    consts: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def out_size(self) -> int:
        return int(np.prod(self.out_shape)) if self.out_shape else 1


def same_padding(size: int, kernel: int, stride: int, dilation: int, padding: str) -> Tuple[int, int]:
    """(output size, padding before) as TFLite computes them for SAME/VALID."""
    eff = (kernel - 1) * dilation + 1
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + eff - size, 0)
        return out, total // 2
    out = -(-(size - eff + 1) // stride)
    return out, 0


class _Model:
    """Read-only helpers over one parsed model (tensor shapes, constants, producers)."""

    def __init__(self, model: "schema.ModelT") -> None:
        self.model = model
        self.sub = model.subgraphs[0]
        self.producer: Dict[int, int] = {}
        for k, op in enumerate(self.sub.operators):
            for t in ints(op.outputs):
                self.producer[t] = k

    def shape(self, t: int) -> Tuple[int, ...]:
        return tuple(ints(self.sub.tensors[t].shape))

    def dtype(self, t: int) -> str:
        return dtype_name(self.sub.tensors[t].type)

    def const(self, t: int) -> Optional[np.ndarray]:
        """The value of a constant tensor, following a DEQUANTIZE of fp16 weights or a DENSIFY of
        sparse ones; else None."""
        if t < 0:
            return None
        tensor = self.sub.tensors[t]
        buf = int(tensor.buffer)
        data = self.model.buffers[buf].data if buf else None
        if data is not None and len(data) > 0:
            kind = self.dtype(t)
            if kind not in _NUMPY:
                raise Unsupported(f"constant of type {kind}")
            raw = np.frombuffer(np.asarray(data, dtype=np.uint8).tobytes(), dtype=_NUMPY[kind])
            if tensor.sparsity is not None:
                return densify(self.shape(t), raw, tensor.sparsity)
            return raw.reshape(self.shape(t)).copy()
        k = self.producer.get(t)
        if k is not None:
            op = self.sub.operators[k]
            if op_name(self.model.operatorCodes[int(op.opcodeIndex)]) == "DENSIFY":
                return self.const(ints(op.inputs)[0])
            if op_name(self.model.operatorCodes[int(op.opcodeIndex)]) == "DEQUANTIZE":
                src = ints(op.inputs)[0]
                value = self.const(src)
                if value is not None and value.dtype == np.float16:
                    return value.astype(np.float32)
                if value is not None:
                    raise Unsupported(f"weights dequantised from {value.dtype} (quantised weights)")
        return None


#: fused activations TFLite's float kernels clamp to; every other *known* one (TANH, SIGN_BIT) they ignore
_CLAMPS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")
#: fused activations TFLite's float kernels leave unbounded: CalculateActivationRange gives them
#: (lowest, max), so CONV_2D, DEPTHWISE_CONV_2D, ADD, MUL, pooling, TRANSPOSE_CONV... output the raw value
_IGNORED_BY_TFLITE = ("TANH", "SIGN_BIT")


def _activation(options) -> str:
    """The epilogue the kernel must apply: what TFLite's float kernel does, not what the option names.

    TFLite applies a fused TANH or SIGN_BIT nowhere in its float kernels (ops
    that accept one at all leave the output as is, FULLY_CONNECTED refuses
    the model), so the GPU must not apply it either or its outputs would
    differ from the CPU stages'. An activation value the schema does not
    know stays unsupported.
    """
    value = int(getattr(options, "fusedActivationFunction", 0) or 0) if options is not None else 0
    name = _ACTS.get(value, str(value))
    if name in _IGNORED_BY_TFLITE:
        return "NONE"
    if name not in _CLAMPS:
        raise Unsupported(f"fused activation {name}")
    return name


def _pad4(shape: Sequence[int]) -> Tuple[int, ...]:
    if len(shape) > 4:
        raise Unsupported(f"rank-{len(shape)} tensor (kernels handle rank <= 4)")
    return (1,) * (4 - len(shape)) + tuple(int(d) for d in shape)


def _broadcast_strides(shape: Sequence[int], out: Sequence[int]) -> Tuple[int, ...]:
    s = _pad4(shape)
    o = _pad4(out)
    strides = [0, 0, 0, 0]
    step = 1
    for k in range(3, -1, -1):
        if s[k] == o[k]:
            strides[k] = step
        elif s[k] != 1:
            raise Unsupported(f"shapes {tuple(shape)} and {tuple(out)} do not broadcast")
        step *= s[k]
    return tuple(strides)


#: the most elements a tensor the kernels read or write may have: they index it with a 32-bit ``int``
MAX_ELEMENTS = 2**31 - 1


def lower_layer(model: "schema.ModelT", layer: Layer, helper: Optional[_Model] = None) -> LayerSpec:
    """The :class:`LayerSpec` of ``layer``, or :class:`Unsupported` with the reason."""
    spec = _lower(model, layer, helper or _Model(model))
    sizes = [int(np.prod(s)) for s in spec.in_shapes] + [spec.out_size]
    sizes += [int(v.size) for v in spec.consts.values()]
    if max(sizes) > MAX_ELEMENTS:
        raise Unsupported(f"{spec.op} has a tensor of {max(sizes)} elements; the kernels index with 32-bit "
                          f"int (at most {MAX_ELEMENTS})")
    return spec


def _lower(model: "schema.ModelT", layer: Layer, m: _Model) -> LayerSpec:
    op = m.sub.operators[layer.op_index]
    name = op_name(model.operatorCodes[int(op.opcodeIndex)])
    if name not in SUPPORTED_OPS:
        raise Unsupported(f"{name} has no GPU kernel")
    ins = ints(op.inputs)
    outs = ints(op.outputs)
    for t in outs:
        if m.dtype(t) != "float32":
            raise Unsupported(f"{name} produces {m.dtype(t)} (only float32 layers run on the GPU)")
    act_inputs = [t for t in ins if t >= 0 and m.const(t) is None]
    for t in act_inputs:
        if m.dtype(t) != "float32":
            raise Unsupported(f"{name} reads {m.dtype(t)} (only float32 layers run on the GPU)")
    options = op.builtinOptions
    out_shape = m.shape(outs[0])
    base = dict(layer=layer.index, op=name, inputs=tuple(act_inputs), outputs=tuple(outs[:1]),
                in_shapes=tuple(m.shape(t) for t in act_inputs), out_shape=out_shape)
    if len(outs) != 1:
        raise Unsupported(f"{name} with {len(outs)} outputs")

    if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return _lower_conv(m, name, ins, options, base)
    if name == "TRANSPOSE_CONV":
        return _lower_transpose_conv(m, ins, options, base)
    if name == "FULLY_CONNECTED":
        w = m.const(ins[1])
        if w is None or w.ndim != 2 or w.dtype != np.float32:
            raise Unsupported("FULLY_CONNECTED without constant float weights")
        units, depth = w.shape
        total = int(np.prod(m.shape(ins[0])))
        if total % depth:
            raise Unsupported("FULLY_CONNECTED input size is not a multiple of its depth")
        bias = m.const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
        bias = np.zeros(units, np.float32) if bias is None else bias.astype(np.float32).reshape(-1)
        geometry = {"M": total // depth, "N": int(units), "K": int(depth)}
        return LayerSpec(kind="gemm", activation=_activation(options), geometry=geometry,
                         consts={"b": np.ascontiguousarray(w.T), "bias": bias}, **base)
    if name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        n, h, w_, c = _pad4(m.shape(ins[0]))
        kh, kw = int(options.filterHeight), int(options.filterWidth)
        sh, sw = int(options.strideH), int(options.strideW)
        padding = "SAME" if int(options.padding) == schema.Padding.SAME else "VALID"
        oh, pt = same_padding(h, kh, sh, 1, padding)
        ow, pl = same_padding(w_, kw, sw, 1, padding)
        geometry = dict(N=n, H=h, W=w_, C=c, OH=oh, OW=ow, KH=kh, KW=kw, SH=sh, SW=sw, PT=pt, PL=pl)
        return LayerSpec(kind="pool", activation=_activation(options), geometry=geometry,
                         attrs={"pool": "max" if name == "MAX_POOL_2D" else "avg"}, **base)
    if name == "MEAN":
        axes = m.const(ins[1])
        shape = m.shape(ins[0])
        if axes is None or len(shape) != 4:
            raise Unsupported("MEAN needs constant axes and a rank-4 input")
        normalised = sorted({int(a) % 4 for a in np.asarray(axes).reshape(-1)})
        if normalised != [1, 2]:
            raise Unsupported(f"MEAN over axes {normalised} (only H and W run on the GPU)")
        n, h, w_, c = shape
        return LayerSpec(kind="mean", geometry=dict(N=n, H=h, W=w_, C=c), **base)
    if name in _BINARY:
        a_t, b_t = ins[0], ins[1]
        a_c, b_c = m.const(a_t), m.const(b_t)
        if a_c is not None:
            raise Unsupported(f"{name} with a constant first operand")
        consts = {}
        if b_c is not None:
            if b_c.dtype != np.float32:
                raise Unsupported(f"{name} with a {b_c.dtype} constant")
            consts["b"] = b_c
        b_shape = m.shape(b_t)
        act = _activation(options) if name != "PRELU" else "NONE"
        attrs = {"a_strides": _broadcast_strides(m.shape(a_t), out_shape),
                 "b_strides": _broadcast_strides(b_shape, out_shape),
                 "out4": _pad4(out_shape), "const_b": b_c is not None}
        return LayerSpec(kind="binary", activation=act, attrs=attrs, consts=consts, **base)
    if name in _UNARY:
        return LayerSpec(kind="unary", **base)
    if name == "CONCATENATION":
        axis = int(options.axis) % len(out_shape)
        if _activation(options) != "NONE":
            raise Unsupported("CONCATENATION with a fused activation")
        if len(act_inputs) != len([t for t in ins if t >= 0]):
            raise Unsupported("CONCATENATION of a constant")
        return LayerSpec(kind="concat", attrs={"axis": axis}, **base)
    if name == "PAD":
        pads = m.const(ins[1])
        if pads is None:
            raise Unsupported("PAD with run-time paddings")
        pads = np.asarray(pads).reshape(-1, 2)
        in4 = _pad4(m.shape(ins[0]))
        before = (0,) * (4 - pads.shape[0]) + tuple(int(p) for p in pads[:, 0])
        return LayerSpec(kind="pad", attrs={"in4": in4, "out4": _pad4(out_shape), "before": before},
                         **base)
    if name in ("RESHAPE", "SQUEEZE"):
        return LayerSpec(kind="reshape", **{**base, "inputs": tuple(act_inputs[:1]),
                                            "in_shapes": base["in_shapes"][:1]})
    if name in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"):
        in_shape = m.shape(ins[0])
        if len(in_shape) != 4 or len(out_shape) != 4:
            raise Unsupported(f"{name} of a rank-{len(in_shape)} tensor")
        align = bool(getattr(options, "alignCorners", False))
        half = bool(getattr(options, "halfPixelCenters", False))
        mode = "bilinear" if name == "RESIZE_BILINEAR" else "nearest"
        return LayerSpec(kind="resize", attrs={"mode": mode, "align_corners": align, "half_pixel_centers": half},
                         **{**base, "inputs": tuple(act_inputs[:1]), "in_shapes": base["in_shapes"][:1]})
    if name in _GATHERED:
        table = _gather_table(m, name, ins, options)
        if table.size != int(np.prod(out_shape)):
            raise Unsupported(f"{name} gives {table.size} elements where its output holds {int(np.prod(out_shape))}")
        return LayerSpec(kind="gather", consts={"index": table},
                         **{**base, "inputs": tuple(act_inputs[:1]), "in_shapes": base["in_shapes"][:1]})
    if name == "SOFTMAX":
        depth = out_shape[-1] if out_shape else 1
        # the runtime's own beta, 0 included (a uniform distribution): "or 1.0" turned 0 into a plain softmax
        beta = 1.0 if getattr(options, "beta", None) is None else float(options.beta)
        return LayerSpec(kind="softmax", attrs={"rows": int(np.prod(out_shape)) // depth,
                                                "depth": int(depth), "beta": beta}, **base)
    raise Unsupported(f"{name} has no GPU kernel")  # pragma: no cover - SUPPORTED_OPS guards


def _lower_transpose_conv(m: _Model, ins: List[int], options, base: dict) -> LayerSpec:
    """TRANSPOSE_CONV: operands (output shape, weights [Cout, KH, KW, Cin], input, bias?).

    Its padding is TFLite's: that of a conv from the output back to the
    input (:func:`same_padding` on the output size), the part before taken.
    """
    w = m.const(ins[1])
    if w is None or w.dtype != np.float32 or w.ndim != 4:
        raise Unsupported("TRANSPOSE_CONV without constant float weights")
    n, h, w_, cin = _pad4(m.shape(ins[2]))
    out = base["out_shape"]
    if len(out) != 4 or m.const(ins[0]) is None:
        raise Unsupported("TRANSPOSE_CONV with a run-time output shape")
    cout, kh, kw, wcin = (int(v) for v in w.shape)
    if wcin != cin or out[3] != cout:
        raise Unsupported(f"TRANSPOSE_CONV weights {tuple(w.shape)} do not fit {cin} -> {out[3]} channels")
    bias = m.const(ins[3]) if len(ins) > 3 and ins[3] >= 0 else None
    bias = np.zeros(cout, np.float32) if bias is None else bias.astype(np.float32).reshape(-1)
    padding = "SAME" if int(options.padding) == schema.Padding.SAME else "VALID"
    sh, sw = int(options.strideH), int(options.strideW)
    _, pt = same_padding(int(out[1]), kh, sh, 1, padding)
    _, pl = same_padding(int(out[2]), kw, sw, 1, padding)
    geometry = dict(N=n, H=h, W=w_, CIN=cin, OH=int(out[1]), OW=int(out[2]), COUT=cout, KH=kh, KW=kw,
                    SH=sh, SW=sw, PT=pt, PL=pl)
    return LayerSpec(kind="transpose_conv", activation=_activation(options), geometry=geometry,
                     consts={"w": np.ascontiguousarray(w), "bias": bias}, **base)


def _gather_table(m: _Model, name: str, ins: List[int], options) -> np.ndarray:
    """For each output element of a slice or transpose, the flat index of the input element it copies.

    The op is applied to the input's flat indices on the host (numpy's
    slicing rules are TFLite's for these ops), so the kernel is one gather.
    """
    shape = m.shape(ins[0])
    if name in ("SPACE_TO_DEPTH", "DEPTH_TO_SPACE"):
        # one is the other's inverse: space_to_depth reads input blocks (n, h/B, B, w/B, B, c) in the order
        # (n, h/B, w/B, B, B, c); depth_to_space reads input (n, h, w, B, B, c/B^2) in the order (n, h, B, w, B, c)
        block = int(getattr(options, "blockSize", 0) or 0)
        n, h, w, c = _pad4(shape)
        to_depth = name == "SPACE_TO_DEPTH"
        if len(shape) != 4 or block < 1 or (h % block or w % block if to_depth else c % (block * block)):
            raise Unsupported(f"{name} of {tuple(shape)} with block size {block}")
        flat = np.arange(n * h * w * c, dtype=np.int64)
        if to_depth:
            picked = flat.reshape(n, h // block, block, w // block, block, c).transpose(0, 1, 3, 2, 4, 5)
        else:
            picked = flat.reshape(n, h, w, block, block, c // (block * block)).transpose(0, 1, 3, 2, 4, 5)
        return np.ascontiguousarray(picked, dtype=np.int32).reshape(-1)
    operands = [m.const(t) if t >= 0 else None for t in ins[1:]]
    if any(v is None for v in operands):
        raise Unsupported(f"{name} with run-time {'perm' if name == 'TRANSPOSE' else 'bounds'}")
    flat = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    values = [np.asarray(v).reshape(-1).astype(np.int64) for v in operands]
    try:
        if name == "TRANSPOSE":
            picked = flat.transpose([int(p) % len(shape) for p in values[0]])
        elif name == "MIRROR_PAD":
            mode = "symmetric" if int(getattr(options, "mode", 0) or 0) == schema.MirrorPadMode.SYMMETRIC else "reflect"
            pads = values[0].reshape(-1, 2)
            picked = np.pad(flat, [(int(a), int(b)) for a, b in pads], mode=mode)
        elif name == "SLICE":
            begin, size = values
            picked = flat[tuple(slice(int(b), None if int(n) == -1 else int(b) + int(n)) for b, n in zip(begin, size))]
        else:
            if getattr(options, "ellipsisMask", 0) or getattr(options, "newAxisMask", 0) or getattr(options, "offset", False):
                raise Unsupported("STRIDED_SLICE with an ellipsis, a new axis or offset bounds")
            begin, end, strides = values
            masks = [int(getattr(options, k, 0) or 0) for k in ("beginMask", "endMask", "shrinkAxisMask")]
            parts: List[object] = []
            for axis in range(len(shape)):
                if masks[2] >> axis & 1:
                    parts.append(int(begin[axis]))
                else:
                    parts.append(slice(None if masks[0] >> axis & 1 else int(begin[axis]),
                                       None if masks[1] >> axis & 1 else int(end[axis]), int(strides[axis])))
            picked = flat[tuple(parts)]
    except (IndexError, ValueError) as err:
        raise Unsupported(f"{name}: {err}") from None
    if flat.size >= 2**31:
        raise Unsupported(f"{name} of {flat.size} elements (the index table is int32)")
    return np.ascontiguousarray(picked, dtype=np.int32).reshape(-1)


def _lower_conv(m: _Model, name: str, ins: List[int], options, base: dict) -> LayerSpec:
    w = m.const(ins[1])
    if w is None or w.dtype != np.float32 or w.ndim != 4:
        raise Unsupported(f"{name} without constant float weights")
    bias = m.const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
    n, h, w_, cin = m.shape(ins[0])
    kh, kw = int(w.shape[1]), int(w.shape[2])
    sh, sw = int(options.strideH), int(options.strideW)
    dh, dw = int(options.dilationHFactor or 1), int(options.dilationWFactor or 1)
    padding = "SAME" if int(options.padding) == schema.Padding.SAME else "VALID"
    oh, pt = same_padding(h, kh, sh, dh, padding)
    ow, pl = same_padding(w_, kw, sw, dw, padding)
    if (n, oh, ow) != tuple(base["out_shape"][:3]):
        raise Unsupported(f"{name} output shape {base['out_shape']} disagrees with its geometry")
    if name == "CONV_2D":
        cout, cin_g = int(w.shape[0]), int(w.shape[3])
        groups = cin // cin_g
    else:
        cout, groups = int(w.shape[3]), cin
    bias = np.zeros(cout, np.float32) if bias is None else bias.astype(np.float32).reshape(-1)
    geometry = dict(N=n, H=h, W=w_, CIN=cin, OH=oh, OW=ow, COUT=cout, KH=kh, KW=kw, SH=sh, SW=sw,
                    DH=dh, DW=dw, PT=pt, PL=pl, GROUPS=groups)
    if name == "DEPTHWISE_CONV_2D":
        geometry["DM"] = cout // cin
        return LayerSpec(kind="depthwise", activation=_activation(options), geometry=geometry,
                         consts={"w": w.reshape(kh, kw, cout), "bias": bias}, **base)
    return LayerSpec(kind="conv", activation=_activation(options), geometry=geometry,
                     consts={"w": w, "bias": bias}, **base)


def support_table(model: "schema.ModelT", graph: LayerGraph) -> List[Optional[str]]:
    """Per layer: ``None`` when the GPU runs it, else the reason it does not."""
    helper = _Model(model)
    result: List[Optional[str]] = []
    for layer in graph.layers:
        try:
            lower_layer(model, layer, helper)
            result.append(None)
        except Unsupported as err:
            result.append(str(err))
    return result
