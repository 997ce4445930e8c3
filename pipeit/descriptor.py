"""Layer descriptors: what a layer is, independent of where it sits in a model.

A :class:`LayerDescriptor` is the currency between the model graph, the
profiler, the predictors and the DSE. Two layers with equal
:meth:`LayerDescriptor.key` have the same cost on the same core setup, so
the profiler measures each key once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Tuple

__all__ = ["TensorInfo", "LayerDescriptor"]


@dataclass(frozen=True)
class TensorInfo:
    """A tensor crossing between layers: its (original) name, shape and dtype name."""

    name: str
    shape: Tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        size = 1
        for d in self.shape:
            size *= max(int(d), 1)
        return size * _DTYPE_BYTES.get(self.dtype, 4)

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, doc: dict) -> "TensorInfo":
        return cls(str(doc["name"]), tuple(int(d) for d in doc["shape"]), str(doc["dtype"]))


_DTYPE_BYTES = {
    "float32": 4, "float16": 2, "int8": 1, "uint8": 1, "int16": 2,
    "int32": 4, "int64": 8, "bool": 1, "float64": 8,
}

#: a count read back from a file (MACs, bytes) must fit int64: the predictors square and multiply
#: them in numpy, where a hand-edited 1e300 overflowed into warnings and a predictor of nonsense
MAX_COUNT = 2 ** 63 - 1


def _count(value: object, name: str) -> int:
    """``value`` as a count in 0..MAX_COUNT (ValueError naming ``name`` otherwise)."""
    count = int(value)  # type: ignore[call-overload]
    if count != value or not 0 <= count <= MAX_COUNT:
        raise ValueError(f"{name} must be a whole number in 0..2**63-1, got {value!r}")
    return count


@dataclass(frozen=True)
class LayerDescriptor:
    """The op and shapes of one layer, plus the counts the predictors need.

    ``inputs``/``outputs`` are the activation tensors only (weights and
    biases are constants and counted in ``weight_bytes``). Geometric fields
    are ``None`` for ops that do not have them. ``macs`` counts
    multiply-accumulates (a 3x3 conv: 9*Cin*Cout*H*W); ``activation_bytes``
    is the bytes of activation inputs plus outputs.
    """

    op: str
    inputs: Tuple[TensorInfo, ...]
    outputs: Tuple[TensorInfo, ...]
    dtype: str = "float32"
    kernel: Optional[Tuple[int, int]] = None
    stride: Optional[Tuple[int, int]] = None
    padding: Optional[str] = None
    dilation: Optional[Tuple[int, int]] = None
    depth_multiplier: Optional[int] = None
    groups: int = 1
    activation: str = "NONE"
    macs: int = 0
    weight_bytes: int = 0
    activation_bytes: int = 0
    extra: Tuple[Tuple[str, str], ...] = field(default=())
    #: bytes of weights a worker running the layer holds, where that differs from ``weight_bytes`` (see
    #: :attr:`held_bytes`); None: the same (weights the layer reads straight from the file)
    held_weight_bytes: Optional[int] = None

    @property
    def held_bytes(self) -> int:
        """Weight bytes a worker holds for this layer: what a memory limit counts.

        Weights behind ``DEQUANTIZE`` or ``DENSIFY`` are held twice: in the
        stored form (the model file the runtime maps) and in the dense
        float32 form the runtime makes at load for the layer to compute
        with; the stored size alone (``weight_bytes``) under-counts an fp16
        model 2-3x and a pruned one more.
        """
        return self.weight_bytes if self.held_weight_bytes is None else self.held_weight_bytes

    # ---- derived views the predictors use -------------------------------------------
    @property
    def input_shape(self) -> Tuple[int, ...]:
        return self.inputs[0].shape if self.inputs else ()

    @property
    def output_shape(self) -> Tuple[int, ...]:
        return self.outputs[0].shape if self.outputs else ()

    @property
    def in_channels(self) -> int:
        shape = self.input_shape
        return int(shape[-1]) if shape else 0

    @property
    def out_channels(self) -> int:
        shape = self.output_shape
        return int(shape[-1]) if shape else 0

    def key(self) -> tuple:
        """Identity for deduplication: everything except tensor names."""
        return (
            self.op,
            tuple((t.shape, t.dtype) for t in self.inputs),
            tuple((t.shape, t.dtype) for t in self.outputs),
            self.dtype, self.kernel, self.stride, self.padding, self.dilation,
            self.depth_multiplier, self.groups, self.activation, self.weight_bytes,
            self.extra,
        )

    def key_string(self) -> str:
        """A stable, readable text form of :meth:`key` (used in profile CSVs)."""
        ins = ";".join("x".join(map(str, t.shape)) + ":" + t.dtype for t in self.inputs)
        outs = ";".join("x".join(map(str, t.shape)) + ":" + t.dtype for t in self.outputs)
        parts = [self.op, f"in={ins}", f"out={outs}"]
        for name in ("kernel", "stride", "dilation"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value[0]}x{value[1]}")
        if self.padding:
            parts.append(f"pad={self.padding}")
        if self.depth_multiplier is not None:
            parts.append(f"dm={self.depth_multiplier}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.activation != "NONE":
            parts.append(f"act={self.activation}")
        parts.append(f"wbytes={self.weight_bytes}")
        parts.extend(f"{k}={v}" for k, v in self.extra)
        return "|".join(parts)

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["inputs"] = [t.to_json() for t in self.inputs]
        doc["outputs"] = [t.to_json() for t in self.outputs]
        doc["extra"] = [list(kv) for kv in self.extra]
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> "LayerDescriptor":
        def pair(value):
            return None if value is None else (int(value[0]), int(value[1]))

        return cls(
            op=str(doc["op"]),
            inputs=tuple(TensorInfo.from_json(t) for t in doc["inputs"]),
            outputs=tuple(TensorInfo.from_json(t) for t in doc["outputs"]),
            dtype=str(doc.get("dtype", "float32")),
            kernel=pair(doc.get("kernel")),
            stride=pair(doc.get("stride")),
            padding=doc.get("padding"),
            dilation=pair(doc.get("dilation")),
            depth_multiplier=doc.get("depth_multiplier"),
            groups=int(doc.get("groups", 1)),
            activation=str(doc.get("activation", "NONE")),
            macs=_count(doc.get("macs", 0), "macs"),
            weight_bytes=_count(doc.get("weight_bytes", 0), "weight_bytes"),
            activation_bytes=_count(doc.get("activation_bytes", 0), "activation_bytes"),
            extra=tuple((str(k), str(v)) for k, v in doc.get("extra", [])),
            held_weight_bytes=(None if doc.get("held_weight_bytes") is None
                               else _count(doc["held_weight_bytes"], "held_weight_bytes")),
        )
