"""Cost models for the kernel search: features of a config on a layer, trees, ridge, a transfer prior.

The tuner never needs absolute times from a cost model, only an order: which
unmeasured configs are likely fastest. So every model here is fitted on
log-times, and the :class:`TransferModel` on log-times *relative to each
layer's median*, which makes trials of differently sized layers comparable:
"im2col with a 64-wide tile on a 16-channel output wastes 3/4 of the work"
holds on every layer, whatever its absolute cost (AutoTVM's transfer
learning across tasks rests on the same idea, see PAPERS.md).

Everything is numpy; the trees' split search and prediction are vectorised
so a transfer model over a few thousand trials fits in seconds.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeit.gpu.lowering import LayerSpec
from pipeit.gpu.space import Config

__all__ = [
    "ALGOS",
    "NUMERIC_KEYS",
    "features",
    "layer_features",
    "layer_context",
    "onehot_features",
    "BoostedTrees",
    "Ridge",
    "TransferModel",
]

ALGOS = ("direct", "gemm", "im2col", "winograd")
NUMERIC_KEYS = ("TM", "TN", "TK", "WM", "WN", "CO", "VEC", "WG", "LOCAL")


def features(config: Config) -> np.ndarray:
    """Numbers a cost model can learn from: algorithm one-hot, log2 of each knob, derived sizes."""
    row = [1.0 if config.get("algo") == a else 0.0 for a in ALGOS]
    for key in NUMERIC_KEYS:
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


def _gemm_shape(spec: LayerSpec, algo: object) -> Tuple[int, int, int, int]:
    """The (M, N, K, batch) of the GEMM a config runs on this layer."""
    g = spec.geometry
    if spec.kind == "gemm":
        return g["M"], g["N"], g["K"], 1
    if algo == "winograd":
        return g["N"] * -(-g["OH"] // 2) * -(-g["OW"] // 2), g["COUT"], g["CIN"], 16
    return g["N"] * g["OH"] * g["OW"], g["COUT"], g["KH"] * g["KW"] * g["CIN"], 1


def layer_features(spec: LayerSpec, config: Config) -> np.ndarray:
    """:func:`features` plus what the config does to this layer: groups launched, tile waste, work.

    Columns appended: log2 work-groups launched, the padding factor of the
    M, K and N tiles (1.0 = no waste), log2 multiply-adds.

    These carry the mechanisms (a TN of 64 on a 16-channel output wastes
    three quarters of every tile; Winograd does 2.25x fewer multiplies) so a
    model fitted on a few trials generalises to configs it has not seen.
    """
    base = features(config)
    g = spec.geometry
    algo = config.get("algo")
    extra = [0.0, 1.0, 1.0, 1.0, 0.0]
    if "TM" in config and spec.kind in ("conv", "gemm"):
        m, n, k, batch = _gemm_shape(spec, algo)
        tm, tn, tk = int(config["TM"]), int(config["TN"]), int(config["TK"])
        gm, gn = -(-m // tm), -(-n // tn)
        extra = [math.log2(gm * gn * batch), gm * tm / m, -(-k // tk) * tk / k, gn * tn / n,
                 math.log2(float(m) * n * k * batch)]
    elif algo == "direct" or spec.kind in ("depthwise",):
        items = max(spec.out_size // int(config.get("CO", 1)) // int(config.get("VEC", 1)), 1)
        work = g.get("KH", 1) * g.get("KW", 1) * g.get("CIN", 1) // g.get("GROUPS", 1)
        extra = [math.log2(items), 1.0, 1.0, 1.0, math.log2(float(spec.out_size) * max(work, 1))]
    return np.concatenate([base, np.asarray(extra)])


def layer_context(spec: LayerSpec) -> np.ndarray:
    """The layer itself, in log2 units: output pixels, channels in and out, kernel area, stride.

    Appended to :func:`layer_features` for the transfer model, so it can
    learn that what suits a 1x1 conv on a 56x56 map need not suit a 5x5 on 7x7.
    """
    g = spec.geometry
    if spec.kind == "conv":
        vals = [g["N"] * g["OH"] * g["OW"], g["CIN"], g["COUT"], g["KH"] * g["KW"], g["SH"], g["GROUPS"]]
    elif spec.kind == "gemm":
        vals = [g["M"], g["K"], g["N"], 1, 1, 1]
    else:
        vals = [max(spec.out_size, 1), 1, 1, 1, 1, 1]
    return np.log2(np.asarray(vals, dtype=np.float64))


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


class _Tree:
    """A depth-limited regression tree on binned features (squared-error splits).

    Split search is histogram-based, as in XGBoost's ``hist`` method: every
    feature is cut at fixed candidate thresholds (:func:`_thresholds`), so a
    node's best split over all features costs two ``bincount`` calls
    instead of a sort per feature -- what makes a transfer model over
    thousands of trials fit in about a second.
    """

    def __init__(self, depth: int, min_leaf: int) -> None:
        self.depth, self.min_leaf = depth, max(int(min_leaf), 1)

    def fit(self, bins: np.ndarray, thresholds: List[np.ndarray], y: np.ndarray) -> "_Tree":
        """``bins[r, f]``: how many of feature f's thresholds lie below row r's value."""
        self._nbins = max(len(t) for t in thresholds) + 1
        self._thresholds = thresholds
        self._feature: List[int] = []
        self._threshold: List[float] = []
        self._left: List[int] = []
        self._right: List[int] = []
        self._value: List[float] = []
        self._grow(bins, y, 0)
        self.feature_ = np.asarray(self._feature)
        self.threshold_ = np.asarray(self._threshold)
        self.left_ = np.asarray(self._left)
        self.right_ = np.asarray(self._right)
        self.value_ = np.asarray(self._value)
        return self

    def _best_split(self, bins: np.ndarray, y: np.ndarray) -> Optional[Tuple[float, int, int]]:
        n, nf = bins.shape
        nb = self._nbins
        flat = (bins + np.arange(nf) * nb).ravel()
        sums = np.bincount(flat, weights=np.repeat(y, nf), minlength=nf * nb).reshape(nf, nb)
        counts = np.bincount(flat, minlength=nf * nb).reshape(nf, nb)
        left_s = np.cumsum(sums, axis=1)[:, :-1]
        left_n = np.cumsum(counts, axis=1)[:, :-1]
        right_s, right_n = y.sum() - left_s, n - left_n
        valid = (left_n >= self.min_leaf) & (right_n >= self.min_leaf)
        if not valid.any():
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = left_s ** 2 / left_n + right_s ** 2 / right_n - y.sum() ** 2 / n
        gain = np.where(valid, gain, -np.inf)
        f, b = np.unravel_index(int(np.argmax(gain)), gain.shape)
        return float(gain[f, b]), int(f), int(b)

    def _grow(self, bins: np.ndarray, y: np.ndarray, depth: int) -> int:
        index = len(self._value)
        for lst, v in ((self._feature, -1), (self._threshold, 0.0), (self._left, -1), (self._right, -1),
                       (self._value, float(y.mean()))):
            lst.append(v)
        if depth >= self.depth or len(y) < 2 * self.min_leaf:
            return index
        best = self._best_split(bins, y)
        if best is None or best[0] <= 1e-12:
            return index
        _, f, b = best
        mask = bins[:, f] <= b
        self._feature[index], self._threshold[index] = f, float(self._thresholds[f][b])
        self._left[index] = self._grow(bins[mask], y[mask], depth + 1)
        self._right[index] = self._grow(bins[~mask], y[~mask], depth + 1)
        return index

    def predict(self, x: np.ndarray) -> np.ndarray:
        node = np.zeros(len(x), dtype=np.int64)
        rows = np.arange(len(x))
        for _ in range(self.depth):
            f = self.feature_[node]
            inner = f >= 0
            if not inner.any():
                break
            go_left = x[rows, np.maximum(f, 0)] <= self.threshold_[node]
            node = np.where(inner, np.where(go_left, self.left_[node], self.right_[node]), node)
        return self.value_[node]


#: most candidate thresholds per feature (quantiles beyond this many distinct values)
MAX_BINS = 64


def _thresholds(column: np.ndarray) -> np.ndarray:
    """Split candidates of one feature: midpoints between its distinct values (quantiles if many)."""
    values = np.unique(column)
    if len(values) > MAX_BINS:
        values = np.unique(np.quantile(column, np.linspace(0, 1, MAX_BINS)))
    return 0.5 * (values[1:] + values[:-1])


def _binned(x: np.ndarray) -> Tuple[np.ndarray, List[np.ndarray]]:
    thresholds = [_thresholds(x[:, f]) for f in range(x.shape[1])]
    bins = np.stack([np.searchsorted(t, x[:, f], side="left") for f, t in enumerate(thresholds)], axis=1)
    return bins.astype(np.int64).reshape(x.shape), thresholds


class BoostedTrees:
    """Gradient-boosted regression trees (squared loss): the tuner's cost model.

    ``fit`` stores state in attributes ending in ``_``; ``predict`` before
    ``fit`` is refused. ``subsample`` < 1 fits each tree on a random share
    of the rows (stochastic boosting), which steadies the transfer model.
    """

    def __init__(self, n_trees: int = 40, depth: int = 3, learning_rate: float = 0.3,
                 min_leaf: int = 2, subsample: float = 1.0, seed: int = 0) -> None:
        self.n_trees, self.depth, self.learning_rate, self.min_leaf = n_trees, depth, learning_rate, min_leaf
        self.subsample, self.seed = subsample, seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> "BoostedTrees":
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
            raise ValueError("BoostedTrees.fit needs a non-empty 2-D x and a y of the same length")
        rng = np.random.default_rng(self.seed)
        bins, thresholds = _binned(x)
        self.base_ = float(y.mean())
        self.trees_: List[_Tree] = []
        pred = np.full(len(y), self.base_)
        take = max(int(round(self.subsample * len(y))), 1)
        for _ in range(self.n_trees):
            rows = np.arange(len(y)) if take >= len(y) else rng.choice(len(y), size=take, replace=False)
            tree = _Tree(self.depth, self.min_leaf).fit(bins[rows], thresholds, (y - pred)[rows])
            pred = pred + self.learning_rate * tree.predict(x)
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


def transfer_features(spec: LayerSpec, configs: Sequence[Config]) -> np.ndarray:
    """Rows of :func:`layer_features` + :func:`layer_context` for each config on this layer."""
    context = layer_context(spec)
    return np.stack([np.concatenate([layer_features(spec, c), context]) for c in configs])


#: how much slower than the layer's slowest success a failed trial is taken to be (log units)
FAILURE_PENALTY = 1.0


def relative_log_times(ms: Sequence[Optional[float]]) -> np.ndarray:
    """log(ms) minus the median over successes; a failure (None) counts as worse than every success."""
    logs = [math.log(v) for v in ms if v is not None and v > 0]
    if not logs:
        return np.zeros(len(ms))
    mid, worst = float(np.median(logs)), max(logs)
    return np.asarray([math.log(v) - mid if v is not None and v > 0 else worst - mid + FAILURE_PENALTY
                       for v in ms])


class TransferModel:
    """A cost model pre-trained on *other* layers' trials that ranks a new layer's configs.

    Fitted on (layer, config) -> log-time relative to that layer's median,
    with the layer's shape as features, it predicts a ranking for a layer
    it has never seen; :class:`~pipeit.gpu.tuner.ModelSearch` takes its
    first batch from that ranking and later fits only the residual on the
    layer's own trials (the prior's prediction is the base margin).
    """

    def __init__(self, n_trees: int = 60, depth: int = 5, learning_rate: float = 0.2,
                 min_leaf: int = 4, subsample: float = 0.6, seed: int = 0) -> None:
        self.params = dict(n_trees=n_trees, depth=depth, learning_rate=learning_rate, min_leaf=min_leaf,
                           subsample=subsample, seed=seed)

    @classmethod
    def fit(cls, layers: Sequence[Tuple[LayerSpec, Sequence[object]]], **params: object) -> "TransferModel":
        """Fit on ``[(spec, trials), ...]``: each trial needs ``config_dict`` and ``ms`` (None if failed)."""
        self = cls(**params)  # type: ignore[arg-type]
        xs, ys = [], []
        for spec, trials in layers:
            if not trials:
                continue
            xs.append(transfer_features(spec, [t.config_dict for t in trials]))
            ys.append(relative_log_times([t.ms if getattr(t, "ok", t.ms is not None) else None
                                          for t in trials]))
        if not xs:
            raise ValueError("TransferModel.fit needs trials of at least one layer")
        self.model_ = BoostedTrees(**self.params).fit(np.concatenate(xs), np.concatenate(ys))
        self.layers_ = len(xs)
        self.rows_ = int(sum(len(y) for y in ys))
        return self

    def predict(self, spec: LayerSpec, configs: Sequence[Config]) -> np.ndarray:
        """Predicted relative log-time of each config on ``spec`` (lower is faster)."""
        if not hasattr(self, "model_"):
            raise ValueError("TransferModel is not fitted")
        return self.model_.predict(transfer_features(spec, configs))
