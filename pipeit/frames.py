"""Seeded random input frames for a model's inputs (what `run` and `bench` stream by default)."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from pipeit.descriptor import TensorInfo

__all__ = ["random_frames"]


def random_frames(inputs: Sequence[TensorInfo], count: int, seed: int = 0) -> List[Dict[str, Any]]:
    """``count`` distinct frames: floats uniform in [-1, 1], integers over their dtype's range.

    Seeded, so two runs (or two strategies in one benchmark) see the same data.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        frame = {}
        for info in inputs:
            dtype = np.dtype(info.dtype)
            if dtype.kind == "f":
                frame[info.name] = rng.uniform(-1.0, 1.0, size=info.shape).astype(dtype)
            elif dtype.kind in "iu":
                limits = np.iinfo(dtype)
                frame[info.name] = rng.integers(limits.min, int(limits.max) + 1, size=info.shape, dtype=dtype)
            else:
                frame[info.name] = rng.integers(0, 2, size=info.shape).astype(dtype)
        frames.append(frame)
    return frames
