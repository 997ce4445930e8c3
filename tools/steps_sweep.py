#!/usr/bin/env python3
"""Output channels 8..136 of a 3x3 conv at 56x56 on one core: measured and predicted.

Latency steps where the output channels cross a multiple of XNNPACK's tile
width; this plots the measurement next to every predictor's estimate (from a
predictor file fitted on other layers, e.g. the zoo profile) so the steps
can be seen -- or not -- in each.

    .venv/bin/python tools/steps_sweep.py --predictor mech.json --predictor flops.json \
        -o steps.png [--csv steps.csv] [--setup cpu:1] [--cin 64]
"""

from __future__ import annotations

import argparse
import csv
import sys

from cores.model import CoreSetup
from cores.platform import load_platform
from pipeit.graph import load_graph
from pipeit.profiler import SetupWorker, TimingSpec
from pipeit.tflite_builder import single_layer_model
from predictors import load_predictor
from predictors.plots import _pyplot


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", action="append", required=True, help="predictor JSON (repeatable)")
    ap.add_argument("--platform", default="auto")
    ap.add_argument("--setup", default=None, help="core setup (default: fastest cluster, 1 core)")
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--cin", type=int, default=64)
    ap.add_argument("--lo", type=int, default=8)
    ap.add_argument("--hi", type=int, default=136)
    ap.add_argument("--step", type=int, default=2)
    ap.add_argument("-o", "--output", required=True, help="PNG plot")
    ap.add_argument("--csv", help="also write the numbers")
    args = ap.parse_args(argv)

    platform = load_platform(args.platform)
    setup = CoreSetup.parse(args.setup) if args.setup else CoreSetup(platform.fastest.name, 1)
    predictors = [load_predictor(p) for p in args.predictor]
    spec = TimingSpec(min_repeats=15, max_repeats=60, rel_tol=0.01)
    rows = []
    worker = SetupWorker(platform, setup)
    try:
        for cout in range(args.lo, args.hi + 1, args.step):
            data = single_layer_model("conv", (1, args.size, args.size, args.cin), cout, kernel=3)
            d = load_graph(data).layers[0].descriptor
            timing = worker.measure(data, spec)
            preds = [p.predict(d, setup) for p in predictors]
            rows.append([cout, timing.median_ms] + preds)
            print(cout, f"{timing.median_ms:.3f}", " ".join(f"{x:.3f}" for x in preds), file=sys.stderr)
    finally:
        worker.close()
    names = [p.name for p in predictors]
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            w = csv.writer(handle)
            w.writerow(["out_channels", "measured_ms"] + [f"{n}_ms" for n in names])
            w.writerows(rows)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = [r[0] for r in rows]
    ax.plot(xs, [r[1] for r in rows], "k.-", label="measured", lw=1.5)
    for i, name in enumerate(names):
        ax.plot(xs, [r[2 + i] for r in rows], ".--", label=f"predicted: {name}")
    ax.set_xlabel("output channels")
    ax.set_ylabel("ms")
    ax.set_title(f"conv 3x3, {args.size}x{args.size}x{args.cin}, {setup}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"plot -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
