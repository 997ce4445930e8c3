"""Leave-one-model-out accuracy of every predictor on a profile table.

For each held-out model M: every predictor is fitted on the rows of the
other models (and the sweep), with *strictly unseen* layers -- a layer row
whose descriptor key occurs anywhere in M is dropped from training, even if
another model measured it -- and then predicts M's layers (each occurrence
in M, measured alone) and M's whole-model time (with the predictor's
calibration). Layers faster than ``min_ms`` are left out of the per-layer
metrics (their relative error is timer noise), but always count in the
whole-model sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from cores.model import CoreSetup
from pipeit.errors import ProfileError
from pipeit.profile_table import ProfileTable
from predictors.base import Predictor

__all__ = ["LayerResult", "ModelResult", "Metrics", "evaluate", "metrics", "leave_one_out"]


@dataclass(frozen=True)
class LayerResult:
    predictor: str
    model: str
    setup: str
    op: str
    measured_ms: float
    predicted_ms: float
    #: the layer's descriptor key (for breakdowns by kernel family or shape)
    key: str = ""

    @property
    def rel_error(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms


@dataclass(frozen=True)
class ModelResult:
    predictor: str
    model: str
    setup: str
    measured_ms: float
    predicted_ms: float

    @property
    def rel_error(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms


@dataclass(frozen=True)
class Metrics:
    """Per-layer MAPE / RMSPE / share within 10 %, and whole-model errors (all in %)."""

    n_layers: int
    mape: float
    rmspe: float
    within10: float
    model_mape: float
    model_max: float
    per_op: Dict[str, Tuple[int, float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "n_layers": self.n_layers,
            "layer_mape_pct": self.mape,
            "layer_rmspe_pct": self.rmspe,
            "layer_within10_pct": self.within10,
            "model_mape_pct": self.model_mape,
            "model_max_abs_err_pct": self.model_max,
            "per_op": {op: {"n": n, "mape_pct": m} for op, (n, m) in sorted(self.per_op.items())},
        }


def metrics(layers: Sequence[LayerResult], models: Sequence[ModelResult], min_ms: float) -> Metrics:
    kept = [r for r in layers if r.measured_ms >= min_ms]
    err = np.array([r.rel_error for r in kept]) if kept else np.zeros(0)
    merr = np.array([r.rel_error for r in models]) if models else np.zeros(0)
    per_op: Dict[str, List[float]] = {}
    for r in kept:
        per_op.setdefault(r.op, []).append(abs(r.rel_error))
    nan = float("nan")
    return Metrics(
        n_layers=len(kept),
        mape=float(np.mean(np.abs(err)) * 100) if err.size else nan,
        rmspe=float(np.sqrt(np.mean(err ** 2)) * 100) if err.size else nan,
        within10=float(np.mean(np.abs(err) <= 0.10) * 100) if err.size else nan,
        model_mape=float(np.mean(np.abs(merr)) * 100) if merr.size else nan,
        model_max=float(np.max(np.abs(merr)) * 100) if merr.size else nan,
        per_op={op: (len(v), float(np.mean(v) * 100)) for op, v in per_op.items()},
    )


def leave_one_out(
    table: ProfileTable,
    kinds: Sequence[str],
    holdout: Optional[Sequence[str]] = None,
    setups: Optional[Sequence[CoreSetup]] = None,
    fitted: Optional[Dict[Tuple[str, str], Predictor]] = None,
) -> Tuple[List[LayerResult], List[ModelResult]]:
    """Per-layer and whole-model predictions for every held-out model and predictor kind.

    ``fitted`` (optional): filled with ``{(held-out model, kind): predictor}``, the fold's
    fitted predictors, for tools that take a prediction apart (``tools/eval_breakdown.py``).
    """
    from predictors import make_predictor

    catalog = table.catalog()
    models = table.models()
    targets = list(holdout) if holdout else models
    missing = [m for m in targets if m not in models]
    if missing:
        raise ProfileError(
            f"no whole-model rows for {', '.join(missing)} in the profile (models: {', '.join(models) or 'none'})"
        )
    layer_time: Dict[Tuple[str, CoreSetup], float] = {
        (r.key, r.setup): r.median_ms for r in table.layer_rows()
    }
    layer_results: List[LayerResult] = []
    model_results: List[ModelResult] = []
    for held in targets:
        model_rows = [r for r in table.multi_rows() if r.model == held and r.kind == "model"]
        held_keys = {k for r in model_rows for k in r.layer_keys}
        train = [
            r for r in table.rows
            if r.ok and r.model != held and not (r.kind == "layer" and r.key in held_keys)
        ]
        if not any(r.kind == "layer" for r in train):  # the fit would fail with a message about itself
            others = [m for m in models if m != held]
            raise ProfileError(
                f"holding out {held} leaves no layer rows to fit on (the profile's other models: "
                f"{', '.join(others) or 'none'}; its layers all belong to {held}): profile more models into "
                f"it (pipeit zoo NAME -o NAME.tflite, then pipeit profile NAME.tflite -o PROFILE.csv) or "
                f"generated layers (pipeit profile --sweep N)"
            )
        for kind in kinds:
            predictor: Predictor = make_predictor(kind).fit(train, catalog=catalog)
            if fitted is not None:
                fitted[(held, kind)] = predictor
            for mrow in model_rows:
                if setups and mrow.setup not in setups:
                    continue
                if mrow.setup not in predictor.setups_:
                    continue
                descs = [catalog[k] for k in mrow.layer_keys if k in catalog]
                if len(descs) != len(mrow.layer_keys):
                    continue
                raw = predictor.predict_layers(descs, mrow.setup, calibrated=False)
                for key, d, ms in zip(mrow.layer_keys, descs, raw):
                    measured = layer_time.get((key, mrow.setup))
                    if measured is not None:
                        layer_results.append(
                            LayerResult(kind, held, str(mrow.setup), d.op, measured, ms, key)
                        )
                total = predictor.predict_total(descs, mrow.setup)
                model_results.append(ModelResult(kind, held, str(mrow.setup), mrow.median_ms, total))
    return layer_results, model_results


def evaluate(
    table: ProfileTable,
    kinds: Sequence[str],
    holdout: Optional[Sequence[str]] = None,
    min_ms: float = 0.05,
    setups: Optional[Sequence[CoreSetup]] = None,
) -> Tuple[Dict[str, Metrics], List[LayerResult], List[ModelResult]]:
    layers, models = leave_one_out(table, kinds, holdout, setups)
    out = {
        kind: metrics([r for r in layers if r.predictor == kind],
                      [r for r in models if r.predictor == kind], min_ms)
        for kind in kinds
    }
    return out, layers, models
