#!/usr/bin/env python3
"""CPU cost of the executor itself: coordinator CPU per frame and each worker's busy share.

Runs one or more plan shapes of a zoo model (or a .tflite file) on this host (CPU time is robust
on a busy host where wall fps is not), each ``--rounds`` times interleaved,
and prints one line per run (``--json``: one document)::

    python tools/executor_load.py --model mobilenet_v2 --frames 300 --rounds 3

Shapes: ``replicas`` (one stage, a worker per CPU), ``pipeline`` (two stages
cut at the middle layer, a CPU each), ``single`` (one worker on one CPU), and
two with no executor at all (:mod:`pipeit.executor.bare`): ``bare`` (one
pinned single-thread interpreter per CPU, all at once, nothing between them)
and ``solo`` (the same on each CPU in turn, the others idle: the ideal as
``pipeit bench`` defines it, measured like the rest). Their ratios split the
efficiency loss: ``bare / solo`` is what running on every core at once costs
(caches, memory bandwidth; no executor can win it back), ``replicas / bare``
what the executor costs::

    python tools/executor_load.py --model squeezenet --shapes solo,bare,replicas --rounds 5

``--feed`` says who feeds the executor's frames: ``submit`` (this thread's
``submit``/``result`` loop, a wake-up here per frame), ``stream`` (the
dispatcher feeds them itself, ``Pipeline.stream``, as ``pipeit bench``
does), or both, interleaved, each shape then reported as ``SHAPE[FEED]``::

    python tools/executor_load.py --shapes solo,bare,replicas --feed submit,stream --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if os.environ.get("PIPEIT_IMPORT_ROOT"):  # compare another checkout's executor (same command)
    sys.path.insert(0, os.environ["PIPEIT_IMPORT_ROOT"])

SHAPES = ("replicas", "pipeline", "single", "bare", "solo")
BARE = ("bare", "solo")
FEEDS = ("submit", "stream")


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
    parser.add_argument("--model", default="mobilenet_v2", help="zoo model name or a .tflite path")
    parser.add_argument("--shapes", default="replicas,pipeline", help=f"comma list of {', '.join(SHAPES)}")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=0, help="frames in flight (0: one per worker, as bench)")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="length of a bare/solo run (0: about as long as the replicas run of --frames)")
    parser.add_argument("--feed", default="stream", help="comma list of submit, stream (who feeds the frames)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    feeds = [f for f in args.feed.split(",") if f]
    if (not shapes or any(s not in SHAPES for s in shapes) or args.frames < 1 or args.rounds < 1
            or not feeds or any(f not in FEEDS for f in feeds)):
        print(f"executor_load: --shapes from {', '.join(SHAPES)}; --feed from {', '.join(FEEDS)}; "
              "--frames, --rounds >= 1", file=sys.stderr)
        return 2
    from pipeit.executor import Pipeline
    from pipeit.executor.bare import run_bare
    from pipeit.executor.load import measure_load, summary
    from pipeit.executor.pipeline import model_io
    from pipeit.frames import random_frames
    from tools.daemon_bench import _model  # a zoo name or a .tflite path, as the daemon tools take it

    folder = Path(tempfile.mkdtemp(prefix="pipeit-load-"))
    model = _model(args.model, folder)  # a zoo model is written into folder; a .tflite path is used where it is
    inputs, _ = model_io(model)
    distinct = random_frames(inputs, 8, 0)
    frames = [distinct[i % 8] for i in range(args.frames)]
    pipes = {}
    labels = {s: ([s] if s in BARE or len(feeds) == 1 else [f"{s}[{f}]" for f in feeds]) for s in shapes}
    results = {label: [] for s in shapes if s not in BARE for label in labels[s]}
    bare_runs = {s: [] for s in shapes if s in BARE}
    cpus = sorted(os.sched_getaffinity(0))
    cpus = [cpus[0], cpus[-1]] if len(cpus) > 1 else cpus
    seconds = args.seconds
    try:
        for shape in shapes:
            if shape in BARE:
                continue
            plan = make_plan(model, shape)
            pipes[shape] = Pipeline(plan, model).start()
            workers = sum(len(s.workers) for s in plan.stages)
            measure_load(pipes[shape], frames[:30], args.window or workers)  # warm-up
        for r in range(args.rounds):
            for shape in (shapes if r % 2 == 0 else list(reversed(shapes))):
                if shape in BARE:
                    if not seconds:  # as long as a replicas run of --frames, from a short solo run
                        probe = run_bare(model, cpus[:1], 0.5)
                        seconds = min(10.0, max(1.0, args.frames / (probe.fps * len(cpus))))
                    run = _bare_round(model, shape, cpus, seconds)
                    bare_runs[shape].append(run)
                    if not args.json:
                        print(f"{shape} round {r + 1}: {run['fps']:.1f} fps; CPU ms/frame "
                              + " ".join(f"cpu{c}={v:.3f}" for c, v in run["cpu_ms_per_frame"].items()), flush=True)
                    continue
                plan = pipes[shape].plan
                window = args.window or sum(len(s.workers) for s in plan.stages)
                order = range(len(feeds)) if r % 2 == 0 else range(len(feeds) - 1, -1, -1)
                for i in order:
                    label, feed = labels[shape][i], feeds[i]
                    load = measure_load(pipes[shape], frames, window, feed=feed)
                    results[label].append(load)
                    if not args.json:
                        print(summary(load, f"{label} round {r + 1}"), flush=True)
    finally:
        for pipe in pipes.values():
            pipe.close()
        shutil.rmtree(folder, ignore_errors=True)
    doc = {}
    for shape, runs in bare_runs.items():
        doc[shape] = {
            "fps_median": statistics.median(r["fps"] for r in runs),
            "cpu_ms_per_frame_median": {
                c: statistics.median(r["cpu_ms_per_frame"][c] for r in runs) for c in runs[0]["cpu_ms_per_frame"]
            },
            "runs": runs,
        }
    for shape, loads in results.items():
        if shape in BARE:
            continue
        doc[shape] = {
            "coordinator_ms_per_frame_median": statistics.median(l.coordinator_ms_per_frame for l in loads),
            "fps_median": statistics.median(l.fps for l in loads),
            "worker_busy_median": {
                f"{s}.{w}": statistics.median(dict(l.worker_busy).get((s, w), 0.0) for l in loads)
                for (s, w), _ in loads[0].worker_busy
            },
            "runs": [l.to_json() for l in loads],
        }
    ratios = _ratios(doc)
    if args.json:
        json.dump({"model": args.model, "frames": args.frames, "shapes": doc, "ratios": ratios}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for shape, row in doc.items():
            if shape in BARE:
                per = " ".join(f"cpu{c}={v:.3f}" for c, v in row["cpu_ms_per_frame_median"].items())
                print(f"{shape}: median {row['fps_median']:.1f} fps, CPU ms/frame {per}")
                continue
            busy = " ".join(f"{k}={v:.2f}" for k, v in row["worker_busy_median"].items())
            print(f"{shape}: median coordinator {row['coordinator_ms_per_frame_median']:.3f} ms CPU/frame, "
                  f"{row['fps_median']:.1f} fps, busy {busy}")
        for name, value in ratios.items():
            print(f"{name}: {value:.3f}")
    return 0


def _bare_round(model: Path, shape: str, cpus, seconds: float) -> dict:
    """One bare round: all CPUs at once (``bare``), or each alone in turn and summed (``solo``)."""
    from pipeit.executor.bare import run_bare

    if shape == "bare":
        run = run_bare(model, cpus, seconds)
        return {"fps": run.fps, "cpu_ms_per_frame": {str(c): v for c, v in zip(run.cpus, run.cpu_ms_per_frame)}}
    alone = [run_bare(model, [c], seconds) for c in cpus]
    return {"fps": sum(r.fps for r in alone),
            "cpu_ms_per_frame": {str(r.cpus[0]): r.cpu_ms_per_frame[0] for r in alone}}


def _ratios(doc: dict) -> dict:
    """Median-of-rounds ratios that split the loss: contention (bare/solo) and executor (replicas/bare)."""
    out = {}
    fps = {shape: row.get("fps_median") for shape, row in doc.items()}
    if fps.get("solo") and fps.get("bare"):
        out["bare / solo (cost of every core busy at once)"] = fps["bare"] / fps["solo"]
    for name in [n for n in fps if n.startswith("replicas")]:
        if fps.get("bare") and fps.get(name):
            out[f"{name} / bare (cost of the executor)"] = fps[name] / fps["bare"]
        if fps.get("solo") and fps.get(name):
            out[f"{name} / solo (efficiency against the ideal)"] = fps[name] / fps["solo"]
    return out


if __name__ == "__main__":
    sys.exit(main())
