"""Shared by the daemon tests: a tiny real model, its layer times, and a real `pipeit serve` subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build_model(path: Path, layers: int = 6, size: int = 32, channels: int = 16, classes: int = 10,
                input_name: str = "image") -> Path:
    from pipeit.tflite_builder import ModelBuilder

    b = ModelBuilder(seed=0)
    x = b.input(input_name, (1, size, size, channels))
    for _ in range(layers):
        x = b.conv2d(x, channels, kernel=3, activation="RELU")
    x = b.mean(x)
    b.output(b.fully_connected(x, classes))
    path.write_bytes(b.to_bytes())
    return path


def write_times(model: Path, platform_spec: str, path: Path, ms: float = 0.5) -> Path:
    """Synthetic per-layer times: ``ms`` per layer on a full-speed core, divided by speed and cores."""
    from cores.platform import load_platform
    from pipeit.graph import load_graph
    from pipeit.layer_times import LayerTimes

    platform = load_platform(platform_spec)
    graph = load_graph(str(model))
    times = LayerTimes.from_graph(graph, platform.setups(),
                                  lambda i, s: ms / platform.cluster(s.cluster).speed / s.cores)
    times.save(path)
    return path


def daemon_files(folder: Path, platform_spec: str) -> Tuple[Path, Path, Path]:
    """``(folder, model, times)``: a tiny model and its layer times in ``folder`` (made group-only, as the socket's)."""
    os.chmod(folder, 0o750)
    model = build_model(folder / "tiny.tflite")
    return folder, model, write_times(model, platform_spec, folder / "times.json")


def reference(model: Path, frame: np.ndarray) -> np.ndarray:
    from pipeit.runtime import make_interpreter

    interpreter = make_interpreter(model, num_threads=1)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], frame)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def _accepts(path: Path) -> bool:
    """Whether a daemon listens at ``path``: the file exists from the daemon's bind, a moment before its
    listen, and a connection in between is refused (a 2-core CI host running the suite hit it)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class Daemon:
    """``python -m pipeit serve ...`` in a subprocess, stopped (and checked gone) on exit."""

    def __init__(self, args: List[str], socket_path: Path, env: Optional[dict] = None, log: Optional[Path] = None):
        self.socket_path = socket_path
        self.log_path = log or socket_path.with_suffix(".log")
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ, **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeit", "serve", "--socket", str(socket_path), *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
        )

    def wait_ready(self, timeout: float = 90.0) -> "Daemon":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket_path.exists() and _accepts(self.socket_path):
                return self
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "Daemon":
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


def serving(model: Path, times: Path, platform_spec: str, folder: Path, *extra: str,
            socket_name: str = "d.sock") -> "Daemon":
    """A daemon for ``model`` with layer times ``times``: its socket and state directory in ``folder``."""
    return Daemon(["--model", str(model), "--platform", platform_spec, "--times", str(times), *extra],
                  folder / socket_name, env={"PIPEIT_STATE_DIR": str(folder / "state")})


def assert_clean_exit(daemon: "Daemon") -> None:
    """It exited 0 and left no shared-memory segment or cgroup behind."""
    assert daemon.proc.returncode == 0, daemon.log()
    assert leftovers(daemon.proc.pid) == []


def daemon_for_module(files: Tuple[Path, Path, Path], platform_spec: str, *extra: str) -> Iterator["Daemon"]:
    """A module fixture's body: a daemon over ``daemon_files``, served while the module's tests run, then
    checked to have exited cleanly."""
    folder, model, times = files
    daemon = serving(model, times, platform_spec, folder, *extra)
    with daemon:
        yield daemon
    assert_clean_exit(daemon)


def leftovers(pid: int) -> List[str]:
    """Shared-memory segments and cgroups a daemon with ``pid`` left behind."""
    found = [f"/dev/shm/{n}" for n in os.listdir("/dev/shm") if n.startswith(f"pipeit_{pid}_")]
    for base in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup"):
        if os.path.isdir(base):
            found += [f"{base}/{n}" for n in os.listdir(base) if n.startswith(f"pipeit-{pid}-")]
    return found
