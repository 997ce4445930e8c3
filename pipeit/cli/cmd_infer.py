"""``pipeit infer --socket S --input x.npy [-o out.npz]``: one frame through a running daemon."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from cores.filewrite import write_file
from pipeit.cli.output import check_output_file, emit_json

__all__ = ["register", "run"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "infer", help="run one frame through a running `pipeit serve` daemon",
        description="Send the array in a .npy file (or the named arrays of a .npz) to the daemon and "
        "print or save the outputs.",
    )
    parser.add_argument("--socket", required=True, metavar="S", help="the daemon's socket")
    parser.add_argument("--input", required=True, metavar="x.npy",
                        help=".npy (the model's one input) or .npz (one array per input name)")
    parser.add_argument("-o", "--output", metavar="out.npz",
                        help="save the outputs here, as an .npz archive under exactly this name")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the reply (default 120)")
    parser.add_argument("--transport", choices=("auto", "inline", "shm"), default="auto",
                        help="how the frame travels: shared memory the daemon passes over the socket (shm), "
                        "bytes in the socket (inline), or shm when offered (auto, the default)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from pipeit.client import Client, check_timeout
    from pipeit.errors import InputError
    from pipeit.frames import read_arrays

    check_timeout(args.timeout, "--timeout")
    if args.output is not None:
        check_output_file(args.output, "-o", (args.input,))
    if not args.input.strip():  # Path("") is the current folder
        raise InputError("--input needs a file name, got an empty one")
    inputs = read_arrays(Path(args.input))  # one InputError for any unreadable file, objects included
    with Client(args.socket, timeout=args.timeout, transport=args.transport, slots=1) as client:
        outputs = client.infer(inputs)
        transport = client.transport_in_use
    if args.output:
        try:
            # through a buffer: written as named (np.savez adds ".npz" to a name, even to /dev/null or a
            # FIFO, and the file written would not be the one reported), and whole or not at all
            archive = io.BytesIO()
            np.savez(archive, **outputs)
            write_file(args.output, archive.getvalue())
        except OSError as err:
            raise InputError(f"{args.output}: cannot write ({err.strerror or err})") from err
    summary = {
        name: {"shape": list(a.shape), "dtype": a.dtype.name,
               "argmax": int(np.argmax(a)) if a.size else None,
               "max": float(np.max(a)) if a.size else None}
        for name, a in outputs.items()
    }
    if args.json:
        emit_json({"outputs": summary, "saved": args.output, "transport": transport})
        return 0
    for name, info in summary.items():
        print(f"{name}: shape {tuple(info['shape'])} {info['dtype']}, argmax {info['argmax']}, max {info['max']}")
    if args.output:
        print(f"saved -> {args.output}")
    return 0
