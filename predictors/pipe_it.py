"""``pipe-it``: Pipe-it's descriptor regression, re-implemented from the paper's description.

Pipe-it (Wang et al., TCAD 2020) predicts each layer's time on every core
configuration (core type x core count) from the convolution layer's
descriptors alone, with regression. Only the abstract and secondary
descriptions are reachable, so these are *our assumptions*:

* one linear regression per layer class and per core setup (core type and
  count; on this project's platforms a cluster has one core type, so a
  setup ``cluster:k`` is a (type, count) pair);
* layer classes: standard convolution, depthwise convolution, fully
  connected (ARM-CL runs each with its own function), and everything else;
* the regressors of a convolution-like layer are its descriptors' sizes:
  MACs, input volume (H*W*Cin), output volume (H*W*Cout) and weight count,
  plus an intercept; ordinary least squares (the paper names no
  constraint), on relative error;
* non-convolution layers (pools, adds, concatenations) are not modelled by
  descriptors in the paper; we give them ``a + b * output volume`` per setup;
* whole-model time is the sum of layer times (no calibration): Pipe-it sums
  layer predictions into stage times.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import math

from cores.model import CoreSetup
from pipeit.descriptor import LayerDescriptor
from predictors.fitting import relative_lstsq
from predictors.grouped import GroupedLinearPredictor

__all__ = ["PipeItPredictor"]

_CLASSES = {"CONV_2D": "conv", "DEPTHWISE_CONV_2D": "dwconv", "FULLY_CONNECTED": "fc"}


def _volume(shape) -> float:
    return float(math.prod(int(x) for x in shape)) if shape else 0.0


def _features(d: LayerDescriptor, setup: CoreSetup) -> Tuple[str, Sequence[float]]:
    cls = _CLASSES.get(d.op, "other")
    out_vol = _volume(d.output_shape) / 1e6
    if cls == "other":
        return cls, (1.0, out_vol)
    in_vol = _volume(d.input_shape) / 1e6
    weights = d.weight_bytes / 4e6  # element count, in millions
    return cls, (1.0, d.macs / 1e6, in_vol, out_vol, weights)


def _generic(d: LayerDescriptor, setup: CoreSetup) -> Sequence[float]:
    return (1.0, d.macs / 1e6, _volume(d.output_shape) / 1e6)


class PipeItPredictor(GroupedLinearPredictor):
    """Per (layer class, setup) linear regression on convolution descriptors."""

    name = "pipe-it"
    featurize = staticmethod(_features)
    generic = staticmethod(_generic)
    solver = staticmethod(relative_lstsq)
    min_extra_rows = 2
    nonnegative_fit = False  # least squares: a negative coefficient is a fit's own result
