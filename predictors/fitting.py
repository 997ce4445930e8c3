"""Plain-numpy least squares for the predictors: relative-error weighting and NNLS.

Why not scipy/sklearn: the fits are tiny (a few features, at most a few
thousand rows), and keeping them in numpy keeps the install small on boards.
All fits minimise *relative* error, ``sum(((X w - y) / y)^2)``: a layer of
0.02 ms matters to the planner in proportion, not in absolute milliseconds.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["nnls", "relative_nnls", "robust_relative_nnls", "relative_lstsq"]


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int = 0) -> np.ndarray:
    """Non-negative least squares ``min ||A x - b||, x >= 0`` (Lawson & Hanson's active set).

    Non-negativity is what keeps a mechanistic model physical: a cost per
    MAC or per byte cannot be negative, and a negative one would make the
    model predict negative times outside the training range.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    m, n = a.shape
    if n == 0:
        return np.zeros(0)
    # Scale columns so the tolerance means the same for every feature.
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    a = a / scale
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    max_iter = max_iter or 3 * n + 10
    tol = 1e-10 * max(1.0, float(np.abs(a).max()) if a.size else 1.0)
    w = a.T @ (b - a @ x)
    for _ in range(max_iter):
        if passive.all() or w[~passive].max(initial=-np.inf) <= tol:
            break
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        for _inner in range(max_iter):
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            mask = passive & (z <= 0)
            denom = x[mask] - z[mask]
            alpha = np.min(np.where(denom > 0, x[mask] / np.where(denom > 0, denom, 1), np.inf))
            if not np.isfinite(alpha):
                alpha = 0.0
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
        w = a.T @ (b - a @ x)
    return x / scale


def _weights(y: np.ndarray) -> np.ndarray:
    return 1.0 / np.maximum(np.asarray(y, dtype=float), 1e-6)


def relative_nnls(x: np.ndarray, y: np.ndarray, w: Optional[np.ndarray] = None) -> np.ndarray:
    """NNLS on relative error: each row divided by its own target.

    ``w`` (optional, >= 0) weights each row's squared relative error: a
    generated sweep layer can inform a fit without counting as much as a
    layer of a real model.
    """
    wgt = _weights(y)
    target = np.ones(len(y))
    if w is not None:
        root = np.sqrt(np.maximum(np.asarray(w, dtype=float), 0.0))
        wgt = wgt * root
        target = root
    return nnls(np.asarray(x, float) * wgt[:, None], target)


def robust_relative_nnls(
    x: np.ndarray, y: np.ndarray, w: Optional[np.ndarray] = None, iters: int = 20, k: float = 1.345
) -> np.ndarray:
    """Relative NNLS made robust to a few bad rows (Huber weights, iteratively re-weighted).

    Why: multi-layer rows on a shared host are occasionally hit by another
    process for their whole (short) measurement; one such row must not drag
    a two-coefficient calibration. Residuals beyond ``k`` robust standard
    deviations (1.4826 MAD, at least 1 %) get weight ``k*sigma/|r|``, on
    top of the prior row weights ``w``.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    prior = np.ones(len(y)) if w is None else np.maximum(np.asarray(w, dtype=float), 0.0)
    w = np.ones(len(y))
    coef = relative_nnls(x, y, prior)
    for _ in range(iters):
        r = x @ coef / np.maximum(y, 1e-12) - 1.0
        sigma = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), 0.01)
        u = np.abs(r) / (k * sigma)
        new = np.where(u <= 1.0, 1.0, 1.0 / np.maximum(u, 1e-12))
        if np.allclose(new, w, atol=1e-6):
            break
        w = new
        coef = relative_nnls(x, y, prior * w)
    return coef


def relative_lstsq(x: np.ndarray, y: np.ndarray, ridge: float = 1e-9) -> np.ndarray:
    """Ordinary least squares on relative error (coefficients may be negative)."""
    x = np.asarray(x, float)
    wgt = _weights(y)[:, None]
    a = x * wgt
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    a = a / scale
    # A whisper of ridge keeps collinear descriptor columns (e.g. in/out volume
    # of a same-padding conv) from blowing up.
    lhs = a.T @ a + ridge * np.eye(a.shape[1])
    rhs = a.T @ np.ones(len(y))
    return np.linalg.solve(lhs, rhs) / scale
