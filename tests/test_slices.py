"""The short scheduler slice of the threads a frame waits on (cores.slices), on this host's real kernel."""

from __future__ import annotations

import os
import platform
import threading

import numpy as np
import pytest

from cores.slices import SHORT_SLICE_NS, request_short_slice, thread_slice_ns


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        numbers = platform.release().split("-")[0].split(".")
        return (int(numbers[0]), int(numbers[1])) >= (major, minor)
    except (ValueError, IndexError):
        return False


needs_custom_slices = pytest.mark.skipif(
    platform.system() != "Linux" or not _kernel_at_least(6, 12) or thread_slice_ns() is None,
    reason="custom scheduler slices need Linux 6.12 or later")


def _in_thread(job):
    """Run ``job()`` in a new thread (its scheduler settings die with it) and return what it returned."""
    out = {}

    def run():
        out["value"] = job()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    return out["value"]


@needs_custom_slices
def test_a_thread_gets_the_short_slice_and_keeps_its_nice_value():
    def job():
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 3)  # this thread only (Linux)
        before = thread_slice_ns()
        granted = request_short_slice()
        return before, granted, thread_slice_ns(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before, granted, after, nice = _in_thread(job)
    assert before != SHORT_SLICE_NS  # the default slice is longer: the request changes something
    assert granted is True and after == SHORT_SLICE_NS
    assert nice == 3
    assert thread_slice_ns() != SHORT_SLICE_NS  # the calling thread was not touched


@needs_custom_slices
def test_a_thread_under_another_policy_is_left_alone():
    def job():
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        return request_short_slice(), os.sched_getscheduler(0), thread_slice_ns()

    granted, policy, after = _in_thread(job)
    assert granted is False and policy == os.SCHED_BATCH and after != SHORT_SLICE_NS


@needs_custom_slices
def test_a_running_pipelines_dispatcher_has_the_short_slice(tmp_path):
    from pipeit.executor import Pipeline
    from pipeit.graph import load_graph
    from tests.daemon_helpers import build_model
    from tests.test_executor import TWO, make_plan

    model = build_model(tmp_path / "two.tflite", layers=2, size=16, channels=8)
    n = len(load_graph(model).layers)
    plan = make_plan(model, [((0, n), [("big", (TWO[0],))])])
    frame = {"image": np.zeros((1, 16, 16, 8), np.float32)}
    with Pipeline(plan, model) as pipe:
        pipe.run(frame, timeout=60)
        assert thread_slice_ns(pipe._thread.native_id) == SHORT_SLICE_NS
    assert thread_slice_ns() != SHORT_SLICE_NS  # the caller's thread keeps its own
