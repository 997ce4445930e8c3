"""Pinning: every thread of a process, and workers that run an interpreter pinned from birth."""

from __future__ import annotations

import os
import threading
import time

import pytest

from cores.errors import PinningError
from cores.pinning import (
    check_cpus,
    host_cpus,
    pin_all_threads,
    run_pinned,
    start_pinned,
    thread_affinities,
)
from tests import pinned_workers

CPUS = tuple(sorted(os.sched_getaffinity(0)))


class TestCheckCpus:
    def test_refuses_missing_cpu(self):
        with pytest.raises(PinningError, match="do not exist"):
            check_cpus([max(host_cpus()) + 1])

    def test_refuses_empty(self):
        with pytest.raises(PinningError, match="empty"):
            check_cpus([])

    def test_refuses_garbage(self):
        with pytest.raises(PinningError):
            check_cpus(["x"])

    def test_run_pinned_refuses_missing_cpu(self):
        with pytest.raises(PinningError):
            run_pinned(pinned_workers.affinity_and_cgroup, cpus=(4096,))


def test_pin_all_threads_reaches_existing_threads():
    """A thread started before pinning (as numpy's pool would be) ends up pinned too."""
    stop = threading.Event()
    workers = [threading.Thread(target=stop.wait) for _ in range(3)]
    for w in workers:
        w.start()
    original = os.sched_getaffinity(0)
    target = (CPUS[-1],)
    try:
        tids = pin_all_threads(target)
        assert len(tids) >= 4
        found = thread_affinities(os.getpid())
        assert set(tids) <= set(found)
        assert all(cpus == target for tid, cpus in found.items() if tid in tids)
    finally:
        pin_all_threads(original)
        stop.set()
        for w in workers:
            w.join()
    assert set(thread_affinities(os.getpid())[threading.get_native_id()]) == set(original)


def test_thread_affinities_of_missing_pid_is_empty():
    assert thread_affinities(2 ** 22 + 12345) == {}


@pytest.mark.parametrize("cpus", [CPUS[:1], CPUS[:2]] if len(CPUS) >= 2 else [CPUS[:1]])
def test_worker_running_interpreter_is_pinned_on_every_thread(tmp_path, cpus):
    model = pinned_workers.conv_model_bytes()
    marker, stop = tmp_path / "running", tmp_path / "stop"
    worker = start_pinned(pinned_workers.busy_interpreter, (model, str(marker), str(stop)), cpus=cpus)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert worker.is_alive(), "worker died before running its interpreter"
            assert time.monotonic() < deadline, "worker never started its interpreter"
            time.sleep(0.05)
        found = thread_affinities(worker.pid)  # read while the interpreter is invoking
    finally:
        stop.touch()
    result = worker.result(timeout=60)
    assert result["threads"] == len(cpus)
    assert result["invokes"] >= 1
    assert len(found) >= len(cpus)  # with 2 threads the runtime's pool thread is there too
    assert all(allowed == tuple(cpus) for allowed in found.values()), found


def test_worker_env_and_errors():
    info = run_pinned(pinned_workers.affinity_and_cgroup, cpus=CPUS[:1], timeout=60)
    assert info["affinity"] == list(CPUS[:1])
    assert info["threads_env"] == "1"
    with pytest.raises(ValueError, match="bad thing"):
        run_pinned(pinned_workers.raise_value_error, cpus=CPUS[:1], timeout=60)


@pytest.mark.parametrize("work", ["lambda: 7", "lambda: 1 / 0"])
def test_a_worker_whose_parent_was_killed_ends_without_a_traceback(work):
    """The parent SIGKILLed while a pinned worker ran (an emulation calibration, say): the worker's result,
    and then its report of the BrokenPipeError, each failed to send, and it printed a chained traceback."""
    import subprocess
    import sys

    script = ("import multiprocessing, os\n"
              "from cores.pinning import _entry\n"
              "parent, child = multiprocessing.Pipe()\n"
              "parent.close()  # what a killed parent leaves\n"
              f"_entry(tuple(sorted(os.sched_getaffinity(0))), None, {work}, (), {{}}, child)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
