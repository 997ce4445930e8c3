"""``mech``: the project's own predictor -- the mechanisms of XNNPACK's kernels, then a fit.

Layer latency on a CPU is not smooth in the layer's sizes; it steps (Li et
al., MILCOM 2021). The steps come from how XNNPACK runs a layer, and this
model writes those mechanisms down instead of hoping a regression finds
them:

* **kernel family** by shape (:func:`predictors.features.family_of`): 1x1
  stride-1 conv -> GEMM, other conv -> indirect GEMM, depthwise -> dwconv,
  FC -> GEMM with one row, pools, element-wise, other. Each family and
  dtype gets its own coefficients.
* **GEMM tiles**: output channels are padded up to the tile width NR (or a
  narrower kernel's NS when the layer has at most NS channels), output
  pixels are processed MR rows at a time; the work is
  ``ceil(M/MR)*MR * ceil(N/NR)*NR * K`` padded MACs, not ``M*N*K``.
* **dwconv channel tile** CT: channels padded to CT, times kernel taps; a
  pixel whose weights and input window overflow L1 re-reads them from L2.
* **memory-bound ops** (pools, element-wise, concatenation): bytes moved
  (a fused activation is one more pass over the output), window work for
  pools, and the working set beyond L2.
* **thread chunking**: the tiles are dealt to ``k`` threads, so a thread does
  ``ceil(tiles/k)`` of them (GEMM tiles; dwconv and pools split output
  rows): two threads on 3 tiles take as long as on 4.
* **memory traffic against compute**: weights and activations cross the
  memory system whatever the arithmetic; the time is the *sum* of a compute
  term and a bytes term (plus a per-tile term for tap loops and a fixed
  per-invoke cost), each with a non-negative coefficient fitted by NNLS on
  relative error, per family and core setup.
* **DRAM streaming** for layers whose weights exceed the LLC: the larger of
  the in-cache time and the weights over a bandwidth that k threads share
  (:mod:`predictors.bandwidth`), minus what stays resident when timed alone.
* **calibration** for whole models (see :mod:`predictors.base`): summed
  single layers times a scale, plus the cold weights re-streamed each frame.
* **row weights**: generated sweep layers count ``sweep_weight`` of a model
  layer, and layers under ``NOISE_FLOOR_MS`` ramp down.

MR, NR and CT are not read from the CPU: the fit tries each candidate tile
size and keeps the one whose model explains the measurements best (on this
development host the IGEMM steps are NR=32 with a 16-wide kernel for <= 16
channels, and the fit finds exactly that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from cores.model import CoreSetup
from pipeit.descriptor import LayerDescriptor
from pipeit.errors import PredictorError
from pipeit.profile_table import ProfileRow
from predictors.bandwidth import StreamBandwidth, fit_stream_bandwidth
from predictors.base import Calibration, Predictor
from predictors.features import ceil_div, family_of, gemm_shape, layer_bytes, output_pixels
from predictors.fitting import robust_relative_nnls
from predictors.grouped import FALLBACK, fit_grouped, load_coefs, predict_grouped, relative_errors

__all__ = ["MechPredictor", "LayerTerms", "FEATURE_NAMES", "mech_features", "column_tiles", "moved_bytes", "SWEEP_MODEL", "CACHE_MB", "L1_BYTES", "NOISE_FLOOR_MS"]

_DEFAULT_TILES = {"mr": 7, "nr": 16, "ns": 0, "ct": 16}
#: widest tile a predictor file may record (XNNPACK's are at most 32 wide; room for others)
_MAX_TILE = 1024

#: the profile's ``model`` name of generated sweep layers (``pipeit profile --sweep``)
SWEEP_MODEL = "sweep"

#: bytes a core keeps close (its L2); traffic beyond it streams from L3/DRAM at a higher cost
CACHE_MB = 1.0
#: below this a single-layer time is dominated by timer/invoke overhead (fit weight ramps down)
NOISE_FLOOR_MS = 0.02
#: a core's L1 data cache; a dwconv pixel whose weights and input window exceed it re-reads them from L2
L1_BYTES = 32 * 1024

_NO_ACTIVATION = ("", "NONE", None)
#: families whose k-core time keeps the one-core traffic coefficient (memory-bound loops)
_SHARED_TRAFFIC = ("eltwise", "concat", "pool")
_POOL_KERNEL = {"MAX_POOL_2D": "maxpool", "AVERAGE_POOL_2D": "avgpool", "MEAN": "mean"}


#: what each feature of a family's model is (same order as :func:`mech_features`)
FEATURE_NAMES: Dict[str, Tuple[str, ...]] = {
    "gemm": ("fixed", "padded MACs/thread", "taps/thread", "MB/k", "act spill MB"),
    "igemm": ("fixed", "padded MACs/thread", "taps/thread", "MB/k", "act spill MB"),
    "fc": ("fixed", "MACs/thread", "weight MB/thread", "act MB"),
    "dwconv": ("fixed", "padded MACs/thread", "L1 excess MB"),
    "maxpool": ("fixed", "window work/k", "windows/k", "spill MB"),
    "avgpool": ("fixed", "window work/k", "windows/k", "spill MB"),
    "mean": ("fixed", "window work/k", "windows/k", "spill MB"),
    "pool": ("fixed", "window work/k", "windows/k", "spill MB"),
    "eltwise": ("fixed", "moved MB/k", "beyond-cache MB"),
    "concat": ("fixed", "MB/k", "row copies/k", "spill MB"),
    "other": ("fixed", "MB/k", "spill MB"),
}


@dataclass(frozen=True)
class LayerTerms:
    """One layer's prediction taken apart (:meth:`MechPredictor.explain`): the model group,
    the tiles, each term's ms, the in-cache time, the DRAM streaming time of a layer beyond
    the LLC (None otherwise) and the fallback DRAM excess, and the prediction."""

    group: str
    tiles: Dict[str, int]
    terms: Tuple[Tuple[str, float], ...]
    in_cache_ms: float
    stream_ms: Optional[float]
    dram_excess_ms: float
    total_ms: float

    def describe(self) -> str:
        parts = " + ".join(f"{n} {v:.3f}" for n, v in self.terms if abs(v) >= 5e-4)
        out = f"[{self.group}] {parts or '0'} = {self.in_cache_ms:.3f}"
        if self.stream_ms is not None:
            out += f"; DRAM stream {self.stream_ms:.3f} -> max {self.total_ms:.3f}"
        elif self.dram_excess_ms:
            out += f"; + DRAM {self.dram_excess_ms:.3f}"
        return out


def column_tiles(n: int, nr: int, ns: int) -> Tuple[int, int]:
    """(kernel width, column tiles) for ``n`` output channels.

    XNNPACK picks its wide ``nr`` micro-kernel, but a layer with at most
    ``ns`` columns runs a narrower ``ns``-wide one (``ns`` = 0: no narrow
    kernel). Measured on the development host (3x3 conv, 56x56, 64 in):
    1..16 channels cost one 16-wide tile, 17..32 one 32-wide tile, and above
    that the steps are 32 channels apart -- nr=32, ns=16.
    """
    n = max(int(n), 1)
    if ns and n <= ns:
        return ns, ceil_div(n, ns)
    return nr, ceil_div(n, nr)


def moved_bytes(d: LayerDescriptor) -> int:
    """Bytes an element-wise op moves: inputs read, output written, and for a fused
    activation one more read and write of the output (the delegate clamps in a
    second pass: ADD+RELU measured ~1.5x ADD alone on the same tensors)."""
    act, _ = layer_bytes(d)
    if d.activation not in _NO_ACTIVATION:
        act += 2 * sum(t.nbytes for t in d.outputs)
    return int(act)


def mech_features(
    d: LayerDescriptor, setup: CoreSetup, mr: int, nr: int, ct: int, ns: int = 0
) -> Tuple[str, Tuple[float, ...]]:
    """(family, features) of a layer on ``setup`` for tile sizes ``mr``x``nr`` (narrow
    kernel ``ns``) and dwconv channel tile ``ct``."""
    fam = family_of(d)
    base = fam.split("/")[0]
    k = max(int(setup.cores), 1)
    act, weights = layer_bytes(d)
    mb = (act + weights) / 1e6
    spill = max(0.0, mb - CACHE_MB * k)  # the working set that does not fit the cores' caches
    if base in ("gemm", "igemm"):
        g = gemm_shape(d)
        width, ntiles = column_tiles(g.n, nr, ns)
        tiles = ceil_div(g.m, mr) * ntiles
        per_thread = ceil_div(tiles, k)
        work = per_thread * mr * width * g.k / 1e6        # padded MACs on the busiest thread
        taps = per_thread * g.taps / 1e3                  # tap-loop overhead (indirection)
        # Packed weights stream once, in order, and the prefetcher hides them behind the
        # arithmetic; activations gathered through the indirection buffer do not: only
        # the activation working set beyond the caches costs extra.
        act_spill = max(0.0, act / 1e6 - CACHE_MB * k)
        return fam, (1.0, work, taps, mb / k, act_spill)
    if base == "fc":
        g = gemm_shape(d)
        width, ntiles = column_tiles(g.n, nr, ns)
        cols = ceil_div(ntiles, k) * width                # NR-wide column chunks per thread
        work = cols * g.k * max(g.m, 1) / 1e6
        wpt = cols * g.k * 4 / 1e6 if d.dtype == "float32" else cols * g.k / 1e6
        return fam, (1.0, work, wpt, act / 1e6)
    if base == "dwconv":
        g = gemm_shape(d)
        out = d.output_shape
        width = int(out[2]) if len(out) == 4 else 1
        rows = ceil_div(g.rows, k)                       # output rows per thread
        pixels = rows * width
        chan = ceil_div(max(d.out_channels, 1), ct) * ct
        work = pixels * chan * g.taps / 1e6
        # Every output pixel walks all channels' weights (taps + bias) and its input window;
        # with many channels that no longer fits L1 and the excess comes from L2 per pixel.
        elem = 4 if d.dtype == "float32" else 1
        per_pixel = chan * (2 * g.taps + 1) * elem
        l1_excess = pixels * max(0, per_pixel - L1_BYTES) / 1e6
        return fam, (1.0, work, l1_excess)
    if base == "pool":
        kernel = d.kernel or (1, 1)
        taps = kernel[0] * kernel[1]
        if d.op == "MEAN" and len(d.input_shape) == 4:
            taps = d.input_shape[1] * d.input_shape[2]
        pixels = output_pixels(d) / k
        work = pixels * max(d.out_channels, 1) * taps / 1e6
        # max pooling, average pooling and a global mean are three different kernels
        group = _POOL_KERNEL.get(d.op, "pool") + fam[len(base):]
        # The window loads *are* the work (read through the indirection buffer, overlapping
        # windows hit cache), so no separate bytes term: only the part of the working set
        # beyond the caches costs extra. A bytes term would learn "stride-2 pools read 4x
        # their output" and halve every stride-1 pool.
        return group, (1.0, work, pixels * taps / 1e3, spill / k)
    if base == "eltwise":
        # Bytes moved per thread (each core's own L2 bandwidth), and the bytes that come from
        # beyond the cores' caches: a working set (inputs + output) past L2 streams from L3,
        # whose bandwidth the threads share -- not divided by k (resnet50's 56x56x256 ADD:
        # 1.5x per byte what mobilenet_v2's small ADDs cost on one core, 1.45x faster on two).
        moved = moved_bytes(d) / 1e6
        ws = act / 1e6
        beyond = moved * max(0.0, 1.0 - CACHE_MB * k / ws) if ws > 0 else 0.0
        return fam, (1.0, moved / k, beyond)
    if base == "concat":
        copies = len(d.inputs) * output_pixels(d) / k   # one strided row copy per input per pixel
        return fam, (1.0, mb / k, copies / 1e3, spill)
    return fam, (1.0, mb / k, spill)


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
        A narrower kernel width ``ns`` (0 or a smaller ``nr`` choice) is
        searched along with ``nr``.
    sweep_weight:
        Weight of a generated sweep layer (profile model ``"sweep"``)
        relative to a layer of a real model. Sweep layers cover shapes the
        zoo lacks (odd channels, 5x5 depthwise, huge tensors); at full weight
        their sheer number pulls the fit away from the model-like layers it
        must get right, at a fraction they still decide the fit wherever
        the zoo has no data.
    llc_mb:
        The last-level cache of the profiled cluster, in MB (32 on the
        development host's L3; a board without L3 has its L2 here). A layer
        whose weights and activations exceed it streams its weights from
        DRAM even when timed alone (AlexNet's FC6: 151 MB), see
        :meth:`MechPredictor._fit_calibration`; timed alone, part of a
        stream up to a few times the LLC stays resident between invokes
        (the fitted ``span``, :mod:`predictors.bandwidth`), inside a model
        none does (:meth:`MechPredictor._in_model_ms`).
    """

    name = "mech"
    calibrated = True

    def __init__(
        self,
        mr_choices: Sequence[int] = (4, 5, 6, 7, 8),
        nr_choices: Sequence[int] = (8, 16, 32),
        ct_choices: Sequence[int] = (8, 16, 32),
        sweep_weight: float = 0.1,
        llc_mb: float = 32.0,
    ) -> None:
        self.mr_choices = tuple(mr_choices)
        self.nr_choices = tuple(nr_choices)
        self.ct_choices = tuple(ct_choices)
        self.sweep_weight = sweep_weight
        self.llc_mb = llc_mb

    def get_params(self) -> Dict[str, object]:
        return {
            "mr_choices": list(self.mr_choices),
            "nr_choices": list(self.nr_choices),
            "ct_choices": list(self.ct_choices),
            "sweep_weight": self.sweep_weight,
            "llc_mb": self.llc_mb,
        }

    # the featurizer depends on the tiles learned for each family
    def _featurize(self, tiles: Dict[str, Dict[str, int]]):
        def featurize(d: LayerDescriptor, setup: CoreSetup):
            t = tiles.get(family_of(d), _DEFAULT_TILES)
            return mech_features(d, setup, t["mr"], t["nr"], t["ct"], t.get("ns", 0))
        return featurize

    def _row_weight(self, row: ProfileRow) -> float:
        w = float(self.sweep_weight) if row.model == SWEEP_MODEL else 1.0
        # A layer of a few microseconds is mostly timer and invoke overhead: its relative
        # error says little about the mechanisms, so it counts less.
        w *= min(1.0, row.median_ms / NOISE_FLOOR_MS)
        return w

    def _grid(self, base: str) -> List[Dict[str, int]]:
        if base in ("gemm", "igemm", "fc"):
            mrs = self.mr_choices if base != "fc" else (1,)
            return [
                {"mr": m, "nr": n, "ns": ns, "ct": 16}
                for m in mrs for n in self.nr_choices
                for ns in (0,) + tuple(c for c in self.nr_choices if c < n)
            ]
        if base == "dwconv":
            return [{"mr": 1, "nr": 16, "ns": 0, "ct": c} for c in self.ct_choices]
        return [dict(_DEFAULT_TILES)]

    def _validate_params(self) -> None:
        for name in ("mr_choices", "nr_choices", "ct_choices"):
            values = getattr(self, name)
            if not values or any(int(v) < 1 for v in values):
                raise PredictorError(f"MechPredictor: {name} must be positive integers, got {values!r}")
        try:
            sweep_weight = float(self.sweep_weight)
        except (TypeError, ValueError):
            sweep_weight = -1.0
        if not (0.0 < sweep_weight <= 1.0):
            raise PredictorError(f"MechPredictor: sweep_weight must be in (0, 1], got {self.sweep_weight!r}")
        try:
            llc = float(self.llc_mb)
        except (TypeError, ValueError):
            llc = -1.0
        if not llc > 0:
            raise PredictorError(f"MechPredictor: llc_mb must be a positive size in MB, got {self.llc_mb!r}")

    def beyond_llc(self, d: LayerDescriptor) -> bool:
        """Whether ``d``'s weights exceed the last-level cache, so that even timed alone they
        come from DRAM on every invoke. Weights only: activations are read once per invoke
        either way, and their spill beyond the caches is a feature of the in-cache model."""
        return d.weight_bytes / 1e6 > float(self.llc_mb)

    def _fit_layers(self, rows: List[ProfileRow]) -> None:
        self._validate_params()
        # Layers beyond the LLC are DRAM-bound: their time is the in-cache model plus the
        # DRAM term fitted with the calibration; they would only distort the in-cache fit.
        big = [r for r in rows if self.beyond_llc(r.descriptor)]
        rows = [r for r in rows if not self.beyond_llc(r.descriptor)] or rows
        by_family: Dict[str, List[ProfileRow]] = {}
        for r in rows:
            by_family.setdefault(family_of(r.descriptor), []).append(r)
        tiles: Dict[str, Dict[str, int]] = {}
        for fam, fam_rows in sorted(by_family.items()):
            grid = self._grid(fam.split("/")[0])
            wts = np.array([self._row_weight(r) for r in fam_rows])
            best, best_err = grid[0], np.inf
            for cand in grid:
                feat = self._featurize({fam: cand})
                coefs = fit_grouped(fam_rows, feat, _generic, robust_relative_nnls, 2, self._row_weight)
                err = float(np.sum(wts * relative_errors(coefs, feat, _generic, fam_rows) ** 2))
                if err < best_err * (1 - 1e-9) - 1e-12:
                    best, best_err = cand, err
            tiles[fam] = {k: int(v) for k, v in best.items()}
        self.tiles_ = tiles
        featurize = self._featurize(tiles)
        # k > 1 cores of a cluster whose one-core setup was profiled: derived from it.
        setups = {r.setup for r in rows}
        self.derived_: Dict[str, str] = {
            str(s): str(CoreSetup(s.cluster, 1)) for s in setups
            if s.cores > 1 and CoreSetup(s.cluster, 1) in setups
        }
        base_rows = [r for r in rows if str(r.setup) not in self.derived_ or not _shared(r.descriptor)]
        self.coef_: Dict[str, List[float]] = fit_grouped(
            base_rows, featurize, _generic, robust_relative_nnls, 2, self._row_weight
        )
        for setup, base in self.derived_.items():
            self._fit_derived(setup, base, [r for r in rows if str(r.setup) == setup and _shared(r.descriptor)],
                              featurize)
        # Layers beyond the LLC stream their weights from DRAM: per cluster, the streaming
        # bandwidth of 1..k threads, where the profile has such layers (fc_dram_sweep's FCs,
        # AlexNet when it is trained on); clusters without them take the calibration's
        # cold-weight rate per MB on top of the in-cache time (see _fit_calibration).
        self.stream_: Dict[str, StreamBandwidth] = {}
        for cluster in sorted({r.setup.cluster for r in big}):
            mine = [r for r in big if r.setup.cluster == cluster]
            samples = [(r.setup.cores, r.descriptor.weight_bytes / 1e6, r.median_ms) for r in mine]
            # each row's in-cache time prices the part of its weights still resident from the
            # previous invoke (the residency span is fitted with the bandwidth)
            hot = [self._in_cache_ms(r.descriptor, r.setup) for r in mine]
            self.stream_[cluster] = fit_stream_bandwidth(samples, float(self.llc_mb), hot)
        self.dram_ = {}

    # ---- k cores from one core ------------------------------------------------------------
    def _one_core_work(self, d: LayerDescriptor, setup: CoreSetup, base: str, featurize) -> Tuple[str, float]:
        """(group, ms) of ``d``'s work on ``setup`` priced at the one-core coefficients of ``base``.

        The features already deal the work to the threads (``ceil(tiles/k)`` GEMM tiles,
        ``ceil(rows/k)`` dwconv rows, bytes/k); the one-core coefficients price them. The
        one-core intercept (a fixed per-invoke cost) is left out: on k cores it is
        replaced by the setup's own fixed cost, which includes waking the pool.
        """
        group, vec = featurize(d, setup)
        coef = self.coef_.get(f"{group}|{base}")
        if coef is not None and len(coef) == len(vec):
            return group, float(np.dot(coef[1:], vec[1:]))
        gen = self.coef_[f"{FALLBACK}|{base}"]
        return group, float(np.dot(gen[1:], _generic(d, setup)[1:]))

    def _fit_derived(self, setup: str, base: str, rows: List[ProfileRow], featurize) -> None:
        """Per family on a k-core setup: ``ms = sync + eff * one-core-priced work``.

        Two constants per family instead of a free model: ``sync`` is the fixed
        cost of the op on k cores (waking the pool's threads, the barrier at
        the end), ``eff`` how well the chunked work scales (1 = perfectly;
        above 1 where threads share a bandwidth). Memory-bound families
        (element-wise, concatenation, pools) keep the one-core bytes
        coefficient (``eff`` = 1): their few k-core rows fit only ``sync``.
        """
        groups: Dict[str, Tuple[list, list, list]] = {}
        for r in rows:
            group, work = self._one_core_work(r.descriptor, r.setup, base, featurize)
            xs, ys, ws = groups.setdefault(group, ([], [], []))
            xs.append(work)
            ys.append(r.median_ms)
            ws.append(self._row_weight(r))
        for group, (xs, ys, ws) in groups.items():
            y = np.array(ys)
            self.coef_[f"{group}|{setup}"] = [_robust_offset(y - np.array(xs), y, np.array(ws)), 1.0]

    # ---- DRAM-bound layers and calibration ------------------------------------------------
    def _in_cache_ms(self, d: LayerDescriptor, setup: CoreSetup) -> float:
        key = str(setup)
        featurize = self._featurize(self.tiles_)
        base = self.derived_.get(key)
        if base is not None and _shared(d):
            group, work = self._one_core_work(d, setup, base, featurize)
            coef = self.coef_.get(f"{group}|{key}")
            if coef is not None:
                return coef[0] + coef[1] * work
        return predict_grouped(self.coef_, featurize, _generic, d, setup)

    def _fit_calibration(self, multi, cat) -> None:
        """Calibration, then the DRAM rate of layers beyond the LLC, then calibration again.

        A layer timed alone keeps its weights in cache -- unless they exceed
        the last-level cache: then every invoke streams them from DRAM. Where
        the training rows have such layers (a sweep's huge FCs), the rate per
        weight MB was fitted from them (:meth:`_fit_dram`). Otherwise the
        whole-model rows' cold-weight rate (the calibration's
        ``ms_per_weight_mb``, weights re-streamed per frame inside a model)
        stands in: the same physics, but a lower bound -- inside a model
        compute-bound convs hide part of the streaming, a lone GEMV hides
        none (AlexNet held out: FC6 still -30 % on this host). Such a layer's
        weights are not added again inside a model (:meth:`_cold_weight_bytes`),
        and the calibration is refitted with that accounting.
        """
        self.dram_ = {}
        super()._fit_calibration(multi, cat)
        for setup in self.setups_:
            if setup.cluster not in self.stream_:
                self.dram_[str(setup)] = float(self.calibration_.get(str(setup), Calibration.IDENTITY)[1])
        super()._fit_calibration(multi, cat)

    def _cold_weight_bytes(self, descriptor: LayerDescriptor) -> int:
        return 0 if self.beyond_llc(descriptor) else int(descriptor.weight_bytes)

    def _stream_ms(self, descriptor: LayerDescriptor, setup: CoreSetup) -> Optional[float]:
        """Time to stream a beyond-LLC layer's weights from DRAM with ``setup``'s threads, timed
        alone: the part still resident from the previous invoke at the in-cache rate (None:
        not beyond the LLC, or no bandwidth fitted for the cluster)."""
        bw = self.stream_.get(setup.cluster)
        if bw is None or not self.beyond_llc(descriptor):
            return None
        return bw.standalone_ms(descriptor.weight_bytes / 1e6, setup.cores, float(self.llc_mb),
                                self._in_cache_ms(descriptor, setup))

    def _predict_layer(self, descriptor: LayerDescriptor, setup: CoreSetup) -> float:
        ms = self._in_cache_ms(descriptor, setup)
        if not self.beyond_llc(descriptor):
            return ms
        stream = self._stream_ms(descriptor, setup)
        if stream is not None:
            # streaming and arithmetic overlap (the prefetcher runs ahead of the GEMV):
            # the slower of the two sets the time
            return max(ms, stream)
        return ms + self.dram_.get(str(setup), 0.0) * descriptor.weight_bytes / 1e6

    def _in_model_ms(self, descriptor: LayerDescriptor, setup: CoreSetup, ms: float) -> float:
        """Inside a model nothing of a beyond-LLC layer's weights survives the rest of the frame:
        it streams them all (AlexNet's FC7, 67 MB, alone on two threads 1.42 ms with part of it
        resident; the FC stage [9,13) on two threads 0.84 ms above its summed layers)."""
        bw = self.stream_.get(setup.cluster)
        if bw is None or not self.beyond_llc(descriptor):
            return ms
        return max(self._in_cache_ms(descriptor, setup), bw.ms(descriptor.weight_bytes / 1e6, setup.cores))

    def explain(self, descriptor: LayerDescriptor, setup: Union[CoreSetup, str]) -> "LayerTerms":
        """What each term of the model contributes to ``descriptor``'s time on ``setup``."""
        setup = self._check(descriptor, setup)
        key = str(setup)
        featurize = self._featurize(self.tiles_)
        group, vec = featurize(descriptor, setup)
        fam = family_of(descriptor)
        names = FEATURE_NAMES.get(group.split("/")[0], FEATURE_NAMES.get(fam.split("/")[0], ()))
        base = self.derived_.get(key)
        coef = self.coef_.get(f"{group}|{key}")
        if base is not None and _shared(descriptor) and coef is not None:
            # k-core memory-bound loop: fixed k-core cost + one-core-priced per-thread work
            one = self.coef_.get(f"{group}|{base}")
            if one is not None and len(one) == len(vec):
                parts = [("fixed (k-core sync)", coef[0])] + [
                    (f"{n} @ {base}", c * v) for n, c, v in zip(names[1:], one[1:], vec[1:])]
            else:
                parts = [("fixed (k-core sync)", coef[0]), ("work @ generic", self._in_cache_ms(descriptor, setup) - coef[0])]
        elif coef is not None and len(coef) == len(vec):
            parts = [(n, c * v) for n, c, v in zip(names, coef, vec)]
        else:
            gen = self.coef_[f"{FALLBACK}|{key}"]
            group = FALLBACK
            parts = [(n, c * v) for n, c, v in zip(("fixed", "MACs/k", "MB/k"), gen, _generic(descriptor, setup))]
        stream = self._stream_ms(descriptor, setup)
        dram = 0.0
        if self.beyond_llc(descriptor) and stream is None:
            dram = self.dram_.get(key, 0.0) * descriptor.weight_bytes / 1e6
        return LayerTerms(group=group, tiles=dict(self.tiles_.get(fam, _DEFAULT_TILES)),
                          terms=tuple((str(n), float(v)) for n, v in parts),
                          in_cache_ms=self._in_cache_ms(descriptor, setup),
                          stream_ms=stream, dram_excess_ms=dram,
                          total_ms=self.predict(descriptor, setup))

    def _fitted_state(self) -> dict:
        return {"tiles": self.tiles_, "coef": self.coef_, "derived": self.derived_, "dram": self.dram_,
                "stream": {c: bw.to_json() for c, bw in self.stream_.items()}}

    def _load_fitted_state(self, doc: dict) -> None:
        tiles = {}
        for fam, t in doc["tiles"].items():
            # JSON integers only, and no wider than any register tile: a tile of 1e308 is a valid
            # Python integer that the feature arithmetic cannot turn into a float
            if not isinstance(t, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                  and 0 <= v <= _MAX_TILE for v in t.values()):
                raise ValueError(f"bad tile record for {fam}: {t!r:.80} (integers 0..{_MAX_TILE})")
            t = dict(t)
            t.setdefault("ns", 0)  # files written before the narrow kernel was modelled
            if set(t) != {"mr", "nr", "ns", "ct"} or min(t["mr"], t["nr"], t["ct"]) < 1 or t["ns"] < 0:
                raise ValueError(f"bad tile record for {fam}: {t}")
            tiles[str(fam)] = t
        self.tiles_ = tiles
        self.coef_ = load_coefs(doc["coef"], self.setups_, _generic, nonnegative=True)  # robust_relative_nnls
        # files written before k-core setups were derived from one core / before the DRAM term
        self.derived_ = {str(k): str(v) for k, v in doc.get("derived", {}).items()}
        for setup, base in self.derived_.items():
            if f"{FALLBACK}|{setup}" not in self.coef_ or f"{FALLBACK}|{base}" not in self.coef_:
                raise ValueError(f"derived setup {setup} lacks its fallback model or its base {base}")
        for key, coef in self.coef_.items():  # a derived setup's shared-traffic models are [offset, 1]
            if key.partition("|")[2] in self.derived_ and len(coef) < 2:
                raise ValueError(f"{key} needs at least 2 coefficients, has {len(coef)}")
        self.dram_ = {str(k): float(v) for k, v in doc.get("dram", {}).items()}
        # files written before the streaming bandwidth: their "dram" rates still apply
        self.stream_ = {str(c): StreamBandwidth.from_json(v) for c, v in doc.get("stream", {}).items()}
        if any(not (v >= 0.0) for v in self.dram_.values()):
            raise ValueError("DRAM ms per MB must be non-negative")
        # element-wise models gained a beyond-the-caches term (3 coefficients); an older file's
        # 2-coefficient ones would silently fall back to the generic model: refuse, re-fit
        for key, coef in self.coef_.items():
            group, _, setup = key.partition("|")
            if group.split("/")[0] == "eltwise" and setup not in self.derived_ and len(coef) != 3:
                raise ValueError(f"{key} has {len(coef)} coefficients, this version's element-wise model "
                                 f"has 3 (a file from an older pipeit: re-fit it with pipeit fit)")


def _shared(d: LayerDescriptor) -> bool:
    """Whether ``d`` is a memory-bound loop whose k-core time keeps the one-core traffic fit."""
    return family_of(d).split("/")[0] in _SHARED_TRAFFIC


def _robust_offset(residual: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """The non-negative constant ``c`` minimising weighted relative error of ``residual - c``
    (Huber-robust): the fixed k-core cost of a family whose work term is fixed."""
    # y = c + work  <=>  y - work = c, each row's error relative to its y
    target = residual
    wgt = w / np.maximum(y, 1e-6) ** 2
    c = float(np.sum(wgt * target) / max(np.sum(wgt), 1e-12))
    for _ in range(20):
        r = (c - target) / np.maximum(y, 1e-6)
        sigma = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), 0.01)
        u = np.abs(r) / (1.345 * sigma)
        hub = np.where(u <= 1.0, 1.0, 1.0 / np.maximum(u, 1e-12))
        new = float(np.sum(wgt * hub * target) / max(np.sum(wgt * hub), 1e-12))
        if abs(new - c) < 1e-9:
            break
        c = new
    return max(c, 0.0)
