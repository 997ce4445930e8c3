"""The executor's transport layer: edge routing (residual forwarding) and shared-memory rings."""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest

from pipeit.descriptor import TensorInfo
from pipeit.errors import ExecutorError
from pipeit.executor.ring import SHM_PREFIX, ShmRing
from pipeit.executor.routes import ALIGN, EdgeLayout, plan_routes
from pipeit.executor.stats import percentile


def T(name, shape=(1, 4), dtype="float32"):
    return TensorInfo(name, tuple(shape), dtype)


class TestPlanRoutes:
    def test_residual_is_forwarded_across_the_stage_it_skips(self):
        # stage 0: x -> a ; stage 1: a -> b ; stage 2: (a, b) -> y
        stages = [((T("x"),), (T("a"),)), ((T("a"),), (T("b"),)), ((T("a"), T("b")), (T("y"),))]
        edges, routes = plan_routes(stages, (T("x"),), (T("y"),))
        assert [e.names for e in edges] == [("x",), ("a",), ("a", "b"), ("y",)]
        assert routes[1].inputs == ("a",)
        assert routes[1].outputs == ("b",)
        assert routes[1].forwards == ("a",)
        assert routes[2].forwards == ()
        assert routes[0].outputs == ("a",) and routes[0].forwards == ()

    def test_model_output_made_early_travels_to_the_last_edge(self):
        stages = [((T("x"),), (T("early"), T("a"))), ((T("a"),), (T("late"),))]
        edges, routes = plan_routes(stages, (T("x"),), (T("early"), T("late")))
        assert set(edges[-1].names) == {"early", "late"}
        assert routes[1].forwards == ("early",)

    def test_unproduced_input_is_refused(self):
        stages = [((T("x"),), (T("a"),)), ((T("ghost"),), (T("y"),))]
        with pytest.raises(ExecutorError, match="ghost"):
            plan_routes(stages, (T("x"),), (T("y"),))

    def test_missing_model_output_is_refused(self):
        with pytest.raises(ExecutorError, match="produced by no stage"):
            plan_routes([((T("x"),), (T("a"),))], (T("x"),), (T("y"),))

    def test_shape_disagreement_is_refused(self):
        stages = [((T("x"),), (T("a", (1, 4)),)), ((T("a", (1, 8)),), (T("y"),))]
        with pytest.raises(ExecutorError, match="arrives as"):
            plan_routes(stages, (T("x"),), (T("y"),))


class TestEdgeLayout:
    def test_offsets_are_aligned_and_disjoint(self):
        layout = EdgeLayout.build(0, [T("a", (3,), "int8"), T("b", (5, 7), "float32"), T("c", (2,), "int64")])
        assert all(off % ALIGN == 0 for off in layout.offsets)
        ends = [off + n for off, n in zip(layout.offsets, (3, 140, 16))]
        assert layout.offsets[1] >= ends[0] and layout.offsets[2] >= ends[1]
        assert layout.slot_bytes >= ends[2] and layout.slot_bytes % ALIGN == 0

    def test_dynamic_shape_is_refused(self):
        with pytest.raises(ExecutorError, match="dynamic"):
            EdgeLayout.build(0, [T("a", (-1, 4))])


def _child_writes(name, layout, slots, slot, value, conn):
    ring = ShmRing(layout, slots, name, create=False)
    views = ring.views(slot)
    views["b"][...] = value
    conn.send(float(views["a"].sum()))
    del views
    ring.close()


class TestShmRing:
    def test_round_trip_in_process_and_across_processes(self):
        layout = EdgeLayout.build(0, [T("a", (2, 3)), T("b", (4,), "int8")])
        ring = ShmRing(layout, 3)
        try:
            assert ring.name.startswith(SHM_PREFIX)
            assert os.path.exists(f"/dev/shm/{ring.name}")
            ring.write(2, {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(4, np.int8)})
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child_writes, args=(ring.name, layout, 3, 2, -7, child))
            proc.start()
            assert parent.recv() == 15.0  # the child saw what we wrote
            proc.join(30)
            assert proc.exitcode == 0
            out = ring.read(2)
            assert out["b"].tolist() == [-7, -7, -7, -7]  # and we see what it wrote
            assert ring.read(1)["b"].tolist() == [0, 0, 0, 0]  # other slots untouched
            ring.write(2, {"a": np.ones((2, 3), np.float32), "b": np.ones(4, np.int8)})
            assert out["b"].tolist() == [-7, -7, -7, -7]  # read() gave copies, not views
        finally:
            ring.close()
        assert not os.path.exists(f"/dev/shm/{ring.name}")

    def test_write_refuses_a_wrong_dtype(self):
        ring = ShmRing(EdgeLayout.build(0, [T("a", (4,))]), 1)
        try:
            with pytest.raises(TypeError):
                ring.write(0, {"a": np.zeros(4, np.float64)})
        finally:
            ring.close()

    def test_close_unlinks_even_while_a_view_is_held(self):
        ring = ShmRing(EdgeLayout.build(0, [T("a", (4,))]), 2)
        held = ring.views(0)["a"]
        ring.close()
        assert not os.path.exists(f"/dev/shm/{ring.name}")
        del held


def test_percentile_interpolates():
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)


def _our_segments() -> set:
    return {n for n in os.listdir("/dev/shm") if n.startswith(SHM_PREFIX)} if os.path.isdir("/dev/shm") else set()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_a_ring_larger_than_the_free_shared_memory_is_refused_before_it_exists():
    """A tmpfs hands out pages on first write: such a ring used to be created and then SIGBUS a writer."""
    stat = os.statvfs("/dev/shm")
    free = stat.f_bavail * stat.f_frsize
    floats = free // 4 + 2**20  # one slot a little larger than all that is free
    layout = EdgeLayout.build(0, (T("x", (1, floats)),))
    before = _our_segments()
    with pytest.raises(ExecutorError, match=r"not enough shared memory for edge 0: .* MB free \(fewer --slots, "
                                            r"down to 1, or a larger /dev/shm"):
        ShmRing(layout, 3)
    # at the fewest slots its workers need, fewer --slots cannot help (the advice was given all the same)
    with pytest.raises(ExecutorError, match=r"MB free \(its workers need 3 slot\(s\) whatever --slots says: "
                                            r"a larger /dev/shm"):
        ShmRing(layout, 3, least=3)
    assert _our_segments() == before
