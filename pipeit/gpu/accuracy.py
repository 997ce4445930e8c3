"""Accuracy tuning (P-CNN): the fastest per-layer kernel variants whose output stays acceptable.

Variants trade accuracy for speed: half-precision storage of the stage's
tensors (``fp16-storage``), half arithmetic per layer (``fp16``, where the
device has ``cl_khr_fp16``), and Winograd F(2x2,3x3) per 3x3 stride-1 conv
(fewer multiplies, larger rounding error). Given a tolerance, :func:`tune_accuracy`
compares the stage's end-to-end output with float32 TFLite on a calibration
set (relative error, and top-1 agreement of the last axis), and picks
greedily: per storage choice, layers are switched to their fast variant in
order of time saved, each switch kept only if the output stays within the
tolerance. The fastest plan that meets it wins; when none does (not even
all-fp32 GPU kernels), it says so and falls back to fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ai_edge_litert import schema_py_generated as schema
from pipeit.gpu.check import reference_outputs, relative_error
from pipeit.gpu.device import GpuContext
from pipeit.gpu.space import Config, conv_algorithms, heuristic_config
from pipeit.gpu.stage import GpuStage
from pipeit.split import extract_layers

__all__ = ["AccuracyPlan", "evaluate", "tune_accuracy", "accuracy_table"]


@dataclass(frozen=True)
class AccuracyPlan:
    """A stage configuration and what it costs and loses against float32 TFLite."""

    storage: str  # "fp32" or "fp16-storage": the stage's tensor storage
    fast_layers: Tuple[int, ...]  # layers switched to their fast variant
    ms: float  # median stage device time
    error: float  # max relative error over the calibration set
    top1: float  # fraction of calibration inputs whose argmax agrees
    note: str = ""
    configs: Dict[int, Config] = field(default_factory=dict, compare=False, repr=False)
    precisions: Dict[int, str] = field(default_factory=dict, compare=False, repr=False)

    def meets(self, tolerance: float, min_top1: float = 1.0) -> bool:
        return self.error <= tolerance and self.top1 >= min_top1


def _fast_variant(stage_fp32: GpuStage, layer: int, storage: str, fp16: bool
                  ) -> Optional[Tuple[Config, str]]:
    """(config, precision) of a layer's fast variant, or None when it has none."""
    spec = next(s for s in stage_fp32.specs if s.layer == layer)
    config, precision = None, storage
    if spec.kind == "conv" and "winograd" in conv_algorithms(spec):
        tiles = {k: v for k, v in heuristic_config(spec).items() if k != "algo"}
        if "TM" not in tiles:
            tiles = {"TM": 32, "TN": 32, "TK": 8, "WM": 4, "WN": 4, "LOCAL": 1}
        config = {"algo": "winograd", **tiles}
    if fp16 and storage == "fp16-storage" and spec.kind in ("conv", "depthwise", "gemm"):
        precision = "fp16"
    if config is None and precision == storage:
        return None
    return (config if config is not None else dict(stage_fp32.configs[layer])), precision


def evaluate(model: "schema.ModelT", start: int, end: int, ctx: GpuContext,
             calibration: Sequence[Mapping[str, np.ndarray]], storage: str = "fp32",
             configs: Optional[Mapping[int, Config]] = None,
             precisions: Optional[Mapping[int, str]] = None, repeats: int = 3,
             references: Optional[List[Dict[str, np.ndarray]]] = None) -> Tuple[float, float, float]:
    """(median stage ms, max relative error, top-1 agreement) of one stage configuration."""
    if references is None:
        sub = extract_layers(model, start, end)
        references = [reference_outputs(sub.model_bytes, x) for x in calibration]
    stage = GpuStage(model, start, end, ctx=ctx, configs=configs, precision=storage, precisions=precisions)
    errors, agree, times = [], 0, []
    for x, want in zip(calibration, references):
        got = stage.run({t.name: x[t.name] for t in stage.inputs})
        errors.append(max(relative_error(got[k], v) for k, v in want.items()))
        agree += all(np.array_equal(np.argmax(got[k], axis=-1), np.argmax(v, axis=-1)) for k, v in want.items())
    x0 = {t.name: calibration[0][t.name] for t in stage.inputs}
    for _ in range(repeats):
        times.append(stage.run_timed(x0)[1].total_ms)
    return float(np.median(times)), float(max(errors)), agree / len(calibration)


def tune_accuracy(model: "schema.ModelT", start: int, end: int, ctx: GpuContext,
                  calibration: Sequence[Mapping[str, np.ndarray]], tolerance: float,
                  min_top1: float = 1.0, repeats: int = 3) -> AccuracyPlan:
    """The fastest stage plan within ``tolerance`` (see the module docstring)."""
    sub = extract_layers(model, start, end)
    refs = [reference_outputs(sub.model_bytes, x) for x in calibration]
    base = GpuStage(model, start, end, ctx=ctx)
    best: Optional[AccuracyPlan] = None
    fallback = AccuracyPlan("fp32", (), float("nan"), float("inf"), 0.0)  # replaced by the fp32 pass
    for storage in ("fp16-storage", "fp32"):
        ms, err, top1 = evaluate(model, start, end, ctx, calibration, storage, base.configs, None, repeats, refs)
        plan = AccuracyPlan(storage, (), ms, err, top1, configs=dict(base.configs))
        if storage == "fp32":
            fallback = plan
        if not plan.meets(tolerance, min_top1):
            continue
        fast = {}
        for layer in range(start, end):
            variant = _fast_variant(base, layer, storage, ctx.info.fp16)
            if variant is not None:
                fast[layer] = variant
        # time saved per layer: one timed run with every fast variant on, against the plain run
        order = list(fast)
        if fast:
            configs = dict(base.configs)
            precisions = {}
            for layer, (config, precision) in fast.items():
                configs[layer], precisions[layer] = config, precision
            trial = GpuStage(model, start, end, ctx=ctx, configs=configs, precision=storage,
                             precisions=precisions)
            x0 = {t.name: calibration[0][t.name] for t in trial.inputs}
            fast_ms = trial.run_timed(x0)[1].layer_ms
            plain = GpuStage(model, start, end, ctx=ctx, configs=base.configs, precision=storage)
            plain_ms = plain.run_timed(x0)[1].layer_ms
            saved = {layer: plain_ms[layer - start] - fast_ms[layer - start] for layer in fast}
            order = sorted((layer for layer in fast if saved[layer] > 0), key=lambda k: -saved[k])
        configs, precisions, chosen = dict(base.configs), {}, []
        for layer in order:
            config, precision = fast[layer]
            try_configs = {**configs, layer: config}
            try_precisions = {**precisions, layer: precision}
            ms_try, err_try, top1_try = evaluate(model, start, end, ctx, calibration, storage, try_configs,
                                                 try_precisions, repeats, refs)
            if err_try <= tolerance and top1_try >= min_top1:
                configs, precisions = try_configs, try_precisions
                chosen.append(layer)
                plan = AccuracyPlan(storage, tuple(sorted(chosen)), ms_try, err_try, top1_try,
                                    configs=dict(configs), precisions=dict(precisions))
        if best is None or plan.ms < best.ms:
            best = plan
    if best is None:
        return AccuracyPlan("fp32", (), fallback.ms, fallback.error, fallback.top1,
                            note=f"no variant meets tolerance {tolerance:g} (fp32 GPU kernels reach "
                                 f"{fallback.error:.2e}); falling back to fp32",
                            configs=fallback.configs)
    return best


def accuracy_table(model: "schema.ModelT", start: int, end: int, ctx: GpuContext,
                   calibration: Sequence[Mapping[str, np.ndarray]], tolerances: Sequence[float],
                   min_top1: float = 1.0) -> List[Tuple[float, AccuracyPlan]]:
    """The chosen plan per accuracy level (tolerance), loosest last."""
    return [(t, tune_accuracy(model, start, end, ctx, calibration, t, min_top1)) for t in tolerances]
