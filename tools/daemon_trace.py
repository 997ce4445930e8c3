"""Where one request's time goes: timestamps along its path through the client, the socket and the daemon.

    .venv/bin/python tools/daemon_trace.py --model mobilenet_v1 --frames 300 [--plan PLAN.json]

One request at a time (as in ``tools/daemon_bench.py`` (a)). The daemon runs
in its own process, started through this file, which wraps a few of its
functions with ``time.perf_counter_ns()`` stamps (CLOCK_MONOTONIC: one clock
for every process on the machine) and writes them out when it stops; the
daemon's own code carries no tracing. The client side is stamped here.
Per request, in order:

    c_send      client: before encoding the request
    c_sent      client: sendmsg returned (the whole frame is in the kernel)
    d_head      daemon: prefix and header read and decoded
    d_checked   daemon: the header is checked against the model, the request admitted
    d_turn      daemon: its turn at the first ring (the gate)
    d_slot      daemon: a ring slot is free (fill begins)
    d_filled    daemon: the body is in the slot
    d_given     daemon: the frame is handed to the stage-0 worker
    d_done      daemon: the last stage's result reached the reply callback
    d_replied   daemon: the reply was handed to the socket
    c_back      client: the reply is read and decoded

Prints the median of each step (ms) and of the in-process ``Pipeline.run``
of the same frames; the difference of the totals is the added latency. The
host's load shows in every step: compare steps, not runs.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _daemon(stamps_path: str, argv: List[str]) -> int:
    """Run ``pipeit <argv>`` with stamps on the request path, written to ``stamps_path`` at exit."""
    import threading

    from pipeit.cli import main
    from pipeit.daemon import protocol as wire
    from pipeit.daemon import server
    from pipeit.executor.pipeline import Pipeline

    now = time.perf_counter_ns
    rows: Dict[int, Dict[str, int]] = {}
    local = threading.local()
    read_head = wire.read_head

    def traced_read_head(*args, **kwargs):
        header = read_head(*args, **kwargs)
        if header is not None and header.op == "infer" and header.id is not None:
            rows[header.id] = {"d_head": now()}
            local.rid = header.id
        return header

    conn_submit = server._Connection._submit

    def traced_conn_submit(self, header, request):
        rows.get(header.id, {})["d_checked"] = now()
        return conn_submit(self, header, request)

    engine_submit_into = server.Engine.submit_into

    def traced_engine_submit_into(self, fill, on_done=None):
        rows.get(getattr(local, "rid", -1), {})["d_turn"] = now()
        return engine_submit_into(self, fill, on_done)

    submit_into = Pipeline.submit_into

    def traced_submit_into(self, fill):
        row = rows.get(getattr(local, "rid", -1), {})

        def wrapped(views):
            row["d_slot"] = now()
            fill(views)
            row["d_filled"] = now()

        future = submit_into(self, wrapped)
        row["d_given"] = now()
        return future

    finish = server.Server._finish

    def traced_finish(self, request, future, error):
        row = rows.get(request.request_id, {})
        row["d_done"] = now()
        finish(self, request, future, error)
        row["d_replied"] = now()

    wire.read_head = traced_read_head
    server._Connection._submit = traced_conn_submit
    server.Engine.submit_into = traced_engine_submit_into
    Pipeline.submit_into = traced_submit_into
    server.Server._finish = traced_finish

    def dump() -> None:
        Path(stamps_path).write_text(json.dumps({str(k): v for k, v in rows.items()}))

    atexit.register(dump)
    return main(argv)


def _traced_daemon_class():
    import subprocess

    from tests.daemon_helpers import ROOT, Daemon

    class TracedDaemon(Daemon):
        """The tests' daemon launcher, with this file's traced entry point as the command."""

        def __init__(self, socket_path: Path, command: List[str]):  # noqa: D107 -- no super(): another command
            self.socket_path = socket_path
            self.log_path = socket_path.with_suffix(".log")
            self._log = open(self.log_path, "wb")
            self.proc = subprocess.Popen(command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    return TracedDaemon


def _cpu_ns(pid: int) -> Dict[int, int]:
    """CPU time of each thread of ``pid`` so far, ns (``/proc/PID/task/TID/schedstat``: exact, not ticks)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--daemon":
        return _daemon(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v1")
    parser.add_argument("--platform", default="emulate:big=0@1.0,little=1@1.0")
    parser.add_argument("--plan", help="a plan file (default: profile here and plan with the pipeit strategy)")
    parser.add_argument("--frames", type=int, default=300)
    args = parser.parse_args()
    if args.frames < 10:
        parser.error("--frames must be >= 10")

    from pipeit.client import Client
    from pipeit.executor.pipeline import Pipeline
    from pipeit.plan import load_plan
    from tools.daemon_bench import _model, _plan

    folder = Path(tempfile.mkdtemp(prefix="pipeit-trace-"))
    os.chmod(folder, 0o700)
    model = _model(args.model, folder)
    plan_path = Path(args.plan) if args.plan else _plan(model, args.platform, "pipeit", folder)
    plan = load_plan(plan_path)
    stamps_path = folder / "stamps.json"
    sock = folder / "trace.sock"
    serve = ["serve", "--socket", str(sock), "--model", str(model), "--platform", args.platform, "--plan",
             str(plan_path), "--no-replan", "--per-client", "2"]
    d = _traced_daemon_class()(sock, [sys.executable, str(Path(__file__).resolve()), "--daemon", str(stamps_path), *serve])
    rng = np.random.default_rng(0)
    client_rows: Dict[int, Dict[str, int]] = {}
    inproc: List[float] = []
    now = time.perf_counter_ns
    with d, Pipeline(plan, model) as pipe:
        name = pipe.inputs[0].name
        frames = [{name: rng.standard_normal(pipe.inputs[0].shape).astype(pipe.inputs[0].dtype)} for _ in range(8)]
        with Client(sock) as c:
            for i in range(20):  # warm up both
                c.infer(frames[i % 8])
                pipe.run(frames[i % 8])
            out = None
            cpu0 = _cpu_ns(d.proc.pid)
            for i in range(args.frames):
                frame = frames[i % 8]
                t0 = now()
                rid = c.send("infer", frame)
                t1 = now()
                out = c.receive(rid, out).tensors
                client_rows[rid] = {"c_send": t0, "c_sent": t1, "c_back": now()}
                t = now()
                pipe.run(frame)
                inproc.append((now() - t) / 1e6)
            cpu1 = _cpu_ns(d.proc.pid)
    deadline = time.monotonic() + 10
    while not stamps_path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    daemon_rows = {int(k): v for k, v in json.loads(stamps_path.read_text()).items()}
    steps = ["c_send", "c_sent", "d_head", "d_checked", "d_turn", "d_slot", "d_filled", "d_given", "d_done", "d_replied", "c_back"]
    deltas: Dict[str, List[float]] = {f"{a} -> {b}": [] for a, b in zip(steps, steps[1:])}
    totals = []
    for rid, crow in client_rows.items():
        row = {**daemon_rows.get(rid, {}), **crow}
        if not all(s in row for s in steps):
            continue
        for a, b in zip(steps, steps[1:]):
            deltas[f"{a} -> {b}"].append((row[b] - row[a]) / 1e6)
        totals.append((row["c_back"] - row["c_send"]) / 1e6)
    print(f"{len(totals)} requests traced, one at a time; plan {[list(s.layers) for s in plan.stages]}")
    print("| step | median ms | p90 ms |")
    print("| --- | --- | --- |")
    for key, values in deltas.items():
        print(f"| {key} | {np.median(values):.3f} | {np.percentile(values, 90):.3f} |")
    print(f"| socket round trip (c_send -> c_back) | {np.median(totals):.3f} | {np.percentile(totals, 90):.3f} |")
    print(f"| in-process Pipeline.run, same frames | {np.median(inproc):.3f} | {np.percentile(inproc, 90):.3f} |")
    print(f"added at p50: {np.median(totals) - np.median(inproc):.3f} ms")
    per = {tid: (cpu1[tid] - cpu0.get(tid, 0)) / 1e6 / args.frames for tid in cpu1}
    busy = sorted(((v, tid) for tid, v in per.items() if v > 0.001), reverse=True)
    print(f"daemon CPU per request (all its threads, not its workers): {sum(per.values()):.3f} ms; "
          "by thread: " + ", ".join(f"{tid}: {v:.3f}" for v, tid in busy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
