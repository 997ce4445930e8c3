"""Plain-numpy least squares for the predictors: relative-error weighting and NNLS.

Why not scipy/sklearn: the fits are tiny (a few features, at most a few
thousand rows), and keeping them in numpy keeps the install small on boards.
All fits minimise *relative* error, ``sum(((X w - y) / y)^2)``: a layer of
0.02 ms matters to the planner in proportion, not in absolute milliseconds.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nnls", "relative_nnls", "relative_lstsq"]


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


def relative_nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """NNLS on relative error: each row divided by its own target."""
    wgt = _weights(y)[:, None]
    return nnls(np.asarray(x, float) * wgt, np.ones(len(y)))


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
