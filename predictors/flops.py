"""``flops``: the naive baseline -- time linear in multiply-accumulates, per core setup.

``ms = a + b * MACs`` fitted (non-negative, on relative error) per setup
over every layer. Layers without MACs (pools, adds) get ``a``. Whole-model
time is the plain sum of layer times: no calibration, as the FLOPs-only
baselines in the literature do.
"""

from __future__ import annotations

from typing import Sequence, Tuple

from cores.model import CoreSetup
from pipeit.descriptor import LayerDescriptor
from predictors.fitting import relative_nnls
from predictors.grouped import GroupedLinearPredictor

__all__ = ["FlopsPredictor"]


def _features(d: LayerDescriptor, setup: CoreSetup) -> Tuple[str, Sequence[float]]:
    return "all", (1.0, d.macs / 1e6)


def _generic(d: LayerDescriptor, setup: CoreSetup) -> Sequence[float]:
    return (1.0, d.macs / 1e6)


class FlopsPredictor(GroupedLinearPredictor):
    """Per-setup ``ms = a + b * MACs``."""

    name = "flops"
    featurize = staticmethod(_features)
    generic = staticmethod(_generic)
    solver = staticmethod(relative_nnls)
    min_extra_rows = 0
