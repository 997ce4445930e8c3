"""``pipeit zoo``: write a reference architecture as a real .tflite file, or list them."""

from __future__ import annotations

import argparse
from pathlib import Path

from cores.filewrite import write_file
from pipeit.cli.output import check_output_file, emit_json, format_table
from pipeit.errors import InputError

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "zoo",
        help="reference CNNs (alexnet, googlenet, mobilenet_v1/v2, resnet50, squeezenet) as .tflite",
        description="Write a reference architecture with seeded random weights as a .tflite file "
                    "(input 1x224x224x3, values in [-1, 1]), or list the architectures.",
    )
    parser.add_argument("name", nargs="?", help="architecture name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the architectures")
    parser.add_argument("-o", "--output", type=Path, help="where to write the .tflite file")
    parser.add_argument("--int8", action="store_true", help="full int8 quantisation (int8 in and out)")
    parser.add_argument("--fp16-weights", action="store_true",
                        help="store conv/FC weights as float16 behind DEQUANTIZE ops")
    parser.add_argument("--sparse-weights", type=float, default=0.0, metavar="FRACTION",
                        help="prune that fraction (0 to 1) of each conv/FC filter and store the rest sparse "
                        "(CSR) behind DENSIFY ops")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeit import zoo  # lazy: keeps `pipeit --help` fast

    if args.list:
        rows = [(name, zoo.describe(name)) for name in zoo.list_models()]
        if args.json:
            emit_json({"models": [{"name": n, "description": d} for n, d in rows]})
        else:
            print(format_table(["name", "description"], rows))
        return 0
    if not args.name:
        raise InputError("name a zoo model (or use --list)")
    if args.output is None:
        raise InputError("give the output file with -o FILE")
    zoo.describe(args.name)  # unknown names fail before any work
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    if not 0.0 <= args.sparse_weights < 1.0:
        raise InputError(f"--sparse-weights is the fraction pruned, 0 <= f < 1: got {args.sparse_weights}")
    check_output_file(args.output, "-o", make_parents=True)
    data = zoo.build(args.name, int8=args.int8, seed=args.seed, fp16_weights=args.fp16_weights,
                     sparse_weights=args.sparse_weights)
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        write_file(args.output, data)
    except OSError as err:
        raise InputError(f"cannot write {args.output}: {err.strerror or err}") from err
    variant = "int8" if args.int8 else ("fp16-weights" if args.fp16_weights else "float32")
    if args.sparse_weights:
        variant += f", sparse-weights {args.sparse_weights:g}"
    if args.json:
        emit_json({"name": args.name, "path": str(args.output), "bytes": len(data),
                   "variant": variant, "seed": args.seed})
    else:
        print(f"wrote {args.output} ({args.name}, {variant}, seed {args.seed}, {len(data)} bytes)")
    return 0
