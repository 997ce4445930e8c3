"""Tune every distinct layer of a model on one device and write the results to a tuning file.

Layers with equal descriptor keys run the same kernels, so each key is tuned
once. For each layer the untuned baseline (:func:`~pipeit.gpu.space.default_config`)
is measured too, so the file records how much tuning bought. Layers whose
best config is already in the tuning file for this device are skipped
(``retune=False``): the file is reused on the next run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Union

from ai_edge_litert import schema_py_generated as schema
from pipeit.gpu import kernels as K
from pipeit.gpu.device import GpuContext
from pipeit.gpu.lowering import Unsupported, _Model, lower_layer
from pipeit.gpu.space import default_config, heuristic_config, search_space
from pipeit.gpu.tuner import Measurer, TuningFile, best_trial, make_strategy, transfer_prior, tune
from pipeit.graph import graph_from_model
from pipeit.modelfile import ModelSource, read_model

__all__ = ["LayerTuning", "tune_model", "gpu_layer_times"]


@dataclass(frozen=True)
class LayerTuning:
    """What tuning one layer found: best config and time, the untuned time, trial counts."""

    layer: int
    op: str
    best_ms: Optional[float]
    untuned_ms: Optional[float]
    trials: int
    failed: int
    config: dict
    skipped: str = ""

    @property
    def speedup(self) -> Optional[float]:
        if self.best_ms and self.untuned_ms:
            return self.untuned_ms / self.best_ms
        return None


def tune_model(source: Union[ModelSource, "schema.ModelT"], ctx: GpuContext, tuning: TuningFile,
               trials: int = 32, strategy: str = "model", precision: str = "fp32", seed: int = 0,
               retune: bool = False, batch_size: int = 4, repeats: int = 3,
               layers: Optional[List[int]] = None,
               progress: Optional[Callable[[int], None]] = None,
               recorded: Optional[Callable[[], None]] = None) -> List[LayerTuning]:
    """Tune each distinct supported layer (or only ``layers``); record the best in ``tuning``.

    ``recorded()`` is called after each layer's result is recorded: the CLI
    saves the file there, so an interrupted run keeps the layers it finished.
    """
    model = source if isinstance(source, schema.ModelT) else read_model(source)
    graph = graph_from_model(model, sha256="")
    helper = _Model(model)
    prec = K.PRECISIONS[precision]
    seen = set()
    results: List[LayerTuning] = []
    for layer in graph.layers:
        if layers is not None and layer.index not in layers:
            continue
        key = layer.descriptor.key()
        if key in seen:
            continue
        seen.add(key)
        op = layer.descriptor.op
        try:
            spec = lower_layer(model, layer, helper)
        except Unsupported as err:
            results.append(LayerTuning(layer.index, op, None, None, 0, 0, {}, f"unsupported: {err}"))
            continue
        space = search_space(spec, ctx.info.max_work_group_size, ctx.info.local_mem_bytes)
        if not retune:
            found = tuning.lookup(ctx.info, layer.descriptor, precision)
            if found is not None:
                results.append(LayerTuning(layer.index, op, found["ms"], found.get("untuned_ms"), 0, 0,
                                           dict(found["config"]), "already tuned"))
                continue
        measurer = Measurer(ctx, spec, prec, repeats=repeats, seed=seed)
        untuned = measurer.measure(default_config(spec))
        if len(space) <= 1:
            done = [untuned]
        else:
            # the model search starts from a cost model trained on this device's other tuned layers
            prior = None if strategy != "model" else transfer_prior(tuning.priors(
                ctx.info, precision, exclude=layer.descriptor.key_string(), kind=spec.kind), seed)
            search = make_strategy(strategy, space, trials, batch_size, seed, spec=spec, prior=prior)
            done = tune(search, measurer, progress) + [untuned]
        best = best_trial(done)
        failed = sum(1 for t in done if not t.ok)
        if best is None:
            results.append(LayerTuning(layer.index, op, None, None, len(done), failed, {},
                                       "every trial failed"))
            continue
        tuning.record(ctx.info, layer.descriptor, precision, best.config_dict, best.ms, strategy,
                      len(done), untuned.ms if untuned.ok else None, spec=spec, history=done)
        if recorded is not None:
            recorded()
        results.append(LayerTuning(layer.index, op, best.ms, untuned.ms if untuned.ok else None,
                                   len(done), failed, best.config_dict))
    return results


def gpu_layer_times(source: Union[ModelSource, "schema.ModelT"], ctx: GpuContext,
                    tuning: Optional[TuningFile] = None, precision: str = "fp32",
                    repeats: int = 3) -> List[float]:
    """Per-layer GPU time (ms) for the DSE: ``math.inf`` where the GPU has no kernel.

    A layer whose descriptor the tuning file holds for this device takes the
    tuned time; any other supported layer is measured once with the
    heuristic config (device time from profiling events). Transfers to and
    from the device are not included: the DSE's transfer model prices cuts.
    """
    model = source if isinstance(source, schema.ModelT) else read_model(source)
    graph = graph_from_model(model, sha256="")
    helper = _Model(model)
    prec = K.PRECISIONS[precision]
    cache: dict = {}
    times: List[float] = []
    for layer in graph.layers:
        key = layer.descriptor.key()
        if key not in cache:
            try:
                spec = lower_layer(model, layer, helper)
            except Unsupported:
                cache[key] = math.inf
            else:
                found = tuning.lookup(ctx.info, layer.descriptor, precision) if tuning else None
                if found is not None:
                    cache[key] = float(found["ms"])
                else:
                    trial = Measurer(ctx, spec, prec, repeats=repeats).measure(heuristic_config(spec))
                    cache[key] = float(trial.ms) if trial.ok else math.inf
        times.append(cache[key])
    return times
