#!/usr/bin/env python3
"""CPU cost of the executor itself: coordinator CPU per frame and each worker's busy share.

Runs one or more plan shapes of a zoo model on this host (CPU time is robust
on a busy host where wall fps is not), each ``--rounds`` times interleaved,
and prints one line per run (``--json``: one document)::

    python tools/executor_load.py --model mobilenet_v2 --frames 300 --rounds 3

Shapes: ``replicas`` (one stage, a worker per CPU), ``pipeline`` (two stages
cut at the middle layer, a CPU each), ``single`` (one worker on one CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if os.environ.get("PIPEIT_IMPORT_ROOT"):  # compare another checkout's executor (same command)
    sys.path.insert(0, os.environ["PIPEIT_IMPORT_ROOT"])

SHAPES = ("replicas", "pipeline", "single")


def make_plan(model: Path, shape: str):
    from cores.model import Cluster, Platform
    from pipeit.graph import load_graph
    from pipeit.plan import Plan, StageSpec, WorkerSpec, file_sha256

    cpus = sorted(os.sched_getaffinity(0))
    a, b = cpus[0], cpus[-1]
    n = len(load_graph(model).layers)
    platform = Platform((Cluster("cpu", "host", (a, b)),), source="auto")
    if shape == "replicas":
        stages = [((0, n), [(a,), (b,)])]
    elif shape == "pipeline":
        stages = [((0, n // 2), [(a,)]), ((n // 2, n), [(b,)])]
    else:
        stages = [((0, n), [(a,)])]
    specs = tuple(
        StageSpec(layers, tuple(WorkerSpec("cpu", c, 1, 1.0) for c in workers), 100.0) for layers, workers in stages
    )
    return Plan(model.name, file_sha256(model), platform, shape, specs, 100.0, 10.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2", help="zoo model name")
    parser.add_argument("--shapes", default="replicas,pipeline", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=0, help="frames in flight (0: one per worker, as bench)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    if not shapes or any(s not in SHAPES for s in shapes) or args.frames < 1 or args.rounds < 1:
        print(f"executor_load: --shapes from {', '.join(SHAPES)}; --frames, --rounds >= 1", file=sys.stderr)
        return 2
    from pipeit import zoo
    from pipeit.executor import Pipeline
    from pipeit.executor.load import measure_load, summary
    from pipeit.executor.pipeline import model_io
    from pipeit.frames import random_frames

    folder = Path(tempfile.mkdtemp(prefix="pipeit-load-"))
    model = folder / f"{args.model}.tflite"
    model.write_bytes(zoo.build(args.model, seed=0))
    inputs, _ = model_io(model)
    distinct = random_frames(inputs, 8, 0)
    frames = [distinct[i % 8] for i in range(args.frames)]
    pipes = {}
    results = {s: [] for s in shapes}
    try:
        for shape in shapes:
            plan = make_plan(model, shape)
            pipes[shape] = Pipeline(plan, model).start()
            workers = sum(len(s.workers) for s in plan.stages)
            measure_load(pipes[shape], frames[:30], args.window or workers)  # warm-up
        for r in range(args.rounds):
            for shape in (shapes if r % 2 == 0 else list(reversed(shapes))):
                plan = pipes[shape].plan
                window = args.window or sum(len(s.workers) for s in plan.stages)
                load = measure_load(pipes[shape], frames, window)
                results[shape].append(load)
                if not args.json:
                    print(summary(load, f"{shape} round {r + 1}"), flush=True)
    finally:
        for pipe in pipes.values():
            pipe.close()
        model.unlink()
        folder.rmdir()
    doc = {}
    for shape, loads in results.items():
        doc[shape] = {
            "coordinator_ms_per_frame_median": statistics.median(l.coordinator_ms_per_frame for l in loads),
            "fps_median": statistics.median(l.fps for l in loads),
            "worker_busy_median": {
                f"{s}.{w}": statistics.median(dict(l.worker_busy).get((s, w), 0.0) for l in loads)
                for (s, w), _ in loads[0].worker_busy
            },
            "runs": [l.to_json() for l in loads],
        }
    if args.json:
        json.dump({"model": args.model, "frames": args.frames, "shapes": doc}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for shape, row in doc.items():
            busy = " ".join(f"{k}={v:.2f}" for k, v in row["worker_busy_median"].items())
            print(f"{shape}: median coordinator {row['coordinator_ms_per_frame_median']:.3f} ms CPU/frame, "
                  f"{row['fps_median']:.1f} fps, busy {busy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
