"""Which tensors cross each pipeline edge, where they sit in a ring slot, and who copies what.

Edge ``k`` sits before stage ``k``: edge 0 carries the model's inputs, edge
``S`` (after the last stage) the model's outputs. A tensor is on edge ``k`` when
it is available there (a model input, or an output of a stage before ``k``)
and still needed (an input of stage ``k`` or later, or a model output). That
rule puts residual tensors that skip a stage on every edge they jump over, so
the stage in between *forwards* them: it copies them from its in-slot to its
out-slot. This module is pure Python (no numpy) because spawned workers import
it before they pin themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Sequence, Tuple

from pipeit.descriptor import TensorInfo
from pipeit.errors import ExecutorError

__all__ = ["ALIGN", "EdgeLayout", "StageRoute", "plan_routes"]

#: byte alignment of every tensor in a slot (a cache line: no false sharing, aligned copies)
ALIGN = 64

_ITEMSIZE = {
    "float32": 4, "float16": 2, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
    "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1,
}


def _round_up(value: int, to: int = ALIGN) -> int:
    return (value + to - 1) // to * to


def tensor_nbytes(info: TensorInfo) -> int:
    """Exact bytes of a static tensor (refuses dynamic or unknown shapes and dtypes)."""
    if info.dtype not in _ITEMSIZE:
        raise ExecutorError(f"tensor {info.name!r}: dtype {info.dtype!r} cannot cross a pipeline edge")
    size = _ITEMSIZE[info.dtype]
    for dim in info.shape:
        if int(dim) < 0:
            raise ExecutorError(f"tensor {info.name!r} has a dynamic shape {tuple(info.shape)}")
        size *= int(dim)
    return size


@dataclass(frozen=True)
class EdgeLayout:
    """The tensors of one edge and their byte offsets inside one ring slot."""

    index: int
    tensors: Tuple[TensorInfo, ...]
    offsets: Tuple[int, ...]
    slot_bytes: int

    @classmethod
    def build(cls, index: int, tensors: Sequence[TensorInfo]) -> "EdgeLayout":
        offsets: List[int] = []
        cursor = 0
        for info in tensors:
            offsets.append(cursor)
            cursor = _round_up(cursor + tensor_nbytes(info))
        return cls(index, tuple(tensors), tuple(offsets), max(cursor, ALIGN))

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    def info(self, name: str) -> TensorInfo:
        for info in self.tensors:
            if info.name == name:
                return info
        raise KeyError(name)


@dataclass(frozen=True)
class StageRoute:
    """What stage ``index`` reads from edge ``index`` and writes to edge ``index + 1``.

    ``inputs`` are fed to the stage's interpreter, ``outputs`` are its
    interpreter outputs that the next edge carries, ``forwards`` are tensors
    it copies through untouched (residuals and early model outputs).
    """

    index: int
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    forwards: Tuple[str, ...]


def _ordered_union(groups: Iterable[Iterable[TensorInfo]]) -> Dict[str, TensorInfo]:
    out: Dict[str, TensorInfo] = {}
    for group in groups:
        for info in group:
            out.setdefault(info.name, info)
    return out


def plan_routes(
    stages: Sequence[Tuple[Sequence[TensorInfo], Sequence[TensorInfo]]],
    model_inputs: Sequence[TensorInfo],
    model_outputs: Sequence[TensorInfo],
) -> Tuple[Tuple[EdgeLayout, ...], Tuple[StageRoute, ...]]:
    """Edges ``0..S`` and one route per stage, from each stage's ``(inputs, outputs)``.

    Raises :class:`ExecutorError` when a stage needs a tensor nothing before it
    makes, when a model output is never produced, or when producer and
    consumer disagree on a tensor's shape or dtype.
    """
    if not stages:
        raise ExecutorError("a pipeline needs at least one stage")
    count = len(stages)
    available: Dict[str, TensorInfo] = {t.name: t for t in model_inputs}
    edges: List[EdgeLayout] = []
    for k in range(count + 1):
        needed = _ordered_union([ins for ins, _ in stages[k:]] + [model_outputs])
        if k == 0:
            names = [t.name for t in model_inputs]
        else:
            names = [name for name in available if name in needed]
        for name in needed:
            if k < count and name in {t.name for t in stages[k][0]} and name not in available:
                raise ExecutorError(f"stage {k} needs tensor {name!r} that no earlier stage produces")
        edges.append(EdgeLayout.build(k, [available[n] for n in names]))
        if k < count:
            for info in stages[k][1]:
                previous = available.get(info.name)
                if previous is not None and (tuple(previous.shape), previous.dtype) != (tuple(info.shape), info.dtype):
                    raise ExecutorError(f"tensor {info.name!r} is produced twice with different shapes")
                available.setdefault(info.name, info)
    missing = [t.name for t in model_outputs if t.name not in edges[-1].names]
    if missing:
        raise ExecutorError(f"model outputs {missing} are produced by no stage")
    routes: List[StageRoute] = []
    for k, (ins, outs) in enumerate(stages):
        edge_in, edge_out = edges[k], edges[k + 1]
        for info in ins:
            have = edge_in.info(info.name)
            if (tuple(have.shape), have.dtype) != (tuple(info.shape), info.dtype):
                raise ExecutorError(
                    f"stage {k} expects {info.name!r} as {tuple(info.shape)} {info.dtype}, "
                    f"but it arrives as {tuple(have.shape)} {have.dtype}"
                )
        produced = {t.name for t in outs}
        routes.append(
            StageRoute(
                index=k,
                inputs=tuple(t.name for t in ins),
                outputs=tuple(n for n in edge_out.names if n in produced),
                forwards=tuple(n for n in edge_out.names if n not in produced),
            )
        )
    return tuple(edges), tuple(routes)
