"""Starting child processes: a stop signal never cuts a start in half (pipeit.children, pipeit.signals)."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeit.children import start_shielded
from pipeit.signals import handled


def _sleep_briefly() -> None:
    import time

    time.sleep(0.2)


class _SignalledWhileStarting(multiprocessing.get_context("spawn").Process):
    """A real spawned process whose start is hit by SIGTERM before the child exists."""

    def start(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        super().start()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def test_a_stop_signal_during_a_start_comes_after_it():
    """Cut mid-start, a spawned child read a short pipe and printed an EOFError traceback; the start
    must finish (the child runs and is tracked) and the signal come right after."""
    process = _SignalledWhileStarting(target=_sleep_briefly)
    with handled([signal.SIGTERM], _raise_interrupt) as installed:
        assert installed, "run in the main thread"
        with pytest.raises(KeyboardInterrupt):
            start_shielded(process)
    assert process.pid is not None, "the start was cut before the child existed"
    process.join(30)
    assert process.exitcode == 0


#: run in a fresh interpreter: the first spawn of a process is the one that went wrong (multiprocessing's
#: resource tracker, started on the way, unblocked SIGINT in the starting thread)
_FIRST_SPAWN = """
import json, multiprocessing, signal
from pipeit.children import start_shielded
from tests.test_children import report_mask
if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=report_mask, args=(writer,))
    start_shielded(process)
    child = reader.recv()
    process.join(30)
    parent = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    print(json.dumps([sorted(int(s) for s in child), sorted(int(s) for s in parent)]))
"""


def test_the_first_child_starts_with_the_terminal_signals_blocked(tmp_path):
    """SIGINT and SIGHUP reach the command, not its workers: the child's mask holds them from birth."""
    script = tmp_path / "first_spawn.py"
    script.write_text(_FIRST_SPAWN)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)}, cwd=root)
    assert done.returncode == 0, done.stderr
    child, parent = (set(masks) for masks in json.loads(done.stdout))
    assert {signal.SIGINT, signal.SIGHUP} <= child, done.stdout
    assert signal.SIGTERM not in child  # terminate() must still end a worker
    assert not parent  # the parent's own mask is as it was


def report_mask(writer) -> None:
    writer.send(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
