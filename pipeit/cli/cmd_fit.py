"""``pipeit fit PROFILE... -o PREDICTOR.json [--kind K]``: fit a latency predictor."""

from __future__ import annotations

import argparse

from pipeit.cli.output import check_output_file, emit_json
from pipeit.errors import PredictorError

__all__ = ["register", "run"]


def register(subparsers) -> None:
    from predictors import DEFAULT_KIND, PREDICTORS

    parser = subparsers.add_parser(
        "fit",
        help="fit a latency predictor from profile tables",
        description="Fit a predictor (per-layer model plus whole-model calibration) from one or "
        "more profile CSVs of one platform, and save it as JSON.",
    )
    parser.add_argument("profiles", metavar="PROFILE", nargs="+", help="profile CSV files")
    parser.add_argument("-o", "--output", required=True, metavar="PREDICTOR.json")
    parser.add_argument("--kind", default=DEFAULT_KIND, choices=sorted(PREDICTORS),
                        help=f"predictor model (default {DEFAULT_KIND})")
    parser.add_argument("--force", action="store_true", help="accept rows from several platforms")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeit.profile_table import read_profile
    from predictors import make_predictor

    check_output_file(args.output, "-o", args.profiles)
    table = read_profile(args.profiles, force=args.force)
    predictor = make_predictor(args.kind).fit(table)
    try:
        predictor.save(args.output)
    except OSError as err:
        raise PredictorError(f"{args.output}: cannot write the predictor ({err.strerror or err})") from err
    summary = {
        "output": args.output,
        "kind": predictor.name,
        "fingerprint": predictor.fingerprint_,
        "setups": [str(s) for s in predictor.setups_],
        "layer_rows": len(table.layer_rows()),
        "calibration_rows": len(table.multi_rows()),
    }
    if args.json:
        emit_json(summary)
    else:
        print(f"{predictor.name} predictor for {', '.join(summary['setups'])} "
              f"({summary['layer_rows']} layer rows, {summary['calibration_rows']} calibration rows) "
              f"-> {args.output}")
    return 0
