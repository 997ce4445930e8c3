"""The planner's input: how long each layer takes on each core setup, and what crosses each cut.

A :class:`LayerTimes` is everything the design-space exploration needs to
know about a model and a platform, and nothing more: it can be built from a
predictor, from a profile table, or written by hand in a test. Keeping the
DSE behind this one record means the search never imports the runtime or a
predictor, and planning for a board can happen on a laptop.

Conventions
-----------
* ``times[setup][i]`` -- milliseconds of layer ``i`` on ``setup`` inside a
  whole model (calibrated), so a stage ``[a, b)`` costs
  ``calibration.scale * sum(times[setup][a:b]) + calibration.stage_ms``.
  ``math.inf`` marks a layer the setup cannot run (a GPU without the kernel):
  no stage containing it is ever put on that setup.
* ``cut_bytes[i]`` for ``i = 0..n`` -- bytes crossing the cut before layer
  ``i``: ``cut_bytes[0]`` is the model input, ``cut_bytes[n]`` the model
  output, the others include residual tensors that skip over the cut.
* ``weight_bytes[i]`` -- constant bytes a worker holds for layer ``i`` (a
  worker serving a stage keeps its stage's weights): the descriptor's
  ``held_bytes``, stored plus dense for weights behind ``DEQUANTIZE`` or
  ``DENSIFY`` (:mod:`pipeit.graph`).
* ``device_copy[cluster]`` -- for a GPU cluster, the host<->device copy model
  (one direction, :class:`~pipeit.transfer.HopModel`) measured with its layer
  times; the cost model charges it on the cut at each end of a GPU stage.
  Absent, the DSE uses :data:`pipeit.gpu.measure.DEFAULT_DEVICE_COPY`.
* ``hop`` -- the cost of passing a cut's tensors between two stages on the
  machine the times were measured on (:class:`~pipeit.transfer.HopModel`,
  from the profile's hop rows or the predictor fitted on them). Absent, the
  DSE charges :data:`pipeit.transfer.DEFAULT_HOP`, the development host's.

GPU setups (``gpu:1``) never take a predictor's times (predictors are fitted
on CPU interpreters) nor a per-setup calibration derived from CPU whole-model
runs: their rows are the tuned kernels' device times with each layer's
launches charged at the measured launch overhead, from the profile's
``gpu:1`` rows or measured on the fly (:mod:`pipeit.gpu.measure`).

:func:`layer_times_for` is the one seam through which the CLI asks the
predictor or profile code for these times.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from cores.filewrite import write_file
from cores.jsonfile import JsonFileError, is_version, read_json
from cores.model import CoreSetup, Platform
from pipeit.errors import PipeitError, PlanError
from pipeit.transfer import HopModel

__all__ = [
    "LAYER_TIMES_VERSION",
    "MAX_LAYER_MS",
    "Calibration",
    "LayerTimes",
    "cut_bytes_of",
    "weight_bytes_of",
    "layer_times_for",
    "warn_if_measured_elsewhere",
]

LAYER_TIMES_VERSION = 1

#: the longest a layer may take (ms, about 11.6 days). A finite time beyond it is a broken
#: measurement or a hand edit, not a layer: sums of a few such times overflow the cost model's
#: floats. A layer a setup cannot run is ``inf`` (``null`` in the file), not a huge number.
MAX_LAYER_MS = 1e9

#: the most bytes a cut or a layer's weights may have (1 PiB). Beyond it a size is a hand edit,
#: not a model: ``int(1e308)`` is a valid Python integer that the cost model's floats cannot sum.
MAX_BYTES = 1 << 50


#: the largest calibration scale: stage times a million times the sum of their layers' are a hand edit,
#: and a scale near the float limit overflows every sum the cost model takes
MAX_CALIBRATION_SCALE = 1e6


def _json_number(value: object, what: str) -> float:
    """A JSON number (``float()`` would also take "1" or true)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlanError(f"{what} must hold numbers, got {value!r:.40}")
    return float(value)


def _json_int(value: object, what: str) -> int:
    """A JSON integer, as pipeit writes counts and byte sizes (``int()`` would take 2.7, "3" or true)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{what} must hold integers, got {value!r:.40}")
    return value


@dataclass(frozen=True)
class Calibration:
    """Stage time = ``scale * sum(layer ms) + stage_ms``.

    The predictor already calibrates per layer, so the default is the
    identity; ``stage_ms`` is the fixed cost of one interpreter ``invoke``
    (a profile can measure it), which makes many tiny stages cost what they
    do on a real board.
    """

    scale: float = 1.0
    stage_ms: float = 0.0

    def __post_init__(self) -> None:
        if not (0 < self.scale <= MAX_CALIBRATION_SCALE):
            raise PlanError(f"layer times: calibration scale must be in (0, {MAX_CALIBRATION_SCALE:g}], "
                            f"got {self.scale!r}")
        if not (0 <= self.stage_ms <= MAX_LAYER_MS):
            raise PlanError(f"layer times: calibration stage_ms must be in [0, {MAX_LAYER_MS:g}] ms, "
                            f"got {self.stage_ms!r}")

    def to_json(self) -> dict:
        return {"scale": self.scale, "stage_ms": self.stage_ms}


@dataclass(frozen=True)
class LayerTimes:
    """Per-layer ms for every core setup, bytes crossing each cut, weight bytes per layer."""

    num_layers: int
    times: Mapping[CoreSetup, Tuple[float, ...]] = field(hash=False)
    cut_bytes: Tuple[int, ...]
    weight_bytes: Tuple[int, ...]
    calibration: Calibration = Calibration()
    source: str = ""
    device_copy: Mapping[str, HopModel] = field(default_factory=dict, hash=False)
    hop: Optional[HopModel] = None

    def __post_init__(self) -> None:
        if self.hop is not None and not isinstance(self.hop, HopModel):
            raise PlanError(f"layer times: hop {self.hop!r:.40} is not a HopModel")
        copies = dict(self.device_copy or {})
        for name, model in copies.items():
            if not isinstance(model, HopModel):
                raise PlanError(f"layer times: device copy of {name!r} is not a HopModel")
        object.__setattr__(self, "device_copy", copies)
        n = self.num_layers
        if not isinstance(n, int) or n < 1:
            raise PlanError(f"layer times: need at least one layer, got num_layers={n!r}")
        if not self.times:
            raise PlanError("layer times: no core setups")
        clean: Dict[CoreSetup, Tuple[float, ...]] = {}
        for setup, row in self.times.items():
            if not isinstance(setup, CoreSetup):
                raise PlanError(f"layer times: key {setup!r} is not a CoreSetup")
            values = tuple(float(v) for v in row)
            if len(values) != n:
                raise PlanError(f"layer times: setup {setup} has {len(values)} times for {n} layers")
            for i, v in enumerate(values):
                if math.isnan(v) or v < 0:
                    raise PlanError(f"layer times: layer {i} on {setup} has time {v!r} (need >= 0 or inf)")
                if MAX_LAYER_MS < v < math.inf:
                    raise PlanError(f"layer times: layer {i} on {setup} has time {v!r} ms, over the "
                                    f"{MAX_LAYER_MS:g} ms a layer may take (a layer it cannot run is null/inf)")
            clean[setup] = values
        object.__setattr__(self, "times", clean)
        if len(self.cut_bytes) != n + 1:
            raise PlanError(f"layer times: need {n + 1} cut sizes (cuts 0..{n}), got {len(self.cut_bytes)}")
        if len(self.weight_bytes) != n:
            raise PlanError(f"layer times: need {n} weight sizes, got {len(self.weight_bytes)}")
        for name in ("cut_bytes", "weight_bytes"):
            values = tuple(int(v) for v in getattr(self, name))
            if any(v < 0 for v in values):
                raise PlanError(f"layer times: negative entry in {name}")
            if any(v > MAX_BYTES for v in values):
                raise PlanError(f"layer times: an entry in {name} is over the {MAX_BYTES:.3g} bytes a tensor "
                                "or a layer's weights may have")
            object.__setattr__(self, name, values)

    # ---- views -------------------------------------------------------------------------
    @property
    def setups(self) -> Tuple[CoreSetup, ...]:
        return tuple(sorted(self.times))

    def stage_compute_ms(self, setup: CoreSetup, start: int, end: int) -> float:
        """Calibrated compute time of layers ``[start, end)`` on one worker of ``setup``."""
        row = self.times[setup]
        return self.calibration.scale * math.fsum(row[start:end]) + self.calibration.stage_ms

    def check_platform(self, platform: Platform) -> None:
        """Refuse a table that names a cluster the platform lacks, or more cores than it has."""
        for setup in self.times:
            if "+" in setup.cluster:
                continue  # a cross-cluster pseudo setup (all-cores), checked by its maker
            try:
                platform.check_setup(setup)
            except PipeitError:
                raise
            except Exception as err:  # cores' PlatformError: restate as a planning problem
                raise PlanError(f"layer times do not fit platform {platform.source!r}: {err}") from err

    def check_model(self, graph, where: str, model: str) -> None:
        """Refuse a table that was made for another model (one clear :class:`PlanError`).

        A table from another model with as many layers plans silently with
        the wrong times and cut sizes. The file carries no model hash on
        purpose: times stay valid for the same network retrained or with
        other weights. What it does carry is the model's shape -- the bytes
        crossing each cut and each layer's weights -- so that is compared.
        """
        n = len(graph.layers)
        if self.num_layers != n:
            raise PlanError(f"{where} has times for {self.num_layers} layers, {model} has {n}: it was made for "
                            "another model")
        for what, theirs, ours in (("the tensors crossing cut", self.cut_bytes, cut_bytes_of(graph)),
                                   ("the weights of layer", self.weight_bytes, weight_bytes_of(graph))):
            for i, (a, b) in enumerate(zip(theirs, ours)):
                if a != b:
                    raise PlanError(f"{where} was made for another model: {what} {i} take {a} bytes there, "
                                    f"{b} in {model}")

    def with_setup(self, setup: CoreSetup, row: Sequence[float]) -> "LayerTimes":
        """A copy with one more (or a replaced) setup row -- how all-cores adds its pseudo setup."""
        return replace(self, times={**self.times, setup: tuple(row)})

    def rescaled(self, factors: Mapping[str, float], note: str = "") -> "LayerTimes":
        """A copy with every setup of cluster ``c`` taking ``factors[c]`` times as long (others unchanged).

        Why: a profile is measured once, a board's speed is not -- it heats up
        and throttles, a governor changes, a neighbour moves in. One whole-model
        timing per cluster taken now re-anchors every layer of that cluster
        (:func:`pipeit.bench.anchor_to_measured`); the split of time between
        layers, which is what a plan's shape depends on, stays the profile's.
        ``note`` is appended to :attr:`source`.
        """
        for name, factor in factors.items():
            if not (math.isfinite(factor) and factor > 0):
                raise PlanError(f"layer times: scale of cluster {name!r} must be a finite number > 0, got {factor!r}")
        times = {s: tuple(v * factors.get(s.cluster, 1.0) for v in row) for s, row in self.times.items()}
        return replace(self, times=times, source=self.source + note)

    # ---- JSON --------------------------------------------------------------------------
    def to_json(self) -> dict:
        """JSON document; ``inf`` (a setup that cannot run a layer) is written as ``null``."""
        return {
            "version": LAYER_TIMES_VERSION,
            "num_layers": self.num_layers,
            "times": {
                str(s): [None if math.isinf(v) else v for v in self.times[s]] for s in self.setups
            },
            "cut_bytes": list(self.cut_bytes),
            "weight_bytes": list(self.weight_bytes),
            "calibration": self.calibration.to_json(),
            "source": self.source,
            "device_copy": {name: model.to_json() for name, model in sorted(self.device_copy.items())},
            "hop": None if self.hop is None else self.hop.to_json(),
        }

    @classmethod
    def from_json(cls, doc: object, where: str = "layer times") -> "LayerTimes":
        if not isinstance(doc, dict):
            raise PlanError(f"{where}: expected a JSON object")
        version = doc.get("version")
        if not is_version(version, LAYER_TIMES_VERSION):
            raise PlanError(f"{where}: layer-times version {doc.get('version')!r} is not {LAYER_TIMES_VERSION}")
        try:
            times = {
                CoreSetup.parse(k): tuple(math.inf if v is None else _json_number(v, "times") for v in row)
                for k, row in dict(doc["times"]).items()
            }
            cal = doc.get("calibration") or {}
            if not isinstance(cal, dict):
                raise PlanError(f"{where}: calibration must be an object, got {cal!r:.40}")
            return cls(
                num_layers=_json_int(doc["num_layers"], "num_layers"),
                times=times,
                cut_bytes=tuple(_json_int(v, "cut_bytes") for v in doc["cut_bytes"]),
                weight_bytes=tuple(_json_int(v, "weight_bytes") for v in doc["weight_bytes"]),
                calibration=Calibration(_json_number(cal.get("scale", 1.0), "calibration scale"),
                                        _json_number(cal.get("stage_ms", 0.0), "calibration stage_ms")),
                source=str(doc.get("source", "")),
                device_copy={str(k): HopModel.from_json(v, f"{where}: device_copy {k}")
                             for k, v in dict(doc.get("device_copy") or {}).items()},
                hop=None if doc.get("hop") is None else HopModel.from_json(doc["hop"], f"{where}: hop"),
            )
        except PlanError as err:
            text = str(err)
            if text.startswith(f"{where}:"):  # a device copy's or the hop's HopModel already named the file
                raise
            text = text[len("layer times: "):] if text.startswith("layer times: ") else text
            raise PlanError(f"{where}: malformed layer times ({text})") from err
        except Exception as err:  # a malformed file a user handed us
            raise PlanError(f"{where}: malformed layer times ({type(err).__name__}: {err})") from err

    def save(self, path: Union[str, Path]) -> None:
        write_file(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "LayerTimes":
        path = Path(path)
        try:
            doc = read_json(path, "layer-times")
        except JsonFileError as err:
            if err.missing:
                raise PlanError(f"{path}: no such layer-times file") from None
            raise PlanError(f"{path}: unreadable layer-times file ({err.reason})") from None
        return cls.from_json(doc, str(path))

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_graph(
        cls,
        graph,
        setups: Iterable[CoreSetup],
        time_of: Callable[[int, CoreSetup], float],
        calibration: Optional[Calibration] = None,
        source: str = "",
    ) -> "LayerTimes":
        """Build from a :class:`pipeit.graph.LayerGraph` and ``time_of(layer_index, setup) -> ms``.

        ``time_of`` is where a predictor or a profile plugs in; it may return
        ``math.inf`` for a layer the setup cannot run.
        """
        n = len(graph.layers)
        times = {s: tuple(float(time_of(i, s)) for i in range(n)) for s in setups}
        return cls(
            num_layers=n,
            times=times,
            cut_bytes=cut_bytes_of(graph),
            weight_bytes=weight_bytes_of(graph),
            calibration=calibration or Calibration(),
            source=source,
        )


def cut_bytes_of(graph) -> Tuple[int, ...]:
    """``n + 1`` byte counts: model input, each interior cut of ``graph.cuts``, model output."""
    n = len(graph.layers)
    interior: Dict[int, int] = {int(c.before): int(c.bytes) for c in graph.cuts}
    missing = [i for i in range(1, n) if i not in interior]
    if missing:
        raise PlanError(f"model graph has no cut point before layer(s) {missing[:5]}")
    first = sum(t.nbytes for t in graph.inputs)
    last = sum(t.nbytes for t in graph.outputs)
    return (first,) + tuple(interior[i] for i in range(1, n)) + (last,)


def weight_bytes_of(graph) -> Tuple[int, ...]:
    """Each layer's constant bytes a worker holds (its descriptor's ``held_bytes``)."""
    return tuple(int(layer.descriptor.held_bytes) for layer in graph.layers)


def warn_if_measured_elsewhere(predictor: Any, profile: Any, name: str, platform: Platform) -> None:
    """Say once on stderr when a profile or predictor comes from another platform or runtime.

    ``plan`` and ``bench`` use it anyway (planning for a board from this
    host's times is what ``board:`` platforms are for, and those say
    nothing), but its times do not know, say, that an emulated cluster here
    runs at a tenth of the speed it was measured at. ``predict`` and ``fit``
    refuse such a file without ``--force`` instead.
    """
    import warnings

    from pipeit.profiler import platform_fingerprint_for

    if str(platform.source).startswith("board:") or (predictor is None and profile is None):
        return  # the documented stand-in: this host's times on a board's clusters
    here = platform_fingerprint_for(platform)
    if predictor is not None:
        theirs = {getattr(predictor, "fingerprint_", here)}
    else:
        theirs = {row.fingerprint for row in profile.rows}
    if theirs - {here}:
        how = "fitted" if predictor is not None else "measured"
        warnings.warn(f"{name} was {how} on another platform or runtime (fingerprint "
                      f"{sorted(theirs - {here})[0][:12]}, this platform {here[:12]}); its times are used anyway, "
                      "unscaled")


def layer_times_for(
    graph,
    platform: Platform,
    predictor=None,
    profile=None,
    model=None,
    tuning=None,
    gpu_times=None,
) -> LayerTimes:
    """Per-layer times of ``graph`` on every setup of ``platform``: THE seam to predictors/profiles.

    ``predictor`` is a fitted :class:`predictors.Predictor` (or a path to its
    JSON file); ``profile`` is a :class:`pipeit.profile_table.ProfileTable`
    (or a path to a profile CSV) whose layer rows are looked up by
    descriptor key. Exactly one of them must be given; they supply the CPU
    setups.

    A GPU cluster's ``gpu:1`` row comes from the profile's ``gpu:1`` layer
    rows when the profile has any for this model (a failed or missing layer
    is ``inf``: the GPU has no kernel for it), else from ``gpu_times``
    (``{cluster name: GpuTimes}``, already measured), else it is measured now
    on the device from ``model`` (the ``.tflite`` path or bytes) with the
    tuning file ``tuning`` (:func:`pipeit.gpu.measure.find_tuning`).
    """
    if (predictor is None) == (profile is None):
        raise PlanError("give exactly one source of layer times: a predictor or a profile")
    setups = platform.setups()
    cpu_setups = [s for s in setups if platform.cluster(s.cluster).kind == "cpu"]
    gpu_setups = [s for s in setups if platform.cluster(s.cluster).kind == "gpu"]
    if predictor is not None:
        if isinstance(predictor, (str, Path)):
            from predictors import load_predictor

            predictor = load_predictor(predictor)
        known = set(getattr(predictor, "setups_", ()) or ())
        usable = [s for s in cpu_setups if not known or s in known]
        if not usable:
            raise PlanError(
                f"the predictor knows none of this platform's setups ({', '.join(map(str, cpu_setups))}); "
                "fit it on a profile of this platform"
            )
        from predictors import predict_graph

        times = {s: tuple(predict_graph(predictor, graph, s, calibrated=True)) for s in usable}
        source = f"predictor:{getattr(predictor, 'name', type(predictor).__name__)}"
        hop = getattr(predictor, "hop_", None)
    else:
        if isinstance(profile, (str, Path)):
            from pipeit.profile_table import read_profile

            profile = read_profile(profile, force=True)
        times = _times_from_profile(graph, cpu_setups, profile)
        source = "profile"
        hop = profile.hop_model()
    _warn_clusters_left_out(platform, cpu_setups, times, "predictor" if predictor is not None else "profile")
    copies: Dict[str, HopModel] = {}
    for setup in gpu_setups:
        row = _gpu_row_from_profile(graph, setup, profile) if profile is not None else None
        if row is None:
            measured = _gpu_times(setup.cluster, platform, model, tuning, gpu_times)
            if len(measured.times) != len(graph.layers):
                raise PlanError(f"GPU times for {setup} cover {len(measured.times)} layers, "
                                f"the model has {len(graph.layers)}")
            row = tuple(measured.times)
            copies[setup.cluster] = measured.copy
            source += f"+{setup}:measured"
        else:
            source += f"+{setup}:profile"
        times[setup] = row
    return LayerTimes(
        num_layers=len(graph.layers),
        times=times,
        cut_bytes=cut_bytes_of(graph),
        weight_bytes=weight_bytes_of(graph),
        source=source,
        device_copy=copies,
        hop=hop,
    )


def _warn_clusters_left_out(platform: Platform, cpu_setups: Sequence[CoreSetup],
                            times: Mapping[CoreSetup, Any], source: str) -> None:
    """Say which CPU clusters get no times at all: a plan then leaves their cores out, which the user
    would otherwise only see as a lower fps than the board should give."""
    import warnings

    missing = sorted({s.cluster for s in cpu_setups} - {s.cluster for s in times})
    if missing:
        warnings.warn(f"the {source} has no layer times for cluster(s) {', '.join(missing)} "
                      f"({', '.join(str(s) for s in cpu_setups if s.cluster in missing)}): plans leave those "
                      "cores out; profile them (pipeit profile --setup CLUSTER:K) to use them", stacklevel=3)


def _gpu_times(cluster: str, platform: Platform, model, tuning, known):
    """The GPU cluster's measured times: given in ``known``, else measured now from ``model``."""
    if known and cluster in known:
        return known[cluster]
    if model is None:
        raise PlanError(
            f"GPU cluster {cluster!r}: the profile has no {cluster}:1 rows for this model and no model "
            "file was given to measure them (pipeit profile MODEL --platform ... times them)"
        )
    from pipeit.gpu.measure import find_tuning, measure_gpu_times

    return measure_gpu_times(model, platform.cluster(cluster), find_tuning(tuning))


def _gpu_row_from_profile(graph, setup: CoreSetup, profile) -> Optional[Tuple[float, ...]]:
    """The GPU setup's row from the profile's layer rows, or None when it has none for this model.

    No calibration: the profile's whole-model rows are CPU interpreter runs.
    A layer measured as failed (the GPU has no kernel) or not measured is inf.
    """
    keys = [layer.descriptor.key_string() for layer in graph.layers]
    wanted = set(keys)
    measured: Dict[str, float] = {}
    seen = False
    for row in profile.rows:
        if row.kind != "layer" or row.setup != setup or row.key not in wanted:
            continue
        seen = True
        if row.status == "ok" and math.isfinite(row.median_ms) and row.median_ms >= 0:
            measured[row.key] = row.median_ms
    if not seen:
        return None
    return tuple(measured.get(k, math.inf) for k in keys)


def _times_from_profile(graph, setups: Sequence[CoreSetup], profile) -> Dict[CoreSetup, Tuple[float, ...]]:
    """Median ms per (descriptor key, setup) from a profile's layer rows; a setup missing any layer is dropped.

    A row marked noisy (its cores were shared while it was timed) is used only
    where no clean row exists, and held to what clean rows say, since sharing
    only ever adds time: on a shared host one preempted thread turned a 0.01 ms
    ``cpu:2`` layer into 1.2 ms, and a few such rows made a model's two-core
    layers sum to 12x its whole-model time. A noisy row is held to the clean
    row of the same layer on fewer cores of its cluster (more threads of one
    cluster do not make a layer slower, beyond a few microseconds of thread
    hand-off), and a setup's layers to its whole-model time even when that
    was noisy too. Each setup that needed noisy rows is said in one warning.
    """
    clean: Dict[Tuple[str, CoreSetup], float] = {}
    noisy: Dict[Tuple[str, CoreSetup], float] = {}
    for row in profile.rows:
        if row.kind != "layer" or not (math.isfinite(row.median_ms) and row.median_ms > 0):
            continue
        if row.ok:
            clean[(row.key, row.setup)] = row.median_ms
        elif row.noisy:
            noisy.setdefault((row.key, row.setup), row.median_ms)
    keys = [layer.descriptor.key_string() for layer in graph.layers]
    whole: Dict[CoreSetup, float] = {}
    whole_noisy: Dict[CoreSetup, float] = {}
    for row in profile.rows:
        if row.kind == "model" and list(row.layer_keys) == keys and math.isfinite(row.median_ms) \
                and row.median_ms > 0:
            if row.ok:
                whole[row.setup] = row.median_ms
            elif row.noisy:
                whole_noisy.setdefault(row.setup, row.median_ms)
    times: Dict[CoreSetup, Tuple[float, ...]] = {}
    said: List[str] = []
    for setup in setups:
        row = [_layer_ms(key, setup, clean, noisy) for key in keys]
        if any(v is None for v in row):
            continue
        summed = math.fsum(row)  # type: ignore[arg-type]
        # Layers timed alone miss what a whole invoke pays (cold inputs, weights
        # evicted between frames): where this very model was timed whole on the
        # setup, each layer takes its share of the difference. A noisy whole
        # time is too long if anything, so it only ever shortens the layers.
        if setup in whole:
            scale = whole[setup] / summed
        elif setup in whole_noisy:
            scale = min(1.0, whole_noisy[setup] / summed)
        else:
            scale = 1.0
        times[setup] = tuple(float(v) * scale for v in row)  # type: ignore[arg-type]
        used = sum(1 for key in set(keys) if (key, setup) not in clean)
        if used:
            said.append(f"{setup} ({used} of {len(set(keys))})")
    if not times:
        missing = sorted({k for k in keys for s in setups if (k, s) not in clean and (k, s) not in noisy})
        raise PlanError(
            f"the profile has no complete set of layer times for any setup of this platform "
            f"({len(missing)} layer kinds unmeasured); profile this model on this platform first"
        )
    if said:
        import warnings

        warnings.warn(f"the profile's times of some layer kinds were taken on busy cores (noisy) on "
                      f"{', '.join(said)}: each is held to its clean time on fewer cores and the setup to its "
                      "whole-model time, where those were measured; profile again on quiet cores (pipeit profile "
                      "re-measures only those rows)", stacklevel=3)
    return times


def _layer_ms(key: str, setup: CoreSetup, clean: Mapping[Tuple[str, CoreSetup], float],
              noisy: Mapping[Tuple[str, CoreSetup], float]) -> Optional[float]:
    """The layer's clean time on ``setup``; else its noisy time held to its clean time on the nearest
    smaller setup of the same cluster; None when neither was measured."""
    if (key, setup) in clean:
        return clean[(key, setup)]
    if (key, setup) not in noisy:
        return None
    fewer = [clean[(key, CoreSetup(setup.cluster, k))] for k in range(setup.cores - 1, 0, -1)
             if (key, CoreSetup(setup.cluster, k)) in clean]
    return min(noisy[(key, setup)], fewer[0]) if fewer else noisy[(key, setup)]
