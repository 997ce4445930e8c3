"""Daemon figures: many concurrent clients plus a garbage sender, checked outputs, fps against
`Pipeline` in-process with the same plan, and the socket round trip's added latency.

    .venv/bin/python tools/daemon_bench.py --model mobilenet_v1 --platform emulate:big=0@1.0,little=1@1.0 \
        --clients 8 --requests 500 --json

``--model`` is a zoo name or a .tflite path. The daemon runs as a real subprocess
(``python -m pipeit serve``) on a plan made here with ``--strategy``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.daemon_helpers import Daemon  # noqa: E402  (the same launcher the tests use)


def _model(name: str, folder: Path) -> Path:
    if name.endswith(".tflite"):
        return Path(name)
    from pipeit.zoo import build

    path = folder / f"{name}.tflite"
    path.write_bytes(build(name))
    return path


def _plan(model: Path, platform_spec: str, strategy: str, folder: Path) -> Path:
    """A plan from a quick profile on this host (the daemon is then given the plan file)."""
    from cores.platform import load_platform
    from pipeit.daemon.state import PlanSource, obtain_plan

    os.environ.setdefault("PIPEIT_STATE_DIR", str(folder / "state"))
    planned = obtain_plan(model, load_platform(platform_spec), PlanSource(strategy=strategy, profile_repeats=15))
    path = folder / "plan.json"
    planned.plan.save(path)
    return path


def _garbage(sock_path: Path, stop: threading.Event, counter: list) -> None:
    rng = np.random.default_rng(1)
    while not stop.is_set():
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(str(sock_path))
            s.sendall(rng.bytes(int(rng.integers(1, 4096))))
            s.settimeout(2)
            s.recv(4096)
        except OSError:
            pass
        finally:
            s.close()
        counter[0] += 1
        time.sleep(0.01)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v1")
    parser.add_argument("--platform", default="emulate:big=0@1.0,little=1@1.0")
    parser.add_argument("--strategy", default="pipeit")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--window", type=int, default=2, help="frames each client keeps in flight")
    parser.add_argument("--check-every", type=int, default=1, help="compare every k-th output with the reference")
    parser.add_argument("--latency-frames", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from pipeit.client import Client
    from pipeit.executor.pipeline import Pipeline
    from pipeit.plan import load_plan
    from pipeit.runtime import make_interpreter

    folder = Path(tempfile.mkdtemp(prefix="pipeit-bench-"))
    os.chmod(folder, 0o700)
    model = _model(args.model, folder)
    plan_path = _plan(model, args.platform, args.strategy, folder)
    plan = load_plan(plan_path)
    interp = make_interpreter(model, num_threads=1)
    detail = interp.get_input_details()[0]
    out_index = interp.get_output_details()[0]["index"]
    rng = np.random.default_rng(0)
    frames = [rng.standard_normal(detail["shape"]).astype(detail["dtype"]) for _ in range(16)]
    refs = []
    for f in frames:
        interp.set_tensor(detail["index"], f)
        interp.invoke()
        refs.append(interp.get_tensor(out_index).copy())
    name = detail["name"]
    total = args.clients * args.requests
    doc = {"model": str(model), "platform": args.platform, "plan": plan.strategy,
           "stages": [list(s.layers) for s in plan.stages], "clients": args.clients, "requests": args.requests}

    # 1. in-process reference: the same plan through Pipeline.map
    with Pipeline(plan, model) as p:
        list(p.map({name: frames[i % 16]} for i in range(20)))
        t = time.perf_counter()
        list(p.map({name: frames[i % 16]} for i in range(total)))
        doc["inprocess_fps"] = total / (time.perf_counter() - t)
        lat = []
        for i in range(args.latency_frames):
            t = time.perf_counter()
            p.run({name: frames[i % 16]})
            lat.append((time.perf_counter() - t) * 1000)
        doc["inprocess_p50_ms"] = statistics.median(lat)

    # 2. the daemon
    d = Daemon(["--model", str(model), "--platform", args.platform, "--plan", str(plan_path), "--no-replan",
                "--per-client", str(max(args.window, 1))], folder / "bench.sock")
    with d:
        with Client(d.socket_path) as c:
            for i in range(20):
                c.infer({name: frames[i % 16]})
            lat = []
            for i in range(args.latency_frames):
                t = time.perf_counter()
                c.infer({name: frames[i % 16]})
                lat.append((time.perf_counter() - t) * 1000)
        doc["socket_p50_ms"] = statistics.median(lat)
        doc["added_p50_ms"] = doc["socket_p50_ms"] - doc["inprocess_p50_ms"]
        results = {}
        wrong, errors = [], []
        stop = threading.Event()
        garbage = [0]

        def client(k):
            try:
                with Client(d.socket_path) as c:
                    got = []
                    order = [(k * 7 + i) % 16 for i in range(args.requests)]
                    for i, out in enumerate(c.infer_many(({name: frames[j]} for j in order), window=args.window)):
                        got.append((time.perf_counter(), out))
                        if i % args.check_every == 0 and not np.array_equal(next(iter(out.values())), refs[order[i]]):
                            wrong.append((k, i))
                    results[k] = got
            except Exception as err:  # noqa: BLE001
                errors.append(repr(err))

        g = threading.Thread(target=_garbage, args=(d.socket_path, stop, garbage))
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        t0 = time.perf_counter()
        g.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        stop.set()
        g.join()
        with Client(d.socket_path) as c:
            status = c.status()
    answered = sum(len(v) for v in results.values())
    doc.update({
        "daemon_fps": answered / wall, "answered": answered, "expected": total,
        "wrong_outputs": len(wrong), "client_errors": errors, "garbage_connections": garbage[0],
        "served_by_daemon": status["requests"]["served"] , "rejected_by_daemon": status["requests"]["rejected"],
        "daemon_latency_ms": status["latency_ms"],
    })
    doc["fps_ratio"] = doc["daemon_fps"] / doc["inprocess_fps"]
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for k, v in doc.items():
            print(f"{k}: {v}")
    ok = answered == total and not wrong and not errors
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
