"""Kernel tuning: ask/tell search strategies, measured trials, and the tuning file.

One loop drives every strategy (:func:`tune`): ``next_batch()`` proposes
configs, a measurer times them, ``update(trials)`` feeds the results back.
Two strategies:

* :class:`RandomSearch` -- the baseline: configs drawn without replacement;
* :class:`ModelSearch` -- ML-guided (as TVM's AutoTVM): after a random first
  batch, a cost model (small gradient-boosted regression trees on features of
  the parameters, written with numpy) is refit on every trial measured so far
  and the unmeasured configs it predicts fastest form the next batch, plus a
  few random ones so a wrong model cannot trap the search.

A trial that fails to build or run is data, not an exception: its
:class:`TrialStatus` says what happened and the search goes on. Trials are
timed with OpenCL profiling events (device time, median of repeats).

The :class:`TuningFile` (JSON) keeps the best config per device fingerprint,
layer descriptor key and precision; a file that fails validation anywhere
is refused whole (:class:`~pipeit.errors.PipeitError`), never half-used.
"""

from __future__ import annotations

import enum
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from pipeit.descriptor import LayerDescriptor
from pipeit.errors import PipeitError
from pipeit.gpu import kernels as K
from pipeit.gpu.device import DeviceInfo, GpuContext, GpuError
from pipeit.gpu.lowering import LayerSpec
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
    "tune",
    "best_trial",
    "features",
    "BoostedTrees",
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


# ---- features and the cost model ------------------------------------------------------------

_ALGOS = ("direct", "gemm", "im2col", "winograd")
_NUMERIC = ("TM", "TN", "TK", "WM", "WN", "CO", "VEC", "WG", "LOCAL")


def features(config: Config) -> np.ndarray:
    """Numbers a cost model can learn from: algorithm one-hot, log2 of each knob, derived sizes."""
    row = [1.0 if config.get("algo") == a else 0.0 for a in _ALGOS]
    for key in _NUMERIC:
        value = config.get(key)
        if key == "LOCAL":
            row.append(float(value or 0))
        else:
            row.append(math.log2(float(value) + (1.0 if key == "WG" else 0.0)) if value else 0.0)
    if "TM" in config:
        tm, tn, tk, wm, wn = (float(config[k]) for k in ("TM", "TN", "TK", "WM", "WN"))
        row += [math.log2((tm / wm) * (tn / wn)), math.log2(wm * wn), math.log2(tk * (tm + tn))]
    else:
        row += [0.0, math.log2(float(config.get("CO", 1)) * float(config.get("VEC", 1))), 0.0]
    return np.asarray(row, dtype=np.float64)


def layer_features(spec: LayerSpec, config: Config) -> np.ndarray:
    """:func:`features` plus what the config does to this layer: groups launched, tile waste, work.

    These carry the mechanisms (a TN of 64 on a 16-channel output wastes
    three quarters of every tile; Winograd does 2.25x fewer multiplies) so a
    model fitted on a few trials generalises to configs it has not seen.
    """
    base = features(config)
    g = spec.geometry
    algo = config.get("algo")
    extra = [0.0, 1.0, 1.0, 0.0]
    if "TM" in config and spec.kind in ("conv", "gemm"):
        batch = 1
        if spec.kind == "gemm":
            m, n, k = g["M"], g["N"], g["K"]
        elif algo == "winograd":
            m, n, k, batch = g["N"] * -(-g["OH"] // 2) * -(-g["OW"] // 2), g["COUT"], g["CIN"], 16
        else:
            m, n, k = g["N"] * g["OH"] * g["OW"], g["COUT"], g["KH"] * g["KW"] * g["CIN"]
        tm, tn = int(config["TM"]), int(config["TN"])
        gm, gn = -(-m // tm), -(-n // tn)
        extra = [math.log2(gm * gn * batch), gm * tm / m, gn * tn / n, math.log2(float(m) * n * k * batch)]
    elif algo == "direct" or spec.kind in ("depthwise",):
        items = max(spec.out_size // int(config.get("CO", 1)) // int(config.get("VEC", 1)), 1)
        work = g.get("KH", 1) * g.get("KW", 1) * g.get("CIN", 1) // g.get("GROUPS", 1)
        extra = [math.log2(items), 1.0, 1.0, math.log2(float(spec.out_size) * max(work, 1))]
    return np.concatenate([base, np.asarray(extra)])


class _Tree:
    """A depth-limited regression tree (greedy squared-error splits)."""

    def __init__(self, depth: int, min_leaf: int) -> None:
        self.depth, self.min_leaf = depth, min_leaf
        self.nodes: List[Tuple[int, float, int, int, float]] = []  # feature, threshold, left, right, value

    def fit(self, x: np.ndarray, y: np.ndarray) -> "_Tree":
        self.nodes = []
        self._grow(x, y, 0)
        return self

    def _grow(self, x: np.ndarray, y: np.ndarray, depth: int) -> int:
        index = len(self.nodes)
        self.nodes.append((-1, 0.0, -1, -1, float(y.mean())))
        if depth >= self.depth or len(y) < 2 * self.min_leaf:
            return index
        best = None
        total_sse = float(((y - y.mean()) ** 2).sum())
        for f in range(x.shape[1]):
            order = np.argsort(x[:, f], kind="stable")
            xs, ys = x[order, f], y[order]
            csum = np.cumsum(ys)
            csq = np.cumsum(ys ** 2)
            n = len(ys)
            for i in range(self.min_leaf, n - self.min_leaf + 1):
                if xs[i - 1] == xs[i]:
                    continue
                left = csq[i - 1] - csum[i - 1] ** 2 / i
                right = (csq[-1] - csq[i - 1]) - (csum[-1] - csum[i - 1]) ** 2 / (n - i)
                gain = total_sse - left - right
                if best is None or gain > best[0]:
                    best = (gain, f, 0.5 * (xs[i - 1] + xs[i]))
        if best is None or best[0] <= 1e-12:
            return index
        _, f, threshold = best
        mask = x[:, f] <= threshold
        left = self._grow(x[mask], y[mask], depth + 1)
        right = self._grow(x[~mask], y[~mask], depth + 1)
        self.nodes[index] = (f, threshold, left, right, self.nodes[index][4])
        return index

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.empty(len(x))
        for r in range(len(x)):
            node = 0
            while self.nodes[node][2] >= 0:
                f, threshold, left, right, _ = self.nodes[node]
                node = left if x[r, f] <= threshold else right
            out[r] = self.nodes[node][4]
        return out


class Ridge:
    """Ridge regression (closed form, intercept unpenalised): the additive cost model."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def fit(self, x: np.ndarray, y: np.ndarray) -> "Ridge":
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
            raise ValueError("Ridge.fit needs a non-empty 2-D x and a y of the same length")
        self.mean_x_, self.mean_y_ = x.mean(axis=0), float(y.mean())
        xc = x - self.mean_x_
        gram = xc.T @ xc + self.alpha * np.eye(x.shape[1])
        self.coef_ = np.linalg.solve(gram, xc.T @ (y - self.mean_y_))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise ValueError("Ridge is not fitted")
        return (np.asarray(x, dtype=np.float64) - self.mean_x_) @ self.coef_ + self.mean_y_


def onehot_features(space: Sequence[Config]) -> np.ndarray:
    """One column per (algorithm, parameter, value) seen in ``space``, plus the algorithm itself.

    An additive model over these columns learns "TN=64 is slow with im2col"
    from a handful of trials, where trees need many more.
    """
    vocab: Dict[Tuple[str, str, object], int] = {}
    rows = []
    for config in space:
        algo = str(config.get("algo", ""))
        keys = [(algo, "algo", algo)] + [(algo, k, v) for k, v in config.items() if k != "algo"]
        rows.append([vocab.setdefault(key, len(vocab)) for key in keys])
    out = np.zeros((len(space), len(vocab)))
    for r, cols in enumerate(rows):
        out[r, cols] = 1.0
    return out


class BoostedTrees:
    """Gradient-boosted regression trees (squared loss): the tuner's cost model.

    ``fit`` stores state in attributes ending in ``_``; ``predict`` before
    ``fit`` is refused.
    """

    def __init__(self, n_trees: int = 40, depth: int = 3, learning_rate: float = 0.3,
                 min_leaf: int = 2) -> None:
        self.n_trees, self.depth, self.learning_rate, self.min_leaf = n_trees, depth, learning_rate, min_leaf

    def fit(self, x: np.ndarray, y: np.ndarray) -> "BoostedTrees":
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
            raise ValueError("BoostedTrees.fit needs a non-empty 2-D x and a y of the same length")
        self.base_ = float(y.mean())
        self.trees_: List[_Tree] = []
        residual = y - self.base_
        for _ in range(self.n_trees):
            tree = _Tree(self.depth, self.min_leaf).fit(x, residual)
            residual = residual - self.learning_rate * tree.predict(x)
            self.trees_.append(tree)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "trees_"):
            raise ValueError("BoostedTrees is not fitted")
        x = np.asarray(x, dtype=np.float64)
        out = np.full(len(x), self.base_)
        for tree in self.trees_:
            out += self.learning_rate * tree.predict(x)
        return out


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
    """Cost-model-guided search: random first batch, then the model's best guesses (refit each batch)."""

    name = "model"

    def __init__(self, space: Sequence[Config], budget: int, batch_size: int = 8, seed: int = 0,
                 explore: float = 0.25, cost_model: str = "trees",
                 spec: Optional[LayerSpec] = None, bags: int = 1, kappa: float = 0.0) -> None:
        super().__init__(space, budget, batch_size, seed)
        self.explore = float(explore)
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
        self._measured: set = set()
        self._index = {config_key(c): i for i, c in enumerate(self.space)}

    def next_batch(self) -> List[Config]:
        n = min(self.batch_size, self.budget - self._asked)
        if n <= 0:
            return []
        ok = [t for t in self.trials if t.ok]
        free = [i for i in range(len(self.space)) if i not in self._measured]
        if len(ok) < 4:
            picks = [i for i in self.order if i not in self._measured][:n]
        else:
            x, y = [], []
            worst = max(math.log(t.ms) for t in ok)
            for t in self.trials:
                i = self._index.get(config_key(t.config_dict))
                if i is None:
                    continue
                x.append(self._features[i])
                y.append(math.log(t.ms) if t.ok else worst + 1.0)  # failures look slow
            scores = self._scores(np.stack(x), np.asarray(y), self._features[free])
            n_explore = int(round(n * self.explore)) if n > 1 else 0
            ranked = [free[j] for j in np.argsort(scores, kind="stable")]
            picks = ranked[:n - n_explore]
            rest = [i for i in free if i not in picks]
            if n_explore and rest:
                picks += list(self.rng.choice(rest, size=min(n_explore, len(rest)), replace=False))
        self._measured.update(int(i) for i in picks)
        self._asked += len(picks)
        return [self.space[int(i)] for i in picks]


    def _scores(self, x: np.ndarray, y: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Lower is more promising: an optimistic bound from a small bagged ensemble.

        Each member is fitted on a bootstrap resample; the score is the mean
        prediction minus one standard deviation across members (configs the
        models disagree on get a chance), plus a tiny random tie-break so
        configs in one tree leaf are not taken in enumeration order.
        """
        preds = []
        for _ in range(self.bags):
            rows = self.rng.integers(0, len(y), size=len(y)) if self.bags > 1 else np.arange(len(y))
            model = Ridge() if self.cost_model == "ridge" else BoostedTrees(n_trees=30)
            preds.append(model.fit(x[rows], y[rows]).predict(candidates))
        stack = np.stack(preds)
        spread = float(np.std(y)) if len(y) > 1 else 1.0
        jitter = 1e-6 * spread * self.rng.standard_normal(len(candidates))
        return stack.mean(axis=0) - self.kappa * stack.std(axis=0) + jitter


STRATEGIES = {"random": RandomSearch, "model": ModelSearch}


def make_strategy(name: str, space: Sequence[Config], budget: int, batch_size: int = 8,
                  seed: int = 0) -> RandomSearch:
    """A strategy by name (``random`` or ``model``); an unknown name is refused with the choices."""
    if name not in STRATEGIES:
        raise PipeitError(f"unknown tuning strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](space, budget, batch_size, seed)


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
    "config": {...}, "ms": x, "untuned_ms": y, "strategy": s, "trials": n}]}``.
    """

    def __init__(self) -> None:
        self.devices: Dict[str, dict] = {}
        self.entries: Dict[Tuple[str, str, str], dict] = {}

    def record(self, device: DeviceInfo, descriptor: LayerDescriptor, precision: str, config: Config,
               ms: float, strategy: str, trials: int, untuned_ms: Optional[float] = None) -> None:
        fp = device.fingerprint()
        self.devices[fp] = {"name": device.name, "platform": device.platform, "driver": device.driver}
        entry = {"device": fp, "descriptor": descriptor.key_string(), "precision": precision,
                 "config": dict(config), "ms": float(ms), "strategy": strategy, "trials": int(trials)}
        if untuned_ms is not None:
            entry["untuned_ms"] = float(untuned_ms)
        self.entries[(fp, descriptor.key_string(), precision)] = entry

    def lookup(self, device: DeviceInfo, descriptor: LayerDescriptor, precision: str = "fp32"
               ) -> Optional[dict]:
        return self.entries.get((device.fingerprint(), descriptor.key_string(), precision))

    def config_for(self, device: DeviceInfo, descriptor: LayerDescriptor, precision: str = "fp32"
                   ) -> Optional[Config]:
        entry = self.lookup(device, descriptor, precision)
        return None if entry is None else dict(entry["config"])

    def to_json(self) -> dict:
        return {"version": TUNING_VERSION, "devices": self.devices,
                "entries": sorted(self.entries.values(),
                                  key=lambda e: (e["device"], e["descriptor"], e["precision"]))}

    def save(self, path: Union[str, Path]) -> None:
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
            tmp.replace(p)
        except OSError as err:
            raise TuningError(f"cannot write tuning file {p}: {err.strerror or err}") from err

    @classmethod
    def from_json(cls, doc: Any, where: str = "tuning file") -> "TuningFile":
        """Validate everything first; any defect refuses the whole file."""
        if not isinstance(doc, dict):
            raise TuningError(f"{where}: not a JSON object")
        if doc.get("version") != TUNING_VERSION:
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
            config = entry["config"]
            for key, value in config.items():
                if key == "algo":
                    if value not in _ALGOS:
                        raise TuningError(f"{where}: entry {k} has unknown algorithm {value!r}")
                elif key not in _NUMERIC or not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise TuningError(f"{where}: entry {k} has invalid parameter {key}={value!r}")
            if not math.isfinite(float(entry["ms"])) or entry["ms"] < 0:
                raise TuningError(f"{where}: entry {k} has an invalid time {entry['ms']!r}")
            out.entries[(entry["device"], entry["descriptor"], entry["precision"])] = dict(entry)
        out.devices = {str(k): dict(v) if isinstance(v, dict) else {} for k, v in devices.items()}
        return out

    @classmethod
    def load(cls, path: Union[str, Path]) -> "TuningFile":
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as err:
            raise TuningError(f"cannot read tuning file {p}: {err.strerror or err}") from err
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise TuningError(f"{p}: not valid JSON ({err})") from err
        return cls.from_json(doc, str(p))
