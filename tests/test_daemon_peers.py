"""A garbage sender's reject budget: it waits once its burst is spent, while another process is served at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipeit.daemon import protocol as wire
from pipeit.daemon.peers import PeerBudgets, RejectBudget, peer_pid
from pipeit.errors import PipeitError
from tests.daemon_helpers import ROOT, daemon_files, leftovers, serving

PLATFORM = "emulate:big=0@1.0,little=1@1.0"


def test_budget_allows_a_burst_then_the_rate():
    budgets = PeerBudgets(RejectBudget(rate=2.0, burst=3))
    assert budgets.wait_s(7, 0.0) == 0.0  # never rejected: never waits
    for _ in range(3):
        budgets.reject(7, 0.0)
    assert budgets.wait_s(7, 0.0) == pytest.approx(0.5)  # the fourth waits for one token at 2 per second
    assert budgets.wait_s(8, 0.0) == 0.0  # another process is not touched
    assert budgets.wait_s(7, 0.5) == 0.0
    budgets.reject(7, 0.5)
    budgets.reject(7, 0.5)  # in debt: two tokens to wait for
    assert budgets.wait_s(7, 0.5) == pytest.approx(1.0)
    assert budgets.wait_s(7, 100.0) == 0.0  # refilled, capped at the burst
    for _ in range(3):
        budgets.reject(7, 100.0)
    assert budgets.wait_s(7, 100.0) > 0


def test_budget_off_and_bad_settings():
    off = PeerBudgets(RejectBudget(rate=0.0))
    for _ in range(100):
        off.reject(7, 0.0)
    assert off.wait_s(7, 0.0) == 0.0
    with pytest.raises(PipeitError):
        RejectBudget(rate=-1.0)
    with pytest.raises(PipeitError):
        RejectBudget(burst=0)


def test_parked_connections_are_bounded():
    budgets = PeerBudgets(RejectBudget(rate=1.0, burst=1, max_parked=2))
    assert budgets.park(5) and budgets.park(5)
    assert not budgets.park(5)
    budgets.unpark(5)
    assert budgets.park(5)


def test_peer_pid_is_the_other_process():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_pid(a) == os.getpid()


def _garbage_exchange(path) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(path))
    s.sendall(b"NOPE" + b"\x00" * 12)
    s.settimeout(60)
    try:
        return s.recv(4096)
    finally:
        s.close()


def test_over_budget_sender_waits_and_others_do_not(tmp_path):
    folder, model, times = daemon_files(tmp_path, PLATFORM)
    d = serving(model, times, PLATFORM, folder, "--no-replan", "--reject-rate", "0.25", "--reject-burst", "2")
    with d:
        # another process, started (imports done) before the garbage, asks for the status when told to
        good = subprocess.Popen(
            [sys.executable, "-c",
             "import sys, time; from pipeit.client import Client\n"
             "sys.stdin.readline()\n"
             f"with Client({str(d.socket_path)!r}) as c: c.status()\n"
             "print(time.monotonic(), flush=True)\n"],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            for _ in range(2):  # the burst: answered at once
                assert _garbage_exchange(d.socket_path).startswith(wire.MAGIC)
            answered = []
            late = threading.Thread(target=lambda: answered.append((_garbage_exchange(d.socket_path),
                                                                    time.monotonic())))
            started = time.monotonic()
            late.start()
            time.sleep(0.2)  # the third garbage connection is parked by now
            good.stdin.write("go\n")
            good.stdin.flush()
            out, _ = good.communicate(timeout=60)
            good_done = float(out.split()[-1])
            late.join(60)
        finally:
            if good.poll() is None:
                good.kill()
        reply, late_done = answered[0]
        assert reply.startswith(wire.MAGIC)  # it is still answered, only later
        assert late_done - started >= 2.0  # one token at 0.25 per second: about 4 s
        assert good_done < late_done  # the other process did not queue behind the garbage
        # asked by another process: this one is over its budget (it would wait for a token)
        shown = subprocess.run([sys.executable, "-m", "pipeit", "status", "--socket", str(d.socket_path), "--json"],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
        requests = json.loads(shown.stdout)["requests"]
        assert requests["rejected"] == 3 and requests["throttled"] >= 1
    assert d.proc.returncode == 0, d.log()
    assert leftovers(d.proc.pid) == []


def test_out_of_descriptors_a_client_is_told_and_the_daemon_does_not_spin(tmp_path):
    """accept() failing with EMFILE left the connection queued, so select() reported it again at once:
    a loop at 100 % CPU, nothing logged, and a client waiting unanswered."""
    import psutil

    from pipeit.client import Client

    folder, model, times = daemon_files(tmp_path, PLATFORM)
    d = serving(model, times, PLATFORM, folder, "--no-replan")
    with d:
        daemon = psutil.Process(d.proc.pid)
        limit = daemon.num_fds() + 6
        daemon.rlimit(psutil.RLIMIT_NOFILE, (limit, limit))
        held, refusal = [], b""
        try:
            for _ in range(40):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(d.socket_path))
                held.append(sock)
                sock.settimeout(0.3)  # a connection served says nothing first; a refused one is told at once
                try:
                    refusal = sock.recv(4096)
                except socket.timeout:
                    continue
                break
            assert b"unavailable" in refusal and b"no file descriptor left" in refusal, refusal
            before = sum(daemon.cpu_times()[:2])
            time.sleep(1.0)
            assert sum(daemon.cpu_times()[:2]) - before < 0.5  # was a whole core
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while daemon.num_fds() >= limit - 1 and time.monotonic() < deadline:
            time.sleep(0.1)  # the daemon notices the closed connections and lets their descriptors go
        with Client(d.socket_path) as client:
            assert client.status()["requests"] is not None  # served again once descriptors are free
    assert d.proc.returncode == 0, d.log()
    assert "cannot accept clients: Too many open files" in d.log()
    assert leftovers(d.proc.pid) == []


@pytest.mark.parametrize("option", [["--reject-rate", "-1"], ["--reject-burst", "0"]])
def test_bad_reject_budget_is_one_line_and_exit_2(tmp_path, option):
    folder, model, times = daemon_files(tmp_path, PLATFORM)
    done = subprocess.run([sys.executable, "-m", "pipeit", "serve", "--model", str(model), "--platform", PLATFORM,
                           "--times", str(times), "--socket", str(folder / "d.sock"), *option],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--reject-rate must be >= 0 and --reject-burst >= 1" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
