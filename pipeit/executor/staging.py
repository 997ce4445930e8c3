"""A stream's distinct frames written once into a shared-memory input area, read there by stage 0.

Why: :meth:`pipeit.executor.Pipeline.stream` copied every frame's inputs
into ring 0 on the dispatcher thread, 0.12 ms for a 224x224x3 float32 frame
on the development host, a sixth of the dispatcher's CPU per frame; where
every core runs a worker that CPU is taken from a worker. A benchmark
streams a few distinct frames many times (as a camera writes its frames
into shared memory once), so the stream writes each distinct frame once
into an anonymous segment, registers it as an input area
(:meth:`Pipeline.add_input_area`, what the daemon's clients use) and the
stage-0 workers read each frame where it lies. A stream of many distinct
frames, or more bytes than :data:`MAX_STAGED_BYTES`, is copied per frame
as before: staging it would only move the copies before the clock starts.
"""

from __future__ import annotations

import mmap
import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["StagedFrames", "stage_frames", "MAX_STAGED_FRAMES", "MAX_STAGED_BYTES"]

#: a stream with more distinct frames than this is copied per frame (it is not a few frames reused)
MAX_STAGED_FRAMES = 64
#: nor one whose distinct frames need more shared memory than this
MAX_STAGED_BYTES = 256 * 1024 * 1024


class StagedFrames:
    """The segment holding a stream's distinct frames, one per slot, and which slot each frame of the stream is.

    ``fd`` and the mapping belong to this object until :meth:`close`; the
    pipeline keeps its own duplicate of the descriptor while workers need it.
    """

    def __init__(self, fd: int, segment: mmap.mmap, slots: int, stride: int, slot_of: Tuple[int, ...]) -> None:
        self.fd = fd
        self.segment = segment
        self.slots = slots
        self.stride = stride
        #: per frame of the stream, in order: the slot its inputs are in
        self.slot_of = slot_of

    def close(self) -> None:
        if self.fd >= 0:
            self.segment.close()
            os.close(self.fd)
            self.fd = -1


def _aligned(n: int) -> int:
    page = mmap.PAGESIZE
    return (n + page - 1) // page * page


def stage_frames(frames: Sequence[Mapping[str, np.ndarray]], offsets: Mapping[str, int],
                 slot_bytes: int) -> Optional[StagedFrames]:
    """Write the distinct frames of ``frames`` once into a new segment; None when staging does not pay or cannot be done.

    ``frames`` are checked already (each input at the model's shape and
    dtype); frames are the same when they are the same dict object, as a
    benchmark reuses them. ``offsets``: where a slot holds each input
    (:meth:`Pipeline.input_offsets`); ``slot_bytes``: a slot's size at least.
    """
    if not hasattr(os, "memfd_create") or not frames:
        return None
    slot_by_frame: Dict[int, int] = {}
    distinct = []
    slot_of = []
    for frame in frames:
        slot = slot_by_frame.get(id(frame))
        if slot is None:
            slot = slot_by_frame[id(frame)] = len(distinct)
            distinct.append(frame)
            if len(distinct) > MAX_STAGED_FRAMES:
                return None
        slot_of.append(slot)
    if len(distinct) == len(frames) and len(frames) > 1:
        return None  # nothing is reused: the copies would only move out of the timed part
    stride = _aligned(max(int(slot_bytes), 1))
    size = stride * len(distinct)
    if size > MAX_STAGED_BYTES:
        return None
    try:
        fd = os.memfd_create("pipeit-stream", getattr(os, "MFD_CLOEXEC", 0))
    except OSError:
        return None
    try:
        os.ftruncate(fd, size)
        segment = mmap.mmap(fd, size)
    except (OSError, ValueError):
        os.close(fd)
        return None
    for slot, frame in enumerate(distinct):
        for name, array in frame.items():
            view = np.ndarray(array.shape, array.dtype, buffer=segment, offset=slot * stride + int(offsets[name]))
            np.copyto(view, array, casting="no")
            del view  # a live view keeps the mapping from closing
    return StagedFrames(fd, segment, len(distinct), stride, tuple(slot_of))
