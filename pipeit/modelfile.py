"""Reading and validating ``.tflite`` files.

Reading the bytes is kept apart from parsing them (:func:`read_model_bytes`,
:func:`parse_model`) so tests and callers that hold a model in memory use the
same checks as a file on disk. Everything pipeit does afterwards (graph,
split, profiling) indexes tensors, buffers and operator codes freely, so a
model is validated here once, up front: a corrupt or hostile file becomes one
clear :class:`~pipeit.errors.ModelError` line and can never crash later code.

What is refused, and why:

* empty, truncated or random bytes, and files that are not TFLite (no
  ``TFL3`` identifier): :class:`ModelError`;
* several subgraphs or control-flow operators (``WHILE``, ``IF``,
  ``CALL_ONCE``, ...): :class:`UnsupportedModelError` -- a pipeline splits one
  straight-line graph of layers;
* custom operators the runtime cannot resolve (custom ops outside the stock
  list are tried in the runtime once): it would refuse them anyway, later
  and less clearly; the error names the op;
* builtin op codes this schema has no name for (a newer converter's ops):
  no runtime built against it registers them;
* an operator that reads and writes the same tensor, which the runtime
  refuses when allocating;
* a constant (weight) tensor listed as a model output: stages exchange and
  return only tensors an operator computes, so no stage would produce it.

Whatever else the runtime refuses (op versions it does not register,
options or shapes its kernels reject) is found by building the model once
in it: :func:`pipeit.runtime.check_loads`, which the commands that rely on
the model running call up front -- not here, since reading a model must
stay cheap.

Tensor names are compared as the runtime reports them
(:func:`tensor_name`): it reads them as C strings, so a name is cut at its
first NUL byte.

Buffers stored outside the flatbuffer (``offset``/``size``, used by models
over 2 GB or written with external data) are copied into ``data`` here, so
the returned :class:`ModelT` is self-contained and can be re-serialised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Union

import numpy as np

from ai_edge_litert import schema_py_generated as schema
from pipeit.errors import ModelError, UnsupportedModelError
from pipeit.sparsity import sparse_levels

__all__ = [
    "ModelT",
    "ModelSource",
    "FILE_IDENTIFIER",
    "CONTROL_FLOW_OPS",
    "RUNTIME_CUSTOM_OPS",
    "read_model_bytes",
    "parse_model",
    "read_model",
    "serialize_model",
    "builtin_code",
    "op_name",
    "dtype_name",
    "ints",
    "tensor_name",
    "utf8_name",
    "check_io_names",
    "DTYPE_NAMES",
]

ModelT = schema.ModelT
ModelSource = Union[str, Path, bytes, bytearray, memoryview]

#: the flatbuffer file identifier of every TFLite model (bytes 4..8)
FILE_IDENTIFIER = b"TFL3"

_OP_NAMES: Dict[int, str] = {
    value: name
    for name, value in vars(schema.BuiltinOperator).items()
    if not name.startswith("_") and isinstance(value, int)
}

#: operators that call other subgraphs; a pipeline cannot cut through them
CONTROL_FLOW_OPS = frozenset(
    {"WHILE", "IF", "CALL", "CALL_ONCE", "STABLEHLO_WHILE", "STABLEHLO_CASE"}
)

#: custom operators the stock op resolver of TFLite/LiteRT registers itself
#: (``register.cc``: ``AddCustom``); a model with any other custom op is
#: loaded once in the runtime to see whether something (a delegate) runs it.
RUNTIME_CUSTOM_OPS = frozenset({"TFLite_Detection_PostProcess", "Mfcc", "AudioSpectrogram"})

#: TensorType value -> numpy-style dtype name (as in TensorInfo.dtype)
DTYPE_NAMES: Dict[int, str] = {
    schema.TensorType.FLOAT32: "float32",
    schema.TensorType.FLOAT16: "float16",
    schema.TensorType.INT32: "int32",
    schema.TensorType.UINT8: "uint8",
    schema.TensorType.INT64: "int64",
    schema.TensorType.STRING: "string",
    schema.TensorType.BOOL: "bool",
    schema.TensorType.INT16: "int16",
    schema.TensorType.COMPLEX64: "complex64",
    schema.TensorType.INT8: "int8",
    schema.TensorType.FLOAT64: "float64",
    schema.TensorType.COMPLEX128: "complex128",
    schema.TensorType.UINT64: "uint64",
    schema.TensorType.RESOURCE: "resource",
    schema.TensorType.VARIANT: "variant",
    schema.TensorType.UINT32: "uint32",
    schema.TensorType.UINT16: "uint16",
    schema.TensorType.INT4: "int4",
    schema.TensorType.BFLOAT16: "bfloat16",
}
for _name, _value in vars(schema.TensorType).items():  # newer schema types, named as-is
    if not _name.startswith("_") and isinstance(_value, int) and _value not in DTYPE_NAMES:
        DTYPE_NAMES[_value] = _name.lower()

#: types the runtime's Python API can hand to numpy (``get_input_details`` raises on the others,
#: bfloat16 and types newer than the API); a model input or output of any other type is refused
NUMPY_DTYPES = frozenset({
    "float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
    "uint64", "bool", "complex64", "complex128", "string", "int4", "resource", "variant",
})

# bytes per element of types whose constant buffers can be size-checked
_ITEMSIZE = {
    "float32": 4, "float16": 2, "int32": 4, "uint8": 1, "int64": 8, "bool": 1,
    "int16": 2, "complex64": 8, "int8": 1, "float64": 8, "complex128": 16,
    "uint64": 8, "uint32": 4, "uint16": 2, "bfloat16": 2,
}


def builtin_code(opcode: "schema.OperatorCodeT") -> int:
    """The operator's builtin code, whichever of the two schema fields holds it.

    Old models store codes < 127 only in ``deprecatedBuiltinCode``; new ones
    store every code in ``builtinCode`` (and a placeholder in the old field).
    """
    return max(int(opcode.builtinCode), int(opcode.deprecatedBuiltinCode))


def op_name(opcode: "schema.OperatorCodeT") -> str:
    """Builtin op name as in the schema (``CONV_2D``), or ``CUSTOM:<name>``."""
    code = builtin_code(opcode)
    if code == schema.BuiltinOperator.CUSTOM:
        return f"CUSTOM:{_text(opcode.customCode) or '?'}"
    return _OP_NAMES.get(code, f"BUILTIN_{code}")


def tensor_name(tensor: "schema.TensorT") -> str:
    """The tensor's name as the runtime reports it ("" when unnamed).

    The runtime reads names as C strings, so everything from the first NUL
    byte on is invisible to it; stages hand tensors over by the names the
    runtime reports, so pipeit must use the same ones (and check them for
    clashes after the cut, not before).
    """
    return _text(tensor.name).split("\x00", 1)[0]


def ints(values) -> List[int]:
    """An index vector of the object API (None, list or numpy array) as a list of ints."""
    if values is None:
        return []
    return [int(v) for v in values]


def dtype_name(tensor_type: int) -> str:
    """numpy-style name of a TFLite TensorType value."""
    return DTYPE_NAMES.get(int(tensor_type), f"type{int(tensor_type)}")


def _text(value: Union[None, str, bytes]) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# ---- reading -----------------------------------------------------------------------------

def read_model_bytes(path: Union[str, Path]) -> bytes:
    """The raw bytes of a model file; a missing or unreadable file is a ModelError."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such model file")
    if not p.is_file():
        raise ModelError(f"{p}: not a regular file")
    try:
        return p.read_bytes()
    except OSError as err:
        raise ModelError(f"{p}: cannot read: {err.strerror or err}") from err


def read_model(source: ModelSource) -> "schema.ModelT":
    """Read and validate a model from a path or from bytes (see :func:`parse_model`)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return parse_model(bytes(source))
    if isinstance(source, (str, Path)):
        return parse_model(read_model_bytes(source), where=str(source))
    raise ModelError(f"cannot read a model from a {type(source).__name__}")


def parse_model(data: bytes, where: str = "model bytes") -> "schema.ModelT":
    """Parse TFLite bytes into the schema's object API and validate them.

    ``where`` names the source in error messages. Raises :class:`ModelError`
    for bytes that are not a readable TFLite model and
    :class:`UnsupportedModelError` for valid models pipeit cannot split.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) == 0:
        raise ModelError(f"{where}: empty file (0 bytes), not a TFLite model")
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise ModelError(f"{where}: not a TFLite model (no 'TFL3' file identifier)")
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as err:  # the generated reader raises whatever the bytes provoke
        raise ModelError(
            f"{where}: corrupt or truncated TFLite model ({type(err).__name__} while parsing)"
        ) from err
    _validate(model, data, where)
    return model


def serialize_model(model: "schema.ModelT") -> bytes:
    """Pack a ModelT back into ``.tflite`` bytes (with the TFL3 identifier)."""
    import copy

    import flatbuffers

    packed = copy.copy(model)  # shallow: only the buffer list is swapped below
    packed.buffers = [_AlignedBuffer.wrap(b) for b in (model.buffers or [])]
    # size the builder up front: growing by doubling would copy every weight many times
    payload = sum(len(b.data) + 16 for b in packed.buffers if b.data is not None)
    builder = flatbuffers.Builder(payload + (1 << 20))
    root = packed.Pack(builder)
    builder.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


class _AlignedBuffer(schema.BufferT):
    """A BufferT whose data vector starts on a 16-byte boundary when packed.

    The schema declares ``data: [ubyte] (force_align: 16)`` but the generated
    Python packer aligns bytes to 1; kernels that read weights in place (and
    32-bit ARM loads) want them aligned, as the converter writes them.
    """

    @classmethod
    def wrap(cls, buffer: "schema.BufferT") -> "schema.BufferT":
        out = cls()
        if buffer.data is not None and len(buffer.data):
            out.data = np.ascontiguousarray(np.asarray(buffer.data, dtype=np.uint8).reshape(-1))
        out.offset = buffer.offset
        out.size = buffer.size
        return out

    def Pack(self, builder):  # noqa: N802 (the generated API's name)
        if self.data is not None and len(self.data):
            builder.Prep(16, len(self.data))
        return super().Pack(builder)


# ---- validation --------------------------------------------------------------------------

def _validate(model: "schema.ModelT", data: bytes, where: str) -> None:
    subgraphs = model.subgraphs or []
    if not subgraphs or subgraphs[0] is None:
        raise ModelError(f"{where}: the model has no subgraph")
    codes = model.operatorCodes or []
    if any(code is None for code in codes):
        raise ModelError(f"{where}: corrupt model (missing operator code)")
    names = [op_name(code) for code in codes]
    used = _used_opcodes(subgraphs, len(codes), where)
    control = sorted({names[i] for i in used if names[i] in CONTROL_FLOW_OPS})
    if control:
        raise UnsupportedModelError(
            f"{where}: control-flow operators are not supported ({', '.join(control)})"
        )
    if len(subgraphs) > 1:
        raise UnsupportedModelError(
            f"{where}: the model has {len(subgraphs)} subgraphs; only single-subgraph "
            "models can be pipelined"
        )
    for k, op in enumerate(subgraphs[0].operators or []):
        if names[int(op.opcodeIndex)].startswith("BUILTIN_"):
            raise UnsupportedModelError(
                f"{where}: operator {k} uses builtin op code "
                f"{builtin_code(codes[int(op.opcodeIndex)])}, which this TFLite schema does not "
                "name (an op from a newer converter?); the runtime cannot run it"
            )
    _inline_external_buffers(model, data, where)
    _validate_subgraph(model, subgraphs[0], where)
    custom = sorted(
        {names[i][len("CUSTOM:"):] for i in used if names[i].startswith("CUSTOM:")}
        - RUNTIME_CUSTOM_OPS
    )
    if custom:
        _check_custom_ops_resolve(data, custom, where)


def _check_custom_ops_resolve(data: bytes, custom: List[str], where: str) -> None:
    """Ask the runtime whether it can run custom ops outside the stock list.

    Some are claimed by a delegate rather than the op resolver (XNNPACK runs
    MediaPipe's ``Convolution2DTransposeBias``), so no fixed list is right
    for every backend; only models with such ops pay for this load.
    """
    from pipeit.runtime import check_loads

    try:
        check_loads(data, where="")
    except ModelError as err:
        cause = str(err).split("cannot load this model: ", 1)[-1]
        raise UnsupportedModelError(
            f"{where}: custom operator {', '.join(repr(c) for c in custom)} is not "
            f"registered in the runtime ({cause})"
        ) from err


def _used_opcodes(subgraphs: List, n_codes: int, where: str) -> List[int]:
    used = set()
    for s, subgraph in enumerate(subgraphs):
        if subgraph is None:
            raise ModelError(f"{where}: corrupt model (missing subgraph {s})")
        for k, op in enumerate(subgraph.operators or []):
            if op is None:
                raise ModelError(f"{where}: corrupt model (missing operator {k})")
            if not 0 <= int(op.opcodeIndex) < n_codes:
                raise ModelError(
                    f"{where}: corrupt model (operator {k} uses opcode {op.opcodeIndex}, "
                    f"there are {n_codes})"
                )
            used.add(int(op.opcodeIndex))
    return sorted(used)


def _inline_external_buffers(model: "schema.ModelT", data: bytes, where: str) -> None:
    for b, buffer in enumerate(model.buffers or []):
        if buffer is None:
            raise ModelError(f"{where}: corrupt model (missing buffer {b})")
        offset, size = int(buffer.offset), int(buffer.size)
        if offset > 1:  # 0 and 1 mean "no external data" in the schema
            if offset + size > len(data):
                raise ModelError(
                    f"{where}: truncated model (buffer {b} lies past the end of the file)"
                )
            buffer.data = np.frombuffer(data, dtype=np.uint8, count=size, offset=offset).copy()
            buffer.offset = 0
            buffer.size = 0


def _validate_subgraph(model: "schema.ModelT", subgraph, where: str) -> None:
    tensors = subgraph.tensors or []
    n_tensors = len(tensors)
    n_buffers = len(model.buffers or [])
    operators = subgraph.operators or []
    if not operators:
        raise ModelError(f"{where}: the model has no operators")
    if subgraph.outputs is None or len(subgraph.outputs) == 0:
        raise ModelError(f"{where}: the model has no outputs")

    constant = [False] * n_tensors
    for t, tensor in enumerate(tensors):
        if tensor is None:
            raise ModelError(f"{where}: corrupt model (missing tensor {t})")
        if not 0 <= int(tensor.buffer) < n_buffers:
            raise ModelError(
                f"{where}: corrupt model (tensor {t} uses buffer {tensor.buffer}, "
                f"there are {n_buffers})"
            )
        if int(tensor.type) not in DTYPE_NAMES:
            raise ModelError(f"{where}: corrupt model (tensor {t} has unknown type {tensor.type})")
        shape = [] if tensor.shape is None else [int(d) for d in tensor.shape]
        if any(d < 0 for d in shape):
            raise ModelError(f"{where}: corrupt model (tensor {t} has shape {shape})")
        buffer = model.buffers[int(tensor.buffer)]
        size = 0 if buffer.data is None else len(buffer.data)
        if int(tensor.buffer) != 0 and size > 0:
            constant[t] = True
            itemsize = _ITEMSIZE.get(dtype_name(tensor.type))
            if itemsize is not None and tensor.sparsity is None:
                expected = int(np.prod(shape, dtype=np.int64)) * itemsize
                if expected != size:
                    raise ModelError(
                        f"{where}: corrupt model (tensor {t} {_text(tensor.name)!r} holds "
                        f"{size} bytes, its shape needs {expected})"
                    )
            elif itemsize is not None:  # the runtime densifies it trusting every index: check them first
                if size % itemsize:
                    raise ModelError(f"{where}: corrupt model (sparse tensor {t} {_text(tensor.name)!r} holds "
                                     f"{size} bytes, not a whole number of {itemsize}-byte values)")
                sparse_levels(shape, size // itemsize, tensor.sparsity,
                              f"{where}: sparse tensor {t} {_text(tensor.name)!r}")

    def check_index(index: int, what: str, optional: bool) -> None:
        if optional and index == -1:
            return
        if not 0 <= index < n_tensors:
            raise ModelError(
                f"{where}: corrupt model ({what} refers to tensor {index}, "
                f"there are {n_tensors})"
            )

    for i, t in enumerate(ints(subgraph.inputs)):
        check_index(int(t), "model input", False)
        _check_io_tensor(tensors[t], f"{where}: model input {i} (tensor {t})")
        if constant[t]:
            raise UnsupportedModelError(
                f"{where}: model input {i} (tensor {t} {tensor_name(tensors[t])!r}) is a constant weight; "
                "the runtime would use the stored value whatever a frame fed, so this model cannot be pipelined"
            )
    for i, t in enumerate(ints(subgraph.outputs)):
        check_index(t, "model output", False)
        _check_io_tensor(tensors[t], f"{where}: model output {i} (tensor {t})")
        if constant[t]:
            raise UnsupportedModelError(
                f"{where}: model output {i} (tensor {t} {tensor_name(tensors[t])!r}) is a constant "
                "weight, not computed by any operator; stages return only computed tensors, so "
                "this model cannot be pipelined"
            )

    check_io_names(tensors, ints(subgraph.inputs), ints(subgraph.outputs), where)

    available = [False] * n_tensors
    for t in ints(subgraph.inputs):
        available[int(t)] = True
    for t in range(n_tensors):
        if constant[t] or tensors[t].isVariable:
            available[t] = True
    for k, op in enumerate(operators):
        for t in ints(op.inputs):
            check_index(int(t), f"operator {k} input", True)
            if int(t) != -1 and not available[int(t)]:
                raise ModelError(
                    f"{where}: corrupt model (operator {k} reads tensor {int(t)} "
                    f"{_text(tensors[int(t)].name)!r} before any operator writes it)"
                )
        for t in ints(op.intermediates):
            check_index(int(t), f"operator {k} intermediate", False)
        reads = set(ints(op.inputs))
        name = op_name(model.operatorCodes[int(op.opcodeIndex)])
        for t in ints(op.outputs):
            check_index(int(t), f"operator {k} output", False)
            if int(t) in reads:
                raise ModelError(
                    f"{where}: corrupt model (operator {k} {name} both reads and writes "
                    f"tensor {int(t)} {tensor_name(tensors[int(t)])!r}, which the runtime refuses)"
                )
            if constant[int(t)]:
                raise ModelError(
                    f"{where}: corrupt model (operator {k} {name} writes tensor {int(t)} "
                    f"{tensor_name(tensors[int(t)])!r}, which holds constant data)"
                )
            if tensors[int(t)].isVariable:
                raise UnsupportedModelError(
                    f"{where}: operator {k} {name} writes tensor {int(t)} {tensor_name(tensors[int(t)])!r}, "
                    "a variable (state) tensor; a stage would keep its own copy, so this model cannot be split"
                )
            available[int(t)] = True
        if name in ("DEQUANTIZE", "DENSIFY") and op.inputs is not None and len(op.inputs) and op.outputs is not None:
            _check_unpacked_shape(tensors, int(op.inputs[0]), [int(t) for t in op.outputs], constant,
                                  f"{where}: operator {k} {name}")
    for t in subgraph.outputs:
        if not available[int(t)]:
            raise ModelError(
                f"{where}: corrupt model (output tensor {int(t)} is never written)"
            )
    _check_outputs_read_inputs(subgraph, operators, tensors, where)


def utf8_name(tensor: "schema.TensorT") -> bool:
    """Whether the runtime's Python API can decode the name it reports (up to a NUL byte)."""
    if not isinstance(tensor.name, bytes):
        return True
    try:
        tensor.name.split(b"\x00", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check_io_tensor(tensor, where: str) -> None:
    """A model input or output must be one the runtime's Python API can hold in numpy (its name:
    :func:`check_io_names`)."""
    if dtype_name(tensor.type) not in NUMPY_DTYPES:
        raise UnsupportedModelError(f"{where}: dtype {dtype_name(tensor.type)} has no numpy type in the "
                                    "runtime's Python API, so frames cannot be fed to it or read from it")


def check_io_names(tensors, inputs: List[int], outputs: List[int], where: str) -> None:
    """Frames are fed and results returned by the names the runtime reports: a model input or output
    needs one of its own among the inputs and outputs, in UTF-8 (the runtime's Python API cannot
    report another). Inner tensors' names do not matter: a stage renames those it hands over when
    they are missing or shared (pipeit.split)."""
    for kind, listed in (("input", inputs), ("output", outputs)):
        for i, t in enumerate(listed):
            if not utf8_name(tensors[t]):
                raise UnsupportedModelError(f"{where}: model {kind} {i} (tensor {t}): its name is not UTF-8 text, "
                                            "which the runtime's Python API cannot report, so frames cannot be "
                                            "fed to it")
    holders: Dict[str, List[int]] = {}
    for t in dict.fromkeys(inputs + outputs):  # a tensor both input and output, or listed twice, is one
        holders.setdefault(tensor_name(tensors[t]), []).append(t)
    for kind, listed in (("input", inputs), ("output", outputs)):
        for i, t in enumerate(listed):
            name = tensor_name(tensors[t])
            if name == "":
                raise UnsupportedModelError(f"{where}: model {kind} {i} (tensor {t}) has no name; frames are "
                                            "fed and results returned by name, so this model cannot be run")
            others = [k for k in holders[name] if k != t]
            if others:
                raise UnsupportedModelError(
                    f"{where}: model {kind} {i} (tensor {t}) is named {name!r} like model input/output tensor "
                    f"{', '.join(str(k) for k in others)}; frames are fed and results returned by name, "
                    "so this model cannot be run")


def _check_unpacked_shape(tensors, source: int, outputs: List[int], constant: List[bool], where: str) -> None:
    """DEQUANTIZE or DENSIFY of a weight: the output has the weight's shape (the runtime fills it
    from the stored weight trusting the declared shape, and read past the file on a bigger one)."""
    if not 0 <= source < len(tensors) or not constant[source] or len(outputs) != 1:
        return
    stored = [] if tensors[source].shape is None else [int(d) for d in tensors[source].shape]
    declared = [] if tensors[outputs[0]].shape is None else [int(d) for d in tensors[outputs[0]].shape]
    if stored != declared:
        raise ModelError(f"{where}: corrupt model (weight {tensor_name(tensors[source])!r} has shape {stored}, "
                         f"its unpacked copy {tensor_name(tensors[outputs[0]])!r} is declared {declared})")


def _check_outputs_read_inputs(subgraph, operators, tensors, where: str) -> None:
    """Every model output must depend on a model input: one computed from weights alone is a layer
    with no input, and a stage holding only it would have nothing to run on."""
    fed = {int(t) for t in ints(subgraph.inputs)}
    for op in operators:
        if any(int(t) in fed for t in ints(op.inputs)):
            fed.update(int(t) for t in ints(op.outputs))
    for i, t in enumerate(ints(subgraph.outputs)):
        if int(t) not in fed:
            raise UnsupportedModelError(
                f"{where}: model output {i} (tensor {int(t)} {tensor_name(tensors[int(t)])!r}) is computed from "
                "weights alone, not from any model input; stages run on frames, so this model cannot be pipelined"
            )
