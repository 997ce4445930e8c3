"""Input frames for a model's inputs: seeded random ones (what `run` and `bench` stream by
default) and arrays read from a user's .npy/.npz file."""

from __future__ import annotations

import os
import stat
import tokenize
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
    _check_numpy_file(path)
    _check_declared_size(path)
    # what numpy's header parser and zip reader raise on bytes that are not theirs: a header that does
    # not parse (SyntaxError, tokenize.TokenError), a shape past a C long (OverflowError), fields of the
    # wrong kind (TypeError, KeyError), nesting past the stack (RecursionError)
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, SyntaxError,
                  tokenize.TokenError, OverflowError, TypeError, KeyError, RecursionError)
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            return data
        with data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise InputError(f"{path}: no such input file") from None
    except MemoryError:  # a header that declares more than this machine can hold
        raise InputError(f"{path}: its arrays are too large to load into memory") from None
    except unreadable as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]  # numpy's first line says it
        raise InputError(f"{path}: not a readable .npy/.npz file ({why})") from err
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):  # a member that is not a .npy comes back as raw bytes
            raise InputError(f"{path}: member {name!r} is not a numpy array")
    return arrays


#: how a .npy file and a .npz archive (a zip file, possibly empty) begin
_MAGICS = (b"\x93NUMPY", b"PK\x03\x04", b"PK\x05\x06")


def _check_numpy_file(path: Path) -> None:
    """Refuse, before numpy opens it, what is not a regular file beginning like a .npy or .npz.

    A FIFO would block the open for ever, and numpy takes any other bytes for a
    pickle, which it then (rightly) refuses with advice meant for Python code.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such input file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise InputError(f"{path}: {what}; give a .npy or .npz file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None
    if not (head == _MAGICS[0] or head[:4] in _MAGICS[1:]):
        raise InputError(f"{path}: not a .npy or .npz file (numpy's np.save / np.savez write them)")


def _check_declared_size(path: Path) -> None:
    """Refuse a .npz whose members' headers declare more bytes than this machine has free.

    A .npy's data is in the file itself, but a compressed .npz member of a few
    kilobytes can declare (and, decompressed, really hold) gigabytes: numpy
    allocates the whole array before reading a byte of it. Headers that cannot
    be read here are left for numpy to refuse in its own words.
    """
    import numpy as np
    from numpy.lib import format as npy_format

    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = npy_format.read_magic(member)
                    read_header = (npy_format.read_array_header_1_0 if version == (1, 0)
                                   else npy_format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                total += int(np.prod(shape, dtype=object)) * dtype.itemsize
    except Exception:  # not a zip (a .npy), or a member numpy will refuse itself
        return
    if total > available:
        raise InputError(f"{path}: its arrays declare {total / 2**30:.1f} GiB, more than the "
                         f"{available / 2**30:.1f} GiB of memory free here")
