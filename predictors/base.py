"""The one predictor interface, its JSON file format and the whole-model calibration.

Every predictor is fitted from profile rows and then answers ``predict(descriptor,
setup) -> ms``. Conventions follow scikit-learn: ``__init__`` only stores
parameters, ``fit`` validates its input and sets the learned state (names
ending in ``_``), ``predict`` refuses to run on an unfitted predictor.

Whole-model calibration
-----------------------
A layer timed alone is invoked again and again, so everything it touches is
warm in cache. Inside a whole model (which the runtime hands to XNNPACK as
one subgraph, without fusing anything across operators) a layer's *input*
is still warm -- the previous layer just wrote it -- but its *weights* were
evicted by the rest of the model since the last frame, and the whole model
runs a little slower than its layers did alone (clock, TLB and prefetcher
state). Summed single-layer times under-predict a whole model by 3-6 % on
the development host. A predictor whose ``calibrated`` flag is set fits,
per core setup, from the stage and whole-model rows::

    model_ms = scale * sum(layer_ms) + ms_per_weight_mb * sum(layer weight MB) + per_layer_ms * n

``scale`` and ``ms_per_weight_mb`` (cold weights re-streamed each frame) are
non-negative, fitted by relative NNLS made robust to outlier rows (Huber
weights: a stage measured while another process ran must not drag the
fit). ``per_layer_ms`` is kept at 0: the per-invoke overhead that summed
single layers count ``n`` times instead of once is below a microsecond on one core
(the fastest single layers take 1-2 us in all), and a free per-layer term
over-fits the few, noisy multi-layer rows. The correction is applied *per
layer* (:meth:`Predictor.calibrate`), so per-layer times of any contiguous
stage add up to the stage's calibrated time.

On ``k`` > 1 cores ``per_layer_ms`` is fitted, and it is *negative*: every
single layer timed alone paid the thread pool's wake-up, a whole model pays
it about once (see :meth:`Calibration.fit`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from cores.filewrite import write_file
from cores.model import CoreSetup
from pipeit.descriptor import LayerDescriptor
from pipeit.errors import PredictorError
from pipeit.profile_table import ProfileRow, ProfileTable
from pipeit.transfer import HopModel
from predictors.fitting import robust_relative_nnls

__all__ = [
    "FORMAT",
    "VERSION",
    "Predictor",
    "Calibration",
    "as_setup",
    "MIN_MS",
]

FORMAT = "pipeit-predictor"
VERSION = 1
#: no layer is predicted faster than this (a model that extrapolates below it is wrong)
MIN_MS = 1e-3


def as_setup(setup: Union[CoreSetup, str]) -> CoreSetup:
    if isinstance(setup, CoreSetup):
        return setup
    if isinstance(setup, str):
        try:
            return CoreSetup.parse(setup)
        except Exception as err:
            raise PredictorError(str(err)) from err
    raise PredictorError(f"a core setup must be CoreSetup or 'CLUSTER:K', got {type(setup).__name__}")


class Calibration:
    """Per-setup coefficients (scale, ms per weight MB, ms per layer) of the whole-model correction."""

    IDENTITY = (1.0, 0.0, 0.0)

    #: a calibrated layer keeps at least this share of its stand-alone time (the wake-up
    #: term is an average over layers; it must not make a tiny layer free or negative)
    FLOOR = 0.25

    @staticmethod
    def apply(coef: Sequence[float], ms: float, d: LayerDescriptor, cold_bytes: Optional[int] = None) -> float:
        """``cold_bytes``: the weight bytes a model re-streams that the stand-alone time did not
        already pay for (default: all of ``d``'s weights)."""
        cold = d.weight_bytes if cold_bytes is None else cold_bytes
        value = coef[0] * ms + coef[1] * cold / 1e6 + coef[2]
        return max(value, Calibration.FLOOR * ms) if coef[2] < 0 else value

    @staticmethod
    def fit(samples: Sequence[Tuple[float, float, int, float]], cores: int = 1) -> Tuple[float, float, float]:
        """``samples``: (sum of predicted layer ms, sum of layer weight MB, layer count, measured ms).

        On ``cores`` > 1 a third, *subtracted* per-layer term is fitted: a layer
        timed alone pays the thread pool's wake-up on every invoke (the workers
        went to sleep between invokes), inside a model the workers are already
        awake from the previous operator. On the quiet 2-core profile summed
        single layers over-predict whole models by 5-40 %, in proportion to the
        layer count, not to the time. On one core there is no pool to wake and
        the term stays 0.
        """
        if not samples:
            return Calibration.IDENTITY
        wake = int(cores) > 1
        cols = [[s[0], s[1]] + ([-float(s[2])] if wake else []) for s in samples]
        x = np.array(cols, dtype=float)
        y = np.array([s[3] for s in samples], dtype=float)
        ratio = float(np.median(y / np.maximum(x[:, 0], 1e-9)))
        if len(samples) < x.shape[1] + 2:
            # Too few rows for the coefficients: a plain ratio is all they support.
            return (ratio, 0.0, 0.0)
        # A row over n layers averages n layers' errors: its ratio is worth n single ones.
        coef = robust_relative_nnls(x, y, np.array([float(s[2]) for s in samples]))
        if coef[0] <= 0:
            return (ratio, 0.0, 0.0)
        return (float(coef[0]), float(coef[1]), -float(coef[2]) if wake else 0.0)


def _calibration_entry(setup: object, values: object) -> Tuple[float, float, float]:
    """A file's calibration coefficients for ``setup``, as :meth:`Calibration.fit` makes them: three
    finite numbers, the scale > 0 and the per-MB term >= 0 (else predictions go NaN or negative)."""
    if not isinstance(values, list) or len(values) != 3 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values):
        raise ValueError(f"calibration of {setup!r} must be a list of 3 finite numbers, got {values!r:.60}")
    scale, per_mb, per_layer = (float(x) for x in values)
    if scale <= 0 or per_mb < 0:
        raise ValueError(f"calibration of {setup!r}: the scale must be > 0 and the per-MB term >= 0, "
                         f"got {values!r:.60}")
    return scale, per_mb, per_layer


class Predictor:
    """Base class: validation, calibration, JSON persistence. Subclasses implement
    ``_fit_layers(rows)``, ``_predict_layer(descriptor, setup)``, ``_state()``, ``_load_state(doc)``."""

    #: registry name (``--kind``)
    name: ClassVar[str] = ""
    #: whether whole-model predictions include the fitted calibration
    calibrated: ClassVar[bool] = False

    # ---- parameters ---------------------------------------------------------------
    def get_params(self) -> Dict[str, object]:
        return {}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # ---- fitting --------------------------------------------------------------------
    def fit(
        self,
        rows: Union[ProfileTable, Iterable[ProfileRow]],
        catalog: Optional[Mapping[str, LayerDescriptor]] = None,
    ) -> "Predictor":
        """Fit from profile rows: layer rows for the layer model, stage/model rows for calibration.

        ``catalog`` maps descriptor keys to descriptors for stage/model rows
        whose layers are not among ``rows`` (leave-one-out evaluation keeps
        the catalogue of the full table: a descriptor is known from the model
        file, it is not a measurement).
        """
        rows = list(rows)
        bad = [r for r in rows if not isinstance(r, ProfileRow)]
        if bad:
            raise PredictorError(
                f"{type(self).__name__}.fit expects profile rows, got {type(bad[0]).__name__}"
            )
        layer_rows = [r for r in rows if r.kind == "layer" and r.ok and r.descriptor is not None]
        if not layer_rows:
            raise PredictorError(f"{type(self).__name__}.fit: no successful layer measurements to fit")
        prints = {r.fingerprint for r in layer_rows}
        self.fingerprint_ = sorted(prints)[0] if len(prints) == 1 else "mixed"
        self.setups_ = tuple(sorted({r.setup for r in layer_rows}))
        # not a layer model's business, but plans made from this predictor charge the board's hop, not the
        # development host's: the predictor is what a board hands the planner in place of its profile
        self.hop_ = ProfileTable(rows, self.fingerprint_).hop_model()
        self._fit_layers(layer_rows)
        self.calibration_ = {}
        if self.calibrated:
            cat: Dict[str, LayerDescriptor] = {r.key: r.descriptor for r in rows if r.descriptor is not None}
            if catalog:
                cat.update(catalog)
            self._fit_calibration([r for r in rows if r.kind in ("stage", "model") and r.ok], cat)
        return self

    def _fit_calibration(self, multi: List[ProfileRow], cat: Mapping[str, LayerDescriptor]) -> None:
        per_setup: Dict[CoreSetup, list] = {}
        for row in multi:
            if row.setup not in self.setups_ or not row.layer_keys:
                continue
            descs = [cat.get(k) for k in row.layer_keys]
            if any(d is None for d in descs):
                continue  # a layer never described: this row cannot calibrate
            total = sum(self._in_model_ms(d, row.setup, self._predict_raw(d, row.setup)) for d in descs)
            mb = sum(self._cold_weight_bytes(d) for d in descs) / 1e6
            per_setup.setdefault(row.setup, []).append((total, mb, len(descs), row.median_ms))
        for setup in self.setups_:
            self.calibration_[str(setup)] = Calibration.fit(per_setup.get(setup, []), setup.cores)

    def _in_model_ms(self, descriptor: LayerDescriptor, setup: CoreSetup, ms: float) -> float:
        """A layer's uncalibrated time inside a model, from its stand-alone time ``ms``.

        The same by default; a predictor whose stand-alone time counts on state a
        model does not leave behind (weights still resident from the previous
        invoke) prices that here, before the calibration.
        """
        return ms

    def _cold_weight_bytes(self, descriptor: LayerDescriptor) -> int:
        """Weight bytes a whole model re-streams that the layer's stand-alone time did not pay.

        By default all of them (a layer timed alone keeps its weights in cache);
        a predictor whose stand-alone time already streams a layer's weights
        from memory (weights beyond the last-level cache) returns 0 for it.
        """
        return int(descriptor.weight_bytes)

    # ---- prediction ------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "setups_"):
            raise PredictorError(
                f"this {type(self).__name__} is not fitted yet: call fit() or load a fitted file"
            )

    def _check(self, descriptor: LayerDescriptor, setup: Union[CoreSetup, str]) -> CoreSetup:
        self._check_fitted()
        if not isinstance(descriptor, LayerDescriptor):
            raise PredictorError(
                f"predict expects a LayerDescriptor, got {type(descriptor).__name__}"
            )
        setup = as_setup(setup)
        if setup not in self.setups_:
            known = ", ".join(str(s) for s in self.setups_)
            raise PredictorError(
                f"the predictor has no data for setup {setup} (profiled setups: {known})"
            )
        return setup

    def _predict_raw(self, descriptor: LayerDescriptor, setup: CoreSetup) -> float:
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite result is the one error said
            value = float(self._predict_layer(descriptor, setup))
        if not math.isfinite(value):
            raise PredictorError(f"{self.name}: non-finite prediction for {descriptor.op} on {setup}")
        return max(value, MIN_MS)

    def predict(self, descriptor: LayerDescriptor, setup: Union[CoreSetup, str]) -> float:
        """Milliseconds of ``descriptor`` timed alone on ``setup`` (no calibration)."""
        setup = self._check(descriptor, setup)
        return self._predict_raw(descriptor, setup)

    def calibrate(self, descriptor: LayerDescriptor, setup: Union[CoreSetup, str], ms: float) -> float:
        """The layer's share of the whole-model time, from its stand-alone time ``ms``."""
        self._check_fitted()
        setup = as_setup(setup)
        coef = self.calibration_.get(str(setup), Calibration.IDENTITY)
        ms = self._in_model_ms(descriptor, setup, ms)
        return Calibration.apply(coef, ms, descriptor, self._cold_weight_bytes(descriptor))

    def predict_layers(
        self,
        descriptors: Sequence[LayerDescriptor],
        setup: Union[CoreSetup, str],
        calibrated: bool = True,
    ) -> List[float]:
        """Per-layer ms for a sequence of layers (inside a model when ``calibrated``)."""
        setup = as_setup(setup)
        out = []
        for d in descriptors:
            ms = self.predict(d, setup)
            out.append(self.calibrate(d, setup, ms) if calibrated else ms)
        return out

    def predict_total(self, descriptors: Sequence[LayerDescriptor], setup: Union[CoreSetup, str]) -> float:
        """Whole-model (or whole-stage) ms: calibrated per-layer times summed."""
        return float(sum(self.predict_layers(descriptors, setup, calibrated=True)))

    # ---- persistence -------------------------------------------------------------------
    def _fitted_state(self) -> dict:
        raise NotImplementedError

    def _load_fitted_state(self, doc: dict) -> None:
        raise NotImplementedError

    def _fit_layers(self, rows: List[ProfileRow]) -> None:
        raise NotImplementedError

    def _predict_layer(self, descriptor: LayerDescriptor, setup: CoreSetup) -> float:
        raise NotImplementedError

    def to_json(self) -> dict:
        self._check_fitted()
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.name,
            "params": self.get_params(),
            "fingerprint": self.fingerprint_,
            "setups": [str(s) for s in self.setups_],
            "calibration": {k: list(v) for k, v in self.calibration_.items()},
            "state": self._fitted_state(),
            "hop": None if getattr(self, "hop_", None) is None else self.hop_.to_json(),
        }

    @classmethod
    def from_json(cls, doc: dict) -> "Predictor":
        try:
            obj = cls(**doc.get("params", {}))
            validate = getattr(obj, "_validate_params", None)
            if validate is not None:  # a file's params are input like fit's: the same checks
                validate()
            obj.fingerprint_ = str(doc["fingerprint"])
            obj.setups_ = tuple(CoreSetup.parse(s) for s in doc["setups"])
            obj.calibration_ = {str(k): _calibration_entry(k, v) for k, v in doc.get("calibration", {}).items()}
            obj.hop_ = None if doc.get("hop") is None else HopModel.from_json(doc["hop"], "predictor hop")
            obj._load_fitted_state(doc["state"])
        except PredictorError:
            raise
        except Exception as err:  # any malformed field of a file a user gave us
            raise PredictorError(f"malformed {cls.name} predictor state: {type(err).__name__}: {err}") from err
        return obj

    def save(self, path: Union[str, Path]) -> None:
        text = json.dumps(self.to_json(), indent=1, sort_keys=True)
        write_file(path, text + "\n")
