#!/usr/bin/env python3
"""How well a trial's p99 foretells the bench's: every trial candidate that the bench also ran, side by side.

    .venv/bin/python tools/trial_vs_bench.py build/figs*/lat*.json

Reads the ``--json`` output of ``tools/bench_zoo.py ... --latency-x X`` (a
list of ``pipeit bench --json`` documents). Under a latency limit the trial
measures a few candidate plans and keeps the fastest that met the limit,
preferring those that met it with ``pipeit.trial.LATENCY_HEADROOM`` to
spare. Whenever a candidate is the same pipeline as a strategy the bench
then measured, its two p99s (as multiples of the limit) form a pair. The
pairs are grouped by the trial's verdict: met with room, met narrowly,
missed. Each group shows how often the bench met the limit: what the
headroom rule buys, measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_zoo import stages_line  # noqa: E402  (beside this file)
from pipeit.trial import LATENCY_HEADROOM  # noqa: E402

Pair = Tuple[str, str, str, float, float]  # model, label, stages, trial p99 / limit, bench p99 / limit


def pairs(docs: List[dict]) -> List[Pair]:
    out: List[Pair] = []
    for doc in docs:
        limit = doc.get("latency_limit_ms")
        if not doc.get("trial") or not limit:
            continue
        bench: Dict[str, dict] = {stages_line(s["stages"]): s for s in doc["strategies"]}
        for run in doc["trial"]["runs"]:
            measured = bench.get(run["stages"])
            if measured is not None:
                out.append((Path(doc["model"]).stem, run["label"], run["stages"], run["p99_ms"] / limit,
                            measured["latency_ms"]["p99"] / limit))
    return out


def groups(found: List[Pair]) -> List[Tuple[str, int, int]]:
    """(verdict, pairs, of which the bench met the limit) for met with room, met narrowly, missed."""
    room = 1.0 - LATENCY_HEADROOM
    rules = ((f"met with room (trial p99 <= {room:.2f} x limit)", lambda t: t <= room),
             (f"met narrowly ({room:.2f}-1.00)", lambda t: room < t <= 1.0),
             ("missed (> 1.00)", lambda t: t > 1.0))
    return [(name, sum(rule(p[3]) for p in found), sum(rule(p[3]) and p[4] <= 1.0 for p in found))
            for name, rule in rules]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="bench_zoo --json outputs")
    parser.add_argument("--pairs", action="store_true", help="list every pair too")
    args = parser.parse_args()
    docs: List[dict] = []
    for path in args.files:
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            print(f"trial_vs_bench: {path}: {err}", file=sys.stderr)
            return 2
        docs.extend(loaded if isinstance(loaded, list) else [loaded])
    found = pairs(docs)
    if args.pairs:
        print("| model | candidate | stages | trial p99 / limit | bench p99 / limit |\n|---|---|---|---|---|")
        for model, label, stages, trial, bench in found:
            print(f"| {model} | {label} | `{stages}` | {trial:.2f} | {bench:.2f} |")
        print()
    print("| trial verdict | pairs | bench met the limit |\n|---|---|---|")
    for name, count, met in groups(found):
        print(f"| {name} | {count} | {met} ({met / count:.0%}) |" if count else f"| {name} | 0 | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
