"""What the predictors see of a layer: kernel family and the counts each model uses.

The kernel family mirrors how XNNPACK (TFLite's CPU delegate) dispatches a
layer: a 1x1 stride-1 convolution is a plain GEMM over the pixels, any other
convolution an indirect GEMM (IGEMM) over an indirection buffer, a depthwise
convolution its own ``dwconv`` micro-kernel, a fully-connected layer a GEMM
with one row, pools and element-wise ops are memory-bound loops, a
concatenation one strided copy per input. Quantised
(int8/uint8) layers run different micro-kernels, so the dtype is part of the
family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

from pipeit.descriptor import LayerDescriptor

__all__ = [
    "FAMILIES",
    "family_of",
    "GemmShape",
    "gemm_shape",
    "output_pixels",
    "layer_bytes",
    "ceil_div",
]

FAMILIES = ("gemm", "igemm", "dwconv", "fc", "pool", "eltwise", "concat", "other")

_ELTWISE = {
    "ADD", "MUL", "SUB", "DIV", "MAXIMUM", "MINIMUM", "RELU", "RELU6", "LOGISTIC", "TANH",
    "HARD_SWISH", "LEAKY_RELU", "PRELU", "SQUARED_DIFFERENCE",
}
_POOL = {"MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D", "MEAN"}


def ceil_div(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _quantised(d: LayerDescriptor) -> bool:
    return d.dtype in ("int8", "uint8", "int16")


def family_of(d: LayerDescriptor, with_dtype: bool = True) -> str:
    """The micro-kernel family that runs ``d`` (``"igemm"``, ``"dwconv/q"``...)."""
    op = d.op
    if op == "CONV_2D":
        kernel = d.kernel or (1, 1)
        stride = d.stride or (1, 1)
        fam = "gemm" if kernel == (1, 1) and stride == (1, 1) else "igemm"
        if d.groups not in (0, 1):
            fam = "igemm"
    elif op == "DEPTHWISE_CONV_2D":
        fam = "dwconv"
    elif op == "FULLY_CONNECTED":
        fam = "fc"
    elif op in _POOL:
        fam = "pool"
    elif op in _ELTWISE:
        fam = "eltwise"
    elif op == "CONCATENATION":
        fam = "concat"
    else:
        fam = "other"
    if with_dtype and _quantised(d):
        fam += "/q"
    return fam


def output_pixels(d: LayerDescriptor) -> int:
    """Output positions (batch x height x width) of a spatial layer; 1 for a vector."""
    shape = d.output_shape
    if len(shape) == 4:
        return int(shape[0]) * int(shape[1]) * int(shape[2])
    if len(shape) >= 2:
        size = 1
        for dim in shape[:-1]:
            size *= int(dim)
        return size
    return 1


@dataclass(frozen=True)
class GemmShape:
    """The matrix product a layer turns into: ``m`` rows (pixels) x ``n`` columns
    (output channels), reduction length ``k``, ``taps`` kernel positions."""

    m: int
    n: int
    k: int
    taps: int
    rows: int  # output height (what dwconv and pools parallelise over)


def gemm_shape(d: LayerDescriptor) -> GemmShape:
    kernel = d.kernel or (1, 1)
    taps = int(kernel[0]) * int(kernel[1])
    out = d.output_shape
    rows = int(out[1]) if len(out) == 4 else 1
    m = output_pixels(d)
    n = max(d.out_channels, 1)
    if d.op == "FULLY_CONNECTED":
        k = max(d.in_channels if d.inputs else 1, 1)
        # FC over a flattened 4-D input: reduction is the whole input row.
        if d.inputs and len(d.input_shape) > 2:
            k = max(int(math.prod(d.input_shape[1:])), 1)
        return GemmShape(m=max(int(math.prod(out[:-1])) if len(out) > 1 else 1, 1), n=n, k=k, taps=1, rows=1)
    groups = max(int(d.groups or 1), 1)
    k = taps * max(d.in_channels // groups, 1)
    if d.op == "DEPTHWISE_CONV_2D":
        k = taps
    return GemmShape(m=m, n=n, k=k, taps=taps, rows=rows)


def layer_bytes(d: LayerDescriptor) -> Tuple[int, int]:
    """(activation bytes in+out, weight bytes) -- the memory traffic a layer must move."""
    act = d.activation_bytes or sum(t.nbytes for t in d.inputs) + sum(t.nbytes for t in d.outputs)
    return int(act), int(d.weight_bytes)
