"""``flops``: the naive baseline -- time linear in multiply-accumulates, per core setup.

``ms = a + b * MACs`` fitted (non-negative, on relative error) per setup
over every layer. Layers without MACs (pools, adds) get ``a``. Whole-model
time is the plain sum of layer times: no calibration, as the FLOPs-only
baselines in the literature do.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from cores.model import CoreSetup
from pipeit.descriptor import LayerDescriptor
from pipeit.profile_table import ProfileRow
from predictors.base import Predictor
from predictors.fitting import relative_nnls
from predictors.grouped import fit_grouped, predict_grouped

__all__ = ["FlopsPredictor"]


def _features(d: LayerDescriptor, setup: CoreSetup) -> Tuple[str, Sequence[float]]:
    return "all", (1.0, d.macs / 1e6)


def _generic(d: LayerDescriptor, setup: CoreSetup) -> Sequence[float]:
    return (1.0, d.macs / 1e6)


class FlopsPredictor(Predictor):
    """Per-setup ``ms = a + b * MACs``."""

    name = "flops"
    calibrated = False

    def _fit_layers(self, rows: List[ProfileRow]) -> None:
        self.coef_: Dict[str, List[float]] = fit_grouped(rows, _features, _generic, relative_nnls, 0)

    def _predict_layer(self, descriptor: LayerDescriptor, setup: CoreSetup) -> float:
        return predict_grouped(self.coef_, _features, _generic, descriptor, setup)

    def _fitted_state(self) -> dict:
        return {"coef": self.coef_}

    def _load_fitted_state(self, doc: dict) -> None:
        self.coef_ = {str(k): [float(x) for x in v] for k, v in doc["coef"].items()}
