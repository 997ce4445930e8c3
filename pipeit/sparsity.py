"""TFLite sparse constants (the input of a ``DENSIFY`` op): checked when a model is read, densified
for the GPU stage.

Why check: the runtime trusts the metadata and densifies at load time, so a
corrupt file could make it read or write out of bounds; a model is refused
with one clear line before any interpreter sees it. Why densify here: the
GPU stage lowers layers from the model file and needs the filter values (a
pruned model would otherwise fall back to the CPU for every such layer).

The format (TFLite schema, ``SparsityParameters``): the tensor's axes, plus
one inner axis per blocked axis (``block_map[i]`` names the axis block ``i``
splits), are visited in ``traversal_order``; ``dim_metadata[l]`` describes
the axis visited at level ``l``: DENSE (every index, ``dense_size`` of
them) or SPARSE_CSR (at position ``p`` reached over the levels before, the
indices ``array_indices[segments[p] : segments[p+1]]``). The position
reached after the last level is the value's index in the buffer. A blocked
axis is visited as its count of blocks; its block axis, as the elements
within one block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from pipeit.errors import ModelError

__all__ = ["SparseLevel", "sparse_levels", "densify"]

_DENSE = 0


@dataclass(frozen=True)
class SparseLevel:
    """One traversal level: the expanded axis it visits, how many indices it has, and (CSR) its arrays."""

    axis: int  # expanded axis: < rank an axis of the tensor, else block ``axis - rank``
    size: int  # indices along it (blocks, for a blocked axis)
    segments: Optional[np.ndarray] = None  # CSR only
    indices: Optional[np.ndarray] = None  # CSR only
    splits: Optional[int] = None  # a block level: the tensor axis whose blocks it indexes within


def _vector(vector: Any) -> Optional[np.ndarray]:
    values = getattr(vector, "values", None)
    return None if values is None else np.asarray(values, dtype=np.int64).reshape(-1)


def sparse_levels(shape: Sequence[int], n_values: int, sparsity: Any, what: str = "a sparse tensor"
                  ) -> Tuple[SparseLevel, ...]:
    """The levels of a sparse tensor of ``shape`` holding ``n_values`` values, every index and count
    checked against the others; :class:`ModelError` naming ``what`` when they do not add up."""
    shape = tuple(int(d) for d in shape)
    rank = len(shape)

    def bad(problem: str) -> ModelError:
        return ModelError(f"{what} has corrupt sparsity metadata: {problem}")

    order = [int(a) for a in sparsity.traversalOrder] if sparsity.traversalOrder is not None else list(range(rank))
    block_map = [int(a) for a in sparsity.blockMap] if sparsity.blockMap is not None else []
    dims = list(sparsity.dimMetadata or [])
    levels = rank + len(block_map)
    if len(dims) != levels or sorted(order) != list(range(levels)):
        raise bad(f"{len(dims)} dimension entries and traversal order {order} for a rank-{rank} tensor "
                  f"with {len(block_map)} block(s)")
    if any(not 0 <= a < rank for a in block_map) or len(set(block_map)) != len(block_map):
        raise bad(f"block map {block_map}")
    block_size = {a: int(dims[order.index(rank + b)].denseSize) for b, a in enumerate(block_map)}
    for a, size in block_size.items():
        if size < 1 or shape[a] % size:
            raise bad(f"axis {a} of size {shape[a]} in blocks of {size}")
    out: List[SparseLevel] = []
    count = 1  # positions reached so far
    for level, axis in enumerate(order):
        meta = dims[level]
        size = block_size[block_map[axis - rank]] if axis >= rank else shape[axis] // block_size.get(axis, 1)
        splits = block_map[axis - rank] if axis >= rank else None
        if int(meta.format) == _DENSE:
            if int(meta.denseSize) != size:
                raise bad(f"level {level} is dense with {meta.denseSize} indices, its axis has {size}")
            out.append(SparseLevel(axis, size, splits=splits))
            count *= size
            continue
        segments, indices = _vector(meta.arraySegments), _vector(meta.arrayIndices)
        if segments is None or indices is None:
            raise bad(f"level {level} is CSR without its segments or indices")
        if len(segments) != count + 1 or segments[0] != 0 or np.any(np.diff(segments) < 0) \
                or segments[-1] != len(indices):
            raise bad(f"level {level}: {len(segments)} segments ending at {segments[-1] if len(segments) else None} "
                      f"for {count} positions and {len(indices)} indices")
        if len(indices) and (indices.min() < 0 or indices.max() >= size):
            raise bad(f"level {level}: an index outside 0..{size - 1}")
        out.append(SparseLevel(axis, size, segments, indices, splits))
        count = len(indices)
    if count != n_values:
        raise bad(f"the metadata reaches {count} values, the buffer holds {n_values}")
    return tuple(out)


def densify(shape: Sequence[int], values: np.ndarray, sparsity: Any) -> np.ndarray:
    """The dense array of ``shape`` that ``values`` (the kept elements, in traversal order) and
    ``sparsity`` (a ``SparsityParametersT``) describe."""
    shape = tuple(int(d) for d in shape)
    rank = len(shape)
    values = np.asarray(values).reshape(-1)
    levels = sparse_levels(shape, len(values), sparsity)
    positions = np.zeros(1, dtype=np.int64)
    coords: dict = {}  # expanded axis -> its index at every position reached
    for level in levels:
        if level.segments is None:
            reached = np.arange(level.size, dtype=np.int64)
            index = np.tile(reached, len(positions))
            repeats: Any = level.size
            positions = (positions[:, None] * level.size + reached).reshape(-1)
        else:
            starts = level.segments[positions]
            repeats = level.segments[positions + 1] - starts
            firsts = np.repeat(starts - np.concatenate([[0], np.cumsum(repeats)[:-1]]), repeats)
            positions = firsts + np.arange(int(repeats.sum()), dtype=np.int64)
            index = level.indices[positions]  # type: ignore[index]
        coords = {axis: np.repeat(c, repeats) for axis, c in coords.items()}
        coords[level.axis] = index
    dense_index = [coords[axis] for axis in range(rank)]
    for level in levels:
        if level.splits is not None:  # block index x block size + index within the block
            dense_index[level.splits] = dense_index[level.splits] * level.size + coords[level.axis]
    dense = np.zeros(shape, dtype=values.dtype)
    dense[tuple(dense_index)] = values[positions]
    return dense
