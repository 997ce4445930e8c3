#!/usr/bin/env python3
"""Check every distinct layer of the whole zoo on the OpenCL device against TFLite; print a table.

    .venv/bin/python tools/gpu_check.py [--models a,b] [--all-algorithms] [--tolerance 1e-4]

With ``--all-algorithms`` every convolution layer is checked with each
algorithm that fits it (direct, gemm, im2col, Winograd), not only the
heuristic pick. Exit status 1 when any layer exceeds the tolerance.
"""

from __future__ import annotations

import argparse
import sys
import time

from pipeit import zoo
from pipeit.cli.output import format_table
from pipeit.gpu.check import check_layer, distinct_layers
from pipeit.gpu.device import make_context
from pipeit.gpu.lowering import Unsupported, lower_layer
from pipeit.gpu.space import conv_algorithms, heuristic_config
from pipeit.graph import graph_from_model
from pipeit.modelfile import read_model

TILES = {"TM": 32, "TN": 32, "TK": 8, "WM": 4, "WN": 4, "LOCAL": 1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(zoo.list_models()))
    ap.add_argument("--all-algorithms", action="store_true")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()
    ctx = make_context()
    rows, bad = [], 0
    for name in args.models.split(","):
        t0 = time.time()
        model = read_model(zoo.build(name))
        graph = graph_from_model(model, sha256="")
        worst, count, unsupported = 0.0, 0, 0
        for i in distinct_layers(model):
            configs = [None]
            if args.all_algorithms:
                try:
                    spec = lower_layer(model, graph.layers[i])
                except Unsupported:
                    spec = None
                if spec is not None and spec.kind == "conv":
                    configs = []
                    for algo in conv_algorithms(spec):
                        if algo == "direct":
                            configs.append(heuristic_config(spec) if heuristic_config(spec)["algo"] == "direct"
                                           else {"algo": "direct", "CO": 1, "VEC": 1, "WG": 0})
                        else:
                            configs.append({"algo": algo, **TILES})
            for config in configs:
                result = check_layer(model, i, ctx, config)
                if result.error is None:
                    unsupported += 1
                    continue
                count += 1
                worst = max(worst, result.error)
                if not result.ok(args.tolerance):
                    bad += 1
                    print(f"FAIL {name} layer {i} {result.op} {dict(result.config)} error {result.error:.2e}")
        rows.append((name, len(graph.layers), count, unsupported, f"{worst:.2e}",
                     "ok" if worst <= args.tolerance else "FAIL", f"{time.time() - t0:.0f}"))
        print(format_table(["model", "layers", "checks", "unsupported", "worst rel error", "verdict", "s"],
                           rows[-1:]), flush=True)
    print()
    print(format_table(["model", "layers", "checks", "unsupported", "worst rel error", "verdict", "s"], rows))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
