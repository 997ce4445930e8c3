"""Per-(group, setup) linear fits with a fallback: the skeleton all three predictors share.

A predictor maps a layer to a *group* (an op class or a kernel family) and a
feature vector; one linear model is fitted per group and core setup. A group
with too few rows for its features falls back to the ``*`` model of that
setup (fitted on every layer with the generic features), so a layer type
seen rarely or never (a held-out model's only LRN) still gets an estimate
instead of being silently skipped.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cores.model import CoreSetup
from pipeit.descriptor import LayerDescriptor, TensorInfo
from pipeit.errors import PredictorError
from pipeit.profile_table import ProfileRow
from predictors.base import Predictor

__all__ = ["FALLBACK", "fit_grouped", "predict_grouped", "load_coefs", "relative_errors", "GroupedLinearPredictor"]

FALLBACK = "*"

Featurize = Callable[[LayerDescriptor, CoreSetup], Tuple[str, Sequence[float]]]
Generic = Callable[[LayerDescriptor, CoreSetup], Sequence[float]]
Solver = Callable[[np.ndarray, np.ndarray], np.ndarray]


def fit_grouped(
    rows: Sequence[ProfileRow],
    featurize: Featurize,
    generic: Generic,
    solver: Solver,
    min_extra_rows: int = 2,
    weight: Optional[Callable[[ProfileRow], float]] = None,
) -> Dict[str, List[float]]:
    """Fit ``{"group|setup": coef}``; the generic model is stored as ``"*|setup"``.

    ``weight`` (optional) gives each row's weight; the solver is then called
    as ``solver(X, y, w)``.
    """
    buckets: Dict[Tuple[str, CoreSetup], Tuple[list, list, list]] = {}
    generic_buckets: Dict[CoreSetup, Tuple[list, list, list]] = {}
    for row in rows:
        group, vec = featurize(row.descriptor, row.setup)
        w = 1.0 if weight is None else float(weight(row))
        xs, ys, ws = buckets.setdefault((group, row.setup), ([], [], []))
        xs.append(list(vec))
        ys.append(row.median_ms)
        ws.append(w)
        gx, gy, gw = generic_buckets.setdefault(row.setup, ([], [], []))
        gx.append(list(generic(row.descriptor, row.setup)))
        gy.append(row.median_ms)
        gw.append(w)

    def solve(xs, ys, ws):
        if weight is None:
            return solver(np.array(xs), np.array(ys))
        return solver(np.array(xs), np.array(ys), np.array(ws))

    coefs: Dict[str, List[float]] = {}
    for setup, (gx, gy, gw) in generic_buckets.items():
        coefs[f"{FALLBACK}|{setup}"] = [float(c) for c in solve(gx, gy, gw)]
    for (group, setup), (xs, ys, ws) in buckets.items():
        if len(ys) >= len(xs[0]) + min_extra_rows:
            coefs[f"{group}|{setup}"] = [float(c) for c in solve(xs, ys, ws)]
    return coefs


def predict_grouped(
    coefs: Dict[str, List[float]],
    featurize: Featurize,
    generic: Generic,
    d: LayerDescriptor,
    setup: CoreSetup,
) -> float:
    group, vec = featurize(d, setup)
    coef = coefs.get(f"{group}|{setup}")
    if coef is not None and len(coef) == len(vec):
        return float(np.dot(coef, vec))
    fallback, features = coefs.get(f"{FALLBACK}|{setup}"), generic(d, setup)
    if fallback is None or len(fallback) != len(features):
        # only a hand-edited file gets here: fitting always stores a generic model per setup
        raise PredictorError(f"no generic model with {len(features)} coefficients for setup {setup} "
                             f"(got {'none' if fallback is None else len(fallback)})")
    return float(np.dot(fallback, features))


#: a layer to count a generic model's features with (they do not depend on the layer's sizes)
_PROBE = LayerDescriptor("ADD", (TensorInfo("x", (1, 1, 1, 1), "float32"),),
                         (TensorInfo("y", (1, 1, 1, 1), "float32"),))


#: the largest coefficient a file may hold: far beyond any fit (features are MACs, bytes, counts; times
#: are ms), and small enough that a prediction cannot overflow to inf
MAX_COEFFICIENT = 1e30


def load_coefs(doc: object, setups: Sequence[CoreSetup], generic: Generic,
               nonnegative: bool = False) -> Dict[str, List[float]]:
    """A file's ``{"group|setup": [coef, ...]}``, validated: finite numbers (``nonnegative``: none below
    zero, for models a non-negative solver fits: a negative one is a hand edit that predicts every layer
    at the floor), a generic model per setup with as many coefficients as ``generic`` gives features.

    Checked on load so a malformed file is refused with one line naming it, not
    by a ``KeyError`` or numpy's shape error at the first prediction; a
    ``ValueError`` here becomes the loader's "malformed ... predictor state".
    """
    if not isinstance(doc, dict):
        raise ValueError("'coef' must be an object of 'group|setup' -> coefficient lists")
    out: Dict[str, List[float]] = {}
    for key, values in doc.items():
        if not isinstance(values, list) or not values or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values):
            raise ValueError(f"coefficients of {key!r} must be a non-empty list of finite numbers")
        if max(abs(x) for x in values) > MAX_COEFFICIENT:
            raise ValueError(f"coefficients of {key!r} must be within +-{MAX_COEFFICIENT:g} (no fit makes "
                             f"more), got {max(values, key=abs)!r}")
        if nonnegative and min(values) < 0:
            raise ValueError(f"coefficients of {key!r} must be >= 0 (a non-negative fit makes them), "
                             f"got {min(values)!r}")
        out[str(key)] = [float(x) for x in values]
    missing = [str(s) for s in setups if f"{FALLBACK}|{s}" not in out]
    if missing:
        raise ValueError(f"no generic model ('{FALLBACK}|SETUP') for setup(s) {', '.join(missing)}")
    for setup in setups:
        size = len(generic(_PROBE, setup))
        if len(out[f"{FALLBACK}|{setup}"]) != size:
            raise ValueError(f"the generic model of {setup} needs {size} coefficients, "
                                 f"has {len(out[f'{FALLBACK}|{setup}'])}")
    return out


def relative_errors(coefs, featurize, generic, rows: Sequence[ProfileRow]) -> np.ndarray:
    pred = np.array([predict_grouped(coefs, featurize, generic, r.descriptor, r.setup) for r in rows])
    meas = np.array([r.median_ms for r in rows])
    return (np.maximum(pred, 1e-3) - meas) / meas


class GroupedLinearPredictor(Predictor):
    """A baseline that is one linear model per (group, setup): subclasses say which.

    ``featurize``/``generic`` give the group and features of a layer (see
    :func:`fit_grouped`), ``solver`` fits one model and ``min_extra_rows`` is
    how many rows beyond the feature count a group needs before it gets its
    own model instead of the generic one. The flops and pipe-it baselines
    differ only in these.
    """

    calibrated = False
    featurize: Featurize
    generic: Generic
    solver: Solver
    min_extra_rows: int = 2
    #: whether ``solver`` keeps coefficients >= 0 (then a file's negative one is refused on load)
    nonnegative_fit: bool = True

    def _fit_layers(self, rows: List[ProfileRow]) -> None:
        cls = type(self)
        self.coef_: Dict[str, List[float]] = fit_grouped(
            rows, cls.featurize, cls.generic, cls.solver, cls.min_extra_rows
        )

    def _predict_layer(self, descriptor: LayerDescriptor, setup: CoreSetup) -> float:
        cls = type(self)
        return predict_grouped(self.coef_, cls.featurize, cls.generic, descriptor, setup)

    def _fitted_state(self) -> dict:
        return {"coef": self.coef_}

    def _load_fitted_state(self, doc: dict) -> None:
        cls = type(self)
        self.coef_ = load_coefs(doc["coef"], self.setups_, cls.generic, cls.nonnegative_fit)
