"""Callers' input areas: stage-0 workers read a frame where its caller wrote it (no copy into ring 0).

Real memfd segments, real spawned and pinned workers, real models; every
output is compared bit for bit with the whole model run by one interpreter.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import pytest

from pipeit.errors import ExecutorError, InputError
from pipeit.executor import Pipeline
from pipeit.graph import load_graph
from tests.test_executor import TWO, _kill_while_busy, assert_identical, frames_for, make_plan, reference

pytestmark = pytest.mark.skipif(len(set(TWO)) < 2, reason="needs two CPUs")


class Area:
    """A memfd of ``slots`` slots laid out as the pipeline asks (the daemon's clients write such slots)."""

    def __init__(self, pipe: Pipeline, slots: int, extra: int = 4096):
        self.offsets = pipe.input_offsets()
        self.stride = pipe.edges[0].slot_bytes + extra  # room after the inputs, as the daemon's outputs take
        self.slots = slots
        self.fd = os.memfd_create("test-area", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, slots * self.stride)
        self.map = mmap.mmap(self.fd, slots * self.stride)
        self.infos = {t.name: t for t in pipe.inputs}

    def write(self, slot: int, frame: Dict[str, np.ndarray]) -> None:
        for name, value in frame.items():
            info = self.infos[name]
            view = np.ndarray(tuple(info.shape), np.dtype(info.dtype), buffer=self.map,
                              offset=slot * self.stride + self.offsets[name])
            view[...] = value
            del view

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


@contextlib.contextmanager
def _pipeline_and_area(plan, model: Path, slots: int) -> Iterator[Tuple[Pipeline, Area]]:
    """A started pipeline and a fresh area laid out for it; both closed on the way out, whatever happens."""
    with Pipeline(plan, model) as pipe:
        area = Area(pipe, slots)
        try:
            yield pipe, area
        finally:
            pipe.close()
            area.close()


@pytest.fixture(scope="module")
def v2(zoo_models) -> Path:
    return zoo_models("mobilenet_v2")


@pytest.fixture(scope="module")
def v2_frames(v2) -> Tuple[List[Dict[str, np.ndarray]], List[Dict[str, np.ndarray]]]:
    frames = frames_for(v2, 5, seed=3)
    return frames, reference(v2, frames)


def _descriptors_of_area() -> int:
    """How many of this process's descriptors point at a test area's memfd."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:test-area")
        except OSError:
            pass  # the listing's own descriptor, gone already
    return count


def test_area_frames_mixed_with_ring_frames_are_bit_identical_and_in_order(v2, v2_frames):
    frames, want = v2_frames
    n = len(load_graph(v2).layers)
    # two stage-0 workers: each maps the area on its first job there
    plan = make_plan(v2, [((0, 30), [("big", (TWO[0],)), ("little", (TWO[1],))]), ((30, n), [("big", (TWO[0],))])])
    with _pipeline_and_area(plan, v2, slots=3) as (pipe, area):
        ours = _descriptors_of_area()
        area_id = pipe.add_input_area(area.fd, area.slots, area.stride, area.offsets)
        assert _descriptors_of_area() == ours + 1  # the pipeline keeps a duplicate
        futures, order, in_slot, used = [], [], {}, 0
        for i in range(18):
            k = i % len(frames)
            if i % 3 == 2:  # every third frame the ordinary way: both kinds share stage 0, in order
                futures.append(pipe.submit(frames[k]))
            else:
                slot = used % area.slots
                used += 1
                if slot in in_slot:
                    in_slot[slot].result(60)  # the slot is the caller's again once its frame is done
                area.write(slot, frames[k])
                in_slot[slot] = pipe.submit_area(area_id, slot)
                futures.append(in_slot[slot])
            order.append(k)
        got = [f.result(60) for f in futures]
        stats = pipe.stats()
        pipe.close()
        assert _descriptors_of_area() == ours  # and closes it with itself
    assert_identical(got, [want[k] for k in order])
    assert all(count > 0 for count in stats.stages[0].worker_frames), stats.stages[0].worker_frames


def test_a_removed_area_lets_its_frames_finish_then_is_refused(v2, v2_frames):
    frames, want = v2_frames
    n = len(load_graph(v2).layers)
    plan = make_plan(v2, [((0, 20), [("big", (TWO[0],))]), ((20, n), [("little", (TWO[1],))])])
    with _pipeline_and_area(plan, v2, slots=4) as (pipe, area):
        # each slot's outputs go to arrays of the caller's (the daemon: the slot's output part)
        outs = [{t.name: np.empty(tuple(t.shape), np.dtype(t.dtype)) for t in pipe.outputs} for _ in range(4)]
        area_id = pipe.add_input_area(area.fd, area.slots, area.stride, area.offsets, outputs=outs)
        for slot in range(4):
            area.write(slot, frames[slot])
        futures = [pipe.submit_area(area_id, slot) for slot in range(4)]
        pipe.remove_input_area(area_id)  # frames in flight still read it
        got = [f.result(60) for f in futures]
        assert all(g is o for g, o in zip(got, outs))
        with pytest.raises(ExecutorError, match="no input area"):
            pipe.submit_area(area_id, 0)
        with pytest.raises(ExecutorError, match="outside"):
            again = pipe.add_input_area(area.fd, area.slots, area.stride, area.offsets)
            pipe.submit_area(again, 4)
        # the pipeline still serves
        assert_identical([pipe.run(frames[0], timeout=60)], [want[0]])
    assert_identical(got, want[:4])


def test_kill_9_of_a_stage0_worker_holding_area_frames_loses_none(v2, v2_frames):
    frames, want = v2_frames
    n = len(load_graph(v2).layers)
    plan = make_plan(v2, [((0, 40), [("big", (TWO[0],))]), ((40, n), [("little", (TWO[1],))])])
    with _pipeline_and_area(plan, v2, slots=5) as (pipe, area):
        area_id = pipe.add_input_area(area.fd, area.slots, area.stride, area.offsets)
        for slot in range(5):
            area.write(slot, frames[slot])
        futures = [pipe.submit_area(area_id, slot) for slot in range(5)]
        victim = pipe.worker_pids()[(0, 0)]
        _kill_while_busy(pipe, (0, 0))
        got = [f.result(120) for f in futures]
        # the restarted worker maps the area again for the next frames
        futures = [pipe.submit_area(area_id, slot) for slot in range(5)]
        got += [f.result(120) for f in futures]
        stats = pipe.stats()
        assert pipe.worker_pids()[(0, 0)] != victim
    assert_identical(got, want + want)
    assert stats.stages[0].restarts == 1 and stats.stages[0].redispatched >= 1


def test_an_area_that_does_not_fit_is_refused(v2):
    n = len(load_graph(v2).layers)
    plan = make_plan(v2, [((0, n), [("big", (TWO[0],))])])
    with _pipeline_and_area(plan, v2, slots=2) as (pipe, area):
        (name, offset), = area.offsets.items()
        with pytest.raises(ExecutorError, match="must hold the inputs"):
            pipe.add_input_area(area.fd, 2, area.stride, {name: offset + 64})
        with pytest.raises(ExecutorError, match="needs >= 1 slot"):
            pipe.add_input_area(area.fd, 2, pipe.edges[0].slot_bytes - 64, area.offsets)
        with pytest.raises(ExecutorError, match="smaller than"):
            pipe.add_input_area(area.fd, 3, area.stride, area.offsets)
        with pytest.raises(ExecutorError, match="no input area"):
            pipe.submit_area(99, 0)
        with pytest.raises(ExecutorError, match="sets of outputs"):
            pipe.add_input_area(area.fd, 2, area.stride, area.offsets, outputs=[{}])
        with pytest.raises(InputError, match="out="):
            pipe.add_input_area(area.fd, 2, area.stride, area.offsets, outputs=[{"nope": np.zeros(1)}] * 2)
