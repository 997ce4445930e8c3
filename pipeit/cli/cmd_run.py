"""``pipeit run PLAN.json``: stream frames through the plan's pipeline and measure it.

The plan names its model and that model's SHA-256; a model file whose hash
differs is refused (the plan's stage times would be for another model).
``--check`` runs every frame through the whole model too. CPU stages
must give bit-identical outputs; a plan with a GPU stage (its float kernels
sum in another order than TFLite's) passes when every output's relative
error, ``max|out - ref| / max|ref|``, is within ``--tolerance`` (default
1e-4, the fp32 kernels' bound). The figure is reported either way.

GPU stages run the fastest table of ``--gpu-tables`` that meets
``--tolerance`` and calibrate on sampled frames (``pipeit.gpu.calibration``);
their switches are listed with the stage figures.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import Any, Dict, List, Optional

from pipeit.errors import InputError, PlanError

__all__ = ["register", "run", "resolve_model", "load_frames"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="stream frames through a plan's pipeline and measure it",
        description="Start one pinned process per stage worker and stream frames through shared-memory rings.",
    )
    parser.add_argument("plan", metavar="PLAN.json", help="a plan made by `pipeit plan`")
    parser.add_argument("--model", metavar="M", help="the model file (default: the plan's, next to the plan or here)")
    parser.add_argument("--frames", type=int, default=100, metavar="N", help="frames to stream (default 100)")
    parser.add_argument("--input", default="random", metavar="random|FILE.npy|DIR",
                        help="random frames, one .npy (a frame, or N frames stacked), or a folder of .npy frames")
    parser.add_argument("--check", action="store_true",
                        help="compare every output with the whole model's (identical; within --tolerance with a GPU stage)")
    parser.add_argument("--tolerance", type=float, default=1e-4, metavar="T",
                        help="relative error a GPU stage may add (the --check bound and the calibration target; default 1e-4)")
    parser.add_argument("--gpu-tuning", metavar="FILE", help="GPU kernel tuning file (from `pipeit gpu tune`; default: the state directory's, as `pipeit plan`)")
    parser.add_argument("--gpu-tables", metavar="FILE", help="GPU accuracy tables per layer range (pipeit.gpu.calibration)")
    parser.add_argument("--no-calibrate", action="store_true", help="GPU stages never check their output at run time")
    parser.add_argument("--warmup", type=int, default=5, metavar="W", help="frames run first and left out of the figures")
    parser.add_argument("--slots", type=int, default=4, help="ring slots per edge (default 4)")
    parser.add_argument("--inflight", type=int, default=None, metavar="K",
                        help="at most K frames in flight (default: as many as the rings hold; "
                             "a K near the worker count measures latency without queueing)")
    parser.add_argument("--admission", choices=("window", "gated"), default=None,
                        help="how frames enter: 'window' keeps --inflight in flight, 'gated' also holds each frame "
                             "until it can pass every stage without waiting (default: gated for a plan made "
                             "under a latency limit, with one frame in flight per worker; docs/DSE.md)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random frames")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run)


def resolve_model(plan_path: Path, plan_model: str, given: Optional[str]) -> Path:
    """``--model`` if given; else the plan's model name beside the plan, then in the working folder."""
    if given:
        return Path(given)
    candidate = Path(plan_model)
    if candidate.is_absolute():
        return candidate
    for base in (plan_path.parent, Path.cwd()):
        if (base / candidate).is_file():
            return base / candidate
    raise PlanError(f"model {plan_model!r} named by {plan_path} is not beside the plan nor here; pass --model")


def load_frames(source: str, inputs: tuple, seed: int = 0) -> List[Dict[str, Any]]:
    """Distinct input frames (cycled by the caller): random, from a .npy file, or from a folder."""
    import numpy as np

    if source == "random":
        from pipeit.frames import random_frames

        return random_frames(inputs, 4, seed)
    if len(inputs) != 1:
        raise InputError(f"this model has {len(inputs)} inputs; --input FILE/DIR supports single-input models (use random)")
    info = inputs[0]
    path = Path(source)
    if path.is_dir():
        files = sorted(path.glob("*.npy"))
        if not files:
            raise InputError(f"{path}: no .npy files in this folder")
        arrays = [(f, _load_npy(f)) for f in files]
    elif path.is_file():
        array = _load_npy(path)
        if tuple(array.shape) == (array.shape[0],) + tuple(info.shape) and tuple(array.shape) != tuple(info.shape):
            arrays = [(path, a) for a in array]
        else:
            arrays = [(path, array)]
    else:
        raise InputError(f"{source}: not 'random', a .npy file or a folder")
    frames = []
    for where, array in arrays:
        if tuple(array.shape) != tuple(info.shape) or array.dtype != np.dtype(info.dtype):
            raise InputError(
                f"{where}: frame is {tuple(array.shape)} {array.dtype}, the model takes {tuple(info.shape)} {info.dtype}"
            )
        frames.append({info.name: np.ascontiguousarray(array)})
    return frames


def _load_npy(path: Path) -> Any:
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable .npy file ({err})") from err


def _terminate(signum: int, frame: Any) -> None:
    # SIGTERM takes the same clean path as Ctrl-C: unwind, stop workers, unlink rings.
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from pipeit.plan import load_plan

    if args.frames < 1:
        raise InputError(f"--frames must be >= 1, got {args.frames}")
    if args.warmup < 0 or args.slots < 1 or (args.inflight is not None and args.inflight < 1):
        raise InputError("--warmup must be >= 0, --slots and --inflight >= 1")
    if not (args.tolerance >= 0 and args.tolerance < float("inf")):
        raise InputError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    plan_path = Path(args.plan)
    plan = load_plan(plan_path)
    model_path = resolve_model(plan_path, plan.model, args.model)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _stream(args, plan, plan_path, model_path)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stream(args: argparse.Namespace, plan: Any, plan_path: Path, model_path: Path) -> int:
    import numpy as np

    from pipeit.cli.output import emit_json, format_table
    from pipeit.executor.pipeline import Pipeline, coordinator_cpus, model_io
    from pipeit.streaming import frames_in_flight

    from pipeit.executor.gpu_worker import check_gpu_devices, gpu_stages

    # Check the GPU stages' devices and files, and read the frames, before any worker starts.
    gpu_stage_list = list(gpu_stages(plan))
    gpu = None
    if gpu_stage_list:
        check_gpu_devices(plan)
        gpu = _gpu_options(args, plan)
    frames = load_frames(args.input, model_io(model_path)[0], args.seed)
    host = coordinator_cpus(plan.platform)
    feeder = os.sched_getaffinity(0)
    with Pipeline(plan, model_path, slots=args.slots, gpu=gpu) as pipe:
        if host:  # as pipeit bench does: the per-frame bookkeeping on the slowest cluster
            pipe.pin_dispatcher(host)
            os.sched_setaffinity(0, set(host))
        admission = args.admission or ("gated" if plan.latency_limit_ms is not None else "window")
        gated = admission == "gated"
        inflight = args.inflight
        if gated and inflight is None:
            inflight = frames_in_flight(plan)  # as pipeit bench streams a plan under a latency limit
        if args.warmup:
            list(pipe.map((frames[i % len(frames)] for i in range(args.warmup)), inflight, gated=gated))
            pipe.reset_stats()
        order = [i % len(frames) for i in range(args.frames)]
        outputs = list(pipe.map((frames[i] for i in order), inflight, gated=gated))
        stats = pipe.stats()
    if host:
        os.sched_setaffinity(0, feeder)
    match: Optional[bool] = None
    mismatched: List[int] = []
    worst: Optional[float] = None
    bound = args.tolerance if gpu_stage_list else 0.0
    if args.check:
        from pipeit.runtime import make_interpreter

        reference = _reference_outputs(make_interpreter(model_path, num_threads=1), frames)
        worst = 0.0
        for n, (i, out) in enumerate(zip(order, outputs)):
            ref = reference[i]
            if set(ref) != set(out):
                mismatched.append(n)
                worst = float("inf")
                continue
            exact = all(np.array_equal(ref[k], out[k]) for k in ref)
            error = 0.0 if exact else _relative_error(out, ref)
            worst = max(worst, error)
            if not exact and not error <= bound:
                mismatched.append(n)
        match = not mismatched
    doc = stats.to_json()
    doc.update({
        "plan": str(plan_path), "model": str(model_path), "strategy": plan.strategy,
        "warmup": args.warmup, "slots": args.slots, "inflight": inflight, "admission": admission,
        "outputs_match": match,
        "predicted_fps": plan.predicted_fps,
        "max_relative_error": worst, "check_tolerance": (bound if args.check else None),
        "gpu_stages": gpu_stage_list,
    })
    if args.json:
        emit_json(doc)
    else:
        rows = [
            [s.index, f"{s.layers[0]}-{s.layers[1]}", s.workers, s.measured_ms, s.predicted_ms, s.busy, s.restarts]
            for s in stats.stages
        ]
        print(format_table(["stage", "layers", "workers", "measured ms", "predicted ms", "busy", "restarts"], rows))
        lat = doc["latency_ms"]
        print(f"{stats.frames} frames, {stats.fps:.1f} fps (plan predicted {plan.predicted_fps:.1f}); "
              f"latency p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms, p99 {lat['p99']:.2f} ms")
        for s in stats.stages:
            for switch in s.switches:
                print(f"stage {s.index} (GPU) frame {switch.get('pipeline_frame')}: {switch.get('message')}")
        if match is not None:
            how = f"within relative error {bound:g} (max {worst:.2e})" if gpu_stage_list else "bit for bit"
            print(f"outputs match the whole model {how}" if match else
                  f"outputs DIFFER from the whole model on {len(mismatched)} frame(s), first {mismatched[:5]} "
                  f"(max relative error {worst:.2e}, allowed {bound:g})")
    return 0 if match in (None, True) else 1


def _gpu_options(args: argparse.Namespace, plan: Any) -> Any:
    """The pipeline's GpuOptions from --gpu-tuning, --gpu-tables, --tolerance, --no-calibrate."""
    from pipeit.executor.gpu_worker import GpuOptions

    tables = {}
    if args.gpu_tables:
        from pipeit.gpu.calibration import load_tables

        tables = load_tables(args.gpu_tables, plan.model_sha256)
    from pipeit.gpu.measure import find_tuning

    tuning = find_tuning(args.gpu_tuning)  # as `pipeit plan`: the given file, else the state dir's
    if tuning is not None:
        from pipeit.gpu.tuner import TuningFile

        TuningFile.load(tuning)  # a corrupt file is refused here, whole, before any worker starts
    return GpuOptions(tuning=str(tuning) if tuning else None, tables=tables, tolerance=args.tolerance,
                      calibrate=not args.no_calibrate)


def _relative_error(out: Dict[str, Any], ref: Dict[str, Any]) -> float:
    """The worst ``max|out - ref| / max|ref|`` over the outputs (shape mismatch: infinity)."""
    from pipeit.gpu.calibration import max_relative_error

    return max_relative_error(out, ref)


def _reference_outputs(interpreter: Any, frames: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    results = []
    for frame in frames:
        for name, value in frame.items():
            interpreter.set_tensor(inputs[name], value)
        interpreter.invoke()
        results.append({name: interpreter.get_tensor(index) for name, index in outputs.items()})
    return results
