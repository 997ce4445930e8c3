"""``mech``: the project's own predictor -- the mechanisms of XNNPACK's kernels, then a fit.

Layer latency on a CPU is not smooth in the layer's sizes; it steps (Li et
al., MILCOM 2021). The steps come from how XNNPACK runs a layer, and this
model writes those mechanisms down instead of hoping a regression finds
them:

* **kernel family** by shape (:func:`predictors.features.family_of`): 1x1
  stride-1 conv -> GEMM, other conv -> indirect GEMM, depthwise -> dwconv,
  FC -> GEMM with one row, pools, element-wise, other. Each family and
  dtype gets its own coefficients.
* **GEMM tiles**: output channels are padded up to the tile width NR, output
  pixels are processed MR rows at a time; the work is
  ``ceil(M/MR)*MR * ceil(N/NR)*NR * K`` padded MACs, not ``M*N*K``.
* **dwconv channel tile** CT: channels padded to CT, times kernel taps.
* **thread chunking**: the tiles are dealt to ``k`` threads, so a thread does
  ``ceil(tiles/k)`` of them (GEMM tiles; dwconv and pools split output
  rows): two threads on 3 tiles take as long as on 4.
* **memory traffic against compute**: weights and activations cross the
  memory system whatever the arithmetic; the time is the *sum* of a compute
  term and a bytes term (plus a per-tile term for tap loops and a fixed
  per-invoke cost), each with a non-negative coefficient fitted by NNLS on
  relative error, per family and core setup.
* **calibration** for whole models (see :mod:`predictors.base`).

MR, NR and CT are not read from the CPU: the fit tries each candidate tile
size and keeps the one whose model explains the measurements best (on this
AVX-512 host XNNPACK's f32 GEMM is 7x16 -- the fit should find NR=16).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from cores.model import CoreSetup
from pipeit.descriptor import LayerDescriptor
from pipeit.errors import PredictorError
from pipeit.profile_table import ProfileRow
from predictors.base import Predictor
from predictors.features import ceil_div, family_of, gemm_shape, layer_bytes, output_pixels
from predictors.fitting import relative_nnls
from predictors.grouped import fit_grouped, predict_grouped, relative_errors

__all__ = ["MechPredictor", "mech_features"]

_DEFAULT_TILES = {"mr": 7, "nr": 16, "ct": 16}


#: bytes a core keeps close (its L2); traffic beyond it streams from L3/DRAM at a higher cost
CACHE_MB = 1.0


def mech_features(
    d: LayerDescriptor, setup: CoreSetup, mr: int, nr: int, ct: int
) -> Tuple[str, Tuple[float, ...]]:
    """(family, features) of a layer on ``setup`` for tile sizes ``mr``x``nr`` and channel tile ``ct``."""
    fam = family_of(d)
    base = fam.split("/")[0]
    k = max(int(setup.cores), 1)
    act, weights = layer_bytes(d)
    mb = (act + weights) / 1e6
    spill = max(0.0, mb - CACHE_MB * k)  # the working set that does not fit the cores' caches
    if base in ("gemm", "igemm"):
        g = gemm_shape(d)
        tiles = ceil_div(g.m, mr) * ceil_div(g.n, nr)
        per_thread = ceil_div(tiles, k)
        work = per_thread * mr * nr * g.k / 1e6           # padded MACs on the busiest thread
        taps = per_thread * g.taps / 1e3                  # tap-loop overhead (indirection)
        return fam, (1.0, work, taps, mb / k, mb)
    if base == "fc":
        g = gemm_shape(d)
        cols = ceil_div(ceil_div(g.n, nr), k) * nr      # NR-wide column chunks per thread
        work = cols * g.k * max(g.m, 1) / 1e6
        wpt = cols * g.k * 4 / 1e6 if d.dtype == "float32" else cols * g.k / 1e6
        return fam, (1.0, work, wpt, act / 1e6)
    if base == "dwconv":
        g = gemm_shape(d)
        out = d.output_shape
        width = int(out[2]) if len(out) == 4 else 1
        rows = ceil_div(g.rows, k)                       # output rows per thread
        chan = ceil_div(max(d.out_channels, 1), ct) * ct
        work = rows * width * chan * g.taps / 1e6
        return fam, (1.0, work, rows * width * ceil_div(d.out_channels, ct) / 1e3, mb / k, spill)
    if base == "pool":
        kernel = d.kernel or (1, 1)
        taps = kernel[0] * kernel[1]
        if d.op == "MEAN" and len(d.input_shape) == 4:
            taps = d.input_shape[1] * d.input_shape[2]
        work = output_pixels(d) * max(d.out_channels, 1) * taps / k / 1e6
        return fam, (1.0, work, mb / k, spill)
    return fam, (1.0, mb / k, mb, spill)


def _generic(d: LayerDescriptor, setup: CoreSetup) -> Sequence[float]:
    act, weights = layer_bytes(d)
    k = max(int(setup.cores), 1)
    return (1.0, d.macs / k / 1e6, (act + weights) / k / 1e6)


class MechPredictor(Predictor):
    """Mechanistic XNNPACK model with tile sizes chosen by the fit.

    Parameters
    ----------
    mr_choices, nr_choices, ct_choices:
        Candidate GEMM row tile, GEMM column tile and dwconv channel tile.
    """

    name = "mech"
    calibrated = True

    def __init__(
        self,
        mr_choices: Sequence[int] = (4, 5, 6, 7, 8),
        nr_choices: Sequence[int] = (8, 16, 32),
        ct_choices: Sequence[int] = (8, 16, 32),
    ) -> None:
        self.mr_choices = tuple(mr_choices)
        self.nr_choices = tuple(nr_choices)
        self.ct_choices = tuple(ct_choices)

    def get_params(self) -> Dict[str, object]:
        return {
            "mr_choices": list(self.mr_choices),
            "nr_choices": list(self.nr_choices),
            "ct_choices": list(self.ct_choices),
        }

    # the featurizer depends on the tiles learned for each family
    def _featurize(self, tiles: Dict[str, Dict[str, int]]):
        def featurize(d: LayerDescriptor, setup: CoreSetup):
            t = tiles.get(family_of(d), _DEFAULT_TILES)
            return mech_features(d, setup, t["mr"], t["nr"], t["ct"])
        return featurize

    def _fit_layers(self, rows: List[ProfileRow]) -> None:
        for name in ("mr_choices", "nr_choices", "ct_choices"):
            values = getattr(self, name)
            if not values or any(int(v) < 1 for v in values):
                raise PredictorError(f"MechPredictor: {name} must be positive integers, got {values!r}")
        by_family: Dict[str, List[ProfileRow]] = {}
        for r in rows:
            by_family.setdefault(family_of(r.descriptor), []).append(r)
        tiles: Dict[str, Dict[str, int]] = {}
        for fam, fam_rows in sorted(by_family.items()):
            base = fam.split("/")[0]
            if base in ("gemm", "igemm"):
                grid = [{"mr": m, "nr": n, "ct": 16} for m in self.mr_choices for n in self.nr_choices]
            elif base == "fc":
                grid = [{"mr": 1, "nr": n, "ct": 16} for n in self.nr_choices]
            elif base == "dwconv":
                grid = [{"mr": 1, "nr": 16, "ct": c} for c in self.ct_choices]
            else:
                grid = [dict(_DEFAULT_TILES)]
            best, best_err = grid[0], np.inf
            for cand in grid:
                feat = self._featurize({fam: cand})
                coefs = fit_grouped(fam_rows, feat, _generic, relative_nnls, 2)
                err = float(np.mean(relative_errors(coefs, feat, _generic, fam_rows) ** 2))
                if err < best_err - 1e-12:
                    best, best_err = cand, err
            tiles[fam] = {k: int(v) for k, v in best.items()}
        self.tiles_ = tiles
        self.coef_: Dict[str, List[float]] = fit_grouped(
            rows, self._featurize(tiles), _generic, relative_nnls, 2
        )

    def _predict_layer(self, descriptor: LayerDescriptor, setup: CoreSetup) -> float:
        return predict_grouped(self.coef_, self._featurize(self.tiles_), _generic, descriptor, setup)

    def _fitted_state(self) -> dict:
        return {"tiles": self.tiles_, "coef": self.coef_}

    def _load_fitted_state(self, doc: dict) -> None:
        self.tiles_ = {str(f): {k: int(v) for k, v in t.items()} for f, t in doc["tiles"].items()}
        for fam, t in self.tiles_.items():
            if set(t) != {"mr", "nr", "ct"} or min(t.values()) < 1:
                raise ValueError(f"bad tile record for {fam}: {t}")
        self.coef_ = {str(k): [float(x) for x in v] for k, v in doc["coef"].items()}
