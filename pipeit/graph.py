"""The layer graph of a model: layers, their descriptors, and the cut points between them.

A *layer* is one operator the runtime executes on activations, in the
model's operator order. Constant-only operators (typically ``DEQUANTIZE`` of
fp16 weights, or ``DENSIFY`` of sparse weights: every input is a constant
buffer or the output of another constant-only op) are not layers: they are
folded into the layer that consumes them, because they run once per
inference on constants and -- more importantly -- a cut between a weight's
``DEQUANTIZE`` and its conv would turn the weight into a runtime input, which
XNNPACK refuses. :attr:`Layer.op_indices` therefore lists the original
operator indices of the layer *including* its folded constant ops; a constant
op shared by two layers appears in both.

*Dead* operators -- whose outputs reach no model output, not even through
other operators -- are pruned: they are in no layer and no stage. The
runtime runs them in the whole model (a converter left them there, or an
unused ``DEQUANTIZE`` of a weight), but nothing a caller sees depends on
them, and a stage made of one would hand nothing on (a split could not be
made). Chained stages still give the whole model's outputs bit for bit;
only the whole-model timing includes their (usually tiny) cost.
:attr:`LayerGraph.pruned_ops` lists them. Operators without outputs, and
operators touching a variable tensor, are never pruned: they may act by
side effect on state the model keeps between invocations.

A *cut point* ``before=i`` separates layers ``< i`` from layers ``>= i``; its
tensors are those produced before the cut (or model inputs) and needed after
it (consumed by a layer ``>= i`` or a model output). Residual (skip)
connections therefore appear in every cut they span.

MAC counting (``LayerDescriptor.macs``), documented once here:

* ``CONV_2D``: ``N*Hout*Wout*Cout*kh*kw*Cin/groups``; ``DEPTHWISE_CONV_2D``:
  ``N*Hout*Wout*Cout*kh*kw``; ``TRANSPOSE_CONV``: ``N*Hin*Win*Cin*kh*kw*Cout``;
  ``CONV_3D``: output elements times ``kd*kh*kw*Cin``;
* ``FULLY_CONNECTED``: ``rows*out*in``; ``BATCH_MATMUL``: output elements
  times the contracted dimension;
* pooling: one per window tap, ``N*Hout*Wout*C*kh*kw``;
* reductions (``MEAN``, ``SUM``, ``REDUCE_*``): one per *input* element;
* element-wise arithmetic and activations (``ADD``, ``MUL``, ``LOGISTIC``,
  ``SOFTMAX``, ``HARD_SWISH``, ...): one per *output* element;
* data movement (``RESHAPE``, ``CONCATENATION``, ``PAD``, ``TRANSPOSE``, ...)
  and unknown ops: 0 (their cost shows in ``activation_bytes``).

``weight_bytes`` is the stored size of the layer's constant inputs, followed
through folded constant ops to the buffers they read: fp16 weights behind a
``DEQUANTIZE`` count 2 bytes per element, sparse weights behind a ``DENSIFY``
only the values kept (not their CSR indices). What a worker holds for such a
layer is more: the runtime makes the dense float32 tensors the op reads when
it loads the model, and keeps the file mapped. ``held_weight_bytes`` adds
those dense tensors to the stored size (it is what a memory limit counts;
for a layer without folded constant ops it equals ``weight_bytes``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import networkx as nx

from ai_edge_litert import schema_py_generated as schema
from pipeit.descriptor import LayerDescriptor, TensorInfo
from pipeit.errors import ModelError
from pipeit.modelfile import (
    ModelSource,
    dtype_name,
    ints,
    op_name,
    read_model_bytes,
    parse_model,
    tensor_name,
)

__all__ = [
    "Layer",
    "CutPoint",
    "LayerGraph",
    "load_graph",
    "graph_from_model",
    "constant_ops",
    "dead_ops",
]

_PADDING = {v: k for k, v in vars(schema.Padding).items() if not k.startswith("_")}
_ACTIVATION = {
    v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")
}

_ELEMENTWISE = frozenset({
    "ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "POW",
    "FLOOR_DIV", "FLOOR_MOD", "ADD_N", "LOGISTIC", "TANH", "RELU", "RELU6", "RELU_N1_TO_1",
    "RELU_0_TO_1", "LEAKY_RELU", "PRELU", "ELU", "GELU", "HARD_SWISH", "EXP", "LOG",
    "SOFTMAX", "LOG_SOFTMAX", "QUANTIZE", "DEQUANTIZE", "L2_NORMALIZATION",
    "LOCAL_RESPONSE_NORMALIZATION", "RSQRT", "SQRT", "SQUARE", "ABS", "NEG", "SIN", "COS",
    "FLOOR", "CEIL", "ROUND", "SIGN", "SELECT", "SELECT_V2", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "CAST",
})
_REDUCTIONS = frozenset({"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "REDUCE_ANY",
                         "REDUCE_ALL", "ARG_MAX", "ARG_MIN"})
_POOLS = frozenset({"AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D"})


@dataclass(frozen=True)
class Layer:
    """One executed layer: its index, original operator indices, and descriptor.

    ``op_indices`` is sorted; the last entry is the layer's own operator, the
    others are the constant-only operators folded into it.
    """

    index: int
    op_indices: Tuple[int, ...]
    descriptor: LayerDescriptor

    @property
    def op_index(self) -> int:
        """The layer's own (non-constant) operator index."""
        return self.op_indices[-1]

    @property
    def folded_op_indices(self) -> Tuple[int, ...]:
        return self.op_indices[:-1]


@dataclass(frozen=True)
class CutPoint:
    """The tensors that cross between layers ``< before`` and layers ``>= before``."""

    before: int
    tensors: Tuple[TensorInfo, ...]
    bytes: int

    def to_json(self) -> dict:
        return {
            "before": self.before,
            "tensors": [t.to_json() for t in self.tensors],
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class LayerGraph:
    """A model as pipeit sees it: layers in execution order, cut points, I/O tensors.

    ``nx`` is a networkx DiGraph over layer indices; node attribute
    ``layer`` holds the :class:`Layer`, edge attribute ``tensors`` the names
    of the tensors flowing along the edge. ``cuts[k]`` is the cut before
    layer ``k + 1``. ``pruned_ops`` are the original indices of the dead
    operators left out of every layer (see the module docstring).
    """

    layers: Tuple[Layer, ...]
    cuts: Tuple[CutPoint, ...]
    inputs: Tuple[TensorInfo, ...]
    outputs: Tuple[TensorInfo, ...]
    sha256: str
    nx: "nx.DiGraph" = field(compare=False, repr=False)
    pruned_ops: Tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def total_macs(self) -> int:
        return sum(layer.descriptor.macs for layer in self.layers)

    @property
    def total_weight_bytes(self) -> int:
        """Sum of per-layer weight bytes (a constant shared by layers counts once per layer)."""
        return sum(layer.descriptor.weight_bytes for layer in self.layers)

    @property
    def total_held_weight_bytes(self) -> int:
        """Weight bytes one worker running the whole model holds (see ``held_weight_bytes``)."""
        return sum(layer.descriptor.held_bytes for layer in self.layers)

    def cut(self, before: int) -> CutPoint:
        """The cut point before layer ``before`` (1 <= before < len(layers))."""
        if not 1 <= before < len(self.layers):
            raise IndexError(f"cut before {before} is outside 1..{len(self.layers) - 1}")
        return self.cuts[before - 1]

    def to_json(self) -> dict:
        """The ``pipeit inspect --json`` document."""
        return {
            "sha256": self.sha256,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "layers": [
                {
                    "index": layer.index,
                    "op": layer.descriptor.op,
                    "op_indices": list(layer.op_indices),
                    "macs": layer.descriptor.macs,
                    "weight_bytes": layer.descriptor.weight_bytes,
                    "held_weight_bytes": layer.descriptor.held_bytes,
                    "inputs": [t.to_json() for t in layer.descriptor.inputs],
                    "outputs": [t.to_json() for t in layer.descriptor.outputs],
                    "descriptor": layer.descriptor.to_json(),
                }
                for layer in self.layers
            ],
            "total_macs": self.total_macs,
            "total_weight_bytes": self.total_weight_bytes,
            "total_held_weight_bytes": self.total_held_weight_bytes,
            "cuts": [cut.to_json() for cut in self.cuts],
            "pruned_ops": list(self.pruned_ops),
        }


# ---- building ------------------------------------------------------------------------------

def load_graph(source: Union[ModelSource, "schema.ModelT"], where: Optional[str] = None) -> LayerGraph:
    """Read, validate and analyse a model given as a path, bytes, or parsed ModelT.

    ``where`` names the model in error messages (default: its path, or "model
    bytes"): a caller holding a file's bytes passes the file's path.
    """
    if isinstance(source, schema.ModelT):
        return graph_from_model(source, where=where or "the model")
    if isinstance(source, (str, Path)):
        data = read_model_bytes(source)
        where = where or str(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = source if isinstance(source, bytes) else bytes(source)
        where = where or "model bytes"
    else:
        raise ModelError(f"cannot read a model from a {type(source).__name__}")
    model = parse_model(data, where=where)
    return graph_from_model(model, sha256=hashlib.sha256(data).hexdigest(), where=where)


def _is_constant_tensor(model: "schema.ModelT", tensor: "schema.TensorT") -> bool:
    if int(tensor.buffer) == 0:
        return False
    data = model.buffers[int(tensor.buffer)].data
    return data is not None and len(data) > 0


def constant_ops(model: "schema.ModelT") -> frozenset:
    """Indices of operators all of whose inputs are constants or outputs of such ops.

    Operators without any input are not constant-only (nothing marks them as
    weight preparation), nor are operators whose output is a model output
    (they are the model's work, not a weight's) or is consumed by nobody
    (they are dead: :func:`dead_ops`).
    """
    subgraph = model.subgraphs[0]
    tensors = subgraph.tensors or []
    const_tensor = [_is_constant_tensor(model, t) for t in tensors]
    consumers = _consumers(subgraph)
    model_outputs = {int(t) for t in subgraph.outputs}
    result: Set[int] = set()
    for k, op in enumerate(subgraph.operators):
        ins = [int(t) for t in ints(op.inputs) if int(t) != -1]
        if ins and all(const_tensor[t] for t in ins):
            outs = [int(t) for t in ints(op.outputs)]
            for t in outs:
                const_tensor[t] = True  # later ops reading it are constant-only too
            if outs and not any(t in model_outputs for t in outs) and all(
                consumers.get(t) for t in outs
            ):
                result.add(k)
    return frozenset(result)


def dead_ops(model: "schema.ModelT") -> frozenset:
    """Indices of operators none of whose outputs reaches a model output.

    Found backwards from the model outputs (operators are in execution
    order, which the validation guarantees is a topological one): an
    operator is live when a model output or a live operator's input is
    among its outputs. Operators with no outputs or touching a variable
    tensor are kept live: they may work by side effect.
    """
    subgraph = model.subgraphs[0]
    tensors = subgraph.tensors or []
    needed: Set[int] = {int(t) for t in subgraph.outputs}
    dead: Set[int] = set()
    for k in range(len(subgraph.operators) - 1, -1, -1):
        op = subgraph.operators[k]
        ins = [int(t) for t in ints(op.inputs) if int(t) != -1]
        outs = [int(t) for t in ints(op.outputs)]
        stateful = any(tensors[t].isVariable for t in ins + outs)
        if outs and not stateful and not any(t in needed for t in outs):
            dead.add(k)
            continue
        needed.update(ins)
    return frozenset(dead)


def _consumers(subgraph) -> Dict[int, List[int]]:
    consumers: Dict[int, List[int]] = {}
    for k, op in enumerate(subgraph.operators):
        for t in ints(op.inputs):
            if int(t) != -1:
                consumers.setdefault(int(t), []).append(k)
    return consumers


def graph_from_model(
    model: "schema.ModelT", sha256: Optional[str] = None, where: str = "the model"
) -> LayerGraph:
    """Analyse an already validated ModelT (see :func:`pipeit.modelfile.read_model`).

    ``sha256`` identifies the model file; when omitted it is computed over
    the re-serialised model. ``where`` names the model in error messages.
    """
    if sha256 is None:
        from pipeit.modelfile import serialize_model

        sha256 = hashlib.sha256(serialize_model(model)).hexdigest()
    subgraph = model.subgraphs[0]
    tensors = subgraph.tensors or []
    operators = subgraph.operators
    folded = constant_ops(model)
    dead = dead_ops(model)
    producer_op: Dict[int, int] = {}
    for k, op in enumerate(operators):
        if k not in dead:
            for t in ints(op.outputs):
                producer_op[int(t)] = k

    def info(t: int) -> TensorInfo:
        tensor = tensors[t]
        shape = tuple(int(d) for d in tensor.shape) if tensor.shape is not None else ()
        name = tensor_name(tensor) if tensor.name is not None else f"tensor_{t}"
        return TensorInfo(name, shape, dtype_name(tensor.type))

    layer_ops = [k for k in range(len(operators)) if k not in folded and k not in dead]
    if not layer_ops:
        raise ModelError(
            f"{where}: no operator computes a model output (the outputs are model inputs), "
            "so there is nothing to run in stages"
        )
    op_to_layer = {k: i for i, k in enumerate(layer_ops)}
    layers: List[Layer] = []
    for i, k in enumerate(layer_ops):
        folded_here = _folded_closure(k, operators, producer_op, folded)
        descriptor = _describe(model, k, folded, producer_op, info)
        layers.append(Layer(i, tuple(sorted(folded_here | {k})), descriptor))

    # which layer produces each activation tensor (-1: model input), and who reads it
    model_inputs = [int(t) for t in ints(subgraph.inputs)]
    model_outputs = [int(t) for t in subgraph.outputs]
    producer_layer: Dict[int, int] = {t: -1 for t in model_inputs}
    for t, k in producer_op.items():
        if k in op_to_layer:
            producer_layer[t] = op_to_layer[k]
    last_use: Dict[int, int] = {}
    graph = nx.DiGraph()
    for layer in layers:
        graph.add_node(layer.index, layer=layer, op=layer.descriptor.op)
    for i, k in enumerate(layer_ops):
        for t in ints(operators[k].inputs):
            t = int(t)
            if t not in producer_layer:
                continue  # constant, folded, variable or optional
            last_use[t] = max(last_use.get(t, -1), i)
            p = producer_layer[t]
            if p >= 0 and p != i:
                if graph.has_edge(p, i):
                    names = graph.edges[p, i]["tensors"]
                    if info(t).name not in names:
                        names.append(info(t).name)
                else:
                    graph.add_edge(p, i, tensors=[info(t).name])
    n = len(layers)
    for t in model_outputs:
        last_use[t] = n  # a model output is needed "after" the last layer
    cuts: List[CutPoint] = []
    input_rank = {t: i for i, t in enumerate(model_inputs)}
    crossing = sorted(
        (t for t in producer_layer if t in last_use),
        key=lambda t: (producer_layer[t], input_rank.get(t, 0), t),
    )
    for before in range(1, n):
        names = tuple(
            info(t) for t in crossing if producer_layer[t] < before <= last_use[t]
        )
        cuts.append(CutPoint(before, names, sum(x.nbytes for x in names)))
    graph.graph["inputs"] = [info(t).name for t in model_inputs]
    graph.graph["outputs"] = [info(t).name for t in model_outputs]
    return LayerGraph(
        layers=tuple(layers),
        cuts=tuple(cuts),
        inputs=tuple(info(t) for t in model_inputs),
        outputs=tuple(info(t) for t in model_outputs),
        sha256=sha256,
        nx=graph,
        pruned_ops=tuple(sorted(dead)),
    )


def _folded_closure(k: int, operators, producer_op: Dict[int, int], folded: frozenset) -> Set[int]:
    """Folded constant ops that feed operator ``k``, transitively."""
    seen: Set[int] = set()
    stack = [k]
    while stack:
        op = operators[stack.pop()]
        for t in ints(op.inputs):
            p = producer_op.get(int(t))
            if p is not None and p in folded and p not in seen:
                seen.add(p)
                stack.append(p)
    return seen


def _weight_tensors(model, k: int, folded: frozenset, producer_op: Dict[int, int]) -> List[int]:
    """Constant buffers operator ``k`` reads, directly or through folded ops (deduplicated)."""
    subgraph = model.subgraphs[0]
    found: List[int] = []
    seen: Set[int] = set()
    stack = [int(t) for t in ints(subgraph.operators[k].inputs) if int(t) != -1][::-1]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if _is_constant_tensor(model, subgraph.tensors[t]):
            found.append(t)
        elif producer_op.get(t) in folded:
            op = subgraph.operators[producer_op[t]]
            stack.extend(int(x) for x in ints(op.inputs)[::-1] if int(x) != -1)
    return found


def _describe(model, k: int, folded: frozenset, producer_op: Dict[int, int], info) -> LayerDescriptor:
    subgraph = model.subgraphs[0]
    op = subgraph.operators[k]
    name = op_name(model.operatorCodes[int(op.opcodeIndex)])
    op_inputs = [int(t) for t in ints(op.inputs)]
    act_in = [
        t for t in op_inputs
        if t != -1 and not _is_constant_tensor(model, subgraph.tensors[t])
        and producer_op.get(t) not in folded
    ]
    outputs = [int(t) for t in ints(op.outputs)]
    weights = _weight_tensors(model, k, folded, producer_op)
    weight_bytes = sum(len(model.buffers[int(subgraph.tensors[t].buffer)].data) for t in weights)
    # the tensors the op itself reads that folded ops make (dense float32 behind DEQUANTIZE/DENSIFY): held
    # by the runtime beside the stored form
    made = {t for t in op_inputs if t != -1 and producer_op.get(t) in folded}
    held_weight_bytes = weight_bytes + sum(info(t).nbytes for t in made) if made else None
    ins = tuple(info(t) for t in act_in)
    outs = tuple(info(t) for t in outputs)
    dtype = (ins or outs)[0].dtype if (ins or outs) else "float32"
    fields: dict = {}
    extra: List[Tuple[str, str]] = []
    if weights:
        wtypes = sorted({dtype_name(subgraph.tensors[t].type) for t in weights})
        extra.append(("weight_dtype", "+".join(wtypes)))
    options = op.builtinOptions
    activation = getattr(options, "fusedActivationFunction", 0) if options is not None else 0

    def shape_of(index: int) -> Tuple[int, ...]:
        if index >= len(op_inputs) or op_inputs[index] == -1:
            return ()
        return info(op_inputs[index]).shape

    out_shape = outs[0].shape if outs else ()
    in_shape = ins[0].shape if ins else ()
    out_elems = _prod(out_shape)
    macs = 0
    if name == "CONV_2D":
        filt = shape_of(1)
        if len(filt) == 4 and len(in_shape) == 4 and len(out_shape) == 4:
            cout, kh, kw, cin_g = filt
            groups = max(in_shape[3] // max(cin_g, 1), 1)
            macs = out_elems * kh * kw * cin_g
            fields.update(kernel=(kh, kw), groups=groups)
        fields.update(_strides(options, "conv"))
    elif name == "DEPTHWISE_CONV_2D":
        filt = shape_of(1)
        if len(filt) == 4 and len(in_shape) == 4:
            _, kh, kw, cout = filt
            macs = out_elems * kh * kw
            fields.update(kernel=(kh, kw), groups=int(in_shape[3]))
            multiplier = int(getattr(options, "depthMultiplier", 0) or 0)
            if multiplier <= 0 and in_shape[3]:
                multiplier = max(cout // in_shape[3], 1)
            fields["depth_multiplier"] = multiplier
        fields.update(_strides(options, "conv"))
    elif name == "TRANSPOSE_CONV":
        filt = shape_of(1)
        data = shape_of(2)
        if len(filt) == 4 and len(data) == 4:
            cout, kh, kw, cin = filt
            macs = _prod(data[:3]) * cin * kh * kw * cout
            fields.update(kernel=(kh, kw))
        fields.update(_strides(options, "conv"))
    elif name == "CONV_3D":
        filt = shape_of(1)
        if len(filt) == 5:
            kd, kh, kw, cin, _ = filt
            macs = out_elems * kd * kh * kw * cin
            fields.update(kernel=(kh, kw))
            extra.append(("kernel_depth", str(kd)))
        fields.update(_strides(options, "conv"))
    elif name == "FULLY_CONNECTED":
        filt = shape_of(1)
        if len(filt) == 2:
            units, depth = filt
            rows = _prod(shape_of(0)) // max(depth, 1)
            macs = rows * units * depth
        if options is not None and getattr(options, "keepNumDims", False):
            extra.append(("keep_num_dims", "true"))
    elif name == "BATCH_MATMUL":
        a = shape_of(0)
        if a:
            adj_x = bool(getattr(options, "adjX", False))
            k_dim = a[-2] if adj_x and len(a) >= 2 else a[-1]
            macs = out_elems * k_dim
    elif name in _POOLS:
        if options is not None:
            kh = int(getattr(options, "filterHeight", 1) or 1)
            kw = int(getattr(options, "filterWidth", 1) or 1)
            fields["kernel"] = (kh, kw)
            macs = out_elems * kh * kw
        fields.update(_strides(options, "pool"))
    elif name in _REDUCTIONS:
        macs = _prod(in_shape)
        if options is not None and getattr(options, "keepDims", False):
            extra.append(("keep_dims", "true"))
    elif name in _ELEMENTWISE:
        macs = out_elems
    elif name == "CONCATENATION" and options is not None:
        extra.append(("axis", str(int(getattr(options, "axis", 0)))))
    if activation:
        fields["activation"] = _ACTIVATION.get(int(activation), str(activation))
    activation_bytes = sum(t.nbytes for t in ins) + sum(t.nbytes for t in outs)
    return LayerDescriptor(
        op=name,
        inputs=ins,
        outputs=outs,
        dtype=dtype,
        macs=int(macs),
        weight_bytes=int(weight_bytes),
        activation_bytes=int(activation_bytes),
        extra=tuple(extra),
        held_weight_bytes=held_weight_bytes,
        **fields,
    )


def _strides(options, kind: str) -> dict:
    """stride/padding/dilation of conv-like and pooling options (absent options: defaults)."""
    if options is None:
        return {}
    out = {
        "stride": (max(int(getattr(options, "strideH", 1) or 1), 1),
                   max(int(getattr(options, "strideW", 1) or 1), 1)),
        "padding": _PADDING.get(int(getattr(options, "padding", 0)), "UNKNOWN"),
    }
    if kind == "conv" and hasattr(options, "dilationHFactor"):
        out["dilation"] = (max(int(options.dilationHFactor or 1), 1),
                           max(int(options.dilationWFactor or 1), 1))
    return out


def _prod(shape: Sequence[int]) -> int:
    result = 1
    for d in shape:
        result *= int(d)
    return result
