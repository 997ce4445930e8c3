"""Where one request's time goes: timestamps along its path through the client, the socket and the daemon.

    .venv/bin/python tools/daemon_trace.py --model mobilenet_v1 --frames 300 [--plan PLAN.json] \
        [--transport inline|shm|both]

One request at a time (as in ``tools/daemon_bench.py`` (a)), for each
transport (default both: tensor bytes in the socket, and the shared-memory
frame area) and in-process, in alternating blocks of ``--block`` frames. The daemon runs
in its own process, started through this file, which wraps a few of its
functions with ``time.perf_counter_ns()`` stamps (CLOCK_MONOTONIC: one clock
for every process on the machine) and writes them out when it stops; the
daemon's own code carries no tracing. The client side is stamped here.
Per request, in order:

    c_send      client: before encoding the request
    c_sent      client: sendmsg returned (the whole frame is in the kernel)
    d_head      daemon: prefix and header read and decoded
    d_checked   daemon: the header is checked against the model, the request admitted
    d_turn      daemon: its turn at the first ring (the gate)             inline only
    d_slot      daemon: a ring slot is free (fill begins)                 inline only
    d_filled    daemon: the body is in the ring slot                      inline only
    d_given     daemon: the frame is handed to the pipeline (shm: the area's slot itself, read in place)
    d_done      daemon: the last stage's result reached the reply callback
    d_replied   daemon: the reply was handed to the socket
    c_back      client: the reply is read and decoded

Prints the median of each step (ms) per transport and of the in-process
``Pipeline.run`` of the same frames; the difference of the totals is the
added latency. CPU per request: the daemon's threads (schedstat, exact) and
this process's (the client, or the in-process caller and dispatcher),
per side over its blocks. The host's load shows in every step: compare
steps and sides of one run, not runs.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _daemon(stamps_path: str, argv: List[str]) -> int:
    """Run ``pipeit <argv>`` with stamps on the request path, written to ``stamps_path`` at exit."""
    import threading

    from pipeit.cli import main
    from pipeit.daemon import protocol as wire
    from pipeit.daemon import connection, server
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

    conn_submit = connection.Connection._submit

    def traced_conn_submit(self, header, request):
        rows.get(header.id, {})["d_checked"] = now()
        return conn_submit(self, header, request)

    conn_submit_slot = connection.Connection._submit_slot

    def traced_conn_submit_slot(self, request):
        rows.get(request.request_id, {})["d_checked"] = now()
        return conn_submit_slot(self, request)

    engine_submit_into = server.Engine.submit_into

    def traced_engine_submit_into(self, fill, on_done=None):
        rows.get(getattr(local, "rid", -1), {})["d_turn"] = now()
        return engine_submit_into(self, fill, on_done)

    engine_submit_area = server.Engine.submit_area

    def traced_engine_submit_area(self, area, slot, on_done=None):
        future = engine_submit_area(self, area, slot, on_done)
        if future is not None:  # handed over in place (None: the daemon copies the slot, traced as inline)
            rows.get(getattr(local, "rid", -1), {})["d_given"] = now()
        return future

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
    connection.Connection._submit = traced_conn_submit
    connection.Connection._submit_slot = traced_conn_submit_slot
    server.Engine.submit_into = traced_engine_submit_into
    server.Engine.submit_area = traced_engine_submit_area
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
    parser.add_argument("--frames", type=int, default=300, help="frames per side")
    parser.add_argument("--block", type=int, default=25, help="frames per alternating block")
    parser.add_argument("--transport", choices=("inline", "shm", "both"), default="both")
    args = parser.parse_args()
    if args.frames < 10 or args.block < 1:
        parser.error("--frames must be >= 10 and --block >= 1")
    transports = ["inline", "shm"] if args.transport == "both" else [args.transport]

    from pipeit.client import Client
    from pipeit.executor.pipeline import Pipeline
    from pipeit.plan import load_plan
    from tools.daemon_bench import _model, _plan, _rotate

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
    client_rows: Dict[str, Dict[int, Dict[str, int]]] = {t: {} for t in transports}
    inproc: List[float] = []
    cpu_daemon: Dict[str, float] = {t: 0.0 for t in transports}
    cpu_here: Dict[str, float] = {side: 0.0 for side in ["in", *transports]}
    now = time.perf_counter_ns
    sides = ["in", *transports]
    with d, Pipeline(plan, model) as pipe:
        name = pipe.inputs[0].name
        frames = [{name: rng.standard_normal(pipe.inputs[0].shape).astype(pipe.inputs[0].dtype)} for _ in range(8)]
        clients = {}
        try:
            for k, t in enumerate(transports):
                c = Client(sock, transport=t)
                c._ids = itertools.count(1 + k * 10**9)  # noqa: SLF001 -- ids unique across clients: one stamp table
                clients[t] = c
            outs = {t: None for t in transports}
            for i in range(20):  # warm up every side
                for t, c in clients.items():
                    outs[t] = c.infer(frames[i % 8], out=outs[t])
                pipe.run(frames[i % 8])
            for t, c in clients.items():
                if c.transport_in_use != t:
                    raise SystemExit(f"the {t} client uses {c.transport_in_use}: {c.shm_refused}")
            blocks = max(1, args.frames // args.block)
            for b in range(blocks):
                for side in _rotate(sides, b):
                    d0 = _cpu_ns(d.proc.pid)
                    h0 = time.process_time_ns()
                    for i in range(args.block):
                        frame = frames[(b * args.block + i) % 8]
                        if side == "in":
                            t = now()
                            pipe.run(frame)
                            inproc.append((now() - t) / 1e6)
                            continue
                        c = clients[side]
                        t0 = now()
                        rid = c.send("infer", frame)
                        t1 = now()
                        outs[side] = c.receive(rid, outs[side]).tensors
                        client_rows[side][rid] = {"c_send": t0, "c_sent": t1, "c_back": now()}
                    cpu_here[side] += (time.process_time_ns() - h0) / 1e6
                    if side != "in":
                        d1 = _cpu_ns(d.proc.pid)
                        cpu_daemon[side] += sum(d1[tid] - d0.get(tid, 0) for tid in d1) / 1e6
        finally:
            for c in clients.values():
                c.close()
    deadline = time.monotonic() + 10
    while not stamps_path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    daemon_rows = {int(k): v for k, v in json.loads(stamps_path.read_text()).items()}
    inline_steps = ["c_send", "c_sent", "d_head", "d_checked", "d_turn", "d_slot", "d_filled", "d_given", "d_done",
                    "d_replied", "c_back"]
    # an shm frame is read in place by stage 0: no turn at the gate, no ring slot, no copy
    shm_steps = [s for s in inline_steps if s not in ("d_turn", "d_slot", "d_filled")]
    table: Dict[str, Dict[str, List[float]]] = {}
    totals: Dict[str, List[float]] = {}
    for t in transports:
        steps = shm_steps if t == "shm" else inline_steps
        deltas: Dict[str, List[float]] = {f"{a} -> {b}": [] for a, b in zip(steps, steps[1:])}
        totals[t] = []
        for rid, crow in client_rows[t].items():
            row = {**daemon_rows.get(rid, {}), **crow}
            if not all(s in row for s in steps):
                continue
            for a, b in zip(steps, steps[1:]):
                deltas[f"{a} -> {b}"].append((row[b] - row[a]) / 1e6)
            totals[t].append((row["c_back"] - row["c_send"]) / 1e6)
        table[t] = deltas
    n = {t: len(client_rows[t]) for t in transports}
    print(f"{', '.join(f'{len(totals[t])} {t}' for t in transports)} requests traced, one at a time, "
          f"{len(inproc)} in-process, alternating blocks of {args.block}; plan {[list(s.layers) for s in plan.stages]}")
    print("| step | " + " | ".join(f"{t} median ms | {t} p90 ms" for t in transports) + " |")
    print("| --- | " + " | ".join("--- | ---" for _ in transports) + " |")

    def cells(values: List[float]) -> str:
        return f"{np.median(values):.3f} | {np.percentile(values, 90):.3f}" if values else "n/a | n/a"

    def path_order(key: str) -> Tuple[int, int]:
        a, b = key.split(" -> ")
        return inline_steps.index(a), inline_steps.index(b)

    keys = sorted({k for t in transports for k in table[t]}, key=path_order)
    for key in keys:  # every transport's steps, in path order, once each
        print(f"| {key} | " + " | ".join(cells(table[t].get(key, [])) for t in transports) + " |")
    print("| socket round trip (c_send -> c_back) | " + " | ".join(cells(totals[t]) for t in transports) + " |")
    print(f"| in-process Pipeline.run, same frames | {cells(inproc)} |" + " |" * (2 * len(transports) - 2))
    for t in transports:
        added = np.median(totals[t]) - np.median(inproc) if totals[t] else float("nan")
        print(f"{t}: added at p50 {added:.3f} ms; CPU per request: daemon {cpu_daemon[t] / max(1, n[t]):.3f} ms "
              f"(all its threads, not its workers), client {cpu_here[t] / max(1, n[t]):.3f} ms")
    print(f"in-process: CPU per request (caller + dispatcher) {cpu_here['in'] / max(1, len(inproc)):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
