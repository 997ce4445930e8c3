"""``pipeit plan MODEL --platform SPEC (--predictor P | --profile CSV | --times T.json) -o PLAN.json``."""

from __future__ import annotations

import argparse
from typing import Any, Tuple

from pipeit.cli.output import check_distinct_outputs, check_output_file, check_plot_file, emit_json, format_table

__all__ = ["register", "run"]

_STRATEGIES = ("pipeit", "pipe-it", "all-cores", "fastest-cluster", "replicas")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="choose pipeline stages and their workers for a model on a platform",
        description="Predict every layer on every core setup, search the stages x workers space "
        "for the highest throughput within the limits, and write a plan file.",
    )
    parser.add_argument("model", metavar="MODEL", help="a .tflite file")
    parser.add_argument("--platform", default="auto", help="platform spec (default: auto)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictor", metavar="P.json", help="a fitted predictor (pipeit fit)")
    source.add_argument("--profile", metavar="PROFILE.csv", help="a profile of this model (pipeit profile)")
    source.add_argument("--times", metavar="TIMES.json", help="a saved layer-times table")
    parser.add_argument("--strategy", default="pipeit", metavar="NAME",
                        help=f"one of {', '.join(_STRATEGIES)} (default: pipeit)")
    parser.add_argument("--latency-ms", type=float, metavar="L", help="latency limit per frame")
    parser.add_argument("--memory-mb", type=float, metavar="M", help="limit on weights held by all workers (MiB)")
    parser.add_argument("--transfer", metavar="TABLE",
                        help="measured hop costs (JSON or CSV bytes,ms); default: the hops the profile (or the "
                        "profile the predictor was fitted on) timed, else the development host's")
    parser.add_argument("--tuning", metavar="FILE",
                        help="GPU tuning file for a GPU cluster's layer times when the profile lacks them "
                        "(default: $PIPEIT_STATE_DIR/tuning.json if present)")
    parser.add_argument("--pareto", action="store_true", help="also print the throughput/latency frontier")
    parser.add_argument("--plot", metavar="FILE.png", help="draw a timeline of a few frames (needs matplotlib)")
    parser.add_argument("--save-times", metavar="TIMES.json", help="write the layer-times table used")
    parser.add_argument("-o", "--output", required=True, metavar="PLAN.json", help="where to write the plan")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cores.platform import load_platform, platform_file
    from pipeit.dse import pareto_front, plan_pipeline, strategy_named
    from pipeit.dse.cost import MB
    from pipeit.errors import PlanError
    from pipeit.graph import load_graph
    from pipeit.layer_times import LayerTimes, layer_times_for, warn_if_measured_elsewhere
    from pipeit.plan import file_sha256
    from pipeit.runtime import check_loads
    from pipeit.transfer import load_hop_model

    strategy_named(args.strategy)
    inputs = (args.model, args.predictor, args.profile, args.times, args.transfer, args.tuning,
              platform_file(args.platform))
    check_output_file(args.output, "-o", inputs)
    if args.save_times:
        check_output_file(args.save_times, "--save-times", inputs)
    check_distinct_outputs((("-o", args.output), ("--save-times", args.save_times), ("--plot", args.plot)))
    if args.plot:
        check_plot_file(args.plot, "--plot", inputs)
    graph = load_graph(args.model)
    check_loads(args.model)  # a plan for a model the runtime cannot build would fail only in `run`
    platform = load_platform(args.platform)
    if args.times:
        times = LayerTimes.load(args.times)
        times.check_model(graph, args.times, args.model)
    else:
        predictor, profile = _load_source(args)
        warn_if_measured_elsewhere(predictor, profile, args.predictor or args.profile, platform)
        times = layer_times_for(graph, platform, predictor=predictor, profile=profile,
                                model=args.model, tuning=args.tuning)
    if args.save_times:
        try:
            times.save(args.save_times)
        except OSError as err:
            raise PlanError(f"{args.save_times}: cannot write the layer times ({err.strerror or err})") from err
    hop = load_hop_model(args.transfer) if args.transfer else None  # None: the profile's, else the default
    plan = plan_pipeline(
        times, platform, strategy=args.strategy, latency_ms=args.latency_ms, memory_mb=args.memory_mb,
        model=args.model, model_sha256=file_sha256(args.model), hop=hop,
    )
    front = pareto_front(times, platform, memory_mb=args.memory_mb, hop=hop) if args.pareto else None
    try:
        plan.save(args.output)
    except OSError as err:
        raise PlanError(f"{args.output}: cannot write the plan ({err})") from err
    if args.plot:
        from pipeit.dse.timeline import plot_timeline

        plot_timeline(plan, args.plot)
    if args.json:
        doc = plan.to_json()
        if front is not None:
            doc["pareto"] = [
                {"fps": c.fps, "latency_ms": c.latency_ms, "memory_mb": c.memory_bytes / MB,
                 "stages": c.describe()} for c in front
            ]
        emit_json(doc)
        return 0
    rows = []
    for i, stage in enumerate(plan.stages):
        for w in stage.workers:
            rows.append([i, f"[{stage.layers[0]},{stage.layers[1]})", f"{w.cluster}:{w.threads}",
                         ",".join(map(str, w.cpus)), w.predicted_ms, stage.predicted_fps])
    print(format_table(["stage", "layers", "worker", "cpus", "ms", "stage fps"], rows))
    # "strategy pipeit:", not "pipeit:": a line that starts like the program's own error and warning lines
    print(f"\nstrategy {plan.strategy}: {plan.predicted_fps:.2f} fps, {plan.predicted_latency_ms:.2f} ms latency "
          f"predicted -> {args.output}")
    if front is not None:
        print("\nthroughput/latency frontier (pipeit space):")
        print(format_table(["fps", "latency ms", "memory MB", "stages"],
                           [[c.fps, c.latency_ms, c.memory_bytes / MB, c.describe()] for c in front]))
    return 0


def _load_source(args: argparse.Namespace) -> Tuple[Any, Any]:
    """``(predictor, profile)``: the one the command was given, read once, the other None."""
    if args.predictor:
        from predictors import load_predictor

        return load_predictor(args.predictor), None
    if args.profile:
        from pipeit.profile_table import read_profile

        return None, read_profile(args.profile, force=True)
    return None, None
