#!/usr/bin/env python3
"""Per-hop cost of moving one tensor between two pinned processes, as the executor does it.

One hop: the producer copies the tensor into a shared-memory ring slot and
sends a small notification tuple over a Pipe; the consumer copies the
tensor out of the slot into its own memory and answers with a small tuple.
The time of that round trip (two copies, two notifications) is reported as
the hop cost; a ``multiprocessing.Queue`` round trip of the same array
(pickled both ways) is shown for comparison. Producer and consumer are
pinned to different CPUs when the host has two.

    python tools/transfer_bench.py [--sizes 4096,819200,...] [--iters N] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeit.executor.hop_timing import time_hops  # noqa: E402
from pipeit.executor.worker import pin_process  # noqa: E402

DEFAULT_SIZES = (4 << 10, 64 << 10, 256 << 10, 800 << 10, 1 << 20, 4 << 20)
TARGET_BYTES, TARGET_MS = 800 << 10, 0.3


def _queue_consumer(cpu: int, q_in, q_out) -> None:
    pin_process((cpu,))
    while True:
        item = q_in.get()
        if item is None:
            break
        q_out.put(item)


def measure_queue(nbytes: int, iters: int, cpus) -> float:
    import numpy as np

    ctx = mp.get_context("spawn")
    q_in, q_out = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_queue_consumer, args=(cpus[1], q_in, q_out), daemon=True)
    proc.start()
    data = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    q_in.put(data)
    q_out.get()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        q_in.put(data)
        q_out.get()
        times.append(time.perf_counter() - start)
    q_in.put(None)
    proc.join(5)
    if proc.is_alive():
        proc.kill()
    return statistics.median(times) * 1000.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in DEFAULT_SIZES), help="tensor sizes in bytes")
    parser.add_argument("--iters", type=int, default=300, help="round trips per size (median reported)")
    parser.add_argument("--no-queue", action="store_true", help="skip the multiprocessing.Queue comparison")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        print("transfer_bench: --sizes must be integers (bytes)", file=sys.stderr)
        return 2
    if not sizes or any(s < 4 for s in sizes) or args.iters < 1:
        print("transfer_bench: sizes must be >= 4 bytes and --iters >= 1", file=sys.stderr)
        return 2
    allowed = sorted(os.sched_getaffinity(0))
    cpus = (allowed[0], allowed[-1])
    pin_process((cpus[0],))
    rows = []
    sizes = [nbytes - nbytes % 4 for nbytes in sizes]
    for hop in time_hops(cpus, sizes, repeats=args.iters):
        queue_ms = None if args.no_queue else measure_queue(hop.nbytes, max(20, args.iters // 5), cpus)
        rows.append({"bytes": hop.nbytes, "hop_ms": hop.median_ms, "queue_round_trip_ms": queue_ms})
    target = min(rows, key=lambda r: abs(r["bytes"] - TARGET_BYTES))
    verdict = {
        "bytes": target["bytes"], "hop_ms": target["hop_ms"], "limit_ms": TARGET_MS,
        "ok": target["hop_ms"] <= TARGET_MS,
    }
    # ``points`` makes this document a hop table for the planner (pipeit.transfer.load_hop_model).
    doc = {"source": "tools/transfer_bench.py", "cpus": list(cpus), "iters": args.iters, "rows": rows,
           "points": [[r["bytes"], r["hop_ms"]] for r in rows], "target": verdict}
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from pipeit.cli.output import format_table

        print(format_table(
            ["bytes", "hop ms (shm ring)", "round trip ms (mp.Queue)"],
            [[r["bytes"], r["hop_ms"], "-" if r["queue_round_trip_ms"] is None else r["queue_round_trip_ms"]] for r in rows],
        ))
        print(f"hop cost for {verdict['bytes']} B: {verdict['hop_ms']:.3f} ms "
              f"({'within' if verdict['ok'] else 'OVER'} the {TARGET_MS} ms limit)")
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
