"""``pipeit gpu``: OpenCL devices, kernel tuning, and a correctness check against TFLite.

    pipeit gpu --list [--json]
    pipeit gpu tune MODEL [--trials N] [--strategy random|model] [-o TUNING.json]
    pipeit gpu check MODEL [--layers I,J] [--tuning FILE] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from pipeit.cli.output import check_output_file, emit_json, format_table
from pipeit.errors import InputError

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gpu",
        help="OpenCL GPU stage: list devices, tune kernels, check them against TFLite, tune accuracy",
        description="OpenCL devices (--list), per-device kernel tuning (tune) and a per-layer "
                    "correctness check against TFLite (check). The device is chosen with --device "
                    "or $PIPEIT_OPENCL_DEVICE (an index or a name substring).",
    )
    parser.add_argument("--list", action="store_true", help="list OpenCL platforms and devices")
    parser.add_argument("--device", help="OpenCL device: index or name substring")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    sub = parser.add_subparsers(dest="gpu_command", metavar="ACTION")

    tune = sub.add_parser("tune", help="tune each distinct layer's kernels on the device")
    tune.add_argument("model", type=Path, help="a float32 .tflite model")
    tune.add_argument("--trials", type=int, default=32, help="configs measured per layer (default 32)")
    tune.add_argument("--strategy", default="model", choices=("random", "model"),
                      help="random search, or cost-model guided (default)")
    tune.add_argument("-o", "--output", type=Path, default=None,
                      help="tuning file to update, reused if it exists (default $PIPEIT_STATE_DIR/tuning.json, "
                           "the one profile, plan and run read when given no --tuning)")
    tune.add_argument("--precision", default="fp32", choices=("fp32", "fp16-storage", "fp16"))
    tune.add_argument("--layers", help="only these layer indices (comma list)")
    tune.add_argument("--retune", action="store_true", help="tune layers the file already has")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--device", dest="device_sub", help=argparse.SUPPRESS)
    tune.add_argument("--json", dest="json_sub", action="store_true", help="print one JSON document")

    acc = sub.add_parser(
        "accuracy", help="accuracy tuning: the fastest variant of a layer range per tolerance -> a tables file",
        description="For each tolerance, the fastest per-layer variants (fp16 storage, fp16 arithmetic, Winograd) "
                    "whose output stays within it against TFLite float32 on calibration frames; written as the "
                    "tables file `pipeit run --gpu-tables` reads (loosest first, fp32 last).",
    )
    acc.add_argument("model", type=Path)
    acc.add_argument("--range", dest="layer_range", required=True, metavar="START:END",
                     help="the GPU stage's layers, as in the plan (END exclusive)")
    acc.add_argument("--tolerances", default="1e-4,1e-3,1e-2", metavar="T,T,...",
                     help="relative errors, one table each (default 1e-4,1e-3,1e-2)")
    acc.add_argument("--min-top1", type=float, default=1.0, help="least top-1 agreement (default 1.0)")
    acc.add_argument("--input", default="random", metavar="random|FILE.npy|FILE.npz|DIR",
                     help="calibration frames: random, one .npy (N frames stacked), a .npz (one array per "
                          "input name) or a folder of .npy frames")
    acc.add_argument("--frames", type=int, default=4, help="calibration frames used (default 4)")
    acc.add_argument("--seed", type=int, default=0, help="seed for random frames")
    acc.add_argument("-o", "--output", type=Path, required=True, metavar="TABLES.json")
    acc.add_argument("--device", dest="device_sub", help=argparse.SUPPRESS)
    acc.add_argument("--json", dest="json_sub", action="store_true", help="print one JSON document")

    check = sub.add_parser("check", help="compare each distinct layer with its TFLite sub-model")
    check.add_argument("model", type=Path, help="a float32 .tflite model")
    check.add_argument("--layers", help="only these layer indices (comma list)")
    check.add_argument("--tuning", type=Path,
                       help="use the configs of this tuning file (default: $PIPEIT_STATE_DIR/tuning.json if present)")
    check.add_argument("--precision", default="fp32", choices=("fp32", "fp16-storage", "fp16"))
    check.add_argument("--tolerance", type=float, default=1e-4, help="relative error allowed")
    check.add_argument("--device", dest="device_sub", help=argparse.SUPPRESS)
    check.add_argument("--json", dest="json_sub", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run)


def _layers(text):
    if not text:
        return None
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InputError(f"--layers {text!r} is not a comma list of layer indices") from None


def _check_layers(model, layers, graph=None) -> None:
    """Refuse --layers indices the model does not have (``layers`` None: every layer)."""
    if not layers:
        return
    if graph is None:
        from pipeit.graph import graph_from_model

        graph = graph_from_model(model, sha256="")
    for i in layers:
        if not 0 <= i < len(graph.layers):
            raise InputError(f"layer {i} is outside 0..{len(graph.layers) - 1}")


def _require_precision(ctx, precision: str) -> None:
    """Refuse half arithmetic up front on a device without ``cl_khr_fp16``: every kernel would fail to
    build, and a tune or check made only of failures is no answer."""
    from pipeit.gpu import kernels as K
    from pipeit.gpu.device import GpuError

    if K.PRECISIONS[precision].needs_fp16 and not ctx.info.fp16:
        raise GpuError(f"--precision {precision}: {ctx.info.name} lacks cl_khr_fp16, so half arithmetic is not "
                       f"available (fp16-storage works on any device)")


def run(args: argparse.Namespace) -> int:
    device = getattr(args, "device_sub", None) or args.device
    as_json = bool(args.json or getattr(args, "json_sub", False))
    if args.list:
        return _list(as_json)
    if args.gpu_command == "tune":
        return _tune(args, device, as_json)
    if args.gpu_command == "check":
        return _check(args, device, as_json)
    if args.gpu_command == "accuracy":
        return _accuracy(args, device, as_json)
    raise InputError("say what to do: pipeit gpu --list | tune MODEL | accuracy MODEL | check MODEL")


def _layer_range(text: str, layers: int):
    start, sep, end = text.partition(":")
    try:
        a, b = int(start), int(end)
    except ValueError:
        raise InputError(f"--range {text!r} is not START:END (layer indices)") from None
    if not sep or not 0 <= a < b <= layers:
        raise InputError(f"--range {text!r}: need 0 <= START < END <= {layers} (the model's layer count)")
    return a, b


def _tolerances(text: str):
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InputError(f"--tolerances {text!r} is not a comma list of numbers") from None
    if not values or any(not 0 < v < float("inf") for v in values):
        raise InputError(f"--tolerances {text!r}: need one or more finite relative errors > 0")
    return sorted(set(values))


def _accuracy(args: argparse.Namespace, device, as_json: bool) -> int:
    """Accuracy tuning of one layer range on calibration frames, written as a tables file.

    The range's inputs are what the CPU layers before it produce from the
    calibration frames (or the frames themselves), so the variants are judged
    on the activations the GPU stage will really see.
    """
    from pipeit.cli.cmd_run import load_frames
    from pipeit.gpu.accuracy import accuracy_table
    from pipeit.gpu.calibration import save_tables, tables_from_accuracy
    from pipeit.gpu.check import reference_outputs
    from pipeit.gpu.device import make_context
    from pipeit.graph import load_graph
    from pipeit.modelfile import read_model
    from pipeit.plan import file_sha256
    from pipeit.split import extract_layers

    inputs = (args.model, None if args.input == "random" else args.input)
    check_output_file(args.output, "-o", inputs)
    graph = load_graph(str(args.model))
    start, end = _layer_range(args.layer_range, len(graph.layers))
    tolerances = _tolerances(args.tolerances)
    if args.frames < 1:
        raise InputError(f"--frames must be >= 1, got {args.frames}")
    if not 0.0 <= args.min_top1 <= 1.0:
        raise InputError(f"--min-top1 must be in [0, 1], got {args.min_top1}")
    frames = load_frames(args.input, graph.inputs, args.seed)[: args.frames]
    model = read_model(args.model)
    calibration = []
    prefix = extract_layers(model, 0, start).model_bytes if start > 0 else None
    for frame in frames:
        inputs = dict(frame)
        if prefix is not None:
            inputs.update(reference_outputs(prefix, frame))
        calibration.append(inputs)
    ctx = make_context(device)
    rows = accuracy_table(model, start, end, ctx, calibration, tolerances, args.min_top1)
    tables = tables_from_accuracy(list(reversed(rows)))  # loosest first: the ladder climbs to fp32
    try:
        save_tables(args.output, {(start, end): tables}, file_sha256(args.model))
    except OSError as err:
        raise InputError(f"{args.output}: cannot write the tables ({err.strerror or err})") from err
    if as_json:
        emit_json({"model": str(args.model), "layers": [start, end], "device": ctx.info.to_json(),
                   "frames": len(calibration), "tables_file": str(args.output),
                   "levels": [{"tolerance": t, "storage": plan.storage, "fast_layers": list(plan.fast_layers),
                               "error": plan.error, "top1": plan.top1, "ms": plan.ms, "note": plan.note}
                              for t, plan in rows]})
        return 0
    print(format_table(["tolerance", "storage", "fast layers", "max rel. error", "top-1", "stage ms", "note"],
                       [(f"{t:g}", plan.storage, ",".join(map(str, plan.fast_layers)) or "-",
                         f"{plan.error:.2e}", f"{plan.top1:.2f}", f"{plan.ms:.3f}", plan.note or "")
                        for t, plan in rows]))
    print(f"wrote {args.output} ({len(tables)} tables for layers [{start},{end}) on {ctx.info.name})")
    return 0


def _list(as_json: bool) -> int:
    from pipeit.gpu.device import list_devices

    devices = list_devices()
    if as_json:
        emit_json({"devices": [d.to_json() for d in devices]})
        return 0
    rows = [(d.index, d.platform[:28], d.name[:40], d.device_type, d.compute_units,
             "yes" if d.fp16 else "no", d.local_mem_bytes // 1024, d.global_mem_bytes // (1 << 20))
            for d in devices]
    print(format_table(["index", "platform", "device", "type", "units", "fp16", "local KiB",
                        "global MiB"], rows))
    return 0


def _tune(args: argparse.Namespace, device, as_json: bool) -> int:
    from pipeit.gpu.autotune import tune_model
    from pipeit.gpu.configcheck import check_tuning_configs
    from pipeit.gpu.device import make_context
    from pipeit.gpu.measure import default_tuning_path
    from pipeit.gpu.tuner import TuningFile
    from pipeit.modelfile import read_model
    from pipeit.progress import progress_for

    output = args.output if args.output is not None else default_tuning_path()
    if args.trials < 1:
        raise InputError(f"--trials must be >= 1, got {args.trials}")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    check_output_file(output, "-o", (args.model,), make_parents=True)  # the tuning file makes its folder
    model = read_model(args.model)
    layers = _layers(args.layers)
    _check_layers(model, layers)
    tuning = TuningFile.load(output) if output.exists() else TuningFile()
    ctx = make_context(device)
    _require_precision(ctx, args.precision)
    check_tuning_configs(tuning, str(output), model, ctx.info)
    # Saved before tuning (a folder that cannot take it is found now, not after minutes of trials) and
    # after every layer (an interrupted run keeps the layers it finished); a write error is one line.
    tuning.save(output)
    # no bar where every layer is already tuned (it drew "tuning: 0trial [00:00, ?trial/s]")
    with progress_for(not as_json, None, "tuning", "trials", leave=False, delay=0.5) as bar:
        results = tune_model(model, ctx, tuning, trials=args.trials, strategy=args.strategy,
                             precision=args.precision, seed=args.seed, retune=args.retune,
                             layers=layers, progress=bar.update, recorded=lambda: tuning.save(output))
    tuning.save(output)
    if as_json:
        emit_json({"device": ctx.info.to_json(), "fingerprint": ctx.info.fingerprint(),
                   "tuning_file": str(output), "strategy": args.strategy,
                   "layers": [{**dataclasses.asdict(r), "speedup": r.speedup} for r in results]})
        return 0
    # "trials": the search's, as --trials counts them (r.trials also counts the untuned config timed first)
    rows = [(r.layer, r.op, "-" if r.untuned_ms is None else r.untuned_ms,
             "-" if r.best_ms is None else r.best_ms,
             "-" if r.speedup is None else f"{r.speedup:.2f}x", max(0, r.trials - 1), r.failed,
             r.skipped or ",".join(f"{k}={v}" for k, v in sorted(r.config.items())))
            for r in results]
    print(format_table(["layer", "op", "untuned ms", "tuned ms", "speedup", "trials", "failed",
                        "config / note"], rows))
    print(f"wrote {output} ({ctx.info.name}, fingerprint {ctx.info.fingerprint()})")
    return 0


def _configs_line(tuning_path, tuned: int, layers: int, device: str, precision: str) -> str:
    """Where the checked configs came from: a tuning file holds configs per device and precision, and one
    made on another device (or for other layers) gives none here, which the line must not hide."""
    if tuning_path is None:
        return "configs: heuristic (no tuning file)"
    if tuned == 0:
        return (f"configs: heuristic ({tuning_path} has none for these layers on {device} at {precision}; "
                f"tune them with pipeit gpu tune)")
    if tuned == layers:
        return f"configs: {tuning_path} (for every layer checked)"
    return f"configs: {tuning_path} for {tuned} of {layers} layers, heuristic for the rest"


def _check(args: argparse.Namespace, device, as_json: bool) -> int:
    from pipeit.gpu.check import check_model, distinct_layers
    from pipeit.gpu.device import make_context
    from pipeit.gpu.measure import find_tuning
    from pipeit.gpu.tuner import TuningFile
    from pipeit.graph import graph_from_model
    from pipeit.modelfile import read_model

    if not 0 <= args.tolerance < float("inf"):
        raise InputError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    model = read_model(args.model)
    ctx = make_context(device)
    _require_precision(ctx, args.precision)
    layers = _layers(args.layers) or distinct_layers(model)
    graph = graph_from_model(model, sha256="")
    _check_layers(model, layers, graph)
    configs = {}
    tuning_path = find_tuning(args.tuning)  # the file plan and run would use
    if tuning_path is not None:
        from pipeit.gpu.configcheck import check_tuning_configs

        tuning = TuningFile.load(tuning_path)
        check_tuning_configs(tuning, str(tuning_path), model, ctx.info)  # refused whole, before any check
        for i in layers:
            found = tuning.config_for(ctx.info, graph.layers[i].descriptor, args.precision)
            if found is not None:
                configs[i] = found
    results = check_model(model, ctx, layers, args.precision, configs)
    bad = [r for r in results if r.error is not None and not r.ok(args.tolerance)]
    if as_json:
        emit_json({"device": ctx.info.name, "tolerance": args.tolerance,
                   "tuning_file": None if tuning_path is None else str(tuning_path),
                   "tuned_layers": sorted(configs),
                   "layers": [{"layer": r.layer, "op": r.op, "config": dict(r.config),
                               "error": r.error, "unsupported": r.reason or None} for r in results],
                   "failed": [r.layer for r in bad]})
    else:
        rows = [(r.layer, r.op, "-" if r.error is None else f"{r.error:.2e}",
                 "unsupported" if r.error is None else ("ok" if r.ok(args.tolerance) else "FAIL"),
                 r.reason or ",".join(f"{k}={v}" for k, v in r.config))
                for r in results]
        print(format_table(["layer", "op", "rel error", "verdict", "config / reason"], rows))
        print(_configs_line(tuning_path, len(configs), len(layers), ctx.info.name, args.precision))
    return 1 if bad else 0
