"""Kernel tuning: ask/tell search strategies, measured trials, and the tuning file.

One loop drives every strategy (:func:`tune`): ``next_batch()`` proposes
configs, a measurer times them, ``update(trials)`` feeds the results back.
Two strategies:

* :class:`RandomSearch` -- the baseline: configs drawn uniformly without
  replacement (kept exactly so, so the comparison stays fair);
* :class:`ModelSearch` -- ML-guided, as TVM's AutoTVM: a cost model
  (gradient-boosted trees on features of the config *on this layer*, see
  :mod:`pipeit.gpu.costmodel`) ranks the unmeasured configs and the best
  ranked form the next batch; it is refit on every batch. With a transfer
  prior (a model trained on other layers' trials of the same device, from
  the tuning file's history) the first batch is already the prior's best
  guesses and later batches fit the residual, which is what a budget of a
  few dozen trials needs; without one, a random first batch.

A trial that fails to build or run is data, not an exception: its
:class:`TrialStatus` says what happened and the search goes on. Trials are
timed with OpenCL profiling events (device time, median of repeats).

The :class:`TuningFile` (JSON) keeps the best config per device fingerprint,
layer descriptor key and precision; a file that fails validation anywhere
is refused whole (:class:`~pipeit.errors.PipeitError`), never half-used.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from cores.filewrite import exclusive_lock, write_file
from cores.jsonfile import JsonFileError, is_version, read_json
from pipeit.descriptor import LayerDescriptor
from pipeit.errors import PipeitError
from pipeit.gpu import kernels as K
from pipeit.gpu.costmodel import (ALGOS as _ALGOS, NUMERIC_KEYS as _NUMERIC, BoostedTrees, Ridge,
                                  TransferModel, features, layer_features, onehot_features)
from pipeit.gpu.device import DeviceInfo, GpuContext, GpuError
from pipeit.gpu.lowering import GEOMETRY_KEYS, PADDING_KEYS, LayerSpec
from pipeit.gpu.space import Config, config_key

__all__ = [
    "TrialStatus",
    "Trial",
    "Measurer",
    "RecordedMeasurer",
    "RandomSearch",
    "ModelSearch",
    "STRATEGIES",
    "make_strategy",
    "transfer_prior",
    "MIN_PRIOR_TRIALS",
    "tune",
    "best_trial",
    "features",
    "layer_features",
    "onehot_features",
    "BoostedTrees",
    "Ridge",
    "TransferModel",
    "TuningFile",
    "TuningError",
    "TUNING_VERSION",
]

TUNING_VERSION = 1


class TuningError(PipeitError):
    """A tuning file that is corrupt, of another version, or malformed."""


class TrialStatus(enum.Enum):
    """What became of one measured config."""

    OK = "ok"
    INVALID = "invalid"  # the config does not fit the layer
    BUILD_ERROR = "build_error"  # the OpenCL compiler refused the kernel
    RUN_ERROR = "run_error"  # enqueue or execution failed (out of resources, ...)


@dataclass(frozen=True)
class Trial:
    """One measurement: the config, its status, its device time (ms, median) and a message."""

    config: Tuple[Tuple[str, object], ...]
    status: TrialStatus
    ms: Optional[float] = None
    message: str = ""

    @property
    def config_dict(self) -> Config:
        return dict(self.config)

    @property
    def ok(self) -> bool:
        return self.status is TrialStatus.OK and self.ms is not None


def _frozen(config: Config) -> Tuple[Tuple[str, object], ...]:
    return tuple(sorted(config.items()))


# ---- measuring -------------------------------------------------------------------------------

class Measurer:
    """Times one layer's kernels for a config on a device (median device ms of ``repeats`` runs)."""

    def __init__(self, ctx: GpuContext, spec: LayerSpec, precision: K.Precision = K.FP32,
                 repeats: int = 5, seed: int = 0) -> None:
        self.ctx, self.spec, self.precision, self.repeats = ctx, spec, precision, max(int(repeats), 1)
        cl = ctx.cl
        dtype = np.dtype(precision.numpy_storage)
        rng = np.random.default_rng(seed)
        self._inputs = []
        for shape in spec.in_shapes:
            data = rng.uniform(-1, 1, shape).astype(dtype)
            self._inputs.append(cl.Buffer(ctx.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
                                          hostbuf=data))
        size = max(spec.out_size, 1) * dtype.itemsize
        self._outputs = [cl.Buffer(ctx.context, cl.mem_flags.READ_WRITE, size)]

    def measure(self, config: Config) -> Trial:
        from pipeit.gpu.program import LayerProgram

        frozen = _frozen(config)
        try:
            program = LayerProgram(self.ctx, self.spec, config, self.precision)
        except ValueError as err:
            return Trial(frozen, TrialStatus.INVALID, None, str(err))
        except GpuError as err:
            return Trial(frozen, TrialStatus.BUILD_ERROR, None, str(err)[:300])
        cl = self.ctx.cl
        try:
            inputs = self._inputs if self.spec.kind != "reshape" else self._inputs[:1]
            program.enqueue(self.ctx.queue, inputs, self._outputs)  # warm-up (pocl compiles here)
            self.ctx.queue.finish()
            times = []
            for _ in range(self.repeats):
                events = program.enqueue(self.ctx.queue, inputs, self._outputs)
                self.ctx.queue.finish()
                times.append(sum(e.profile.end - e.profile.start for e in events) * 1e-6)
        except (cl.Error, RuntimeError) as err:
            return Trial(frozen, TrialStatus.RUN_ERROR, None, str(err)[:300])
        return Trial(frozen, TrialStatus.OK, float(statistics.median(times)))


class RecordedMeasurer:
    """Replays recorded trials (simulation mode: compare strategies without timing anything)."""

    def __init__(self, trials: Sequence[Trial]) -> None:
        self.table = {config_key(t.config_dict): t for t in trials}

    def measure(self, config: Config) -> Trial:
        found = self.table.get(config_key(config))
        if found is None:
            return Trial(_frozen(config), TrialStatus.INVALID, None, "not in the recording")
        return found


# ---- strategies -----------------------------------------------------------------------------

class RandomSearch:
    """Uniform random configs without replacement, ``batch_size`` at a time, ``budget`` in all."""

    name = "random"

    def __init__(self, space: Sequence[Config], budget: int, batch_size: int = 8, seed: int = 0) -> None:
        if not space:
            raise PipeitError("the search space is empty")
        self.space = list(space)
        self.budget = min(int(budget), len(self.space))
        self.batch_size = max(int(batch_size), 1)
        self.rng = np.random.default_rng(seed)
        self.order = list(self.rng.permutation(len(self.space)))
        self.trials: List[Trial] = []
        self._asked = 0

    @property
    def done(self) -> bool:
        return self._asked >= self.budget

    def next_batch(self) -> List[Config]:
        n = min(self.batch_size, self.budget - self._asked)
        picks = self.order[self._asked:self._asked + n]
        self._asked += n
        return [self.space[i] for i in picks]

    def update(self, trials: Sequence[Trial]) -> None:
        self.trials.extend(trials)


class ModelSearch(RandomSearch):
    """Cost-model-guided search (AutoTVM's loop): propose the configs a model ranks fastest, refit each batch.

    Two sources of ranking, combined:

    * ``prior`` -- a :class:`~pipeit.gpu.costmodel.TransferModel` fitted on
      *other* layers' trials (needs ``spec``). With it the very first batch is
      already the prior's best guesses instead of random picks, which is what
      matters with a budget of a few dozen trials; later batches add a local
      model fitted on this layer's own trials to the prior's residuals (the
      prior is the base margin, as in AutoTVM's transfer learning).
    * without a prior: a random first batch, then a model fitted on this
      layer's trials alone (boosted trees on :func:`layer_features` when
      ``spec`` is given, else on :func:`features`; or ridge on one-hot columns).

    ``shrink``: the residual model's say grows with the layer's own trials
    as n / (n + shrink), so three noisy trials cannot overrule a prior
    learnt from hundreds (8 was best of 0/8/24 in replays of recorded pocl
    trials, tools/gpu_tune_bench.py).

    ``explore`` is the share of each model-chosen batch drawn at random from
    the unmeasured configs, so a wrong model cannot trap the search; by
    default 0.25 without a prior and 0 with one (the prior has seen other
    layers' whole spaces, and random picks waste a small budget).
    """

    name = "model"

    def __init__(self, space: Sequence[Config], budget: int, batch_size: int = 8, seed: int = 0,
                 explore: Optional[float] = None, cost_model: str = "trees",
                 spec: Optional[LayerSpec] = None, bags: int = 1, kappa: float = 0.0,
                 prior: Optional[TransferModel] = None, shrink: float = 8.0) -> None:
        super().__init__(space, budget, batch_size, seed)
        self.shrink = max(float(shrink), 0.0)
        if prior is not None and spec is None:
            raise PipeitError("a transfer prior needs the layer's spec")
        self.explore = (0.0 if prior is not None else 0.25) if explore is None else float(explore)
        self.bags, self.kappa = max(int(bags), 1), float(kappa)
        if cost_model not in ("ridge", "trees"):
            raise PipeitError(f"unknown cost model {cost_model!r}; choose ridge or trees")
        self.cost_model = cost_model
        if cost_model == "ridge":
            self._features = onehot_features(self.space)
        elif spec is not None:
            self._features = np.stack([layer_features(spec, c) for c in self.space])
        else:
            self._features = np.stack([features(c) for c in self.space])
        self.prior = prior
        self._prior = None if prior is None else prior.predict(spec, self.space)
        self._measured: set = set()
        self._index = {config_key(c): i for i, c in enumerate(self.space)}

    def next_batch(self) -> List[Config]:
        n = min(self.batch_size, self.budget - self._asked)
        if n <= 0:
            return []
        free = [i for i in range(len(self.space)) if i not in self._measured]
        rows, y = self._observed()
        ok = sum(1 for t in self.trials if t.ok)
        if self._prior is None and ok < 4:
            picks = [i for i in self.order if i not in self._measured][:n]
        else:
            if self._prior is None:
                scores = self._scores(self._features[rows], y, self._features[free])
            elif ok < 4:
                scores = self._prior[free] + self._jitter(len(free))
            else:
                residual = y - self._prior[rows]
                weight = len(rows) / (len(rows) + self.shrink)  # trust the layer's own trials as they grow
                scores = (self._prior[free] + weight * self._scores(self._features[rows], residual,
                                                                    self._features[free]))
            n_explore = int(round(n * self.explore)) if n > 1 else 0
            ranked = [free[j] for j in np.argsort(scores, kind="stable")]
            picks = ranked[:n - n_explore]
            rest = [i for i in free if i not in picks]
            if n_explore and rest:
                picks += list(self.rng.choice(rest, size=min(n_explore, len(rest)), replace=False))
        self._measured.update(int(i) for i in picks)
        self._asked += len(picks)
        return [self.space[int(i)] for i in picks]

    def _observed(self) -> Tuple[List[int], np.ndarray]:
        """Space indices of this layer's trials and their log-times (failures look slowest + 1)."""
        ok = [math.log(t.ms) for t in self.trials if t.ok]
        worst = max(ok) if ok else 0.0
        rows, y = [], []
        for t in self.trials:
            i = self._index.get(config_key(t.config_dict))
            if i is not None:
                rows.append(i)
                y.append(math.log(t.ms) if t.ok else worst + 1.0)
        y_arr = np.asarray(y)
        if len(y_arr) and self._prior is not None:
            y_arr = y_arr - float(np.median(y_arr))  # the prior predicts times relative to the median
        return rows, y_arr

    def _jitter(self, n: int, spread: float = 1.0) -> np.ndarray:
        """A tiny random tie-break, so configs a model cannot tell apart are not taken in space order."""
        return 1e-6 * spread * self.rng.standard_normal(n)

    def _scores(self, x: np.ndarray, y: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Lower is more promising: an optimistic bound from a small bagged ensemble.

        Each member is fitted on a bootstrap resample; the score is the mean
        prediction minus ``kappa`` standard deviations across members (configs
        the models disagree on get a chance), plus a tiny random tie-break.
        """
        preds = []
        for _ in range(self.bags):
            rows = self.rng.integers(0, len(y), size=len(y)) if self.bags > 1 else np.arange(len(y))
            model = Ridge() if self.cost_model == "ridge" else BoostedTrees(n_trees=30)
            preds.append(model.fit(x[rows], y[rows]).predict(candidates))
        stack = np.stack(preds)
        spread = float(np.std(y)) if len(y) > 1 else 1.0
        return stack.mean(axis=0) - self.kappa * stack.std(axis=0) + self._jitter(len(candidates), spread)


STRATEGIES = {"random": RandomSearch, "model": ModelSearch}


def make_strategy(name: str, space: Sequence[Config], budget: int, batch_size: int = 8,
                  seed: int = 0, spec: Optional[LayerSpec] = None,
                  prior: Optional[TransferModel] = None) -> RandomSearch:
    """A strategy by name (``random`` or ``model``); an unknown name is refused with the choices.

    ``spec`` and ``prior`` reach only the model search: the random baseline
    stays pure uniform sampling without replacement.
    """
    if name not in STRATEGIES:
        raise PipeitError(f"unknown tuning strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "model":
        return ModelSearch(space, budget, batch_size, seed, spec=spec, prior=prior)
    return STRATEGIES[name](space, budget, batch_size, seed)


#: fewest successful trials of other layers worth fitting a transfer prior on
MIN_PRIOR_TRIALS = 16


def transfer_prior(layers: Sequence[Tuple[LayerSpec, Sequence[Trial]]], seed: int = 0,
                   min_trials: int = MIN_PRIOR_TRIALS) -> Optional[TransferModel]:
    """A :class:`TransferModel` on other layers' trials, or None when they are too few to help."""
    if sum(1 for _, trials in layers for t in trials if t.ok) < min_trials:
        return None
    return TransferModel.fit(layers, seed=seed)


def tune(strategy: RandomSearch, measurer: Any,
         progress: Optional[Callable[[int], None]] = None) -> List[Trial]:
    """The ask/tell loop: measure each proposed batch and feed it back until the budget is spent."""
    trials: List[Trial] = []
    while not strategy.done:
        batch = strategy.next_batch()
        if not batch:
            break
        results = [measurer.measure(c) for c in batch]
        strategy.update(results)
        trials.extend(results)
        if progress is not None:
            progress(len(results))
    return trials


def best_trial(trials: Sequence[Trial]) -> Optional[Trial]:
    """The fastest successful trial (None when every trial failed)."""
    ok = [t for t in trials if t.ok]
    return min(ok, key=lambda t: t.ms) if ok else None


# ---- the tuning file ------------------------------------------------------------------------

class TuningFile:
    """Best configs keyed by device fingerprint, descriptor key string and precision.

    The JSON document: ``{"version": 1, "devices": {fp: {"name": ...}},
    "entries": [{"device": fp, "descriptor": key, "precision": p,
    "config": {...}, "ms": x, "untuned_ms": y, "strategy": s, "trials": n,
    "history": {"kind": k, "geometry": {...}, "out_shape": [...],
    "trials": [{"config": {...}, "ms": x or null}, ...]}}]}``. ``history``
    is optional: the trials measured for that layer, so a later search on
    another layer of this device can start from a transfer model
    (:meth:`priors`) instead of from random picks.
    """

    def __init__(self) -> None:
        self.devices: Dict[str, dict] = {}
        self.entries: Dict[Tuple[str, str, str], dict] = {}
        #: the entries this object recorded itself: what :meth:`save` lays over the file as it is on disk
        self._recorded: set = set()

    def record(self, device: DeviceInfo, descriptor: LayerDescriptor, precision: str, config: Config,
               ms: float, strategy: str, trials: int, untuned_ms: Optional[float] = None,
               spec: Optional[LayerSpec] = None, history: Optional[Sequence[Trial]] = None) -> None:
        """Keep the best config; with ``spec`` and ``history``, also the trials (for transfer priors)."""
        fp = device.fingerprint()
        self.devices[fp] = {"name": device.name, "platform": device.platform, "driver": device.driver}
        entry = {"device": fp, "descriptor": descriptor.key_string(), "precision": precision,
                 "config": dict(config), "ms": float(ms), "strategy": strategy, "trials": int(trials)}
        if untuned_ms is not None:
            entry["untuned_ms"] = float(untuned_ms)
        # a layer that runs no kernel (RESHAPE, SQUEEZE) times 0 ms: no prior for anything, so no history
        if spec is not None and history and any(t.ok and t.ms is not None and t.ms > 0 for t in history):
            entry["history"] = {
                "kind": spec.kind, "geometry": {k: int(v) for k, v in spec.geometry.items()},
                "out_shape": [int(v) for v in spec.out_shape],
                "trials": [{"config": t.config_dict, "ms": t.ms if t.ok else None} for t in history]}
        self.entries[(fp, descriptor.key_string(), precision)] = entry
        self._recorded.add((fp, descriptor.key_string(), precision))

    def priors(self, device: DeviceInfo, precision: str = "fp32", exclude: str = "",
               kind: Optional[str] = None) -> List[Tuple[LayerSpec, List[Trial]]]:
        """Recorded trials of this device's layers (all but descriptor ``exclude``; only layers of
        ``kind`` when given): a transfer prior's data.

        The specs carry only what the cost model's features read (kind,
        geometry, output shape), not the layer's weights.
        """
        out = []
        for (fp, key, prec), entry in sorted(self.entries.items()):
            hist = entry.get("history")
            if fp != device.fingerprint() or prec != precision or key == exclude or not hist:
                continue
            if kind is not None and hist["kind"] != kind:
                continue
            spec = LayerSpec(-1, "", hist["kind"], (), (), (), tuple(hist["out_shape"]),
                             geometry=dict(hist["geometry"]))
            trials = [Trial(_frozen(t["config"]), TrialStatus.OK if t["ms"] is not None else
                            TrialStatus.RUN_ERROR, t["ms"]) for t in hist["trials"]]
            out.append((spec, trials))
        return out

    def lookup(self, device: DeviceInfo, descriptor: LayerDescriptor, precision: str = "fp32"
               ) -> Optional[dict]:
        return self.entries.get((device.fingerprint(), descriptor.key_string(), precision))

    def not_for_device(self, device: DeviceInfo, where: str) -> Optional[str]:
        """A warning when this file holds no config for ``device`` (tuned on another board or driver): its
        layers then run, and are timed, with the heuristic configs, which the user should hear of."""
        if device.fingerprint() in self.devices:
            return None
        others = sorted({str(d.get("name", "?")) for d in self.devices.values()}) or ["no device"]
        return (f"{where} has no configs for {device.name} (fingerprint {device.fingerprint()}; it was tuned on "
                f"{', '.join(others)}): heuristic configs are used; tune with pipeit gpu tune")

    def config_for(self, device: DeviceInfo, descriptor: LayerDescriptor, precision: str = "fp32"
                   ) -> Optional[Config]:
        entry = self.lookup(device, descriptor, precision)
        return None if entry is None else dict(entry["config"])

    def to_json(self) -> dict:
        return {"version": TUNING_VERSION, "devices": self.devices,
                "entries": sorted(self.entries.values(),
                                  key=lambda e: (e["device"], e["descriptor"], e["precision"]))}

    def save(self, path: Union[str, Path]) -> None:
        """Write the file: what it holds on disk now, with the entries this object recorded laid over it.

        Two ``gpu tune`` runs on one file (the state directory's, say) each
        loaded it once and rewrote it whole after every layer: the last
        writer's copy won and the other run's layers were lost. The read,
        merge and write happen under a lock on the file's folder; this object
        then holds the merged file too (its transfer priors see the other
        run's layers).
        """
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            with _folder_locked(p.parent):
                merged = self._merged_with(p)
                write_file(p, json.dumps(merged.to_json(), indent=1) + "\n")
        except OSError as err:
            raise TuningError(f"cannot write tuning file {p}: {err.strerror or err}") from err
        self.devices, self.entries = merged.devices, merged.entries

    def _merged_with(self, path: Path) -> "TuningFile":
        """The file at ``path`` as it is now (this object where there is none, or it is unreadable) with this
        object's recorded entries, and their devices, laid over it."""
        try:
            disk = TuningFile.load(path) if path.is_file() else None
        except TuningError:
            disk = None  # not ours to repair: the whole of this object goes out, as before
        if disk is None:
            disk = TuningFile()
            disk.devices, disk.entries = dict(self.devices), dict(self.entries)
        for key in self._recorded:
            disk.entries[key] = self.entries[key]
            disk.devices[key[0]] = self.devices[key[0]]
        disk._recorded = self._recorded
        return disk

    @classmethod
    def from_json(cls, doc: Any, where: str = "tuning file") -> "TuningFile":
        """Validate everything first; any defect refuses the whole file."""
        if not isinstance(doc, dict):
            raise TuningError(f"{where}: not a JSON object")
        if not is_version(doc.get("version"), TUNING_VERSION):
            raise TuningError(f"{where}: version {doc.get('version')!r}, expected {TUNING_VERSION}")
        devices, entries = doc.get("devices"), doc.get("entries")
        if not isinstance(devices, dict) or not isinstance(entries, list):
            raise TuningError(f"{where}: needs a 'devices' object and an 'entries' list")
        out = cls()
        for k, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise TuningError(f"{where}: entry {k} is not an object")
            for name, kind in (("device", str), ("descriptor", str), ("precision", str), ("config", dict),
                               ("ms", (int, float)), ("strategy", str), ("trials", int)):
                if not isinstance(entry.get(name), kind) or isinstance(entry.get(name), bool):
                    raise TuningError(f"{where}: entry {k} has no valid {name!r}")
            if entry["device"] not in devices:
                raise TuningError(f"{where}: entry {k} names unknown device {entry['device']!r}")
            if entry["precision"] not in K.PRECISIONS:
                raise TuningError(f"{where}: entry {k} has unknown precision {entry['precision']!r}")
            _check_config(entry["config"], f"{where}: entry {k}")
            if "history" in entry:
                _check_history(entry["history"], f"{where}: entry {k} history")
            if not math.isfinite(float(entry["ms"])) or entry["ms"] < 0:
                raise TuningError(f"{where}: entry {k} has an invalid time {entry['ms']!r}")
            untuned = entry.get("untuned_ms")
            if untuned is not None and not _is_time(untuned):
                raise TuningError(f"{where}: entry {k} has an invalid untuned_ms {untuned!r} "
                                  f"(a finite number >= 0, or absent)")
            if entry["trials"] < 0:
                raise TuningError(f"{where}: entry {k} has a negative trial count {entry['trials']!r}")
            out.entries[(entry["device"], entry["descriptor"], entry["precision"])] = dict(entry)
        out.devices = {str(k): dict(v) if isinstance(v, dict) else {} for k, v in devices.items()}
        return out

    @classmethod
    def load(cls, path: Union[str, Path]) -> "TuningFile":
        p = Path(path)
        try:
            doc = read_json(p, "tuning")
        except JsonFileError as err:
            if err.kind == "syntax":
                raise TuningError(f"{p}: not valid JSON ({err.detail})") from None
            raise TuningError(f"cannot read tuning file {p}: {err.reason}") from None
        return cls.from_json(doc, str(p))


@contextlib.contextmanager
def _folder_locked(folder: Path) -> Iterator[None]:
    """:func:`~cores.filewrite.exclusive_lock` on ``folder`` for the block (unlocked where it cannot be
    opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        yield
        return
    try:
        with exclusive_lock(fd):
            yield
    finally:
        os.close(fd)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_config(config: object, where: str) -> None:
    if not isinstance(config, dict):
        raise TuningError(f"{where}: config is not an object")
    for key, value in config.items():
        if key == "algo":
            if value not in _ALGOS:
                raise TuningError(f"{where} has unknown algorithm {value!r}")
        elif key not in _NUMERIC or not _is_int(value) or value < 0:
            raise TuningError(f"{where} has invalid parameter {key}={value!r}")


def _is_time(value: object) -> bool:
    """A duration in ms as a file may hold it: a finite number >= 0 (not a bool, not a string)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value >= 0)


def _check_geometry(kind: str, geometry: object, where: str) -> None:
    """The shape constants of a recorded layer: its kind's keys, sizes >= 1, padding >= 0.

    A transfer prior reads them as a lowered layer's (divides by GROUPS,
    takes logs of sizes), so a missing key or a zero would be a ``KeyError``
    or a ``ZeroDivisionError`` in the middle of a later ``gpu tune``.
    """
    if kind not in GEOMETRY_KEYS:
        raise TuningError(f"{where}: unknown layer kind {kind!r}; known: {', '.join(sorted(GEOMETRY_KEYS))}")
    if not isinstance(geometry, dict):
        raise TuningError(f"{where}: 'geometry' must map names to integers")
    missing = [key for key in GEOMETRY_KEYS[kind] if key not in geometry]
    if missing:  # keys beyond the kind's are not read: left alone
        raise TuningError(f"{where}: a {kind} geometry needs {', '.join(GEOMETRY_KEYS[kind])} "
                          f"(missing {', '.join(missing)})")
    for key, value in sorted(geometry.items()):
        least = 0 if key in PADDING_KEYS else 1
        if not _is_int(value) or not least <= value < 2**31:
            raise TuningError(f"{where}: geometry {key}={value!r} must be an integer >= {least}")


def _check_history(hist: object, where: str) -> None:
    """An entry's recorded trials: kind, integer geometry and output shape, configs with ms or null."""
    from pipeit.gpu.configcheck import shape_problem

    if not isinstance(hist, dict) or not isinstance(hist.get("kind"), str):
        raise TuningError(f"{where}: needs an object with a 'kind'")
    geometry, shape, trials = hist.get("geometry"), hist.get("out_shape"), hist.get("trials")
    _check_geometry(hist["kind"], geometry, where)
    if not isinstance(shape, list) or not all(_is_int(v) and v > 0 for v in shape):
        raise TuningError(f"{where}: 'out_shape' must be a list of positive integers")
    if not isinstance(trials, list):
        raise TuningError(f"{where}: 'trials' must be a list")
    spec = LayerSpec(-1, "", hist["kind"], (), (), (), tuple(shape), geometry=dict(geometry))
    for j, t in enumerate(trials):
        if not isinstance(t, dict):
            raise TuningError(f"{where}: trial {j} is not an object")
        _check_config(t.get("config"), f"{where}: trial {j}")
        problem = shape_problem(spec, t["config"])
        if problem:
            raise TuningError(f"{where}: trial {j} config {config_key(t['config']) or '{}'}: {problem}")
        ms = t.get("ms")
        # 0 is a layer with no kernel, as files written before such layers kept no history hold it
        if ms is not None and (not isinstance(ms, (int, float)) or isinstance(ms, bool)
                               or not math.isfinite(ms) or ms < 0):
            raise TuningError(f"{where}: trial {j} has an invalid time {ms!r}")
