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
import collections
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from pipeit.errors import InputError, ModelError, PlanError

__all__ = ["register", "run", "resolve_model", "load_frames", "MAX_SLOTS", "check_slots_bound"]

#: most ring slots per edge a command line may ask for (more only fills /dev/shm; 4-8 is plenty)
MAX_SLOTS = 1024


def check_slots_bound(slots: int) -> None:
    """Refuse ``--slots`` past :data:`MAX_SLOTS` (run and serve), before any plan or worker is made."""
    if slots > MAX_SLOTS:
        raise InputError(f"--slots must be at most {MAX_SLOTS} (each slot holds a frame per edge), got {slots}")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="stream frames through a plan's pipeline and measure it",
        description="Start one pinned process per stage worker and stream frames through shared-memory rings.",
    )
    parser.add_argument("plan", metavar="PLAN.json", help="a plan made by `pipeit plan`")
    parser.add_argument("--model", metavar="M", help="the model file (default: the plan's, next to the plan or here)")
    parser.add_argument("--frames", type=int, default=100, metavar="N", help="frames to stream (default 100)")
    parser.add_argument("--input", default="random", metavar="random|FILE.npy|FILE.npz|DIR",
                        help="random frames, one .npy (a frame, or N frames stacked), a .npz (one array per "
                             "input name, each a frame or N stacked), or a folder of .npy frames")
    parser.add_argument("--check", action="store_true",
                        help="compare every output with the whole model's (identical; within --tolerance with a GPU stage)")
    parser.add_argument("--tolerance", type=float, default=1e-4, metavar="T",
                        help="relative error a GPU stage may add (the --check bound and the calibration target; default 1e-4)")
    parser.add_argument("--gpu-tuning", "--tuning", dest="gpu_tuning", metavar="FILE",
                        help="GPU kernel tuning file (from `pipeit gpu tune`; default: the state directory's, as "
                        "`pipeit plan`; --tuning, the name profile, plan and gpu check give it, works too)")
    parser.add_argument("--gpu-tables", metavar="FILE", help="GPU accuracy tables per layer range (pipeit.gpu.calibration)")
    parser.add_argument("--no-calibrate", action="store_true", help="GPU stages never check their output at run time")
    parser.add_argument("--warmup", type=int, default=5, metavar="W",
                        help="frames run first and left out of the figures (default 5)")
    parser.add_argument("--slots", type=int, default=4,
                        help="ring slots per edge, at least (default 4; raised to what the workers keep in flight)")
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
    """Distinct input frames (cycled by the caller): random, from a .npy/.npz file, or from a folder."""
    if source == "random":
        from pipeit.frames import random_frames

        if seed < 0:  # numpy's seeding refuses it deep inside; say so here, in the option's words
            raise InputError(f"--seed must be >= 0, got {seed}")
        return random_frames(inputs, 4, seed)
    if not source.strip():  # Path("") is the current folder: its files were read as frames
        raise InputError("--input needs random, a file or a folder name, got an empty one")
    path = Path(source)
    if path.is_dir():
        found = _folder_frames(path, inputs)
    elif path.is_file():
        found = _file_frames(path, inputs)
    elif not path.exists() and not path.is_symlink():
        raise InputError(f"{source}: no such file or folder (--input takes random, a .npy/.npz file or a folder)")
    else:
        raise InputError(f"{source}: not 'random', a .npy/.npz file or a folder")
    if not found:
        raise InputError(f"{source}: holds no frames")
    return [_checked_frame(where, arrays, inputs) for where, arrays in found]


def _single_input(source: Path, inputs: tuple) -> Any:
    """The one input a .npy file or a folder of them can feed (a .npz names each input instead)."""
    if len(inputs) != 1:
        raise InputError(f"{source}: this model has {len(inputs)} inputs; a .npy file or folder feeds "
                         f"single-input models (use a .npz with one array per input name, or random)")
    return inputs[0]


def _folder_frames(path: Path, inputs: tuple) -> List[Tuple[Path, Dict[str, Any]]]:
    """One frame per .npy file of the folder, in name order."""
    info = _single_input(path, inputs)
    files = sorted(path.glob("*.npy"))
    if not files:
        raise InputError(f"{path}: no .npy files in this folder")
    return [(f, {info.name: _load_npy(f)}) for f in files]


def _file_frames(path: Path, inputs: tuple) -> List[Tuple[Path, Dict[str, Any]]]:
    """A .npy's array (one input), or a .npz's arrays by input name; either a frame or N stacked."""
    from pipeit.frames import read_arrays

    data = read_arrays(path)
    if isinstance(data, dict):
        arrays = _by_input_name(path, data, inputs)
    else:
        arrays = {_single_input(path, inputs).name: data}
    return _unstack(path, arrays, inputs)


def _by_input_name(path: Path, data: Dict[str, Any], inputs: tuple) -> Dict[str, Any]:
    """A .npz's arrays keyed by the model's input names (a lone array feeds a lone input, whatever its name)."""
    names = [info.name for info in inputs]
    if len(data) == 1 and len(names) == 1:
        return {names[0]: next(iter(data.values()))}
    if set(data) != set(names):
        raise InputError(f"{path}: holds arrays {sorted(data)}, the model's inputs are {names} "
                         f"(a .npz needs one array per input name)")
    return data


def _unstack(path: Path, arrays: Dict[str, Any], inputs: tuple) -> List[Tuple[Path, Dict[str, Any]]]:
    """One frame, or the N frames of arrays stacked on a new first axis (the same N for every input)."""
    counts = {}
    for info in inputs:
        shape = tuple(arrays[info.name].shape)
        if shape != tuple(info.shape) and len(shape) >= 1 and shape[1:] == tuple(info.shape):
            counts[info.name] = shape[0]
    if not counts:
        return [(path, arrays)]
    for info in inputs:
        if info.name not in counts and tuple(arrays[info.name].shape) != tuple(info.shape):
            _check_array(path, arrays[info.name], info, named=len(inputs) > 1)  # neither a frame nor a stack
    if len(counts) != len(inputs) or len(set(counts.values())) != 1:
        raise InputError(f"{path}: the arrays stack different numbers of frames per input: {counts}")
    n = next(iter(counts.values()))
    return [(path, {name: array[i] for name, array in arrays.items()}) for i in range(n)]


def _checked_frame(where: Path, arrays: Dict[str, Any], inputs: tuple) -> Dict[str, Any]:
    """The frame, contiguous, once every input's array has the model's shape and dtype."""
    import numpy as np

    frame = {}
    for info in inputs:
        array = arrays[info.name]
        if array.dtype.byteorder not in "=|" and array.dtype.newbyteorder("=") == np.dtype(info.dtype):
            array = array.astype(np.dtype(info.dtype))  # saved on a machine of the other byte order: same values
        _check_array(where, array, info, named=len(inputs) > 1)
        # not np.ascontiguousarray: it makes a 0-d input (a scalar) 1-d
        frame[info.name] = array if array.flags.c_contiguous else array.copy(order="C")
    return frame


def _check_array(where: Path, array: Any, info: Any, named: bool) -> None:
    """Refuse an array whose shape or dtype is not the input's, naming what the model takes."""
    import numpy as np

    if tuple(array.shape) == tuple(info.shape) and array.dtype == np.dtype(info.dtype):
        return
    which = f"input {info.name!r}" if named else "frame"
    scalar = " (a 0-d array)" if array.ndim == 0 else ""
    raise InputError(f"{where}: {which} is {tuple(array.shape)}{scalar} {array.dtype}, "
                     f"the model takes {tuple(info.shape)} {info.dtype}")


def _load_npy(path: Path) -> Any:
    """The array of one .npy file of a folder (a .npz there is not a frame)."""
    from pipeit.frames import read_arrays

    data = read_arrays(path)
    if isinstance(data, dict):
        raise InputError(f"{path}: a .npz archive, not a .npy frame")
    return data


def run(args: argparse.Namespace) -> int:
    from pipeit.plan import load_plan

    if args.frames < 1:
        raise InputError(f"--frames must be >= 1, got {args.frames}")
    if args.warmup < 0 or args.slots < 1 or (args.inflight is not None and args.inflight < 1):
        raise InputError("--warmup must be >= 0, --slots and --inflight >= 1")
    check_slots_bound(args.slots)
    if not (args.tolerance >= 0 and args.tolerance < float("inf")):
        raise InputError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    plan_path = Path(args.plan)
    plan = load_plan(plan_path)
    model_path = resolve_model(plan_path, plan.model, args.model)
    if model_path.is_dir():
        raise ModelError(f"{model_path}: is a folder, not a model file")
    return _stream(args, plan, plan_path, model_path)  # SIGTERM/SIGHUP unwind as Ctrl-C (pipeit.cli.main)


def _stream(args: argparse.Namespace, plan: Any, plan_path: Path, model_path: Path) -> int:
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
    from pipeit.runtime import native_stderr_silenced

    inputs = model_io(model_path)[0]
    frames = load_frames(args.input, inputs, args.seed)
    bound = args.tolerance if gpu_stage_list else 0.0
    check = None
    if args.check:  # the whole model's outputs first: each streamed output is compared as it arrives
        from pipeit.runtime import invoke_frames, make_interpreter

        with native_stderr_silenced():  # no worker or thread writes to stderr yet: the runtime's INFO line goes
            reference = make_interpreter(model_path, num_threads=1)
        check = _OutputCheck(invoke_frames(reference, frames), bound)
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
        # Frames are fed and outputs dropped (or checked) as they come: a huge --frames/--warmup runs
        # until done or Ctrl-C, in constant memory, instead of first building lists that size.
        if args.warmup:
            collections.deque(pipe.map((frames[i % len(frames)] for i in range(args.warmup)), inflight,
                                       gated=gated), maxlen=0)
            pipe.reset_stats()
        streamed = pipe.map((frames[i % len(frames)] for i in range(args.frames)), inflight, gated=gated)
        if check is not None:
            for out in streamed:
                check.add(out)
        else:
            collections.deque(streamed, maxlen=0)
        stats = pipe.stats()
    if host:
        os.sched_setaffinity(0, feeder)
    match = None if check is None else not check.mismatched
    worst = None if check is None else check.worst
    mismatched = [] if check is None else check.first
    doc = stats.to_json()
    doc.update({
        "plan": str(plan_path), "model": str(model_path), "strategy": plan.strategy,
        "warmup": args.warmup, "slots": args.slots, "inflight": inflight, "admission": admission,
        "outputs_match": match,
        "predicted_fps": plan.predicted_fps, "latency_limit_ms": plan.latency_limit_ms,
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
        limit = plan.latency_limit_ms
        if limit is not None and lat["p99"] is not None:  # a plan made for a limit: was it kept?
            print(f"latency limit {limit:g} ms (the plan's; frames admitted {admission}): p99 "
                  f"{'met' if lat['p99'] <= limit else 'MISSED'}")
        for s in stats.stages:
            for switch in s.switches:
                print(f"stage {s.index} (GPU) frame {switch.get('pipeline_frame')}: {switch.get('message')}")
        if match is not None:
            how = f"within relative error {bound:g} (max {worst:.2e})" if gpu_stage_list else "bit for bit"
            print(f"outputs match the whole model {how}" if match else
                  f"outputs DIFFER from the whole model on {check.mismatched} frame(s), first {mismatched[:5]} "
                  f"(max relative error {worst:.2e}, allowed {bound:g})")
    return 0 if match in (None, True) else 1


def _gpu_options(args: argparse.Namespace, plan: Any) -> Any:
    """The pipeline's GpuOptions from --gpu-tuning, --gpu-tables, --tolerance, --no-calibrate."""
    from pipeit.executor.gpu_worker import GpuOptions

    tables = {}
    if args.gpu_tables:
        from pipeit.gpu.calibration import load_tables

        tables = load_tables(args.gpu_tables, plan.model_sha256)
        _warn_unused_tables(args.gpu_tables, tables, plan)
    from pipeit.gpu.measure import find_tuning

    tuning = find_tuning(args.gpu_tuning)  # as `pipeit plan`: the given file, else the state dir's
    if tuning is not None:
        from pipeit.gpu.tuner import TuningFile

        table = TuningFile.load(tuning)  # a corrupt file is refused here, whole, before any worker starts
        _warn_other_device(table, str(tuning), plan)
    return GpuOptions(tuning=str(tuning) if tuning else None, tables=tables, tolerance=args.tolerance,
                      calibrate=not args.no_calibrate)


def _warn_other_device(table: Any, where: str, plan: Any) -> None:
    """Say so when the tuning file holds no configs for a GPU stage's device: the stage runs untuned."""
    import warnings

    from pipeit.executor.gpu_worker import gpu_stages
    from pipeit.gpu.device import select_device

    devices = {plan.platform.cluster(w.cluster).device for k in gpu_stages(plan) for w in plan.stages[k].workers}
    for device in sorted(devices, key=str):
        warning = table.not_for_device(select_device(device), where)
        if warning:
            warnings.warn(warning, stacklevel=2)


def _warn_unused_tables(path: str, tables: Any, plan: Any) -> None:
    """Say so when ``--gpu-tables`` holds tables for a layer range no GPU stage of the plan runs: a stage
    takes only the tables of exactly its range, so those were ignored without a word."""
    from pipeit.executor.gpu_worker import gpu_stages

    ranges = [tuple(plan.stages[k].layers) for k in gpu_stages(plan)]
    unused = sorted(r for r in tables if tuple(r) not in ranges)
    if unused:
        have = ", ".join(f"[{a}, {b})" for a, b in unused)
        want = ", ".join(f"[{a}, {b})" for a, b in ranges) or "none"
        warnings.warn(f"{path} has tables for layers {have}, which no GPU stage of this plan runs "
                      f"(its GPU stages: {want}); they are not used")


class _OutputCheck:
    """``--check``: each streamed output against the whole model's for its frame, kept as counts.

    Output ``n`` came from frame ``n % len(reference)``. Only the number of
    frames that differ, the first few of them and the worst relative error
    are kept, so a long checked run does not hold its outputs in memory.
    Equal means the same bits where NaN matches NaN (:func:`outputs_equal`).
    """

    def __init__(self, reference: List[Dict[str, Any]], bound: float) -> None:
        self.reference, self.bound = reference, bound
        self.count = self.mismatched = 0
        self.first: List[int] = []
        self.worst = 0.0

    def add(self, out: Dict[str, Any]) -> None:
        from pipeit.gpu.calibration import max_relative_error, outputs_equal

        n, self.count = self.count, self.count + 1
        ref = self.reference[n % len(self.reference)]
        equal = outputs_equal(out, ref)
        error = 0.0 if equal else (max_relative_error(out, ref) if set(ref) == set(out) else float("inf"))
        self.worst = max(self.worst, error)
        if not equal and not (self.bound > 0 and error <= self.bound):  # no bound: bit for bit or a miss
            self.mismatched += 1
            if len(self.first) < 5:
                self.first.append(n)

