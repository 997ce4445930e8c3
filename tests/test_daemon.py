"""A real `pipeit serve` daemon on a tiny real model: many clients, garbage, errors, signals, cleanup."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from pipeit.client import Client, DaemonError
from pipeit.daemon import protocol as wire
from tests.daemon_helpers import (ROOT, build_model, daemon_files, daemon_for_module, leftovers, reference,
                                  serving, write_times)
from tests.fork_helpers import refused_in_a_fork

PLATFORM = "emulate:big=0@1.0,little=1@1.0"  # two clusters, no throttling: no cgroups needed here


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return daemon_files(tmp_path_factory.mktemp("daemon"), PLATFORM)


@pytest.fixture(scope="module")
def daemon(files):
    yield from daemon_for_module(files, PLATFORM, "--window-s", "1", "--per-client", "3")


def _frames(n, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 32, 32, 16)).astype(np.float32) for _ in range(n)]


def test_socket_is_0660(daemon):
    mode = stat.S_IMODE(os.stat(daemon.socket_path).st_mode)
    assert mode == 0o660


def test_many_clients_and_one_sending_garbage(daemon, files):
    _, model, _ = files
    frames = _frames(6, seed=1)
    refs = [reference(model, f) for f in frames]
    errors, counts = [], []

    def client(k):
        try:
            with Client(daemon.socket_path) as c:
                order = [(k + i) % len(frames) for i in range(40)]
                outs = list(c.infer_many(({"image": frames[j]} for j in order), window=3))
                counts.append(len(outs))
                for j, out in zip(order, outs):
                    if not np.array_equal(out["fc"], refs[j]):
                        errors.append(f"client {k}: wrong output for frame {j}")
        except Exception as err:  # noqa: BLE001 -- collected for the assertion below
            errors.append(f"client {k}: {err!r}")

    def garbage():
        for payload in (b"\x00" * 64, b"GET / HTTP/1.0\r\n\r\n", wire.PREFIX.pack(wire.MAGIC, 10**6, 0),
                        wire.PREFIX.pack(wire.MAGIC, 20, 10**12) + b"{}"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(daemon.socket_path))
            s.sendall(payload)
            s.settimeout(10)
            try:
                reply = s.recv(4096)
            except OSError:
                reply = b""
            s.close()
            assert reply == b"" or reply.startswith(wire.MAGIC)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)] + [threading.Thread(target=garbage)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert counts == [40] * 4
    with Client(daemon.socket_path) as c:
        status = c.status()
    assert status["requests"]["rejected"] >= 4
    assert status["requests"]["failed"] == 0
    assert status["requests"]["served"] >= 160


def test_garbage_gets_an_error_reply_then_close(daemon):
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(daemon.socket_path))
    s.sendall(b"NOPE" + b"\x00" * 12)
    s.settimeout(10)
    message = wire.read_message(s, 1 << 20)
    assert message.header.ok is False and message.header.error["code"] == "malformed"
    assert wire.read_message(s, 1 << 20) is None  # closed by the daemon
    s.close()


def test_a_request_without_an_id_is_told_so_then_closed(daemon):
    """As PROTOCOL.md now says: the reply has id null (nothing to tie it to), so the connection ends."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(daemon.socket_path))
    s.settimeout(10)
    try:
        s.sendall(b"".join(bytes(b) for b in wire.encode(wire.Header(id=None, op="status"))))
        message = wire.read_message(s, 1 << 20)
        assert message.header.id is None and message.header.error["code"] == "bad_request"
        assert "request has no id" in message.header.error["message"]
        assert wire.read_message(s, 1 << 20) is None  # closed by the daemon
    finally:
        s.close()


def test_wrong_shape_is_refused_and_the_connection_stays_usable(daemon, files):
    _, model, _ = files
    with Client(daemon.socket_path) as c:
        with pytest.raises(DaemonError, match="the model takes"):
            c.infer({"image": np.zeros((1, 16, 16, 16), np.float32)})
        with pytest.raises(DaemonError, match="do not match"):
            c.infer({"other": np.zeros((1, 32, 32, 16), np.float32)})
        frame = _frames(1, seed=2)[0]
        np.testing.assert_array_equal(c.infer(frame)["fc"], reference(model, frame))


TAKES = "the model takes (1, 32, 32, 16) float32"


@pytest.mark.parametrize("inputs, expected", [
    ({"image": np.zeros((1, 32, 32, 16), np.float64)}, f"input 'image' is (1, 32, 32, 16) float64, {TAKES}"),
    ({"image": np.zeros((1, 32, 32, 17), np.float32)}, f"input 'image' is (1, 32, 32, 17) float32, {TAKES}"),
    ({"image": np.zeros((1, 32, 32, 16), np.float32), "extra": np.zeros(4, np.float32)},
     "inputs ['extra', 'image'] do not match the model's ['image'] (it takes 'image' (1, 32, 32, 16) float32)"),
])
@pytest.mark.parametrize("transport", ["inline", "shm"])
def test_a_frame_over_the_size_limit_is_refused_naming_the_input(daemon, inputs, expected, transport):
    with Client(daemon.socket_path, transport=transport) as c:
        with pytest.raises(DaemonError) as err:
            c.infer(inputs)
    assert err.value.code == "too_large"  # the size bound stands: the body is never read
    assert expected in str(err.value) and "exceeds the limit" in str(err.value)


def test_a_frame_too_large_for_the_socket_buffer_is_refused_not_a_broken_pipe(daemon):
    """The daemon answers too_large before reading the body and closes: the client's send then broke, and
    the client said "Broken pipe" instead of the answer waiting in the socket."""
    big = {"image": np.zeros((1, 32, 32, 16 * 128), np.float32)}  # 8 MB: more than a socket buffer takes
    for _ in range(3):
        with Client(daemon.socket_path, transport="inline") as c, pytest.raises(DaemonError) as err:
            c.infer(big)
        assert err.value.code == "too_large", err.value


def test_connections_one_after_another_are_served_at_once(daemon):
    """Accepting a connection returned None, which the accept loop read as "out of descriptors": it stopped
    listening for 0.25 s after every connection, so each one-shot `pipeit infer` or `status` that followed
    another within that time waited up to 250 ms for its answer."""
    t0 = time.perf_counter()
    for _ in range(8):
        with Client(daemon.socket_path, transport="inline") as c:
            c.status()
    assert time.perf_counter() - t0 < 1.5  # 8 x 0.25 s before; about 10 ms now


def test_status_document(daemon):
    with Client(daemon.socket_path) as c:
        c.infer(_frames(1, 3)[0])
        doc = c.status()
    assert doc["pid"] == daemon.proc.pid
    assert doc["plan"]["stages"] and doc["stages"][0]["queue_depth"] is not None
    assert {c["name"] for c in doc["clusters"]} == {"big", "little"}
    assert set(doc["latency_ms"]) >= {"p50", "p95", "p99"}
    assert doc["inputs"] == [{"name": "image", "shape": [1, 32, 32, 16], "dtype": "float32"}]
    assert doc["replanning"] == "on"  # served from layer times: it has what a re-plan needs


def test_cli_infer_json_is_strict_json_for_a_nan_output(daemon, tmp_path):
    """An all-NaN frame gave ``"max": NaN``, which a strict JSON parser (jq, JavaScript) refuses."""
    np.save(tmp_path / "nan.npy", np.full((1, 32, 32, 16), np.nan, np.float32))
    done = subprocess.run([sys.executable, "-m", "pipeit", "infer", "--socket", str(daemon.socket_path), "--input",
                           str(tmp_path / "nan.npy"), "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in --json output:\n{done.stdout}")

    doc = json.loads(done.stdout, parse_constant=refuse)
    assert None in [v for out in doc["outputs"].values() for v in out.values()], doc


def test_cli_infer_and_status(daemon, files, tmp_path):
    folder, model, _ = files
    frame = _frames(1, seed=4)[0]
    np.save(tmp_path / "x.npy", frame)
    run = [sys.executable, "-m", "pipeit"]
    done = subprocess.run(run + ["infer", "--socket", str(daemon.socket_path), "--input", str(tmp_path / "x.npy"),
                                 "-o", str(tmp_path / "out.npz")], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_array_equal(out["fc"], reference(model, frame))
    # written under exactly the name given (numpy's savez would add ".npz", and the report named the other file)
    done = subprocess.run(run + ["infer", "--socket", str(daemon.socket_path), "--input", str(tmp_path / "x.npy"),
                                 "-o", str(tmp_path / "result")], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and f"saved -> {tmp_path / 'result'}" in done.stdout, done.stderr
    assert not (tmp_path / "result.npz").exists()
    with np.load(tmp_path / "result") as out:
        np.testing.assert_array_equal(out["fc"], reference(model, frame))
    done = subprocess.run(run + ["status", "--socket", str(daemon.socket_path), "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and '"fps"' in done.stdout
    bad = subprocess.run(run + ["infer", "--socket", str(tmp_path / "none.sock"), "--input",
                                str(tmp_path / "x.npy")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no daemon socket" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_infer_refuses_an_unreadable_npz_without_a_daemon(tmp_path):
    np.savez(tmp_path / "o.npz", img=np.array([None], dtype=object))  # only pickle could read it back
    done = subprocess.run([sys.executable, "-m", "pipeit", "infer", "--socket", str(tmp_path / "none.sock"),
                           "--input", str(tmp_path / "o.npz")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"pipeit: error: {tmp_path / 'o.npz'}: not a readable .npy/.npz file "
                                        "(Object arrays cannot be loaded when allow_pickle=False)"]


def _two_input_model(path):
    from pipeit.tflite_builder import ModelBuilder

    b = ModelBuilder(seed=0)
    left, right = b.input("left", (1, 8, 8, 8)), b.input("right", (1, 8, 8, 8))
    joined = b.add(b.conv2d(left, 8, kernel=3, activation="RELU"), b.conv2d(right, 8, kernel=3, activation="RELU"))
    b.output(b.fully_connected(b.mean(joined), 4))
    path.write_bytes(b.to_bytes())
    return path


def test_cli_infer_on_a_two_input_model_names_the_input_that_does_not_fit(tmp_path):
    from tests.daemon_helpers import write_times

    os.chmod(tmp_path, 0o750)
    model = _two_input_model(tmp_path / "two.tflite")
    times = write_times(model, PLATFORM, tmp_path / "times.json")
    frame = np.zeros((1, 8, 8, 8), np.float32)
    cases = {
        "ok": ({"left": frame, "right": frame}, None),
        "f64": ({"left": frame, "right": frame.astype(np.float64)}, "input 'right' is (1, 8, 8, 8) float64, "
                                                                     "the model takes (1, 8, 8, 8) float32"),
        "shape": ({"left": frame, "right": np.zeros((1, 8, 8, 9), np.float32)},
                  "input 'right' is (1, 8, 8, 9) float32, the model takes (1, 8, 8, 8) float32"),
        "extra": ({"left": frame, "right": frame, "more": frame},
                  "it takes 'left' (1, 8, 8, 8) float32, 'right' (1, 8, 8, 8) float32"),
    }
    for name, (arrays, _) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
    d = serving(model, times, PLATFORM, tmp_path, "--no-replan", socket_name="two.sock")
    with d:
        for transport in ("inline", "shm"):
            for name, (_, expected) in cases.items():
                done = subprocess.run([sys.executable, "-m", "pipeit", "infer", "--socket", str(d.socket_path),
                                       "--input", str(tmp_path / f"{name}.npz"), "--transport", transport],
                                      cwd=ROOT, capture_output=True, text=True, timeout=60)
                if expected is None:
                    assert done.returncode == 0, done.stderr
                    continue
                assert done.returncode == 2, (transport, name, done.stdout)
                lines = done.stderr.splitlines()
                assert len(lines) == 1 and lines[0].startswith("pipeit: error:"), (transport, name, done.stderr)
                assert expected in lines[0], (transport, name, lines[0])
    assert d.proc.returncode == 0, d.log()


def test_killed_worker_is_restarted_without_failing_requests(daemon, files):
    _, model, _ = files
    frames = _frames(3, seed=5)
    refs = [reference(model, f) for f in frames]
    workers = [p for p in psutil.Process(daemon.proc.pid).children() if "multiprocessing" in " ".join(p.cmdline())]
    assert workers
    with Client(daemon.socket_path) as c:
        outs = []
        for i in range(60):
            if i == 10:
                workers[0].kill()
            outs.append(c.infer(frames[i % 3])["fc"])
        doc = c.status()
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, refs[i % 3])
    assert doc["requests"]["failed"] == 0


def test_sighup_reloads_and_keeps_serving(daemon, files):
    _, model, _ = files
    frame = _frames(1, seed=6)[0]
    with Client(daemon.socket_path) as c:
        before = c.status()["generation"]
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        expected = reference(model, frame)

        def reloads():
            return [e for e in c.status()["events"] if e["kind"] == "reload"]

        while not reloads() and time.monotonic() < deadline:
            np.testing.assert_array_equal(c.infer(frame)["fc"], expected)  # served all along
        event = reloads()[0]
        assert event["generation_before"] >= before and event["generation_after"] > event["generation_before"]
        assert c.status()["requests"]["failed"] == 0
        np.testing.assert_array_equal(c.infer(frame)["fc"], reference(model, frame))


def test_sigterm_drains_in_flight_requests_and_leaves_nothing(files, tmp_path):
    folder, model, times = files
    d = serving(model, times, "emulate:big=0@1.0,little=1@0.5", tmp_path, "--per-client", "8", socket_name="t.sock")
    d.wait_ready()
    children = psutil.Process(d.proc.pid).children(recursive=True)
    frame = _frames(1, seed=7)[0]
    ref = reference(model, frame)
    with Client(d.socket_path) as c:
        ids = [c.send("infer", {"image": frame}) for _ in range(8)]
        time.sleep(0.05)
        d.proc.send_signal(signal.SIGTERM)
        for rid in ids:  # every request accepted before the signal is answered
            np.testing.assert_array_equal(c.receive(rid).tensors["fc"], ref)
    assert d.stop() == 0, d.log()
    assert not d.socket_path.exists()
    assert leftovers(d.proc.pid) == []
    # children (workers, the resource tracker) may still be exiting the instant the daemon is reaped
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_world_writable_socket_directory_is_refused(files, tmp_path):
    _, model, times = files
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    done = subprocess.run([sys.executable, "-m", "pipeit", "serve", "--model", str(model), "--platform", PLATFORM,
                           "--times", str(times), "--socket", str(open_dir / "s.sock")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "world-writable" in done.stderr and "Traceback" not in done.stderr
    # a private folder inside an open one (no sticky bit) could itself be renamed away and replaced
    inner = open_dir / "mine"
    inner.mkdir(mode=0o750)
    os.chmod(inner, 0o750)
    done = subprocess.run([sys.executable, "-m", "pipeit", "serve", "--model", str(model), "--platform", PLATFORM,
                           "--times", str(times), "--socket", str(inner / "s.sock")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"lies inside {open_dir}" in done.stderr


@pytest.mark.parametrize("given, words", [
    ("garbage", "not a TFLite model"),  # was "plan from times ..." and then an error naming the private copy
    ("other", "times for 5 layers"),    # times for another layer count: planned, then refused by the pipeline
])
def test_a_model_that_does_not_fit_is_refused_before_planning(files, tmp_path, given, words):
    _, model, times = files
    sockets = tmp_path / "sock"
    sockets.mkdir(mode=0o750)
    if given == "garbage":
        model = tmp_path / "garbage.tflite"
        model.write_bytes(b"\x93NUMPY garbage, not a model")
    else:
        times = write_times(build_model(tmp_path / "other.tflite", layers=3), PLATFORM, tmp_path / "other.json")
    done = subprocess.run([sys.executable, "-m", "pipeit", "serve", "--model", str(model), "--platform", PLATFORM,
                           "--times", str(times), "--socket", str(sockets / "s.sock")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PIPEIT_STATE_DIR": str(tmp_path / "state")})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and str(model) in lines[0], done.stderr


def test_a_state_directory_others_can_write_is_refused(files, tmp_path):
    """The daemon plans from the times it cached there: a folder anyone may fill (or swap) would let
    anyone choose its plan."""
    from pipeit.cli import main

    _, model, times = files
    plan = tmp_path / "plan.json"
    assert main(["plan", str(model), "--platform", PLATFORM, "--times", str(times), "-o", str(plan)]) == 0
    sockets = tmp_path / "sock"
    sockets.mkdir(mode=0o750)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    for state, words in ((open_dir, "is world-writable"), (open_dir / "state", f"lies inside {open_dir}")):
        done = subprocess.run([sys.executable, "-m", "pipeit", "serve", "--model", str(model), "--platform", PLATFORM,
                               "--plan", str(plan), "--socket", str(sockets / "s.sock")],
                              cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PIPEIT_STATE_DIR": str(state)})
        lines = [line for line in done.stderr.splitlines() if not line.startswith("INFO:")]
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert words in lines[0] and "PIPEIT_STATE_DIR" in lines[0], done.stderr
        assert not (sockets / "s.sock").exists() and not (open_dir / "state").exists()


def test_replies_never_wait_on_a_client_and_keep_their_order(files, tmp_path):
    """The reply callback runs on the executor's dispatcher thread: it sends what the socket takes at
    once and hands the rest to the connection's writer, so a client that does not read stalls only
    itself, and its replies still arrive whole and in order once it reads."""
    from cores.platform import load_platform
    from pipeit.daemon.connection import Connection
    from pipeit.daemon.server import Server, ServerConfig
    from pipeit.daemon.state import PlanSource

    _folder, model, times = files
    server = Server(ServerConfig(socket_path=str(tmp_path / "unused.sock")), str(model), load_platform(PLATFORM),
                    PlanSource(times=str(times)))
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    conn = Connection(server, a, 1)  # its reader is not started: this test plays the dispatcher
    big = np.arange(100_000, dtype=np.float32)  # 400 KB a reply: the socket takes a fraction of one
    done = threading.Event()

    def produce():
        for i in range(6):
            conn.reply((wire.encode_reply(i, "infer", {"y": big + i}), None))
        conn.reply("close")
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    assert done.wait(30), "reply() waited for a client that does not read"
    got = [wire.read_message(b, 1 << 22) for _ in range(6)]
    assert [m.header.id for m in got] == list(range(6))
    for i, message in enumerate(got):
        np.testing.assert_array_equal(message.tensors["y"], big + i)
    assert wire.read_message(b, 0) is None  # the writer closed after the last reply
    assert conn.done.wait(10) and conn.writer is not None
    conn.writer.join(10)
    assert not conn.writer.is_alive()
    b.close()


def test_a_reply_the_socket_takes_at_once_needs_no_writer_thread(files, tmp_path):
    from cores.platform import load_platform
    from pipeit.daemon.connection import Connection
    from pipeit.daemon.server import Server, ServerConfig
    from pipeit.daemon.state import PlanSource

    _folder, model, times = files
    server = Server(ServerConfig(socket_path=str(tmp_path / "unused.sock")), str(model), load_platform(PLATFORM),
                    PlanSource(times=str(times)))
    a, b = socket.socketpair()
    conn = Connection(server, a, 2)
    conn.reply((wire.encode_reply(1, "infer", {"y": np.ones(10, np.float32)}), None))
    conn.reply("close")
    assert conn.writer is None and conn.done.is_set()
    assert wire.read_message(b, 1 << 10).header.id == 1
    assert wire.read_message(b, 0) is None
    conn.reply((wire.encode_reply(2, "infer", {"y": np.ones(10, np.float32)}), None))  # late: dropped
    assert conn.writer is None
    b.close()


def test_reader_threads_are_reused_and_end_when_idle():
    from pipeit.daemon.connection import ThreadPool

    pool = ThreadPool("test-pool", idle_s=0.5)
    seen, done = [], threading.Semaphore(0)

    def task():
        seen.append(threading.get_ident())
        done.release()

    def back_to_idle():
        for _ in range(1000):
            if pool._idle:
                return
            time.sleep(0.01)

    for bad in (False, False, True, False, False):  # one after the other: one thread serves them all
        pool.run((lambda: 1 / 0) if bad else task)  # a failing task is logged; the thread goes on
        assert bad or done.acquire(timeout=10)
        back_to_idle()
    assert len(seen) == 4 and len(set(seen)) == 1
    ident = seen[0]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(t.ident == ident for t in threading.enumerate()):
        time.sleep(0.05)
    assert not any(t.ident == ident for t in threading.enumerate()) and pool._idle == []


def _request_bytes(rid, frame):
    head, *views = wire.encode_request(rid, "infer", {"image": frame})
    return head, b"".join(bytes(v) for v in views)


def test_a_body_that_trickles_in_is_read_into_the_slot_and_answered(daemon, files):
    """The reader wakes on a request's first bytes; a body still on its way is read straight into the
    ring slot as it comes (within SLOW_BODY_S), and the answer is the whole model's."""
    _, model, _ = files
    frame = _frames(1, seed=11)[0]
    head, body = _request_bytes(5, frame)
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(daemon.socket_path))
    s.settimeout(30)
    s.sendall(head + body[:1000])
    time.sleep(0.2)  # the daemon has read the header and holds a slot for the rest
    s.sendall(body[1000:])
    message = wire.read_message(s, 1 << 20)
    s.close()
    assert message.header.ok and message.header.id == 5
    np.testing.assert_array_equal(message.tensors["fc"], reference(model, frame))


def test_a_client_that_stalls_mid_body_is_closed_and_others_are_served(daemon, files):
    """A sender that stops half-way through a body holds one slot for SLOW_BODY_S at most, then its
    connection is closed; a second stalled sender meanwhile stages its body and holds no slot; the
    others are served all along."""
    from pipeit.daemon.connection import SLOW_BODY_S

    _, model, _ = files
    frame = _frames(1, seed=12)[0]
    want = reference(model, frame)
    stalled = []
    for rid in (1, 2):
        head, body = _request_bytes(rid, frame)
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(daemon.socket_path))
        s.sendall(head + body[: len(body) // 2])
        stalled.append(s)
    time.sleep(0.1)
    t0 = time.monotonic()
    with Client(daemon.socket_path) as c:
        for _ in range(5):
            np.testing.assert_array_equal(c.infer({"image": frame})["fc"], want)
    assert time.monotonic() - t0 < 30
    # the stalled senders (one reading into a slot, the other into its staging buffer) are cut off
    # once SLOW_BODY_S has passed: neither holds a slot, nor a drain on SIGTERM, for longer
    import select

    for s in stalled:
        assert select.select([s], [], [], SLOW_BODY_S + 10)[0] == [s] and s.recv(4096) == b""
        s.close()
    with Client(daemon.socket_path) as c:  # and the daemon serves on
        np.testing.assert_array_equal(c.infer({"image": frame})["fc"], want)


def test_client_receives_into_the_callers_arrays(daemon, files):
    _, model, _ = files
    frames = _frames(2, seed=13)
    out = {"fc": np.empty((1, 10), np.float32)}
    with Client(daemon.socket_path) as c:
        for frame in frames:
            got = c.infer({"image": frame}, out=out)
            assert got["fc"] is out["fc"]
            np.testing.assert_array_equal(out["fc"], reference(model, frame))
        wrong = {"fc": np.empty((1, 9), np.float32)}  # does not fit: a fresh array, the caller's untouched
        got = c.infer({"image": frames[0]}, out=wrong)
        assert got["fc"] is not wrong["fc"] and got["fc"].shape == (1, 10)


def test_the_gate_hands_turns_over_first_come_first_served():
    from pipeit.daemon.connection import Gate

    gate, order = Gate(), []
    gate.enter()
    threads = []
    for k in range(4):
        def turn(k=k):
            gate.enter()
            order.append(k)
            gate.leave()

        t = threading.Thread(target=turn)
        t.start()
        threads.append(t)
        deadline = time.monotonic() + 10
        while gate.waiting < k + 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert gate.waiting == k + 1
    gate.leave()
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3]
    gate.enter()  # free again: taken at once
    gate.leave()


def test_a_client_that_pauses_reading_gets_every_reply(daemon, files):
    """The reader's limit on a slow body once was a socket timeout, shared with the writer: a reply
    sent while a body trickled in to a client that then paused reading for over a second timed out,
    and the connection's queued replies were dropped. Here a client sends 300 status requests, then
    30 infers whose bodies come in two parts, and reads in 1 MiB bursts a 1.2 s pause apart:
    every reply comes, in order."""
    _, model, _ = files
    frame = _frames(1, seed=13)[0]
    want = reference(model, frame)
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(daemon.socket_path))
    sent = list(range(1, 1501)) + list(range(5000, 5030))

    def send() -> None:
        s.sendall(b"".join(bytes(b) for rid in sent[:1500] for b in wire.encode_request(rid, "status")))
        for rid in sent[1500:]:
            head, body = _request_bytes(rid, frame)
            s.sendall(head + body[:1000])
            time.sleep(0.05)
            s.sendall(body[1000:])

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = bytearray()
    deadline = time.monotonic() + 60
    s.settimeout(2.0)
    while time.monotonic() < deadline:
        time.sleep(1.2)
        try:
            chunk = s.recv(1 << 20)
        except socket.timeout:
            break
        if not chunk:
            break
        received += chunk
        if not sender.is_alive() and len(received) and _whole_messages(received) == len(sent):
            break
    sender.join(10)
    s.close()
    got = []
    view = memoryview(bytes(received))
    while view.nbytes:
        head_len, body_len = wire.decode_prefix(bytes(view[:wire.PREFIX_BYTES]), 1 << 22)
        end = wire.PREFIX_BYTES + head_len + body_len
        got.append(wire.decode_message(bytes(view[:end]), 1 << 22))
        view = view[end:]
    assert [m.header.id for m in got] == sent
    assert all(m.header.ok for m in got)
    for m in got[-30:]:
        np.testing.assert_array_equal(m.tensors["fc"], want)


def _whole_messages(data: bytes) -> int:
    count, at = 0, 0
    while len(data) - at >= wire.PREFIX_BYTES:
        head_len, body_len = wire.decode_prefix(bytes(data[at:at + wire.PREFIX_BYTES]), 1 << 22)
        end = at + wire.PREFIX_BYTES + head_len + body_len
        if end > len(data):
            break
        count, at = count + 1, end
    return count


def test_a_client_that_never_reads_stalls_only_itself(daemon, files):
    """Requests are read only while fewer than MAX_QUEUED_REPLIES replies wait unsent: a status
    flood that is never read fills the flooder's own socket (its sends block) instead of the
    daemon's memory (about 4 KiB a reply, 4 MiB/s unchecked), and everyone else is served."""
    _, model, _ = files
    frame = _frames(1, seed=14)[0]
    flooder = socket.socket(socket.AF_UNIX)
    flooder.connect(str(daemon.socket_path))
    request = b"".join(bytes(b) for b in wire.encode_request(7, "status")) * 64
    stop = threading.Event()

    def flood() -> None:
        try:
            while not stop.is_set():
                flooder.sendall(request)
        except OSError:
            pass

    proc = psutil.Process(daemon.proc.pid)
    before = proc.memory_info().rss
    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        time.sleep(6)
        grown = proc.memory_info().rss - before
        with Client(daemon.socket_path) as c:
            np.testing.assert_array_equal(c.infer({"image": frame})["fc"], reference(model, frame))
        assert grown < 12 << 20, f"the daemon grew {grown >> 20} MiB under a never-read status flood"
    finally:
        stop.set()
        flooder.shutdown(socket.SHUT_RDWR)
        flooder.close()
        thread.join(10)


def test_one_process_cannot_hold_every_connection(daemon):
    """Idle connections are allowed, but one process gets at most --max-clients-per-peer (16) of them:
    the next is refused in one reply, and other processes are still let in."""
    held = []
    try:
        for _ in range(16):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(daemon.socket_path))
            held.append(s)
        with Client(daemon.socket_path) as c:
            with pytest.raises(DaemonError, match="already holds 16 connections"):
                c.status()
        done = subprocess.run([sys.executable, "-m", "pipeit", "status", "--socket", str(daemon.socket_path),
                               "--json"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    finally:
        for s in held:
            s.close()


def _fake_server(path, handle):
    """A Unix socket server of one connection in a thread, answering with ``handle(conn)``."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            handle(conn)
        except OSError:
            pass
        finally:
            conn.close()
            listener.close()

    threading.Thread(target=serve, daemon=True).start()


def test_the_client_says_when_the_socket_is_no_pipeit_daemon(tmp_path):
    """An echo server sends the request back: a message without "ok" is no daemon's reply."""
    path = tmp_path / "echo.sock"
    _fake_server(path, lambda conn: conn.sendall(conn.recv(65536)))
    with Client(path, timeout=10) as c:
        with pytest.raises(DaemonError, match="not a pipeit reply"):
            c.status()


def test_the_client_timeout_bounds_the_whole_reply(tmp_path):
    """A peer that dribbles a reply a byte at a time: --timeout is a deadline, not a limit per recv."""
    reply = b"".join(bytes(b) for b in wire.encode(wire.Header(id=1, op="status", ok=True, info={"x": "y" * 200})))

    def dribble(conn) -> None:
        conn.recv(65536)
        for i in range(len(reply)):
            conn.sendall(reply[i:i + 1])
            time.sleep(0.2)

    path = tmp_path / "drip.sock"
    _fake_server(path, dribble)
    t0 = time.monotonic()
    with Client(path, timeout=1.0) as c:
        with pytest.raises(DaemonError, match="in time"):
            c.status()
    assert time.monotonic() - t0 < 5


def test_an_auto_client_that_times_out_attaching_does_not_go_inline_for_good(tmp_path):
    """A slow daemon's silence was taken for "no frame areas here": every later frame went inline."""
    from pipeit.client import ReplyTimeout

    path = tmp_path / "mute.sock"
    _fake_server(path, lambda conn: (conn.recv(65536), time.sleep(3)))
    with Client(path, timeout=0.5, transport="auto") as c:
        with pytest.raises(ReplyTimeout, match="in time"):
            c.attach()
        assert c.shm_refused is None


def test_close_from_another_thread_wakes_a_thread_waiting_for_its_reply(tmp_path):
    """Calls take turns on the client's lock, and close() must not wait behind a receive() that holds it
    for as long as the timeout: it shuts the socket down first."""
    path = tmp_path / "mute2.sock"
    _fake_server(path, lambda conn: (conn.recv(65536), time.sleep(30)))
    c = Client(path, timeout=60)
    errors: list = []

    def wait_for_reply() -> None:
        try:
            c.status()
        except DaemonError as err:
            errors.append(err)

    waiter = threading.Thread(target=wait_for_reply)
    waiter.start()
    time.sleep(0.5)
    began = time.monotonic()
    c.close()
    waiter.join(10)
    assert not waiter.is_alive() and errors, "the waiting thread was not woken"
    assert time.monotonic() - began < 5


@pytest.mark.parametrize("header, words", [
    (wire.Header(id=3, op="status", ok=True), "reply fields"),
    (wire.Header(id=3, op="status", slot=0), "takes no tensors and no slot"),
    (wire.Header(id=3, op="attach", info={"slots": 2, "name": "../../etc/passwd"}), "nothing else"),
])
def test_a_request_with_fields_its_operation_does_not_take_is_refused(daemon, header, words):
    """What PROTOCOL.md says a request is: anything else is a bad_request, and the connection stays."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(daemon.socket_path))
    s.settimeout(30)
    try:
        s.sendall(b"".join(bytes(b) for b in wire.encode(header)))
        reply = wire.read_message(s, 1 << 20)
        assert reply.header.id == 3 and reply.header.ok is False
        assert reply.header.error["code"] == "bad_request" and words in reply.header.error["message"]
        s.sendall(b"".join(bytes(b) for b in wire.encode_request(4, "status")))
        assert wire.read_message(s, 1 << 22).header.ok
    finally:
        s.close()


def test_a_plan_predicting_an_infinite_rate_is_served_and_reported(files, tmp_path):
    """Plan files may hold Infinity for a predicted rate or latency; JSON replies cannot: status says null."""
    import json as _json

    _, model, times = files
    plan_path = tmp_path / "plan.json"
    done = subprocess.run([sys.executable, "-m", "pipeit", "plan", str(model), "--platform", PLATFORM, "--times",
                           str(times), "-o", str(plan_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = _json.loads(plan_path.read_text())
    doc["predicted"]["fps"] = float("inf")
    plan_path.write_text(_json.dumps(doc))
    folder = tmp_path / "d"
    folder.mkdir(mode=0o750)
    os.chmod(folder, 0o750)
    from tests.daemon_helpers import Daemon, assert_clean_exit

    daemon = Daemon(["--model", str(model), "--platform", PLATFORM, "--plan", str(plan_path)], folder / "d.sock",
                    env={"PIPEIT_STATE_DIR": str(folder / "state")})
    with daemon:
        with Client(daemon.socket_path) as c:
            status = c.status()
            assert status["plan"]["predicted"]["fps"] is None
            # a plan file alone (no times given or cached): it never re-plans, which status now says
            assert status["replanning"].startswith("off: no layer times to re-plan from"), status["replanning"]
            shown = subprocess.run([sys.executable, "-m", "pipeit", "status", "--socket", str(daemon.socket_path)],
                                   cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert "re-plans: 0 (re-planning off: no layer times" in shown.stdout, shown.stdout + shown.stderr
            frame = _frames(1, seed=15)[0]
            np.testing.assert_array_equal(c.infer({"image": frame})["fc"], reference(model, frame))
    assert_clean_exit(daemon)


def test_serve_nice_reaches_the_daemon_and_its_workers(files, tmp_path):
    """--nice N: set before any thread or worker starts, so every one of them runs at N (positive here:
    a test may not run as root; the systemd unit uses -5 for the same path)."""
    _, model, times = files
    folder = tmp_path / "n"
    folder.mkdir(mode=0o750)
    os.chmod(folder, 0o750)
    with serving(model, times, PLATFORM, folder, "--nice", "7") as daemon:
        with Client(daemon.socket_path) as c:
            c.status()
        tree = [psutil.Process(daemon.proc.pid)] + psutil.Process(daemon.proc.pid).children(recursive=True)
        workers = [p for p in tree if "spawn_main" in " ".join(p.cmdline())]
        assert workers
        for proc in tree:
            for thread in proc.threads():
                assert os.getpriority(os.PRIO_PROCESS, thread.id) == 7, (proc.cmdline(), thread.id)
    done = subprocess.run([sys.executable, "-m", "pipeit", "serve", "--model", str(model), "--times", str(times),
                           "--platform", PLATFORM, "--socket", str(folder / "x.sock"), "--nice", "40"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--nice must be in -20..19" in done.stderr


def test_what_the_client_cannot_send_is_a_daemon_error_and_the_connection_stays(daemon, files):
    """They were ProtocolError, which `except DaemonError` missed; a nested list went as float64 and the
    daemon closed the connection over its size."""
    _, model, _ = files
    frame = _frames(1, seed=31)[0]
    with Client(daemon.socket_path) as c:
        for bad in (np.array([object()]), np.zeros((1, 32, 32, 16), np.complex64)):
            with pytest.raises(DaemonError) as err:
                c.infer({"image": bad})
            assert err.value.code == "bad_request" and "cannot be sent" in str(err.value)
        with pytest.raises(DaemonError) as err:
            c.send("bogus")
        assert err.value.code == "bad_request" and "bogus" in str(err.value)
        with pytest.raises(DaemonError) as err:
            c.infer([["a", "b"]])
        assert err.value.code == "bad_request" and "float32" in str(err.value)
        np.testing.assert_array_equal(c.infer(frame.tolist())["fc"], reference(model, frame))  # as float32
        np.testing.assert_array_equal(c.infer(frame)["fc"], reference(model, frame))  # still connected


def test_submit_after_a_lost_connection_says_the_client_is_closed(daemon):
    with Client(daemon.socket_path, transport="shm") as c:
        slot, views = c.reserve()
        c.close()  # as a lost connection does
        with pytest.raises(DaemonError, match="the client is closed"):
            c.submit(slot)


def test_a_forked_child_cannot_use_its_parents_client_and_its_close_leaves_it_connected(daemon, files):
    """The child's close() shut down the connection both share (the parent got 'lost the connection'),
    and both writing "slot 0" of one frame area gave the parent the child's outputs."""
    _, model, _ = files
    frame = _frames(1, seed=33)[0]
    with Client(daemon.socket_path, transport="shm") as c:
        np.testing.assert_array_equal(c.infer(frame)["fc"], reference(model, frame))
        assert refused_in_a_fork(lambda: c.infer(frame), c.close) == 0
        for _ in range(3):
            np.testing.assert_array_equal(c.infer(frame)["fc"], reference(model, frame))


def test_a_replan_asked_just_before_a_half_close_is_answered(daemon):
    """The connection closed as soon as no frame was in flight, dropping the re-plan's answer, which its
    own thread sends later: 4 of 4 such requests went unanswered (here the re-plan is quick, and the
    answer lost the race now and then: ten tries)."""
    for attempt in range(10):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(120)
        try:
            sock.connect(str(daemon.socket_path))
            wire.send_message(sock, wire.encode_request(7, "replan"))
            sock.shutdown(socket.SHUT_WR)
            reply = wire.read_message(sock, 1 << 20)
            assert reply is not None and reply.header.id == 7 and reply.header.op == "replan", (attempt, reply)
        finally:
            sock.close()


def test_serve_refuses_layer_times_made_for_another_model(files, tmp_path):
    """Times for a model with as many layers but other shapes once planned the daemon's pipeline silently."""
    _, _, times = files
    from tests.daemon_helpers import build_model

    other = build_model(tmp_path / "other.tflite", classes=20)
    folder = tmp_path / "o"
    folder.mkdir(mode=0o750)
    done = subprocess.run([sys.executable, "-m", "pipeit", "serve", "--model", str(other), "--times", str(times),
                           "--platform", PLATFORM, "--socket", str(folder / "o.sock")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PIPEIT_STATE_DIR": str(folder / "state")})
    assert done.returncode == 2, done.stderr
    assert "was made for another model" in done.stderr and "Traceback" not in done.stderr
    assert not (folder / "o.sock").exists()
