"""``pipeit split MODEL --at I,J,... -o DIR``: stage sub-models for contiguous layer ranges."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeit.cli.output import emit_json
from pipeit.errors import SplitError

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
    from pipeit.runtime import check_loads
    from pipeit.split import manifest, parse_cuts, split_model, write_split

    _check_folder(args.output, args.model)
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


def _check_folder(folder: str, model: str) -> None:
    """Refuse an empty -o (it would write into the working folder) and a folder where writing the
    split would overwrite or remove the model itself (a model named like a stage file or the manifest)."""
    from pipeit.split import MANIFEST_NAME, STAGE_FILE

    if not str(folder).strip():
        raise SplitError("-o needs a folder name, got an empty one")
    model_path = Path(model)
    name = model_path.name
    if STAGE_FILE.fullmatch(name) or name == MANIFEST_NAME:
        try:
            inside = Path(folder).resolve() == model_path.resolve().parent
        except (OSError, RuntimeError):
            inside = False
        if inside:
            raise SplitError(f"{model} lies in -o {folder} under a name the split writes or removes; "
                             f"give another folder (or rename the model)")
