#!/usr/bin/env python3
"""Time the planner on a synthetic 200-layer model: an 8-core 4+4 board and RK3588 (4+2+2).

Target: under 1 s per plan. Prints one line per (board, table seed, limit) with
the search's node counts, and the median over seeds. Not a test: the host's
load changes the figures.

    .venv/bin/python tools/bench_dse.py [--layers 200] [--seeds 3] [--spread 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeit.dse import STRATEGIES, CostModel, Limits, SearchStats, optimal_plan  # noqa: E402
from pipeit.dse.pipeit import seeds as quick_seeds  # noqa: E402
from pipeit.dse.synthetic import synthetic_platform, synthetic_times  # noqa: E402
from pipeit.errors import PlanError  # noqa: E402

BOARDS = {
    "4+4 big.LITTLE": {"big": (4, 1.0), "little": (4, 0.4)},
    # the two A76 pairs are one core type, so they get the same layer times (as from any predictor)
    "RK3588 4+2+2": {"a76_0": (2, 1.0, "a76"), "a76_1": (2, 1.0, "a76"), "a55": (4, 0.35, "a55")},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--spread", type=float, default=0.1,
                        help="per-layer cluster affinity spread of the synthetic table (default 0.1)")
    args = parser.parse_args()
    worst = 0.0
    for board, sizes in BOARDS.items():
        platform = synthetic_platform(sizes, source=board)
        totals = []
        for seed in range(args.seeds):
            table = synthetic_times(platform, args.layers, seed=seed, affinity_spread=args.spread)
            cost = CostModel(table)
            free = None
            for fraction in (None, 0.6, 0.35):
                stats = SearchStats()
                start = time.perf_counter()
                seeds = quick_seeds(cost, platform)
                limit = None if fraction is None else free.latency_ms * fraction
                try:
                    found = optimal_plan(cost, platform, Limits(limit), stats, seeds=seeds)
                    verdict = f"{found.fps:7.2f} fps {found.latency_ms:7.2f} ms  {len(found.stages)} stages"
                except PlanError as err:
                    found, verdict = None, f"infeasible ({err})"
                elapsed = time.perf_counter() - start
                if fraction is None:
                    free = found
                totals.append(elapsed)
                worst = max(worst, elapsed)
                label = "no limit" if limit is None else f"latency <= {limit:.1f} ms"
                print(f"{board:15s} seed {seed}  {label:22s} {elapsed:6.3f} s  nodes {stats.nodes:6d}  "
                      f"solved {stats.solved:4d}  {verdict}")
        print(f"{board:15s} median {statistics.median(totals):.3f} s, max {max(totals):.3f} s\n")
    for name in STRATEGIES:
        if name == "pipeit":
            continue
        platform = synthetic_platform(BOARDS["RK3588 4+2+2"])
        table = synthetic_times(platform, args.layers, seed=0, affinity_spread=args.spread)
        start = time.perf_counter()
        STRATEGIES[name](CostModel(table), platform, Limits())
        print(f"strategy {name:16s} {time.perf_counter() - start:.3f} s (RK3588)")
    print(f"\nslowest plan: {worst:.3f} s (target < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
