"""The daemon's life around its files: the model replaced on disk, reloads that fail, signals during
start-up, and two daemons asked for one socket path. Real pipelines, real `pipeit serve` processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cores.platform import load_platform
from pipeit.client import Client
from pipeit.daemon.engine import Engine
from pipeit.daemon.sockets import SocketError, bind_socket, check_socket_path
from pipeit.dse import plan_pipeline
from pipeit.layer_times import LayerTimes
from pipeit.plan import file_sha256
from pipeit.errors import ProfileError
from pipeit.profile_table import ProfileRow, ProfileWriter
from tests.daemon_helpers import ROOT, Daemon, build_model, reference, write_times

PLATFORM = "emulate:big=0@1.0,little=1@1.0"  # two clusters, no throttling: no cgroups needed


@pytest.fixture
def served(tmp_path):
    os.chmod(tmp_path, 0o750)
    model = build_model(tmp_path / "tiny.tflite")
    times = write_times(model, PLATFORM, tmp_path / "times.json")
    return tmp_path, model, times


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 32, 32, 16)).astype(np.float32)


def test_a_model_replaced_on_disk_does_not_break_a_restart(served):
    """A worker that died too often made the engine start a fresh pipeline from the file on disk: replaced
    there (a deployment copying the next model in before `systemctl reload`), the start failed and the
    daemon refused every request from then on."""
    folder, model, times = served
    platform = load_platform(PLATFORM)
    plan = plan_pipeline(LayerTimes.load(times), platform, strategy="replicas", model=str(model),
                         model_sha256=file_sha256(model))
    frame = _frame(1)
    want = reference(model, frame)
    engine = Engine(model, platform)
    try:
        engine.start(plan)
        build_model(model, layers=4)  # another model under the same name
        model.unlink()  # ...or none at all
        _old, new = engine.switch(plan)  # what a restart does
        np.testing.assert_array_equal(new.pipeline.run({"image": frame}, timeout=60)["fc"], want)
        copies = list(Path(new.pipeline.model_path).parents)[1]
        assert copies.name.startswith(f"pipeit-model-{os.getpid()}-")
    finally:
        engine.close()
    assert not copies.exists()  # the engine's copy goes with it


def _log_has(daemon: Daemon, text: str, timeout: float = 90.0, times: int = 1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.log().count(text) >= times:
            return True
        if daemon.proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _events(client: Client, kind: str, timeout: float = 60.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in client.status()["events"] if e["kind"] == kind]
        if found:
            return found
        time.sleep(0.1)
    return []


def test_sighup_while_the_daemon_profiles_is_a_reload_once_it_serves(served):
    """`systemctl reload` during a first start's profiling stopped the daemon (exit 129)."""
    folder, model, _times = served
    daemon = Daemon(["--model", str(model), "--platform", PLATFORM], folder / "p.sock",
                    env={"PIPEIT_STATE_DIR": str(folder / "state")})
    try:
        assert _log_has(daemon, "profiling"), daemon.log()
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_ready()
        with Client(daemon.socket_path) as c:
            assert _events(c, "reload"), daemon.log()
            frame = _frame(2)
            np.testing.assert_array_equal(c.infer(frame)["fc"], reference(model, frame))
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_times_profiled_for_a_reload_plan_it_but_are_not_cached(served):
    """They are measured while the old pipeline serves on the same cores (1.8x contended in one run):
    cached, every later start would plan from them."""
    folder, model, _times = served
    state = folder / "state"
    from pipeit.daemon.state import cache_folder

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    killed = cache_folder(load_platform(PLATFORM), file_sha256(model), state) / f".profile.csv.{dead}"
    killed.parent.mkdir(parents=True)
    killed.write_text("kind,model\n")  # what a daemon killed while it profiled leaves
    daemon = Daemon(["--model", str(model), "--platform", PLATFORM], folder / "c.sock",
                    env={"PIPEIT_STATE_DIR": str(state)})
    try:
        daemon.wait_ready()
        assert len(list(state.glob("*/*/times.json"))) == 1  # the first start's, on idle cores
        # its minutes of profiling are told in the log as they go, in whole lines
        assert re.search(r"profiling: (\d+)/\1 meas \(100%\)", daemon.log()), daemon.log()
        assert not killed.exists()
        build_model(model, layers=4)  # the next model under the same name
        new_folder = state.glob("*").__next__() / file_sha256(model)[:16]
        daemon.proc.send_signal(signal.SIGHUP)
        with Client(daemon.socket_path) as c:
            assert _events(c, "reload"), daemon.log()
            frame = _frame(3)
            np.testing.assert_array_equal(c.infer(frame)["fc"], reference(model, frame))
        assert "while the old pipeline serves" in daemon.log()
        # nothing of it stays: no times, profile or plan, no partial file
        assert not new_folder.exists() or sorted(p.name for p in new_folder.iterdir()) == []
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_a_connection_idle_across_a_reload_to_a_larger_input_is_served(tmp_path):
    """The daemon took a connection's size limit when it began waiting for its next message: the first
    frame after a reload to a larger input was refused too_large and the connection closed."""
    os.chmod(tmp_path, 0o750)
    model = build_model(tmp_path / "m.tflite", size=24)
    times = write_times(model, PLATFORM, tmp_path / "times.json")
    small = np.random.default_rng(4).standard_normal((1, 24, 24, 16)).astype(np.float32)
    with Daemon(["--model", str(model), "--platform", PLATFORM, "--times", str(times)], tmp_path / "g.sock",
                env={"PIPEIT_STATE_DIR": str(tmp_path / "state")}) as daemon, \
            Client(daemon.socket_path) as watcher:
        reloads = 0
        for transport in ("inline", "shm"):
            build_model(model, size=24)
            write_times(model, PLATFORM, times)  # the times of the model served (others are refused)
            daemon.proc.send_signal(signal.SIGHUP)
            reloads += 1
            assert _wait_reloads(watcher, reloads), daemon.log()
            with Client(daemon.socket_path, transport=transport) as idle:
                assert idle.infer(small)["fc"].shape == (1, 10)
                build_model(model, size=32)  # a larger input, the same layers
                write_times(model, PLATFORM, times)
                daemon.proc.send_signal(signal.SIGHUP)
                reloads += 1
                assert _wait_reloads(watcher, reloads), daemon.log()
                frame = _frame(5)
                np.testing.assert_array_equal(idle.infer(frame)["fc"], reference(model, frame))


def test_a_client_sending_bare_arrays_follows_a_reload_that_renames_the_input(tmp_path):
    """infer(array) names the array after the model's one input, read once: after a reload renamed it,
    every frame was refused until the client was made again."""
    os.chmod(tmp_path, 0o750)
    model = build_model(tmp_path / "m.tflite")
    times = write_times(model, PLATFORM, tmp_path / "times.json")
    frame = _frame(6)
    with Daemon(["--model", str(model), "--platform", PLATFORM, "--times", str(times)], tmp_path / "n.sock",
                env={"PIPEIT_STATE_DIR": str(tmp_path / "state")}) as daemon, \
            Client(daemon.socket_path, transport="inline") as c:
        np.testing.assert_array_equal(c.infer(frame)["fc"], reference(model, frame))
        build_model(model, input_name="camera")
        daemon.proc.send_signal(signal.SIGHUP)
        assert _wait_reloads(c, 1), daemon.log()
        assert [i["name"] for i in c.status()["inputs"]] == ["camera"]
        np.testing.assert_array_equal(c.infer(frame)["fc"], reference(model, frame))
        np.testing.assert_array_equal(c.infer(frame.tolist())["fc"], reference(model, frame))  # lists: float32


def _wait_reloads(client: Client, count: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len([e for e in client.status()["events"] if e["kind"] == "reload"]) >= count:
            return True
        time.sleep(0.1)
    return False


def test_a_plan_made_for_another_platform_is_refused_at_start(served):
    """serve --plan ran the plan's CPUs and speeds while it throttled, watched and re-planned its own
    --platform: status showed the workers on one CPU and their cluster on the other."""
    folder, model, times = served
    plan_path = folder / "plan.json"
    plan_pipeline(LayerTimes.load(times), load_platform(PLATFORM), strategy="pipe-it", model=str(model),
                  model_sha256=file_sha256(model)).save(plan_path)
    swapped = "emulate:big=1@1.0,little=0@1.0"
    done = subprocess.run([sys.executable, "-m", "pipeit", "serve", "--model", str(model), "--platform", swapped,
                           "--plan", str(plan_path), "--socket", str(folder / "x.sock")],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PIPEIT_STATE_DIR=str(folder / "state")), cwd=ROOT)
    lines = [line for line in done.stderr.splitlines() if line.startswith("pipeit: error:")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert f"{plan_path} was made for another platform" in lines[0] and "CPUs 0" in lines[0], lines[0]
    assert "Traceback" not in done.stderr


def test_a_reload_to_a_plan_naming_a_cluster_this_platform_lacks_fails_and_keeps_serving(served):
    """It was an uncaught PlatformError in the reload thread: no "reload failed" line, no event."""
    folder, model, times = served
    plan_path = folder / "plan.json"
    plan = plan_pipeline(LayerTimes.load(times), load_platform(PLATFORM), strategy="pipe-it", model=str(model),
                         model_sha256=file_sha256(model))
    plan.save(plan_path)
    frame = _frame(3)
    with Daemon(["--model", str(model), "--platform", PLATFORM, "--plan", str(plan_path)], folder / "r.sock",
                env={"PIPEIT_STATE_DIR": str(folder / "state")}) as daemon:
        doc = json.loads(plan_path.read_text())
        for stage in doc["stages"]:
            for worker in stage["workers"]:
                worker["cluster"] = "nope"
        plan_path.write_text(json.dumps(doc))
        daemon.proc.send_signal(signal.SIGHUP)
        with Client(daemon.socket_path) as c:
            failed = _events(c, "failed")
            assert failed and "reload failed" in failed[0]["reason"] and "nope" in failed[0]["reason"], failed
            for _ in range(20):
                np.testing.assert_array_equal(c.infer(frame)["fc"], reference(model, frame))
            time.sleep(2.5)  # a re-planner window (2 s) closes with frames in it
            assert c.status()["events"][-1]["fps_after"] is None  # no pipeline changed: nothing "after"
        assert "Traceback" not in daemon.log()
        assert "after failed" not in daemon.log()


def test_one_socket_path_belongs_to_one_daemon(tmp_path):
    """Two daemons starting at once both passed the live-socket check, and stopping one could unlink the
    other's socket: the path is now locked while a daemon holds it, and let go only after its file is."""
    os.chmod(tmp_path, 0o750)
    path = tmp_path / "one.sock"
    first = bind_socket(path)
    try:
        with pytest.raises(SocketError, match="another daemon is starting or serving"):
            check_socket_path(path)
        path.unlink()  # someone removed the first daemon's socket file
        with pytest.raises(SocketError, match="another daemon is starting or serving"):
            bind_socket(path)
    finally:
        first.stop(path)
    second = bind_socket(path)  # the path is free once the first daemon is gone
    assert path.exists()
    second.stop(path)
    assert not path.exists()
    bind_socket(path).stop(path)  # and free again


class _ListenSpy(socket.socket):
    """A real listening socket that runs ``at_listen`` just before it listens (what a client racing
    the daemon's start-up could do at that moment)."""

    at_listen = staticmethod(lambda: None)

    def listen(self, *args):
        type(self).at_listen()
        return super().listen(*args)


def _spy_listener(monkeypatch, at_listen):
    from pipeit.daemon import sockets

    spy = type("Spy", (_ListenSpy, sockets.Listener), {"at_listen": staticmethod(at_listen)})
    monkeypatch.setattr(sockets, "Listener", spy)


def test_the_socket_file_appears_only_once_the_daemon_listens(tmp_path, monkeypatch):
    """``bind`` made the file and ``listen`` came a moment later: a start-up script that waited for the
    file and connected in between was refused ("no daemon listens"). The socket is now bound under a
    hidden name and linked into place once it listens."""
    os.chmod(tmp_path, 0o750)
    path = tmp_path / "s.sock"
    seen = []
    _spy_listener(monkeypatch, lambda: seen.append(path.exists()))
    listener = bind_socket(path)
    try:
        assert seen == [False]
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(path))
        probe.close()
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sock", "s.sock.lock"]  # no staging name left
    finally:
        listener.stop(path)
    assert not path.exists()


def test_a_file_that_appears_while_the_socket_is_bound_is_not_replaced(tmp_path, monkeypatch):
    os.chmod(tmp_path, 0o750)
    path = tmp_path / "s.sock"
    _spy_listener(monkeypatch, lambda: path.write_text("someone's file"))
    with pytest.raises(SocketError, match="appeared while the daemon bound its socket; refusing to replace it"):
        bind_socket(path)
    assert path.read_text() == "someone's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sock", "s.sock.lock"]
    path.unlink()
    monkeypatch.undo()
    bind_socket(path).stop(path)  # the lock was let go


def test_a_socket_path_with_no_room_for_a_hidden_name_is_bound_in_place(tmp_path):
    """At the kernel's length limit no staging name fits: the socket is bound where it goes, as before."""
    os.chmod(tmp_path, 0o750)
    room = 107 - len(os.fsencode(str(tmp_path / "s"))) - 1  # for one more folder and its slash
    if room < 1:
        pytest.skip(f"{tmp_path} is too long for this test")
    folder = tmp_path / ("d" * room)
    folder.mkdir(mode=0o750)
    path = folder / "s"
    assert len(os.fsencode(str(path))) == 107
    listener = bind_socket(path)
    try:
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(path))
        probe.close()
        assert sorted(p.name for p in folder.iterdir()) == ["s", "s.lock"]
    finally:
        listener.stop(path)


def test_a_daemon_still_profiling_keeps_its_socket_path(served):
    """The path was locked only when the socket was bound: a second daemon started while the first
    profiled took the path and served, and the first failed after its minutes of profiling."""
    folder, model, times = served
    path = folder / "p.sock"
    first = Daemon(["--model", str(model), "--platform", PLATFORM], path, env={"PIPEIT_STATE_DIR": str(folder / "p")})
    try:
        deadline = time.monotonic() + 60
        while "profiling" not in first.log() and time.monotonic() < deadline and first.proc.poll() is None:
            time.sleep(0.05)
        first.proc.send_signal(signal.SIGSTOP)  # held where it profiles: the socket is not there yet
        assert not path.exists(), first.log()
        second = subprocess.run([sys.executable, "-m", "pipeit", "serve", "--model", str(model), "--platform",
                                 PLATFORM, "--times", str(times), "--socket", str(path)],
                                capture_output=True, text=True, timeout=60, cwd=ROOT,
                                env={**os.environ, "PIPEIT_STATE_DIR": str(folder / "p2")})
        assert second.returncode == 2, second.stderr
        assert "another daemon is starting or serving there" in second.stderr.strip().splitlines()[-1]
        first.proc.send_signal(signal.SIGCONT)
        first.wait_ready()
        with Client(path) as c:
            frame = _frame(5)
            np.testing.assert_array_equal(c.infer(frame)["fc"], reference(model, frame))
    finally:
        first.proc.send_signal(signal.SIGCONT)
        assert first.stop() == 0, first.log()


def test_a_profile_that_cannot_be_written_names_its_file(tmp_path):
    """A full disk was reported as "cannot write standard output" (the error carried no file name)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    row = ProfileRow(kind="model", model="m", start=0, end=1, setup=load_platform(PLATFORM).setups()[0], key="k",
                     median_ms=1.0, spread=0.0, repeats=3, fingerprint="f" * 16, layer_keys=("k",))
    with pytest.raises(ProfileError, match="/dev/full: cannot write the profile"):
        with ProfileWriter("/dev/full") as writer:
            writer.write(row)


def test_cached_times_for_another_layer_count_are_profiled_again(served):
    """A times.json of another model in the cache stopped every start ("plan stage 0 covers layers ...")."""
    folder, model, _times = served
    from pipeit.daemon.state import cache_folder

    state = folder / "state"
    other = build_model(folder / "other.tflite", layers=3)
    cached = cache_folder(load_platform(PLATFORM), file_sha256(model), root=state) / "times.json"
    cached.parent.mkdir(parents=True)
    write_times(other, PLATFORM, cached)
    with Daemon(["--model", str(model), "--platform", PLATFORM], folder / "c.sock",
                env={"PIPEIT_STATE_DIR": str(state)}) as daemon:
        with Client(daemon.socket_path) as c:
            frame = _frame(4)
            np.testing.assert_array_equal(c.infer(frame)["fc"], reference(model, frame))
        assert "ignoring unreadable cached times" in daemon.log()


def test_sigterm_while_a_reload_profiles_stops_at_once(served):
    """The stop waited for the reload's profiling, up to the whole drain timeout (60 s), then started
    nothing; profiling now stops at its next measurement."""
    folder, _model, _times = served
    model = build_model(folder / "small.tflite", layers=1, size=16)
    daemon = Daemon(["--model", str(model), "--platform", PLATFORM], folder / "t.sock",
                    env={"PIPEIT_STATE_DIR": str(folder / "state")})
    try:
        daemon.wait_ready()
        build_model(model, layers=30, size=64, channels=64)  # a new model to profile: seconds of measurements
        daemon.proc.send_signal(signal.SIGHUP)
        assert _log_has(daemon, "profiling small.tflite", timeout=30, times=2), daemon.log()
        time.sleep(0.5)
        began = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        daemon.proc.wait(60)
        assert time.monotonic() - began < 20, daemon.log()
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert "reload abandoned: the daemon is stopping (profiling stopped" in daemon.log()
