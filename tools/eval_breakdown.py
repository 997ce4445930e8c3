"""Where does a predictor's leave-one-out error come from? Per setup and kernel family.

``pipeit eval`` reports per op type; this breaks the same leave-one-model-out
results down by (setup, kernel family) and lists the worst layers, so a fix
goes to the group that carries the error, not to one model. It also reports,
per op, the measured two-core speed-up of the profile's layer rows next to
the speed-up of its stage and whole-model rows: layer rows that scale much
less than the stages covering them point at the measurement, not the model.

Usage::

    .venv/bin/python tools/eval_breakdown.py PROFILE.csv... [--kind mech] [--min-ms 0.05] [--worst 15]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeit.profile_table import ProfileTable, read_profile  # noqa: E402
from predictors.evaluate import LayerResult, leave_one_out  # noqa: E402
from predictors.features import family_of  # noqa: E402

__all__ = ["breakdown", "speedups", "main"]


def breakdown(results: List[LayerResult], table: ProfileTable, min_ms: float) -> Dict[Tuple[str, str], dict]:
    """(setup, family) -> n, MAPE %, share within 10 %, signed mean error %, share of all abs error."""
    catalog = table.catalog()
    kept = [r for r in results if r.measured_ms >= min_ms and r.key in catalog]
    total = sum(abs(r.rel_error) for r in kept) or 1.0
    groups: Dict[Tuple[str, str], List[float]] = {}
    for r in kept:
        groups.setdefault((r.setup, family_of(catalog[r.key])), []).append(r.rel_error)
    out = {}
    for g, errs in sorted(groups.items()):
        e = np.array(errs)
        out[g] = {"n": len(e), "mape": float(np.mean(np.abs(e)) * 100),
                  "within10": float(np.mean(np.abs(e) <= 0.1) * 100), "bias": float(np.mean(e) * 100),
                  "share": float(np.sum(np.abs(e)) / total * 100)}
    return out


def speedups(table: ProfileTable, base: str = "cpu:1", other: str = "cpu:2",
             min_ms: float = 0.05) -> Dict[str, np.ndarray]:
    """Measured base/other time ratio per layer op, and for stage and model rows."""
    times: Dict[tuple, Dict[str, float]] = {}
    labels: Dict[tuple, str] = {}
    for r in table.rows:
        if not r.ok:
            continue
        ident = (r.kind, r.model, r.start, r.end, r.key) if r.kind != "layer" else ("layer", r.key)
        times.setdefault(ident, {})[str(r.setup)] = r.median_ms
        labels[ident] = r.op if r.kind == "layer" else r.kind
    out: Dict[str, List[float]] = {}
    for ident, t in times.items():
        if base in t and other in t and t[base] >= min_ms:
            out.setdefault(labels[ident], []).append(t[base] / t[other])
    return {k: np.array(v) for k, v in sorted(out.items())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profiles", nargs="+")
    ap.add_argument("--kind", default="mech")
    ap.add_argument("--min-ms", type=float, default=0.05)
    ap.add_argument("--worst", type=int, default=15)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    table = read_profile(args.profiles, force=args.force)
    print("measured speed-up cpu:1 / cpu:2 (p10 p50 p90), rows >= min-ms on cpu:1")
    for label, s in speedups(table, min_ms=args.min_ms).items():
        p10, p50, p90 = np.percentile(s, [10, 50, 90])
        print(f"  {label:18s} n={len(s):4d}  {p10:5.2f} {p50:5.2f} {p90:5.2f}")
    layers, _ = leave_one_out(table, [args.kind])
    print(f"\n{args.kind}: leave-one-model-out error by setup and kernel family (layers >= {args.min_ms} ms)")
    print(f"  {'setup':6s} {'family':10s} {'n':>4s} {'MAPE%':>7s} {'in10%':>7s} {'bias%':>7s} {'of err%':>8s}")
    for (setup, fam), m in breakdown(layers, table, args.min_ms).items():
        print(f"  {setup:6s} {fam:10s} {m['n']:4d} {m['mape']:7.1f} {m['within10']:7.1f} {m['bias']:7.1f} {m['share']:8.1f}")
    worst = sorted((r for r in layers if r.measured_ms >= args.min_ms), key=lambda r: -abs(r.rel_error))
    print(f"\nworst {args.worst} layers")
    for r in worst[: args.worst]:
        print(f"  {r.model:12s} {r.setup:6s} {r.measured_ms:8.3f} -> {r.predicted_ms:8.3f} ms "
              f"{r.rel_error * 100:+6.1f} %  {r.key[:90]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
