"""A stream's reused frames staged once in shared memory (pipeit.executor.staging), on real pipelines."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeit.executor import Pipeline
from pipeit.executor.staging import MAX_STAGED_FRAMES, stage_frames
from tests.test_executor import TWO, assert_identical, frames_for, make_plan, reference

pytestmark = pytest.mark.skipif(len(set(TWO)) < 2, reason="needs two CPUs")


def _stream_segments() -> int:
    """This process's descriptors on a staged stream's memfd."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:pipeit-stream")
        except OSError:
            continue  # the listing's own descriptor, closed by now
    return count


def _read(staged, slot: int, offsets, like: np.ndarray, name: str) -> np.ndarray:
    view = np.ndarray(like.shape, like.dtype, buffer=staged.segment, offset=slot * staged.stride + offsets[name])
    copy = view.copy()
    del view
    return copy


def test_each_distinct_frame_is_written_once_where_its_slot_says():
    a = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.array([7], dtype=np.int8)}
    b = {"x": -np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.array([-3], dtype=np.int8)}
    offsets = {"x": 0, "y": 64}
    staged = stage_frames([a, b, a, a, b], offsets, slot_bytes=65)
    try:
        assert staged.slots == 2 and staged.slot_of == (0, 1, 0, 0, 1)
        assert staged.stride >= 65 and staged.stride % os.sysconf("SC_PAGE_SIZE") == 0
        for slot, frame in ((0, a), (1, b)):
            for name, value in frame.items():
                assert np.array_equal(_read(staged, slot, offsets, value, name), value)
    finally:
        staged.close()
    assert _stream_segments() == 0


def test_streams_that_do_not_reuse_frames_are_not_staged():
    frames = [{"x": np.full(4, i, dtype=np.float32)} for i in range(MAX_STAGED_FRAMES + 1)]
    assert stage_frames(frames[:5], {"x": 0}, 16) is None  # every frame distinct: copies would only move
    many = frames + frames  # reused, but more distinct frames than a benchmark's handful
    assert stage_frames(many, {"x": 0}, 16) is None
    assert stage_frames([], {"x": 0}, 16) is None


def test_a_staged_stream_runs_and_leaves_no_area_behind(zoo_models):
    """Workers read the staged frames (a bad mapping fails the stream); afterwards the area is gone."""
    model = zoo_models("mobilenet_v2")
    frames = frames_for(model, 3, seed=5)
    want = reference(model, frames)
    plan = make_plan(model, [((0, 30), [("big", (TWO[0],))]), ((30, 65), [("little", (TWO[1],))])])
    with Pipeline(plan, model) as pipe:
        fps, latencies = pipe.stream([frames[i % 3] for i in range(60)], window=3)
        assert fps > 0 and len(latencies) == 60
        assert pipe.stats().stages[0].frames >= 60
        assert not pipe._areas, "the stream's input area outlived it"
        assert _stream_segments() == 0
        # the workers unmapped it and still serve ring-0 frames right
        assert_identical([pipe.run(frame) for frame in frames], want)
