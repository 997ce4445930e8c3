"""Exact model splitting: one ``.tflite`` sub-model per contiguous layer range.

Chained, the stage sub-models compute bit-identical outputs to the whole
model: each stage keeps its operators unchanged (options, quantisation,
original tensor names), so the runtime picks the same kernels for them.

A stage ``[start, end)`` keeps the operators of its layers plus their folded
constant ops (a constant op shared with another stage travels with both --
cutting between a weight's ``DEQUANTIZE`` and its conv would turn the weight
into a runtime input, which XNNPACK refuses). Its inputs are the activation
tensors it reads that earlier stages (or the model's inputs) produce; its
outputs are the tensors it produces that a later stage reads or that are
model outputs. Residual tensors that skip a stage are not routed through
it: whoever runs the chain keeps a table of available tensors and hands
each stage what its manifest lists (:func:`run_chain` does exactly that).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np

from ai_edge_litert import schema_py_generated as schema
from cores.filewrite import write_file
from pipeit.descriptor import TensorInfo
from pipeit.errors import InputError, SplitError
from pipeit.graph import LayerGraph, graph_from_model
from pipeit.modelfile import (
    ModelSource,
    check_io_names,
    dtype_name,
    ints,
    parse_model,
    read_model,
    read_model_bytes,
    serialize_model,
    tensor_name,
    utf8_name,
)

__all__ = [
    "StageModel",
    "validate_cuts",
    "parse_cuts",
    "split_model",
    "extract_layers",
    "write_split",
    "manifest",
    "run_chain",
]

MANIFEST_NAME = "manifest.json"
#: the names :attr:`StageModel.file_name` gives stage files (and the only files a split removes)
STAGE_FILE = re.compile(r"stage_(0|[1-9][0-9]*)\.tflite")


@dataclass(frozen=True)
class StageModel:
    """One stage sub-model: layers ``[start, end)``, its bytes and its I/O tensors.

    ``model_outputs`` names the *whole* model's outputs (in model order), so a
    chain runner knows which of the tensors it collected to return.
    """

    index: int
    layers: Tuple[int, int]
    model_bytes: bytes
    inputs: Tuple[TensorInfo, ...]
    outputs: Tuple[TensorInfo, ...]
    model_outputs: Tuple[str, ...] = ()

    @property
    def file_name(self) -> str:
        return f"stage_{self.index}.tflite"

    def to_json(self) -> dict:
        return {
            "file": self.file_name,
            "layers": [self.layers[0], self.layers[1]],
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }


# ---- cut validation ----------------------------------------------------------------------

def parse_cuts(text: str) -> Tuple[int, ...]:
    """``"3,7"`` -> ``(3, 7)``; anything that is not a comma list of integers is a SplitError."""
    parts = [p.strip() for p in str(text).split(",")]
    if parts == [""]:
        return ()
    values = []
    for part in parts:
        try:
            values.append(int(part, 10))
        except ValueError:
            raise SplitError(f"cut {part!r} is not an integer layer index") from None
    return tuple(values)


def validate_cuts(cuts: Sequence, n_layers: int) -> Tuple[int, ...]:
    """Check cut indices: integers, strictly increasing, each in ``1..n_layers-1``."""
    values: List[int] = []
    for cut in cuts:
        if isinstance(cut, bool) or not isinstance(cut, (int, np.integer)):
            raise SplitError(f"cut {cut!r} is not an integer layer index")
        values.append(int(cut))
    if values and n_layers <= 1:
        raise SplitError(
            f"the model has {'one layer' if n_layers == 1 else 'no layers'} and cannot be split "
            f"(cut {values[0]} asked for)"
        )
    for value in values:
        if not 1 <= value <= n_layers - 1:
            raise SplitError(
                f"cut {value} is out of range: cuts must lie in 1..{n_layers - 1} "
                f"(the model has {n_layers} layers)"
            )
    for a, b in zip(values, values[1:]):
        if b <= a:
            raise SplitError(f"cuts must be strictly increasing, got {a} then {b}")
    return tuple(values)


# ---- splitting -----------------------------------------------------------------------------

def _load(
    model: Union[ModelSource, "schema.ModelT"], where: Optional[str]
) -> Tuple["schema.ModelT", str]:
    """The parsed model and how error messages name it: ``where``, else its path, else a stand-in."""
    if isinstance(model, schema.ModelT):
        return model, where or "the model"
    if isinstance(model, (str, Path)):
        where = where or str(model)
        return parse_model(read_model_bytes(model), where=where), where
    if isinstance(model, (bytes, bytearray, memoryview)):
        where = where or "model bytes"
        return parse_model(bytes(model), where=where), where
    return read_model(model), where or "the model"  # refuses the type with one clear line


def split_model(
    model: Union[ModelSource, "schema.ModelT"], cuts: Sequence[int], where: Optional[str] = None
) -> Tuple[StageModel, ...]:
    """Split a model at the given cut points into ``len(cuts) + 1`` stage sub-models.

    A cut ``i`` separates layers ``< i`` from layers ``>= i`` (layer indices as
    ``pipeit inspect`` numbers them). ``where`` names the model in error
    messages (default: its path).
    """
    model_t, where = _load(model, where)
    graph = graph_from_model(model_t, sha256="", where=where)
    try:
        values = validate_cuts(cuts, len(graph.layers))
    except SplitError as err:
        raise SplitError(f"{where}: {err}") from None
    bounds = (0,) + values + (len(graph.layers),)
    return tuple(
        _extract(model_t, graph, bounds[i], bounds[i + 1], i, where)
        for i in range(len(bounds) - 1)
    )


def extract_layers(
    model: Union[ModelSource, "schema.ModelT"], start: int, end: int, index: int = 0,
    where: Optional[str] = None,
) -> StageModel:
    """A sub-model running layers ``[start, end)`` of the model (e.g. one layer to profile)."""
    model_t, where = _load(model, where)
    graph = graph_from_model(model_t, sha256="", where=where)
    n = len(graph.layers)
    for value in (start, end):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise SplitError(f"layer index {value!r} is not an integer")
    if not 0 <= start < end <= n:
        raise SplitError(
            f"layer range [{start}, {end}) is not a non-empty range inside [0, {n})"
        )
    return _extract(model_t, graph, int(start), int(end), index, where)


def _extract(
    model: "schema.ModelT", graph: LayerGraph, start: int, end: int, index: int,
    where: str = "the model",
) -> StageModel:
    subgraph = model.subgraphs[0]
    tensors = subgraph.tensors
    operators = subgraph.operators
    layer_of_op: Dict[int, int] = {layer.op_index: layer.index for layer in graph.layers}
    ops = sorted({k for layer in graph.layers[start:end] for k in layer.op_indices})
    op_set = set(ops)

    produced: Dict[int, int] = {}  # tensor -> producing op, inside this stage
    for k in ops:
        for t in ints(operators[k].outputs):
            produced[t] = k
    model_inputs = ints(subgraph.inputs)
    model_outputs = ints(subgraph.outputs)

    def is_static(t: int) -> bool:
        tensor = tensors[t]
        if tensor.isVariable:
            return True
        data = model.buffers[int(tensor.buffer)].data if int(tensor.buffer) else None
        return data is not None and len(data) > 0

    used: List[int] = []
    seen: Set[int] = set()
    stage_inputs: List[int] = []
    for k in ops:
        for t in ints(operators[k].inputs):
            if t == -1 or t in seen:
                continue
            seen.add(t)
            used.append(t)
            if t not in produced and not is_static(t):
                stage_inputs.append(t)
        # intermediates are scratch tensors of the op itself (never fed from outside)
        for t in ints(operators[k].outputs) + ints(operators[k].intermediates):
            if t not in seen:
                seen.add(t)
                used.append(t)

    # needed later: read by a layer operator outside the stage, or a model output
    read_later: Set[int] = set()
    for k, op in enumerate(operators):
        if k in op_set:
            continue
        layer = layer_of_op.get(k)
        if layer is not None and layer >= end:
            read_later.update(t for t in ints(op.inputs) if t != -1)
    stage_outputs = [
        t for t in sorted(produced, key=lambda t: (produced[t], t))
        if layer_of_op.get(produced[t]) is not None
        and (t in read_later or t in model_outputs)
    ]
    input_rank = {t: i for i, t in enumerate(model_inputs)}
    producer_layer = {t: layer_of_op.get(k, -1) for t, k in _all_producers(operators).items()}
    stage_inputs.sort(key=lambda t: (producer_layer.get(t, -1), input_rank.get(t, 0), t))
    if not stage_outputs:
        raise SplitError(
            f"{where}: layers [{start}, {end}) produce nothing the rest of the model uses"
        )
    check_io_names(tensors, model_inputs, model_outputs, where)  # a ModelT built in code is not validated
    exchange = exchange_names(tensors, set(model_inputs) | set(model_outputs))

    # re-index tensors, buffers and opcodes
    tensor_map = {t: i for i, t in enumerate(sorted(used))}
    buffers: List["schema.BufferT"] = [schema.BufferT()]
    buffer_map: Dict[int, int] = {}
    new_tensors = []
    for t in sorted(used):
        tensor = copy.copy(tensors[t])
        if t in exchange:
            tensor.name = exchange[t].encode("utf-8")
        old = int(tensor.buffer)
        data = model.buffers[old].data if old else None
        if data is not None and len(data) > 0:
            if old not in buffer_map:
                buffer_map[old] = len(buffers)
                buffers.append(model.buffers[old])
            tensor.buffer = buffer_map[old]
        else:
            tensor.buffer = 0
        new_tensors.append(tensor)
    opcode_map: Dict[int, int] = {}
    opcodes = []
    new_ops = []
    for k in ops:
        op = copy.copy(operators[k])
        code = int(op.opcodeIndex)
        if code not in opcode_map:
            opcode_map[code] = len(opcodes)
            opcodes.append(model.operatorCodes[code])
        op.opcodeIndex = opcode_map[code]
        op.inputs = [tensor_map[t] if t != -1 else -1 for t in ints(op.inputs)]
        op.outputs = [tensor_map[t] for t in ints(op.outputs)]
        if op.intermediates is not None:
            op.intermediates = [tensor_map[t] for t in ints(op.intermediates)]
        new_ops.append(op)

    sub = schema.SubGraphT()
    sub.tensors = new_tensors
    sub.operators = new_ops
    sub.inputs = [tensor_map[t] for t in stage_inputs]
    sub.outputs = [tensor_map[t] for t in stage_outputs]
    sub.name = subgraph.name
    out = schema.ModelT()
    out.version = model.version
    out.description = model.description
    out.operatorCodes = opcodes
    out.subgraphs = [sub]
    out.buffers = buffers

    def info(t: int) -> TensorInfo:
        tensor = tensors[t]
        name = exchange.get(t) or (tensor_name(tensor) if tensor.name is not None else f"tensor_{t}")
        return TensorInfo(name, tuple(ints(tensor.shape)), dtype_name(tensor.type))

    return StageModel(
        index=index,
        layers=(start, end),
        model_bytes=serialize_model(out),
        inputs=tuple(info(t) for t in stage_inputs),
        outputs=tuple(info(t) for t in stage_outputs),
        model_outputs=tuple(info(t).name for t in model_outputs),
    )


def exchange_names(tensors, model_io: Set[int]) -> Dict[int, str]:
    """New names for the inner tensors stages could not hand over by their own, by tensor index.

    Stages exchange tensors by the names the runtime reports. An inner tensor with no name, one that
    is not UTF-8, or one another tensor shares (converters do write such models) gets
    ``pipeit:tensorN`` (N its index in the model, so every stage picks the same name), made unique
    against every name in the model. Model inputs and outputs keep theirs: the user feeds and reads
    them by name.
    """
    names = [tensor_name(tensor) for tensor in tensors]
    count: Dict[str, int] = {}
    for name in names:
        count[name] = count.get(name, 0) + 1
    taken = set(names)
    out: Dict[int, str] = {}
    for t, tensor in enumerate(tensors):
        if t in model_io or (names[t] != "" and utf8_name(tensor) and count[names[t]] == 1):
            continue
        new = f"pipeit:tensor{t}"
        while new in taken:
            new += "_"
        taken.add(new)
        out[t] = new
    return out


def _all_producers(operators) -> Dict[int, int]:
    result: Dict[int, int] = {}
    for k, op in enumerate(operators):
        for t in ints(op.outputs):
            result[t] = k
    return result


# ---- files ---------------------------------------------------------------------------------

def manifest(stages: Sequence[StageModel]) -> dict:
    """The ``manifest.json`` document describing a split."""
    doc: dict = {"stages": [stage.to_json() for stage in stages]}
    if stages:
        doc["model_outputs"] = list(stages[-1].model_outputs)
    return doc


def write_split(stages: Sequence[StageModel], out_dir: Union[str, Path]) -> Path:
    """Write ``stage_<i>.tflite`` files and ``manifest.json`` into ``out_dir``; return the manifest path.

    Stage files of an earlier split into the same folder that the new
    manifest does not list are removed: left there, they would pass for part
    of this split. Only files named as stage files are touched. An earlier
    manifest goes first and the new one is written last, so a split cut
    short (Ctrl-C, a kill, a full disk) leaves a folder with no manifest,
    not one whose manifest describes stage files that are no longer there.
    """
    directory = Path(out_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        stale = directory / MANIFEST_NAME
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()
        for stage in stages:
            write_file(directory / stage.file_name, stage.model_bytes)
        listed = {stage.file_name for stage in stages}
        for entry in directory.iterdir():
            if (STAGE_FILE.fullmatch(entry.name) and entry.name not in listed
                    and entry.is_file() and not entry.is_symlink()):
                entry.unlink()
        path = directory / MANIFEST_NAME
        write_file(path, json.dumps(manifest(stages), indent=2) + "\n")
    except OSError as err:
        raise SplitError(f"cannot write the split into {directory}: {err.strerror or err}") from err
    return path


# ---- running a chain -------------------------------------------------------------------------

def run_chain(
    stages: Sequence[StageModel],
    inputs: Mapping[str, np.ndarray],
    num_threads: int = 1,
    backend: Optional[str] = None,
) -> Dict[str, np.ndarray]:
    """Run stage sub-models one after another; return the model's outputs by name.

    A table of available tensors starts with ``inputs`` and grows with each
    stage's outputs, so a residual tensor produced in stage 0 and read in
    stage 2 is handed straight to stage 2.
    """
    from pipeit.runtime import make_interpreter

    available: Dict[str, np.ndarray] = dict(inputs)
    produced_names: List[str] = []
    for stage in stages:
        interpreter = make_interpreter(stage.model_bytes, num_threads=num_threads, backend=backend)
        by_name = {d["name"]: d for d in interpreter.get_input_details()}
        for tensor in stage.inputs:
            if tensor.name not in available:
                raise InputError(f"stage {stage.index} needs tensor {tensor.name!r}, which no one provides")
            detail = by_name[tensor.name]
            value = np.asarray(available[tensor.name])
            if tuple(value.shape) != tuple(int(d) for d in detail["shape"]):
                raise InputError(
                    f"tensor {tensor.name!r} has shape {tuple(value.shape)}, stage {stage.index} "
                    f"expects {tuple(int(d) for d in detail['shape'])}"
                )
            if value.dtype != detail["dtype"]:
                raise InputError(
                    f"tensor {tensor.name!r} has dtype {value.dtype}, stage {stage.index} "
                    f"expects {np.dtype(detail['dtype']).name}"
                )
            interpreter.set_tensor(detail["index"], value)
        interpreter.invoke()
        for detail in interpreter.get_output_details():
            available[detail["name"]] = interpreter.get_tensor(detail["index"]).copy()
            produced_names.append(detail["name"])
    wanted = list(stages[-1].model_outputs) if stages and stages[-1].model_outputs else [
        t.name for t in stages[-1].outputs
    ]
    missing = [name for name in wanted if name not in available]
    if missing:
        raise InputError(f"the chain did not produce model output(s) {', '.join(missing)}")
    return {name: available[name] for name in wanted}
