"""Predicted-vs-measured scatter plots (matplotlib, an optional extra)."""

from __future__ import annotations

from typing import Sequence

from pipeit.errors import PipeitError

__all__ = ["scatter_plot"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise PipeitError("plots need matplotlib: pip install 'pipeit[plot]'") from err
    return plt


def scatter_plot(layers: Sequence, models: Sequence, path: str, min_ms: float = 0.05) -> None:
    """One panel per predictor: measured vs predicted ms per layer (log-log), ±10 % band."""
    plt = _pyplot()
    kinds = sorted({r.predictor for r in layers} | {r.predictor for r in models})
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(5 * max(len(kinds), 1), 4.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        pts = [(r.measured_ms, r.predicted_ms) for r in layers if r.predictor == kind and r.measured_ms >= min_ms]
        mpts = [(r.measured_ms, r.predicted_ms) for r in models if r.predictor == kind]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=8, alpha=0.6, label="layers")
        if mpts:
            xs, ys = zip(*mpts)
            ax.scatter(xs, ys, s=30, marker="*", color="red", label="whole models")
        lo = min([p[0] for p in pts + mpts] or [min_ms])
        hi = max([p[0] for p in pts + mpts] or [1.0])
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.plot([lo, hi], [lo * 1.1, hi * 1.1], "k:", lw=0.6)
        ax.plot([lo, hi], [lo * 0.9, hi * 0.9], "k:", lw=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured ms")
        ax.set_ylabel("predicted ms")
        ax.set_title(kind)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
