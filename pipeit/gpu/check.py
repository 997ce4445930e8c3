"""Correctness against TFLite: each layer's GPU kernels versus the layer's TFLite sub-model.

For a layer ``i`` the reference is :func:`pipeit.split.extract_layers`
``(model, i, i + 1)`` run by the real runtime on seeded random inputs; the
GPU side is a one-layer :class:`~pipeit.gpu.stage.GpuStage` fed the same
inputs. The error is ``max|gpu - ref| / max|ref|`` (relative to the output's
scale: a per-element ratio explodes where the reference is near zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ai_edge_litert import schema_py_generated as schema
from pipeit.gpu import kernels as K
from pipeit.gpu.device import GpuContext, GpuError
from pipeit.gpu.lowering import Unsupported, lower_layer
from pipeit.gpu.space import Config
from pipeit.gpu.stage import GpuStage
from pipeit.graph import graph_from_model
from pipeit.modelfile import ModelSource, read_model
from pipeit.runtime import make_interpreter, native_stderr_silenced
from pipeit.split import extract_layers

__all__ = ["LayerCheck", "relative_error", "reference_outputs", "random_inputs", "check_layer",
           "distinct_layers", "check_model"]


@dataclass(frozen=True)
class LayerCheck:
    """The verdict on one layer: its op, the config used, and the relative error (None: unsupported)."""

    layer: int
    op: str
    config: Tuple[Tuple[str, object], ...]
    precision: str
    error: Optional[float]
    reason: str = ""

    def ok(self, tolerance: float) -> bool:
        return self.error is not None and self.error <= tolerance


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """``max|got - want| / max|want|`` (0 when both are all zeros)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shapes differ: {got.shape} vs {want.shape}")
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    if scale == 0.0:
        return diff
    return diff / scale


def random_inputs(tensors: Iterable[Any], seed: int = 0) -> Dict[str, np.ndarray]:
    """Seeded uniform [-1, 1] float32 arrays for tensors with ``.name`` and ``.shape``."""
    rng = np.random.default_rng(seed)
    return {t.name: rng.uniform(-1.0, 1.0, t.shape).astype(np.float32) for t in tensors}


def reference_outputs(model_bytes: bytes, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Run a (sub-)model in TFLite; outputs by tensor name."""
    with native_stderr_silenced():  # the runtime's "INFO: Created ... delegate" line is no news in a check
        interpreter = make_interpreter(model_bytes)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], inputs[detail["name"]])
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()}


def check_layer(model: "schema.ModelT", layer: int, ctx: GpuContext, config: Optional[Config] = None,
                precision: str = "fp32", seed: int = 0) -> LayerCheck:
    """Compare one layer on the GPU with its TFLite sub-model."""
    graph = graph_from_model(model, sha256="")
    op = graph.layers[layer].descriptor.op
    try:
        lower_layer(model, graph.layers[layer])
    except Unsupported as err:
        return LayerCheck(layer, op, (), precision, None, str(err))
    if K.PRECISIONS[precision].needs_fp16 and not ctx.info.fp16:  # the device's fault, not this layer's
        raise GpuError(f"{ctx.info.name} lacks cl_khr_fp16: half arithmetic is not available")
    # the stage first: a layer that cannot run on this device is said before the reference runs it
    try:
        stage = GpuStage(model, layer, layer + 1, ctx=ctx,
                         configs=None if config is None else {layer: config}, precision=precision)
    except (GpuError, ctx.cl.Error) as err:  # too big for the device, or out of its memory
        return LayerCheck(layer, op, (), precision, None,
                          f"does not run on {ctx.info.name}: {str(err).splitlines()[0]}")
    sub = extract_layers(model, layer, layer + 1)
    inputs = random_inputs(sub.inputs, seed)
    want = reference_outputs(sub.model_bytes, inputs)
    try:
        got = stage.run(inputs)
    except ctx.cl.Error as err:  # out of device resources at run time: this layer fails here, the check goes on
        return LayerCheck(layer, op, (), precision, None, f"failed on {ctx.info.name}: {str(err).splitlines()[0]}")
    error = max(relative_error(got[name], want[name]) for name in want)
    used = tuple(sorted(stage.configs[layer].items()))
    return LayerCheck(layer, op, used, precision, error)


def distinct_layers(model: "schema.ModelT") -> List[int]:
    """The first layer of each distinct descriptor key (equal keys run the same kernels)."""
    graph = graph_from_model(model, sha256="")
    seen = set()
    out = []
    for layer in graph.layers:
        key = layer.descriptor.key()
        if key not in seen:
            seen.add(key)
            out.append(layer.index)
    return out


def check_model(source: Union[ModelSource, "schema.ModelT"], ctx: GpuContext,
                layers: Optional[Sequence[int]] = None, precision: str = "fp32",
                configs: Optional[Mapping[int, Config]] = None) -> List[LayerCheck]:
    """:func:`check_layer` over ``layers`` (default: one layer per distinct descriptor)."""
    model = source if isinstance(source, schema.ModelT) else read_model(source)
    chosen = distinct_layers(model) if layers is None else list(layers)
    return [check_layer(model, i, ctx, (configs or {}).get(i), precision) for i in chosen]
