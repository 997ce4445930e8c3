#!/usr/bin/env python3
"""Soak the executor: many frames through a 3-stage pipeline, watching memory and outputs.

RSS (the main process plus every worker) is sampled after the warm-up and
at the end; the run fails (exit 1) if it grew by 10 % or more, if any output
differs from the whole model's, or if a frame is lost.

    python tools/soak.py [--model mobilenet_v2|FILE.tflite] [--frames 10000] [--warmup 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GROWTH_LIMIT = 0.10


def _rss_mb(pids) -> float:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def _three_stage_plan(model: Path):
    """Three stages of about equal MACs, on CPUs a, b, a (a 2-core host shares one core)."""
    from cores.model import Cluster, Platform
    from pipeit.graph import load_graph
    from pipeit.plan import Plan, StageSpec, WorkerSpec, file_sha256

    graph = load_graph(model)
    macs = [layer.descriptor.macs for layer in graph.layers]
    total, acc, cuts = sum(macs), 0, []
    for i, m in enumerate(macs):
        acc += m
        if len(cuts) < 2 and acc >= total * (len(cuts) + 1) / 3 and 0 < i + 1 < len(macs):
            cuts.append(i + 1)
    cpus = sorted(os.sched_getaffinity(0))
    a, b = cpus[0], cpus[-1]
    platform = Platform((Cluster("a", "host", (a,)),) + ((Cluster("b", "host", (b,)),) if b != a else ()),
                        source="soak")
    names = ["a", "b" if b != a else "a", "a"]
    bounds = [0] + cuts + [len(macs)]
    stages = tuple(
        StageSpec((bounds[i], bounds[i + 1]), (WorkerSpec(names[i], (a if names[i] == "a" else b,), 1, 0.0),), 0.0)
        for i in range(3)
    )
    return Plan(model.name, file_sha256(model), platform, "soak", stages, 0.0, 0.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2", help="a zoo name or a .tflite file")
    parser.add_argument("--frames", type=int, default=10000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.warmup < 0:
        print("soak: --frames must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2

    import numpy as np

    from pipeit.errors import PipeitError
    from pipeit.executor.pipeline import Pipeline, model_io
    from pipeit.runtime import make_interpreter

    with tempfile.TemporaryDirectory(prefix="pipeit-soak-") as tmp:
        try:
            model = Path(args.model)
            if not model.is_file():
                from pipeit import zoo

                model = Path(tmp) / f"{args.model}.tflite"
                model.write_bytes(zoo.build(args.model))
            plan = _three_stage_plan(model)
            inputs, _ = model_io(model)
            rng = np.random.default_rng(0)
            frames = [{t.name: rng.uniform(-1, 1, size=t.shape).astype(t.dtype) for t in inputs} for _ in range(4)]
            ref_interp = make_interpreter(model)
            refs = []
            for frame in frames:
                for d in ref_interp.get_input_details():
                    ref_interp.set_tensor(d["index"], frame[d["name"]])
                ref_interp.invoke()
                refs.append({d["name"]: ref_interp.get_tensor(d["index"]) for d in ref_interp.get_output_details()})
            mismatches = done = 0
            start = time.perf_counter()
            with Pipeline(plan, model) as pipe:
                pids = [os.getpid()] + list(pipe.worker_pids().values())
                rss_warm = None
                for n, out in enumerate(pipe.map(frames[i % 4] for i in range(args.warmup + args.frames))):
                    ref = refs[n % 4]
                    if any(not np.array_equal(out[k], ref[k]) for k in ref):
                        mismatches += 1
                    done += 1
                    if n + 1 == args.warmup or (args.warmup == 0 and n == 0):
                        rss_warm = _rss_mb(pids)
                        pipe.reset_stats()
                rss_end = _rss_mb(pids)
                stats = pipe.stats()
        except PipeitError as err:
            print(f"soak: error: {err}", file=sys.stderr)
            return 2
    growth = (rss_end - rss_warm) / rss_warm
    ok = growth < GROWTH_LIMIT and mismatches == 0 and done == args.warmup + args.frames
    doc = {
        "model": args.model, "cuts": list(plan.cuts), "frames": args.frames, "warmup": args.warmup,
        "wall_s": time.perf_counter() - start, "fps": stats.fps, "restarts": stats.restarts,
        "rss_mb": {"after_warmup": rss_warm, "end": rss_end}, "rss_growth": growth,
        "mismatches": mismatches, "frames_done": done, "ok": ok,
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{done} frames ({args.warmup} warm-up) through stages cut at {list(plan.cuts)}: "
              f"{stats.fps:.1f} fps, {mismatches} mismatching outputs")
        print(f"RSS after warm-up {rss_warm:.1f} MB, at the end {rss_end:.1f} MB: "
              f"{growth * 100:+.2f} % ({'ok' if growth < GROWTH_LIMIT else 'TOO MUCH'}, limit {GROWTH_LIMIT * 100:.0f} %)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
