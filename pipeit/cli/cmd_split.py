"""``pipeit split MODEL --at I,J,... -o DIR``: stage sub-models for contiguous layer ranges."""

from __future__ import annotations

import argparse

from pipeit.cli.output import emit_json
from pipeit.runtime import check_loads
from pipeit.split import manifest, parse_cuts, split_model, write_split

__all__ = ["register", "run"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "split",
        help="cut a model into stage sub-models",
        description="Cut a .tflite model before the given layer indices (as `pipeit inspect` "
        "numbers them) into DIR/stage_<i>.tflite files and DIR/manifest.json (stage files of an "
        "earlier split in DIR that the new manifest does not list are removed). Chained, the "
        "stages give bit-identical outputs to the whole model.",
    )
    parser.add_argument("model", metavar="MODEL", help="a .tflite file")
    parser.add_argument("--at", required=True, metavar="I,J,...",
                        help="cut before these layers (strictly increasing, 1..layers-1)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="folder for the stage files and manifest.json")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    cuts = parse_cuts(args.at)
    stages = split_model(args.model, cuts)
    # before writing anything: stage files cut from a model the runtime refuses would not load
    check_loads(args.model)
    path = write_split(stages, args.output)
    if args.json:
        emit_json(manifest(stages))
    else:
        for stage in stages:
            start, end = stage.layers
            print(f"{path.parent / stage.file_name}: layers [{start}, {end}), "
                  f"{len(stage.inputs)} input(s), {len(stage.outputs)} output(s)")
        print(f"wrote {len(stages)} stage(s) and {path}")
    return 0
