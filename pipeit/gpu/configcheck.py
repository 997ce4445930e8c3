"""Kernel configs read from files, checked against their layer and the device before anything runs.

A tuning file or an accuracy-tables file holds configs someone (or an
older pipeit, or another model) wrote; the file's own validation can only
see that they are dicts of non-negative integers. Whether a config fits
*its* layer (the keys its algorithm takes, tiles that divide, an algorithm
the layer's geometry allows) and the *device* (work-group size, local
memory) needs both, so it is checked here, when a command or a pipeline has
the model and the device in hand and before any worker starts: a bad config
is one line naming the file, the layer and what is wrong, not a
``ZeroDivisionError`` in a worker or a raw OpenCL error at enqueue time.

The layer rules are the kernel builders' own: :func:`config_problem` runs
:meth:`~pipeit.gpu.program.LayerProgram.launch_geometry` (the builders
without a device) and checks the launches it gets.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence, Tuple

from ai_edge_litert import schema_py_generated as schema
from pipeit.gpu import kernels as K
from pipeit.gpu.device import DeviceInfo, GpuError
from pipeit.gpu.lowering import LayerSpec, Unsupported, _Model, lower_layer
from pipeit.gpu.program import LayerProgram
from pipeit.gpu.space import GEMM_CHOICES, MAX_PARAM, config_key, config_keys, conv_algorithms, gemm_local_bytes
from pipeit.graph import graph_from_model

__all__ = ["config_problem", "shape_problem", "check_tuning_configs", "check_table_configs"]

#: least value of each parameter (WG and LOCAL may be 0: runtime's work-group, registers-only GEMM)
_LEAST = {"CO": 1, "VEC": 1, "TM": 1, "TN": 1, "TK": 1, "WM": 1, "WN": 1}
#: parameters the kernel builders default when absent (WG 0: the runtime's work-group; LOCAL 1)
_OPTIONAL = frozenset(("WG", "LOCAL"))
#: parameters with a fixed set of values
_CHOICES = {"VEC": (1, 4), "LOCAL": (0, 1)}
#: most accumulators one work item may hold (WM*WN, or CO): the kernels unroll over them, and a
#: 256x256 block took pocl 105 s to compile; the search itself never goes above 32
MAX_REGISTER_BLOCK = 64


def shape_problem(spec: LayerSpec, config: Mapping[str, object]) -> Optional[str]:
    """Wrong algorithm, missing or foreign keys, or values outside what the kernels take.

    Needs only the spec's kind and geometry, so it also serves a tuning
    file's recorded trials of layers that are not in hand.
    """
    algo = config.get("algo")
    if spec.kind == "conv":
        algos = conv_algorithms(spec)
        if "algo" not in config:
            return f"names no 'algo' (this layer takes {', '.join(algos)})"
        if algo not in algos:
            return f"algorithm {algo!r} does not fit this layer (it takes {', '.join(algos)})"
    want = config_keys(spec, algo)
    missing, extra = sorted(want - _OPTIONAL - set(config)), sorted(set(config) - want)
    if missing or extra:
        parts = ([f"lacks {', '.join(missing)}"] if missing else []) + (
            [f"has {', '.join(extra)}, which this layer's kernels do not take"] if extra else [])
        return " and ".join(parts)
    for key, value in sorted(config.items()):
        if key == "algo":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not _LEAST.get(key, 0) <= value <= MAX_PARAM:
            return f"{key}={value!r} is not an integer in [{_LEAST.get(key, 0)}, {MAX_PARAM}]"
        if key in _CHOICES and value not in _CHOICES[key]:
            return f"{key}={value} is not one of {', '.join(map(str, _CHOICES[key]))}"
    block = config["WM"] * config["WN"] if "WM" in config and "WN" in config else config.get("CO", 1)
    if block > MAX_REGISTER_BLOCK:
        what = "WM*WN" if "WM" in config else "CO"
        return (f"{what}={block} accumulators per work item is over the kernels' limit of "
                f"{MAX_REGISTER_BLOCK}")
    return None


def config_problem(spec: LayerSpec, config: object, max_work_group: int, local_mem_bytes: int,
                   precision: K.Precision = K.FP32) -> Optional[str]:
    """Why ``config`` cannot run layer ``spec`` on a device with these limits; None when it can."""
    if not isinstance(config, Mapping):
        return "is not an object"
    problem = shape_problem(spec, config)
    if problem:
        return problem
    try:
        launches = LayerProgram.launch_geometry(spec, config, precision)
    except ValueError as err:
        return str(err)
    for launch in launches:
        if launch.local_size is not None:
            items = math.prod(launch.local_size)
            if items > max_work_group:
                return (f"a work-group of {items} items ({launch.name}) is over the device's limit of "
                        f"{max_work_group}")
    if set(GEMM_CHOICES) <= set(config) and int(config["LOCAL"]):
        itemsize = 2 if precision.compute == "half" else 4
        need = gemm_local_bytes(int(config["TM"]), int(config["TN"]), int(config["TK"]), itemsize)
        if need > local_mem_bytes:
            return f"its GEMM tiles need {need} bytes of local memory, the device has {local_mem_bytes}"
    return None


def _describe(config: object) -> str:
    return config_key(config) if isinstance(config, Mapping) else repr(config)


def _specs(model: "schema.ModelT", layers: Iterable[int]) -> Iterable[Tuple[int, str, object, LayerSpec]]:
    """(index, op, descriptor, spec) of each of ``layers`` that has GPU kernels."""
    graph = graph_from_model(model, sha256="")
    helper = _Model(model)
    for i in layers:
        layer = graph.layers[i]
        try:
            spec = lower_layer(model, layer, helper)
        except Unsupported:
            continue  # no kernel: the stage or the check reports the layer itself
        yield i, layer.descriptor.op, layer.descriptor, spec


def check_tuning_configs(tuning: object, where: str, model: "schema.ModelT", info: DeviceInfo,
                         layers: Optional[Sequence[int]] = None) -> None:
    """Refuse (``TuningError``) a tuning file with a config for this device that does not fit one of the
    model's layers (``layers``: only these), in any precision: a bad file is refused whole."""
    from pipeit.gpu.tuner import TuningError

    chosen = range(len(graph_from_model(model, sha256="").layers)) if layers is None else layers
    seen = set()
    for i, op, descriptor, spec in _specs(model, chosen):
        key = descriptor.key_string()
        if key in seen:
            continue
        seen.add(key)
        for name, precision in K.PRECISIONS.items():
            entry = tuning.lookup(info, descriptor, name)
            if entry is None:
                continue
            problem = config_problem(spec, entry["config"], info.max_work_group_size, info.local_mem_bytes,
                                     precision)
            if problem:
                raise TuningError(f"{where}: layer {i} ({op}), {name} config {_describe(entry['config'])}: "
                                  f"{problem}")


def check_table_configs(tables: Sequence[object], model: "schema.ModelT", start: int, end: int,
                        info: DeviceInfo) -> None:
    """Refuse (:class:`GpuError`) accuracy tables for layers ``[start, end)`` whose configs name a layer
    outside the range or do not fit their layer on this device."""
    for table in tables:
        origin = getattr(table, "origin", "") or "GPU tables"
        configs = dict(table.configs)
        outside = sorted(k for k in configs if not start <= k < end)
        if outside:
            raise GpuError(f"{origin} ({table.name!r}): configs for layer {outside[0]}, outside the stage's "
                           f"layers [{start}, {end})")
        for i, op, _, spec in _specs(model, sorted(configs)):
            name = table.precisions.get(i, table.storage)
            problem = config_problem(spec, configs[i], info.max_work_group_size, info.local_mem_bytes,
                                     K.PRECISIONS.get(name, K.FP32))
            if problem:
                raise GpuError(f"{origin} ({table.name!r}): layer {i} ({op}) config {_describe(configs[i])}: "
                               f"{problem}")
