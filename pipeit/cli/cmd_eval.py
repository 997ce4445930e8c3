"""``pipeit eval PROFILE... [--holdout MODEL]``: leave-one-model-out accuracy of every predictor."""

from __future__ import annotations

import argparse

from pipeit.cli.output import check_plot_file, emit_json, format_table

__all__ = ["register", "run"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="leave-one-model-out accuracy of every predictor",
        description="Hold out each model in turn (or only --holdout), fit every predictor on the "
        "rest (layers the held-out model contains are removed from training), and report "
        "per-layer MAPE, RMSPE, the share within +-10 %, per-op errors and whole-model errors.",
    )
    parser.add_argument("profiles", metavar="PROFILE", nargs="+", help="profile CSV files")
    parser.add_argument("--holdout", action="append", metavar="MODEL",
                        help="hold out only this model (repeatable; default: every model)")
    parser.add_argument("--kind", action="append", metavar="K",
                        help="evaluate only this predictor kind (repeatable)")
    parser.add_argument("--min-ms", type=float, default=0.05,
                        help="leave faster layers out of per-layer metrics (default 0.05)")
    parser.add_argument("--setup", action="append", metavar="CLUSTER:K", help="only these setups")
    parser.add_argument("--plot", metavar="FILE.png", help="predicted-vs-measured scatter plot")
    parser.add_argument("--force", action="store_true", help="accept rows from several platforms")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cores.model import CoreSetup
    from pipeit.errors import PredictorError
    from pipeit.profile_table import read_profile
    from predictors import PREDICTORS
    from predictors.evaluate import evaluate

    kinds = args.kind or list(PREDICTORS)
    unknown = [k for k in kinds if k not in PREDICTORS]
    if unknown:
        raise PredictorError(f"unknown predictor kind {unknown[0]!r}; choose from {', '.join(PREDICTORS)}")
    setups = [CoreSetup.parse(s) for s in args.setup] if args.setup else None
    if not 0 <= args.min_ms < float("inf"):
        raise PredictorError(f"--min-ms must be a finite number >= 0, got {args.min_ms}")
    if args.plot:
        check_plot_file(args.plot, "--plot", args.profiles)
    table = read_profile(args.profiles, force=args.force)
    missing = [str(s) for s in setups or () if s not in table.setups()]
    if missing:  # every metric came out nan, exit 0
        raise PredictorError(f"{', '.join(map(str, args.profiles))} has no rows for setup(s) {', '.join(missing)} "
                             f"(it has {', '.join(str(s) for s in table.setups())})")
    results, layers, models = evaluate(table, kinds, args.holdout, args.min_ms, setups)
    if args.plot:
        from predictors.plots import scatter_plot

        try:
            scatter_plot(layers, models, args.plot, args.min_ms)
        except OSError as err:
            raise PredictorError(f"{args.plot}: cannot write the plot ({err.strerror or err})") from err
    if args.json:
        emit_json({
            "min_ms": args.min_ms,
            "predictors": {k: m.to_json() for k, m in results.items()},
            "models": [
                {"predictor": r.predictor, "model": r.model, "setup": r.setup,
                 "measured_ms": r.measured_ms, "predicted_ms": r.predicted_ms,
                 "error_pct": r.rel_error * 100}
                for r in models
            ],
        })
        return 0
    rows = [[k, m.n_layers, m.mape, m.rmspe, m.within10, m.model_mape, m.model_max]
            for k, m in results.items()]
    print(format_table(["predictor", "layers", "MAPE %", "RMSPE %", "within10 %",
                        "model MAPE %", "model max %"], rows))
    print()
    ops = sorted({op for m in results.values() for op in m.per_op})
    print(format_table(["op"] + list(results),
                       [[op] + [results[k].per_op.get(op, (0, float("nan")))[1] for k in results]
                        for op in ops]))
    print()
    print(format_table(["model", "setup", "measured ms"] + [f"{k} err %" for k in results],
                       _model_rows(models, list(results))))
    if args.plot:
        print(f"\nplot -> {args.plot}")
    return 0


def _model_rows(models, kinds):
    by = {}
    for r in models:
        by.setdefault((r.model, r.setup), {"measured": r.measured_ms})[r.predictor] = r.rel_error * 100
    return [[m, s, v["measured"]] + [v.get(k, float("nan")) for k in kinds] for (m, s), v in by.items()]
