"""Input frames for a model's inputs: seeded random ones (what `run` and `bench` stream by
default) and arrays read from a user's .npy/.npz file."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from pipeit.descriptor import TensorInfo
from pipeit.errors import InputError

__all__ = ["random_frames", "read_arrays"]


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


def read_arrays(path: Union[str, Path]) -> Union[Any, Dict[str, Any]]:
    """The array of a .npy file, or the named arrays of a .npz, never unpickling anything.

    Every way such a file can be unreadable (missing, truncated, not numpy's,
    holding objects only pickle could rebuild) is one :class:`InputError`.
    numpy reads a .npz's members lazily, on first access, so they are all
    read here, inside the guard, rather than fail later wherever they are used.
    """
    import numpy as np

    path = Path(path)
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError)
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            return data
        with data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise InputError(f"{path}: no such input file") from None
    except unreadable as err:
        raise InputError(f"{path}: not a readable .npy/.npz file ({err})") from err
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):  # a member that is not a .npy comes back as raw bytes
            raise InputError(f"{path}: member {name!r} is not a numpy array")
    return arrays
