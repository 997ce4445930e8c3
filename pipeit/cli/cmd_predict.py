"""``pipeit predict MODEL --predictor P.json --platform SPEC --setup CLUSTER:K``: per-layer times."""

from __future__ import annotations

import argparse

from pipeit.cli.output import emit_json, format_table
from pipeit.errors import PredictorError

__all__ = ["register", "run"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict per-layer and whole-model time on one core setup",
        description="Predict each layer's time (including its share of the whole-model "
        "calibration) and the whole-model time of MODEL on one core setup.",
    )
    parser.add_argument("model", metavar="MODEL", help="a .tflite file")
    parser.add_argument("--predictor", required=True, metavar="P.json")
    parser.add_argument("--platform", default="auto", help="platform spec (default: auto)")
    parser.add_argument("--setup", required=True, metavar="CLUSTER:K")
    parser.add_argument("--force", action="store_true",
                        help="use a predictor fitted on another platform/runtime")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cores.model import CoreSetup
    from cores.platform import load_platform
    from pipeit.graph import load_graph
    from pipeit.profiler import platform_fingerprint_for
    from pipeit.runtime import check_loads
    from predictors import load_predictor, predict_graph

    graph = load_graph(args.model)
    check_loads(args.model)  # times for a model the runtime cannot build would mislead
    predictor = load_predictor(args.predictor)
    platform = load_platform(args.platform)
    setup = CoreSetup.parse(args.setup)
    platform.check_setup(setup)
    fingerprint = platform_fingerprint_for(platform)
    if predictor.fingerprint_ != fingerprint and not args.force:
        raise PredictorError(
            f"{args.predictor} was fitted on another platform or runtime (fingerprint "
            f"{predictor.fingerprint_[:12]}, this platform {fingerprint[:12]}); use --force to use it anyway"
        )
    times = predict_graph(predictor, graph, setup)
    doc = {
        "model": args.model,
        "predictor": predictor.name,
        "setup": str(setup),
        "layers": [
            {"index": layer.index, "op": layer.descriptor.op, "ms": ms}
            for layer, ms in zip(graph.layers, times)
        ],
        "total_ms": float(sum(times)),
    }
    if args.json:
        emit_json(doc)
    else:
        print(format_table(["layer", "op", "ms"], [[r["index"], r["op"], r["ms"]] for r in doc["layers"]]))
        print(f"\ntotal: {doc['total_ms']:.3f} ms on {setup} ({predictor.name})")
    return 0
