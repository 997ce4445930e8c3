"""A GPU pipeline stage: a contiguous layer range run on one OpenCL device.

Inputs are uploaded once, every layer's kernels run back to back on an
in-order queue with the intermediate tensors left in device memory, and only
the stage's outputs come back. The stage's inputs and outputs follow the
same rule as :func:`pipeit.split.extract_layers` (inputs: activations read
but not produced in the range; outputs: tensors produced here that a later
layer reads or that are model outputs), so a GPU stage drops into a chain
of CPU stage sub-models unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ai_edge_litert import schema_py_generated as schema
from pipeit.descriptor import TensorInfo
from pipeit.errors import InputError, SplitError
from pipeit.gpu import kernels as K
from pipeit.gpu.device import GpuContext, GpuError, make_context
from pipeit.gpu.lowering import LayerSpec, Unsupported, _Model, lower_layer
from pipeit.gpu.program import LayerProgram
from pipeit.gpu.space import Config, config_key, heuristic_config
from pipeit.graph import LayerGraph, graph_from_model
from pipeit.modelfile import ModelSource, dtype_name, ints, read_model, tensor_name
from pipeit.split import exchange_names

__all__ = ["GpuStage", "StageTiming"]


@dataclass(frozen=True)
class StageTiming:
    """Device time of one run, per layer (ms, from OpenCL profiling events) and in total."""

    layer_ms: Tuple[float, ...]
    total_ms: float


def _event_ms(events: Sequence[Any]) -> float:
    return sum((e.profile.end - e.profile.start) for e in events) * 1e-6


class GpuStage:
    """Run layers ``[start, end)`` of a float32 model on an OpenCL device.

    ``configs`` maps a layer index to a kernel config; ``tuning`` (a
    :class:`pipeit.gpu.tuning.TuningFile`) supplies the rest for this
    device; layers in neither get :func:`~pipeit.gpu.space.heuristic_config`.
    ``precisions`` maps a layer index to a precision name for its
    arithmetic (storage follows ``storage``: activations must share one
    storage type to stay on the device). A layer without a GPU kernel is a
    :class:`~pipeit.gpu.lowering.Unsupported` error: the DSE keeps such
    layers on a CPU stage.
    """

    def __init__(self, model: Union[ModelSource, "schema.ModelT"], start: int, end: int,
                 ctx: Optional[GpuContext] = None, device: Optional[str] = None,
                 configs: Optional[Mapping[int, Config]] = None, tuning: Any = None,
                 precision: str = "fp32", precisions: Optional[Mapping[int, str]] = None) -> None:
        self.model = model if isinstance(model, schema.ModelT) else read_model(model)
        self.graph: LayerGraph = graph_from_model(self.model, sha256="")
        n = len(self.graph.layers)
        if not (isinstance(start, int) and isinstance(end, int)) or not 0 <= start < end <= n:
            raise SplitError(f"layer range [{start}, {end}) is not a non-empty range inside [0, {n})")
        if precision not in K.PRECISIONS:
            raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(K.PRECISIONS)}")
        self.start, self.end = start, end
        self.ctx = ctx or make_context(device)
        helper = _Model(self.model)
        self.specs: List[LayerSpec] = []
        for layer in self.graph.layers[start:end]:
            try:
                self.specs.append(lower_layer(self.model, layer, helper))
            except Unsupported as err:
                raise Unsupported(f"layer {layer.index} ({layer.descriptor.op}): {err}") from None
        storage = K.PRECISIONS[precision].storage
        self.configs: Dict[int, Config] = {}
        self.precisions: Dict[int, K.Precision] = {}
        self.programs: List[LayerProgram] = []
        for spec in self.specs:
            layer = self.graph.layers[spec.layer]
            config = None
            if configs and spec.layer in configs:
                config = dict(configs[spec.layer])
            elif tuning is not None:
                config = tuning.config_for(self.ctx.info, layer.descriptor, precision)
            name = (precisions or {}).get(spec.layer, precision)
            if name not in K.PRECISIONS:
                raise InputError(f"unknown precision {name!r} for layer {spec.layer}")
            p = K.PRECISIONS[name]
            if p.storage != storage:
                raise InputError(f"layer {spec.layer}: precision {name} stores {p.storage}, but this "
                                 f"stage keeps tensors in {storage} (precision {precision!r})")
            if config is None:
                config = heuristic_config(spec)
            self._check_config(spec, layer.descriptor.op, config, p)
            self.configs[spec.layer] = config
            self.precisions[spec.layer] = p
            self.programs.append(LayerProgram(self.ctx, spec, config, p))
        self.storage = np.dtype(K.PRECISIONS[precision].numpy_storage)
        self._plan_tensors(helper)

    def _check_config(self, spec: LayerSpec, op: str, config: Config, precision: K.Precision) -> None:
        """Refuse a config that does not fit its layer or this device, in one line.

        Commands check files when they load them (naming the file); this is
        the same check for configs handed over in code, so a bad one never
        reaches the kernel builders (a ``ZeroDivisionError``) or the driver;
        a heuristic config is checked too (a layer too big for its scratch
        buffers is refused here, before anything is allocated).
        """
        from pipeit.gpu.configcheck import config_problem

        info = self.ctx.info
        problem = config_problem(spec, config, info.max_work_group_size, info.local_mem_bytes, precision)
        if problem:
            raise GpuError(f"layer {spec.layer} ({op}): config {config_key(config)}: {problem}")

    # ---- tensors -------------------------------------------------------------------------
    def _plan_tensors(self, helper: _Model) -> None:
        sub = self.model.subgraphs[0]
        produced: Dict[int, int] = {}
        for spec in self.specs:
            for t in spec.outputs:
                produced[t] = spec.layer
        inputs: List[int] = []
        for spec in self.specs:
            for t in spec.inputs:
                if t not in produced and t not in inputs:
                    inputs.append(t)
        later: set = set()
        for layer in self.graph.layers[self.end:]:
            later.update(t for t in ints(sub.operators[layer.op_index].inputs) if t >= 0)
        model_outputs = set(ints(sub.outputs))
        outputs = [t for t in produced if t in later or t in model_outputs]

        # the names a neighbouring CPU stage hands tensors over by: the runtime's (cut at NUL), or the one the
        # split gives a tensor whose own name is empty, not UTF-8 or shared
        renamed = exchange_names(sub.tensors, set(ints(sub.inputs)) | set(ints(sub.outputs)))

        def info(t: int) -> TensorInfo:
            name = renamed.get(t) or tensor_name(sub.tensors[t])
            return TensorInfo(name, helper.shape(t), dtype_name(sub.tensors[t].type))

        self._in_ids, self._out_ids = inputs, outputs
        self.inputs: Tuple[TensorInfo, ...] = tuple(info(t) for t in inputs)
        self.outputs: Tuple[TensorInfo, ...] = tuple(info(t) for t in outputs)
        self._buffers: Dict[int, Any] = {}
        for t in inputs:
            self._buffers[t] = self._alloc(helper.shape(t))
        for spec in self.specs:
            if spec.kind == "reshape":
                self._buffers[spec.outputs[0]] = self._buffers[spec.inputs[0]]
            else:
                self._buffers[spec.outputs[0]] = self._alloc(spec.out_shape)
        self._host_out = {t: np.empty(helper.shape(t), self.storage) for t in outputs}
        self._bind()

    def _alloc(self, shape: Sequence[int]) -> Any:
        cl = self.ctx.cl
        size = int(np.prod(shape)) if len(shape) else 1
        return cl.Buffer(self.ctx.context, cl.mem_flags.READ_WRITE, max(size, 1) * self.storage.itemsize)

    # ---- running -------------------------------------------------------------------------
    def _upload(self, inputs: Mapping[str, np.ndarray]) -> None:
        cl = self.ctx.cl
        for t, tensor in zip(self._in_ids, self.inputs):
            if tensor.name not in inputs:
                raise InputError(f"the GPU stage needs tensor {tensor.name!r}")
            value = np.asarray(inputs[tensor.name])
            if tuple(value.shape) != tuple(tensor.shape):
                raise InputError(f"tensor {tensor.name!r} has shape {tuple(value.shape)}, "
                                 f"the GPU stage expects {tuple(tensor.shape)}")
            if value.dtype != np.float32:
                raise InputError(f"tensor {tensor.name!r} has dtype {value.dtype}, the GPU stage expects float32")
            data = np.ascontiguousarray(value, dtype=self.storage)
            cl.enqueue_copy(self.ctx.queue, self._buffers[t], data)

    def _bind(self) -> None:
        """Point every launch at this stage's buffers, once: they are the same for every frame."""
        for spec, program in zip(self.specs, self.programs):
            program.bind([self._buffers[t] for t in spec.inputs], [self._buffers[t] for t in spec.outputs])

    def _enqueue_layers(self) -> List[List[Any]]:
        return [program.enqueue_bound(self.ctx.queue) for program in self.programs]

    def _download(self) -> Dict[str, np.ndarray]:
        cl = self.ctx.cl
        result = {}
        for t, tensor in zip(self._out_ids, self.outputs):
            cl.enqueue_copy(self.ctx.queue, self._host_out[t], self._buffers[t])
        self.ctx.queue.finish()
        for t, tensor in zip(self._out_ids, self.outputs):
            result[tensor.name] = self._host_out[t].astype(np.float32, copy=True)
        return result

    def run(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Upload ``inputs`` (by tensor name), run every layer, return the outputs by name."""
        self._upload(inputs)
        self._enqueue_layers()
        return self._download()

    def run_timed(self, inputs: Mapping[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], StageTiming]:
        """:meth:`run` plus per-layer device times from profiling events."""
        self._upload(inputs)
        events = self._enqueue_layers()
        outputs = self._download()
        per_layer = tuple(_event_ms(e) for e in events)
        return outputs, StageTiming(per_layer, float(sum(per_layer)))
